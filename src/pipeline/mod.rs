//! Pipeline files: schema, validation and the stage graph.
//!
//! Relative paths in a pipeline file (the cache, `items_file`, `files`) are relative to the
//! directory mvc runs in, as in Snakemake and Nextflow: `mvc run pipelines/full.toml` from
//! the repository root uses `./cache`.

pub mod executor;
pub mod graph;
pub mod parse;

use crate::resources::Resources;
use crate::stages::table::Around;
use executor::SlurmConfig;
use parse::ExecutorTable;
use std::path::{Path, PathBuf};

/// An error in a pipeline file, with its position when it has one: `FILE:LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", file.display(), at_position(*position))]
pub struct PipelineError {
    pub file: PathBuf,
    /// 1-based line and column.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl PipelineError {
    pub fn whole(file: &Path, message: impl Into<String>) -> PipelineError {
        PipelineError {
            file: file.to_path_buf(),
            position: None,
            message: message.into(),
        }
    }

    pub fn at(file: &Path, src: &str, offset: usize, message: impl Into<String>) -> PipelineError {
        PipelineError {
            file: file.to_path_buf(),
            position: Some(line_col(src, offset)),
            message: message.into(),
        }
    }
}

/// `:LINE:COL` after a file name, or nothing for an error about the whole file.
fn at_position(position: Option<(usize, usize)>) -> String {
    position.map_or_else(String::new, |(line, col)| format!(":{line}:{col}"))
}

pub use crate::diag::AtSpan;

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, src[line_start..offset].chars().count() + 1)
}

use crate::exec::ids::StageId;
pub use crate::exec::workflow::{Stage, Workflow};

/// A validated pipeline: the engine's [`Workflow`] and the executor settings of its file.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub workflow: Workflow,
    pub executor: ExecutorTable,
    /// Worker jobs through Slurm (`[executor] kind = "slurm"`), checked.
    pub slurm: Option<SlurmConfig>,
}

impl Pipeline {
    /// Reads and validates a pipeline file; nothing runs before this succeeds.
    pub fn load(path: &Path) -> Result<Pipeline, PipelineError> {
        let src = std::fs::read_to_string(path).map_err(|e| {
            PipelineError::whole(path, format!("cannot read the pipeline file: {e}"))
        })?;
        Pipeline::parse(path, &src)
    }

    pub fn parse(path: &Path, src: &str) -> Result<Pipeline, PipelineError> {
        let raw = parse::parse(path, src)?;
        let order = graph::check(path, src, &raw.stages)?;
        let mut stages = Vec::with_capacity(raw.stages.len());
        // Graph stages of each raw stage, in the order they run (sub-stages first).
        let mut expanded: Vec<Vec<usize>> = Vec::with_capacity(raw.stages.len());
        // What each stage says of itself to the others (a download gives its selection, a
        // command stage may give captions, train stages ask their inputs' kinds).
        let around = Around::new(
            raw.stages
                .iter()
                .map(|s| (s.name.as_str(), s.kind, s.params.as_ref())),
        );
        for stage in raw.stages {
            let line = line_col(src, stage.span.start).0;
            let fail = |e: anyhow::Error| match e.downcast_ref::<AtSpan>() {
                Some(at) => PipelineError::at(path, src, at.span.start, at.message.clone()),
                None => PipelineError::at(path, src, stage.span.start, format!("{e:#}")),
            };
            let inputs: Vec<String> = stage
                .params
                .inputs()
                .iter()
                .map(|i| i.get_ref().clone())
                .collect();
            let built = stage
                .params
                .build(&stage.name, inputs, &around)
                .map_err(fail)?;
            expanded.push((stages.len()..stages.len() + built.len()).collect());
            stages.extend(built.into_iter().map(|b| Stage {
                name: b.name,
                line,
                inputs: b.inputs,
                kind: b.kind,
            }));
        }
        // Sub-stages read only each other and run just before their stage, so the raw order
        // with each stage replaced by its graph stages is still topological.
        let order: Vec<StageId> = order
            .iter()
            .flat_map(|&raw| expanded[raw].iter().map(|&s| StageId(s as u32)))
            .collect();
        let name = raw.pipeline.name.clone().unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| "pipeline".into())
        });
        let cache_dir = PathBuf::from(raw.pipeline.cache.as_deref().unwrap_or("cache"));
        let results_dir =
            PathBuf::from(raw.pipeline.results.as_deref().unwrap_or("runs")).join(&name);
        let executor = raw.executor.unwrap_or_default();
        let slurm = SlurmConfig::from_table(&executor).map_err(|(span, message)| match span {
            Some(span) => PipelineError::at(path, src, span.start, message),
            None => PipelineError::whole(path, message),
        })?;
        Ok(Pipeline {
            workflow: Workflow {
                path: path.to_path_buf(),
                name,
                cache_dir,
                results_dir,
                stages,
                order,
                source: src.to_string(),
            },
            executor,
            slurm,
        })
    }

    /// The executor's slots: machine defaults, then `[executor]`, then flags.
    pub fn slots(
        &self,
        jobs: Option<u32>,
        overrides: Option<&crate::resources::SlotOverrides>,
    ) -> Resources {
        let mut slots = self.executor.apply(Resources::machine_defaults());
        if let Some(jobs) = jobs {
            slots.cpu = jobs;
        }
        if let Some(given) = overrides {
            slots = given.apply(slots);
        }
        slots
    }
}
