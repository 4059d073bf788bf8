//! Reading a pipeline file: TOML with serde (`deny_unknown_fields`), in two passes so that
//! each stage table is checked against its own kind's fields while keeping exact positions.
//!
//! Pass 1 reads only each stage's `kind` (and the positions of stage tables). Pass 2 streams
//! the document again and deserialises every stage table straight into its kind's parameter
//! struct: no buffering, so type errors and unknown fields carry their line and column.

use super::PipelineError;
use crate::exec::slots::Resources;
use crate::stages::KINDS;
use crate::stages::command::CommandParams;
use crate::stages::download::DownloadParams;
use crate::stages::embed::EmbedParams;
use crate::stages::evaluate::EvaluateParams;
use crate::stages::render::RenderParams;
use crate::stages::report::ReportParams;
use crate::stages::split::SplitParams;
use crate::stages::train::TrainParams;
use indexmap::IndexMap;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use std::fmt;
use std::ops::Range;
use std::path::Path;
use toml::Spanned;

/// The `[pipeline]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineTable {
    pub name: Option<String>,
    pub cache: Option<String>,
    /// Where each run writes its human-readable results: `<results>/<name>/`.
    pub results: Option<String>,
}

/// The `[executor]` table: slots per resource (defaults from the machine), and where
/// workers come from (`kind = "slurm"` and its settings, see `remote::slurm`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorTable {
    pub cpu: Option<u32>,
    pub gpu: Option<u32>,
    pub blender: Option<u32>,
    pub net: Option<u32>,
    /// `local` (the default) or `slurm`.
    pub kind: Option<Spanned<String>>,
    pub partition: Option<String>,
    pub account: Option<String>,
    /// The worker jobs' time limit, in Slurm's format (`HH:MM:SS`, `D-HH`).
    pub time: Option<String>,
    pub cpus_per_worker: Option<Spanned<u32>>,
    pub max_workers: Option<Spanned<u32>>,
    /// Stage kind → the generic resources its workers ask for, e.g. `embed = "gpu:1"`.
    #[serde(default)]
    pub gres: IndexMap<String, Spanned<String>>,
    /// The URL workers reach the coordinator at (default: from the listening address).
    pub connect: Option<String>,
    /// Seconds a worker job waits without work before it exits.
    pub exit_when_idle: Option<Spanned<f64>>,
    /// Whether this machine also runs units (default: no, under Slurm: a login node).
    pub local: Option<bool>,
    /// A worker job script to use instead of the built-in `workers/slurm/worker.sbatch`.
    pub script: Option<String>,
}

impl ExecutorTable {
    pub fn apply(&self, base: Resources) -> Resources {
        Resources {
            cpu: self.cpu.unwrap_or(base.cpu),
            gpu: self.gpu.unwrap_or(base.gpu),
            blender: self.blender.unwrap_or(base.blender),
            net: self.net.unwrap_or(base.net),
        }
    }
}

/// A stage table, deserialised into its kind's parameters.
#[derive(Debug)]
pub enum StageParams {
    Command(Box<CommandParams>),
    Download(Box<DownloadParams>),
    Render(Box<RenderParams>),
    Embed(Box<EmbedParams>),
    Split(Box<SplitParams>),
    Train(Box<TrainParams>),
    Evaluate(Box<EvaluateParams>),
    Report(Box<ReportParams>),
}

impl StageParams {
    pub fn inputs(&self) -> &[Spanned<String>] {
        match self {
            StageParams::Command(p) => &p.inputs,
            StageParams::Download(_) => &[],
            StageParams::Render(p) => &p.inputs,
            StageParams::Embed(p) => &p.inputs,
            StageParams::Split(p) => &p.inputs,
            StageParams::Train(p) => &p.inputs,
            StageParams::Evaluate(p) => &p.inputs,
            StageParams::Report(p) => &p.inputs,
        }
    }

    /// The `kind` as written.
    pub fn kind_name(&self) -> &'static str {
        match self {
            StageParams::Command(_) => "command",
            StageParams::Download(_) => "download",
            StageParams::Render(_) => "render",
            StageParams::Embed(_) => "embed",
            StageParams::Split(_) => "split",
            StageParams::Train(_) => "train",
            StageParams::Evaluate(_) => "evaluate",
            StageParams::Report(_) => "report",
        }
    }

    /// The stages a stage of this kind adds before itself, named `NAME.SUFFIX` (a download's
    /// metadata and selection); other stages may read them as inputs.
    pub fn sub_stages(&self) -> &'static [&'static str] {
        match self {
            StageParams::Command(_) => &[],
            StageParams::Download(_) => crate::stages::download::SUB_STAGES,
            _ => &[],
        }
    }
}

#[derive(Debug)]
pub struct RawStage {
    pub name: String,
    /// Byte range of the stage's table header (`[stage.NAME]`).
    pub span: Range<usize>,
    pub params: StageParams,
}

#[derive(Debug)]
pub struct RawPipeline {
    pub pipeline: PipelineTable,
    pub executor: Option<ExecutorTable>,
    pub stages: Vec<RawStage>,
}

const TOP_FIELDS: &[&str] = &["pipeline", "executor", "stage"];

/// Pass 1: top-level names checked, each stage's `kind` read, everything else skipped.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Probe {
    pipeline: Option<de::IgnoredAny>,
    executor: Option<de::IgnoredAny>,
    #[serde(default)]
    stage: IndexMap<String, Spanned<StageProbe>>,
}

