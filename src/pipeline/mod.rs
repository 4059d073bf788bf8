//! Pipeline files: schema, validation and the stage graph.
//!
//! Relative paths in a pipeline file (the cache, `items_file`, `files`) are relative to the
//! directory mvc runs in, as in Snakemake and Nextflow: `mvc run pipelines/full.toml` from
//! the repository root uses `./cache`.

pub mod executor;
pub mod graph;
pub mod layers;
pub mod parse;
pub mod sweep;

use crate::report::variants::VariantOf;
use crate::resources::Resources;
use crate::stages::table::Around;
use executor::SlurmConfig;
use parse::ExecutorTable;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// An error in a pipeline file, with its position when it has one: `FILE:LINE:COL: message`;
/// or in one of its overrides: `--set ARG: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", self.place())]
pub struct PipelineError {
    /// The file (the pipeline's, or an overlay's) the error is in; for an override, the
    /// pipeline file it overrides.
    pub file: PathBuf,
    /// 1-based line and column.
    pub position: Option<(usize, usize)>,
    /// The `--set` argument the error is in, as given.
    pub set: Option<String>,
    pub message: String,
}

impl PipelineError {
    pub fn whole(file: &Path, message: impl Into<String>) -> PipelineError {
        PipelineError {
            file: file.to_path_buf(),
            position: None,
            set: None,
            message: message.into(),
        }
    }

    pub fn at(file: &Path, src: &str, offset: usize, message: impl Into<String>) -> PipelineError {
        PipelineError {
            file: file.to_path_buf(),
            position: Some(line_col(src, offset)),
            set: None,
            message: message.into(),
        }
    }

    /// An error in an override, named as the user gave it.
    pub fn set(file: &Path, arg: &str, message: impl Into<String>) -> PipelineError {
        PipelineError {
            file: file.to_path_buf(),
            position: None,
            set: Some(arg.to_string()),
            message: message.into(),
        }
    }

