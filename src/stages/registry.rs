//! The kinds this build of mvc can run, found by name: one line per kind.
//!
//! A kind is one file (or folder) under `stages/` that defines its table's parameters (a
//! serde struct, deserialised straight from the pipeline file so errors keep their line and
//! column), implements [`StageTable`](super::table::StageTable) for it, and implements [`StageKind`](super::StageKind)
//! for the stage it builds. Adding a kind is that file and one line in [`registry!`] below.

use serde::de::MapAccess;

pub use super::table::{Around, Built, StageTable};

macro_rules! registry {
    ($($kind:literal => $table:ty,)*) => {
        /// The kinds this build of mvc can run.
        pub const KINDS: &[&str] = &[$($kind),*];

        /// Reads the table of a stage of kind `kind` (one of [`KINDS`]) from the pipeline
        /// file, as that kind's parameters.
        pub fn read_table<'de, A: MapAccess<'de>>(
            kind: &str,
            map: &mut A,
        ) -> Result<(&'static str, Box<dyn StageTable>), A::Error> {
            match kind {
                $($kind => Ok(($kind, Box::new(map.next_value::<$table>()?))),)*
                other => Err(serde::de::Error::custom(format!("unknown stage kind `{other}`"))),
            }
        }
    };
}

// One line per kind: its name in pipeline files, and the parameters of its table.
registry! {
    "command" => super::command::CommandParams,
    "download" => super::download::DownloadParams,
    "render" => super::render::RenderParams,
    "embed" => super::embed::EmbedParams,
    "split" => super::split::SplitParams,
    "train" => super::train::TrainParams,
    "evaluate" => super::evaluate::EvaluateParams,
    "report" => super::report::ReportParams,
}