#[derive(Deserialize)]
struct StageProbe {
    kind: Option<Spanned<String>>,
}

pub fn parse(path: &Path, src: &str) -> Result<RawPipeline, PipelineError> {
    let probe: Probe = toml::from_str(src).map_err(|e| toml_error(path, src, e))?;
    if probe.stage.is_empty() {
        return Err(PipelineError::whole(
            path,
            "the pipeline declares no stages; add at least one `[stage.NAME]` table with a \
             `kind` (see the pipeline reference in README.md)",
        ));
    }
    let mut kinds = IndexMap::new();
    for (name, stage) in &probe.stage {
        check_stage_name(path, src, name, stage.span())?;
        let Some(kind) = &stage.get_ref().kind else {
            return Err(PipelineError::at(
                path,
                src,
                stage.span().start,
                format!(
                    "stage `{name}` has no `kind`; add `kind = \"...\"`, one of: {}",
                    KINDS.join(", ")
                ),
            ));
        };
        if !KINDS.contains(&kind.get_ref().as_str()) {
            let what = format!("unknown stage kind `{}`", kind.get_ref());
            let mut msg = format!("{what}; valid kinds: {}", KINDS.join(", "));
            if let Some(close) = closest(kind.get_ref(), KINDS) {
                msg.push_str(&format!(" (did you mean `{close}`?)"));
            }
            return Err(PipelineError::at(path, src, kind.span().start, msg));
        }
        kinds.insert(name.clone(), (kind.get_ref().clone(), stage.span()));
    }
    let de = toml::de::Deserializer::parse(src).map_err(|e| toml_error(path, src, e))?;
    FileSeed { kinds: &kinds }
        .deserialize(de)
        .map_err(|e| toml_error(path, src, e))
}

fn check_stage_name(
    path: &Path,
    src: &str,
    name: &str,
    span: Range<usize>,
) -> Result<(), PipelineError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(PipelineError::at(
            path,
            src,
            span.start,
            format!(
                "stage name `{name}` may hold only letters, digits, `_` and `-` (it names \
                 directories and environment variables)"
            ),
        ))
    }
}

/// The closest of `candidates` to `word`, if any is reasonably close.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), *c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 2).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Turns a TOML or serde error into `file:line:col: message`, adding the closest valid name
/// to "unknown field" errors.
fn toml_error(path: &Path, src: &str, e: toml::de::Error) -> PipelineError {
    let mut message = e.message().trim().to_string();
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((field, expected)) = rest.split_once('`')
    {
        let valid: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        if let Some(best) = valid
            .iter()
            .min_by_key(|v| strsim::damerau_levenshtein(field, v))
        {
            message.push_str(&format!("; the closest valid name is `{best}`"));
        }
    }
    match e.span() {
        Some(span) => PipelineError::at(path, src, span.start, message),
        None => PipelineError::whole(path, message),
    }
}

struct FileSeed<'a> {
    kinds: &'a IndexMap<String, (String, Range<usize>)>,
}

impl<'de> DeserializeSeed<'de> for FileSeed<'_> {
    type Value = RawPipeline;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RawPipeline, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FileSeed<'_> {
    type Value = RawPipeline;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a pipeline file with [pipeline], [executor] and [stage.NAME] tables")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawPipeline, A::Error> {
        let mut pipeline = None;
        let mut executor = None;
        let mut stages = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "pipeline" => pipeline = Some(map.next_value::<PipelineTable>()?),
                "executor" => executor = Some(map.next_value::<ExecutorTable>()?),
                "stage" => stages = Some(map.next_value_seed(StagesSeed { kinds: self.kinds })?),
                other => return Err(de::Error::unknown_field(other, TOP_FIELDS)),
            }
        }
        Ok(RawPipeline {
            pipeline: pipeline.unwrap_or_default(),
            executor,
            stages: stages.unwrap_or_default(),
        })
    }
}

struct StagesSeed<'a> {
    kinds: &'a IndexMap<String, (String, Range<usize>)>,
}

impl<'de> DeserializeSeed<'de> for StagesSeed<'_> {
    type Value = Vec<RawStage>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<RawStage>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for StagesSeed<'_> {
    type Value = Vec<RawStage>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("stage tables")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<RawStage>, A::Error> {
        let mut stages = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            let (kind, span) = self
                .kinds
                .get(&name)
                .ok_or_else(|| de::Error::custom(format!("stage `{name}` was not seen before")))?;
            let params = match kind.as_str() {
                "command" => StageParams::Command(map.next_value::<Box<CommandParams>>()?),
                "download" => StageParams::Download(map.next_value::<Box<DownloadParams>>()?),
                "render" => StageParams::Render(map.next_value::<Box<RenderParams>>()?),
                "embed" => StageParams::Embed(map.next_value::<Box<EmbedParams>>()?),
                "split" => StageParams::Split(map.next_value::<Box<SplitParams>>()?),
                "train" => StageParams::Train(map.next_value::<Box<TrainParams>>()?),
                "evaluate" => StageParams::Evaluate(map.next_value::<Box<EvaluateParams>>()?),
                "report" => StageParams::Report(map.next_value::<Box<ReportParams>>()?),
                other => return Err(de::Error::custom(format!("unknown stage kind `{other}`"))),
            };
            stages.push(RawStage {
                name,
                span: span.clone(),
                params,
            });
        }
        Ok(stages)
    }
}
