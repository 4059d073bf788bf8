//! Pipeline files: schema, validation and the stage graph.
//!
//! Relative paths in a pipeline file (the cache, `items_file`, `files`) are relative to the
//! directory mvc runs in, as in Snakemake and Nextflow: `mvc run pipelines/full.toml` from
//! the repository root uses `./cache`.

pub mod graph;
pub mod parse;

use crate::exec::slots::Resources;
use crate::stages::StageKind;
use crate::stages::command::CommandStage;
use crate::stages::download;
use crate::stages::embed::{EmbedStage, InputRole};
use crate::stages::evaluate::EvaluateStage;
use crate::stages::render::RenderStage;
use crate::stages::report::ReportStage;
use crate::stages::split::SplitStage;
use crate::stages::train::{Role, TrainStage};
use parse::{ExecutorTable, StageParams};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An error in a pipeline file, with its position when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
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

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for PipelineError {}

/// An error about one value of a stage table: reported at that value's position rather
/// than at the table's header.
#[derive(Debug)]
pub struct AtSpan {
    pub span: std::ops::Range<usize>,
    pub message: String,
}

impl fmt::Display for AtSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AtSpan {}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, src[line_start..offset].chars().count() + 1)
}

/// What each input of a train or evaluate stage gives, from the input stage's kind.
fn input_roles(
    stage: &str,
    inputs: &[String],
    kind_of: &std::collections::HashMap<String, &'static str>,
) -> anyhow::Result<Vec<Role>> {
    inputs
        .iter()
        .map(|name| match kind_of.get(name).copied() {
            Some("split") => Ok(Role::Split),
            Some("embed") => Ok(Role::Embeddings),
            Some("train") => Ok(Role::Model),
            other => anyhow::bail!(
                "stage `{stage}`: input `{name}` is {}; train and evaluate stages read a \
                 split stage, an embed stage and (evaluate) a train stage",
                other
                    .map(|k| format!("a {k} stage"))
                    .unwrap_or_else(|| "not a stage".into())
            ),
        })
        .collect()
}

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

