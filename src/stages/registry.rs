//! How the kinds this build of mvc can run are listed: [`kinds!`], invoked once in
//! `stages/mod.rs` with one line per kind, declares each kind's module and finds a kind by
//! name.
//!
//! A kind is one file (or folder) under `stages/` with a `pub const KIND: &str` (its name in
//! pipeline files and in key records), its table's parameters (a serde struct, deserialised
//! straight from the pipeline file so errors keep their line and column) implementing
//! [`StageTable`](super::table::StageTable), and the stage it builds implementing
//! [`StageKind`](super::StageKind).

/// `kinds! { module => Params, … }`: declares `pub mod module;` for each kind, the list of
/// their names ([`KINDS`](super::KINDS), in the order written) and
/// [`read_table`](super::read_table), which reads a stage table as its kind's parameters.
macro_rules! kinds {
    ($($module:ident => $params:ident,)*) => {
        $(pub mod $module;)*

        /// The kinds this build of mvc can run.
        pub const KINDS: &[&str] = &[$($module::KIND),*];

        /// Reads the table of a stage of kind `kind` (one of [`KINDS`]) from the pipeline
        /// file, as that kind's parameters.
        pub fn read_table<'de, A: serde::de::MapAccess<'de>>(
            kind: &str,
            map: &mut A,
        ) -> Result<(&'static str, Box<dyn StageTable>), A::Error> {
            match kind {
                $($module::KIND => Ok((
                    $module::KIND,
                    Box::new(map.next_value::<$module::$params>()?),
                )),)*
                other => Err(serde::de::Error::custom(format!("unknown stage kind `{other}`"))),
            }
        }
    };
}

pub(crate) use kinds;
