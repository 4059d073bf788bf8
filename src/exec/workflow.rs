//! The engine's view of a validated pipeline: named stages of some kind, their inputs, and an
//! order to expand them in. The pipeline file (`crate::pipeline`) builds one; the engine never
//! reads the file.

use super::ids::StageId;
use super::kind::StageKind;
use std::path::PathBuf;
use std::sync::Arc;

/// A validated stage.
#[derive(Debug, Clone)]
pub struct Stage {
    pub name: String,
    /// Line of its `[stage.NAME]` table.
    pub line: usize,
    /// Upstream stage names, in the order written.
    pub inputs: Vec<String>,
    /// The name each input counts under in task keys (empty: the inputs' own names). A
    /// variant of a sweep reads the variant of its input under the input's name as the file
    /// writes it, so that `eval[lr=0.1]` reading `train[lr=0.1]` has the key `eval` has when
    /// `train` sets `lr = 0.1` without a sweep, and shares its cache.
    pub input_keys: Vec<String>,
    /// The parameters an overlay or override set, as `(key, origin)` (`--set`, `--with
    /// FILE`): `mvc plan` names the origin beside a changed parameter.
    pub set_by: Vec<(String, String)>,
    pub kind: Arc<dyn StageKind>,
}

impl Stage {
    /// The name each input counts under in task keys, by position in `inputs`.
    pub fn key_names(&self) -> &[String] {
        if self.input_keys.len() == self.inputs.len() {
            &self.input_keys
        } else {
            &self.inputs
        }
    }
}

/// The stages of a pipeline and where its results go.
#[derive(Debug, Clone)]
pub struct Workflow {
    /// The pipeline file it was read from.
    pub path: PathBuf,
    pub name: String,
    pub cache_dir: PathBuf,
    /// The run's human-readable results folder, `runs/<name>/` by default.
    pub results_dir: PathBuf,
    /// In declaration order.
    pub stages: Vec<Stage>,
    /// Stage indices in a topological order (upstream first; ties in declaration order).
    pub order: Vec<StageId>,
    /// The pipeline's text as it runs: the file as it was read, or with overlays and
    /// overrides the merged pipeline. Each run records it, so that two runs' parameters can
    /// be compared later (the page's history), and a remote worker builds its stages from it.
    pub source: String,
    /// Each stage of the file that a sweep made several.
    pub variants: Vec<Swept>,
    /// The command line that ran it (recorded with the run); empty when not a command's.
    pub command: Vec<String>,
}

/// A stage of the file that a sweep made several.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Swept {
    /// As the file names it.
    pub stage: String,
    /// The stages it became.
    pub stages: Vec<String>,
    /// Its variants, named without their seeds (`train[lr=0.1]`), in order.
    pub variants: Vec<String>,
    /// The seeds each variant has (`seed=1`), in order; empty when no seed was swept.
    pub seeds: Vec<String>,
}

impl Workflow {
    pub fn stage_index(&self, name: &str) -> Option<StageId> {
        self.stages
            .iter()
            .position(|s| s.name == name)
            .map(|i| StageId(i as u32))
    }

    /// The stages `stage` reads, in the order written.
    pub fn input_ids(&self, stage: &Stage) -> Vec<StageId> {
        stage
            .inputs
            .iter()
            .map(|name| self.stage_index(name).expect("inputs were validated"))
            .collect()
    }

    /// The pipeline of the stages `keep` says yes to, in the same order. None of them may
    /// read a stage it leaves out.
    pub fn only(&self, keep: impl Fn(StageId) -> bool) -> Workflow {
        let kept: Vec<StageId> = (0..self.stages.len())
            .map(|s| StageId(s as u32))
            .filter(|&s| keep(s))
            .collect();
        let renumbered =
            |s: StageId| StageId(kept.iter().position(|&k| k == s).expect("kept above") as u32);
        Workflow {
            stages: kept.iter().map(|&s| self.stages[s].clone()).collect(),
            order: self
                .order
                .iter()
                .filter(|&&s| keep(s))
                .map(|&s| renumbered(s))
                .collect(),
            ..self.clone()
        }
    }
}
