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
    pub kind: Arc<dyn StageKind>,
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
    /// The file's text as it was read: each run records it, so that two runs' parameters
    /// can be compared later (the page's history).
    pub source: String,
}

impl Workflow {
    pub fn stage_index(&self, name: &str) -> Option<StageId> {
        self.stages
            .iter()
            .position(|s| s.name == name)
            .map(|i| StageId(i as u32))
    }
}