/// A validated pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub path: PathBuf,
    pub name: String,
    pub cache_dir: PathBuf,
    /// The run's human-readable results folder, `runs/<name>/` by default.
    pub results_dir: PathBuf,
    pub executor: ExecutorTable,
    /// Worker jobs through Slurm (`[executor] kind = "slurm"`), checked.
    pub slurm: Option<crate::remote::slurm::SlurmConfig>,
    /// In declaration order.
    pub stages: Vec<Stage>,
    /// Stage indices in a topological order (upstream first; ties in declaration order).
    pub order: Vec<usize>,
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
        // An embed stage reading a download stage reads its selection (the captions).
        let downloads: std::collections::HashSet<String> = raw
            .stages
            .iter()
            .filter(|s| matches!(s.params, StageParams::Download(_)))
            .map(|s| s.name.clone())
            .collect();
        // Stages whose items carry a caption file: an embed stage reads captions from them.
        let caption_files: std::collections::HashSet<String> = raw
            .stages
            .iter()
            .filter(|s| match &s.params {
                StageParams::Command(c) => c
                    .outputs
                    .as_ref()
                    .is_some_and(|o| o.iter().any(|f| f == crate::stages::embed::CAPTION_FILE)),
                _ => false,
            })
            .map(|s| s.name.clone())
            .collect();
        let kind_of: std::collections::HashMap<String, &'static str> = raw
            .stages
            .iter()
            .map(|s| (s.name.clone(), s.params.kind_name()))
            .collect();
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
            let built: Vec<Stage> = match stage.params {
                StageParams::Command(p) => vec![Stage {
                    kind: Arc::new(CommandStage::new(&stage.name, *p).map_err(fail)?),
                    name: stage.name,
                    line,
                    inputs,
                }],
                StageParams::Render(p) => vec![Stage {
                    kind: Arc::new(RenderStage::new(&stage.name, *p).map_err(fail)?),
                    name: stage.name,
                    line,
                    inputs,
                }],
                StageParams::Embed(p) => {
                    let (inputs, roles): (Vec<String>, Vec<InputRole>) = inputs
                        .into_iter()
                        .map(|name| {
                            let select = format!("{name}.{}", download::SELECT);
                            if downloads.contains(&name) {
                                (select, InputRole::Captions)
                            } else if name
                                .strip_suffix(&format!(".{}", download::SELECT))
                                .is_some_and(|d| downloads.contains(d))
                                || caption_files.contains(&name)
                            {
                                (name, InputRole::Captions)
                            } else {
                                (name, InputRole::Images)
                            }
                        })
                        .unzip();
                    vec![Stage {
                        kind: Arc::new(EmbedStage::new(&stage.name, *p, roles).map_err(fail)?),
                        name: stage.name,
                        line,
                        inputs,
                    }]
                }
                StageParams::Split(p) => {
                    // A download stage gives its objects through its selection.
                    let mut inputs = inputs;
                    let mut from_selection = false;
                    for name in inputs.iter_mut() {
                        if downloads.contains(name.as_str()) {
                            *name = format!("{name}.{}", download::SELECT);
                        }
                        from_selection = name.ends_with(&format!(".{}", download::SELECT));
                    }
                    vec![Stage {
                        kind: Arc::new(
                            SplitStage::new(&stage.name, *p, from_selection).map_err(fail)?,
                        ),
                        name: stage.name,
                        line,
                        inputs,
                    }]
                }
                StageParams::Train(p) => {
                    let roles = input_roles(&stage.name, &inputs, &kind_of).map_err(fail)?;
                    vec![Stage {
                        kind: Arc::new(TrainStage::new(&stage.name, *p, &roles).map_err(fail)?),
                        name: stage.name,
                        line,
                        inputs,
                    }]
                }
                StageParams::Evaluate(p) => {
                    let roles = input_roles(&stage.name, &inputs, &kind_of).map_err(fail)?;
                    vec![Stage {
                        kind: Arc::new(EvaluateStage::new(&stage.name, *p, &roles).map_err(fail)?),
                        name: stage.name,
                        line,
                        inputs,
                    }]
                }
                StageParams::Report(p) => {
                    let all_evaluate = inputs
                        .iter()
                        .all(|i| kind_of.get(i).copied() == Some("evaluate"));
                    vec![Stage {
                        kind: Arc::new(
                            ReportStage::new(&stage.name, *p, all_evaluate).map_err(fail)?,
                        ),
                        name: stage.name,
                        line,
                        inputs,
                    }]
                }
                StageParams::Download(p) => download::graph_stages(&stage.name, *p)
                    .map_err(fail)?
                    .into_iter()
                    .map(|(name, inputs, kind)| Stage {
                        name,
                        line,
                        inputs,
                        kind,
                    })
                    .collect(),
            };
            expanded.push((stages.len()..stages.len() + built.len()).collect());
            stages.extend(built);
        }
        // Sub-stages read only each other and run just before their stage, so the raw order
        // with each stage replaced by its graph stages is still topological.
        let order: Vec<usize> = order
            .iter()
            .flat_map(|&raw| expanded[raw].iter().copied())
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
        let slurm = crate::remote::slurm::SlurmConfig::from_table(&executor).map_err(
            |(span, message)| match span {
                Some(span) => PipelineError::at(path, src, span.start, message),
                None => PipelineError::whole(path, message),
            },
        )?;
        Ok(Pipeline {
            path: path.to_path_buf(),
            name,
            cache_dir,
            results_dir,
            executor,
            slurm,
            stages,
            order,
        })
    }

    pub fn stage_index(&self, name: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.name == name)
    }

    /// The executor's slots: machine defaults, then `[executor]`, then flags.
    pub fn slots(&self, jobs: Option<u32>, overrides: Option<&str>) -> Result<Resources, String> {
        let mut slots = self.executor.apply(Resources::machine_defaults());
        if let Some(jobs) = jobs {
            slots.cpu = jobs;
        }
        if let Some(text) = overrides {
            slots = Resources::parse_overrides(text, slots)?;
        }
        Ok(slots)
    }
}