    fn place(&self) -> String {
        match &self.set {
            Some(arg) => format!("--set {arg}"),
            None => format!("{}{}", self.file.display(), at_position(self.position)),
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
pub use layers::Layers;
use layers::Sources;

/// Where the swept value that an error message names (`` `weight_similarity` must be… ``) is
/// written, for a variant's stage.
fn swept_value_named(
    root: &toml::Spanned<toml::de::DeTable>,
    stage: &str,
    variant: &VariantOf,
    message: &str,
) -> Option<usize> {
    let table = root
        .get_ref()
        .get("stage")?
        .get_ref()
        .as_table()?
        .get(stage)?;
    let table = table.get_ref().as_table()?;
    variant
        .params
        .iter()
        .chain(&variant.seeds)
        .map(|(k, _)| k.rsplit('.').next().unwrap_or(k))
        .find(|k| message.contains(&format!("`{k}`")))
        .and_then(|k| Some(table.get(k)?.span().start))
}

/// The name each input of a stage counts under in task keys: a variant's input under the
/// stage the file names (`train` for `train[lr=0.1]`, `objects.select` for
/// `objects[...].select`), unless the stage reads several variants of it (a report), which
/// keep their own names.
fn input_keys(inputs: &[String], variants: &HashMap<String, VariantOf>) -> Vec<String> {
    let as_written = |name: &str| -> String {
        if let Some(v) = variants.get(name) {
            return v.stage.clone();
        }
        if let Some((parent, sub)) = name.rsplit_once('.')
            && let Some(v) = variants.get(parent)
        {
            return format!("{}.{sub}", v.stage);
        }
        name.to_string()
    };
    let written: Vec<String> = inputs.iter().map(|i| as_written(i)).collect();
    inputs
        .iter()
        .zip(&written)
        .map(|(name, w)| {
            if written.iter().filter(|o| *o == w).count() > 1 {
                name.clone()
            } else {
                w.clone()
            }
        })
        .collect()
}

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
        Pipeline::load_with(path, &Layers::default())
    }

    /// Reads a pipeline file with overlays and overrides on it (`--with`, `--set`).
    pub fn load_with(path: &Path, layers: &Layers) -> Result<Pipeline, PipelineError> {
        let src = std::fs::read_to_string(path).map_err(|e| {
            PipelineError::whole(path, format!("cannot read the pipeline file: {e}"))
        })?;
        Pipeline::parse_with(path, &src, layers)
    }

    pub fn parse(path: &Path, src: &str) -> Result<Pipeline, PipelineError> {
        Pipeline::parse_with(path, src, &Layers::default())
    }

    /// The file's text with each overlay, then each override, merged over it, its sweeps
    /// expanded, and every stage checked by its kind.
    pub fn parse_with(path: &Path, src: &str, layers: &Layers) -> Result<Pipeline, PipelineError> {
        let sources = Sources::read(path, src, layers)?;
        let merged = sources.merge()?;
        // What runs is what is recorded: the file as written, or the merged pipeline.
        let source = if layers.is_empty() {
            src.to_string()
        } else {
            merged.to_text().map_err(|e| {
                sources.whole(format!("cannot write the merged pipeline as TOML: {e}"))
            })?
        };
        let layers::Merged {
            root,
            origins: set_by,
        } = merged;
        let expanded = sweep::expand(root, &sources, &crate::stages::takes_every_variant)?;
        let raw = parse::parse(&sources, &expanded.root)?;
        let order = graph::check(&sources, &raw.stages)?;
        let mut stages = Vec::with_capacity(raw.stages.len());
        // Graph stages of each raw stage, in the order they run (sub-stages first).
        let mut expanded_stages: Vec<Vec<usize>> = Vec::with_capacity(raw.stages.len());
        // What each stage says of itself to the others (a download gives its selection, a
        // command stage may give captions, train stages ask their inputs' kinds; a report,
        // which evaluations are variants of a sweep).
        let around = Around::new(
            raw.stages
                .iter()
                .map(|s| (s.name.as_str(), s.kind, s.params.as_ref())),
        )
        .with_variants(expanded.variants.clone());
        for stage in raw.stages {
            let line = sources.line_of(stage.span.start);
            let fail = |e: anyhow::Error| match e.downcast_ref::<AtSpan>() {
                Some(at) => sources.at(at.span.start, at.message.clone()),
                None => {
                    // A variant's error about a swept value points at that value (in the
                    // file, overlay or override that swept it), not at the stage's header.
                    let message = format!("{e:#}");
                    let at = expanded
                        .variants
                        .get(&stage.name)
                        .and_then(|v| swept_value_named(&expanded.root, &stage.name, v, &message))
                        .unwrap_or(stage.span.start);
                    sources.at(at, message)
                }
            };
            let inputs: Vec<String> = stage
                .params
                .inputs()
                .iter()
                .map(|i| i.get_ref().clone())
                .collect();
            let of = expanded
                .variants
                .get(&stage.name)
                .map_or(stage.name.as_str(), |v| v.stage.as_str());
            let stage_set_by: Vec<(String, String)> = set_by
                .iter()
                .filter(|(s, _, _)| s == of)
                .filter_map(|(_, key, origin)| Some((key.clone(), origin.label()?)))
                .collect();
            let built = stage
                .params
                .build(&stage.name, inputs, &around)
                .map_err(fail)?;
            expanded_stages.push((stages.len()..stages.len() + built.len()).collect());
            stages.extend(built.into_iter().map(|b| Stage {
                input_keys: input_keys(&b.inputs, &expanded.variants),
                name: b.name,
                line,
                inputs: b.inputs,
                set_by: stage_set_by.clone(),
                kind: b.kind,
            }));
        }
        // Sub-stages read only each other and run just before their stage, so the raw order
        // with each stage replaced by its graph stages is still topological.
        let order: Vec<StageId> = order
            .iter()
            .flat_map(|&raw| expanded_stages[raw].iter().map(|&s| StageId(s as u32)))
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
            Some(span) => sources.at(span.start, message),
            None => sources.whole(message),
        })?;
        Ok(Pipeline {
            workflow: Workflow {
                path: path.to_path_buf(),
                name,
                cache_dir,
                results_dir,
                stages,
                order,
                source,
                variants: expanded.groups,
                command: Vec::new(),
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
