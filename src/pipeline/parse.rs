//! Reading a pipeline file: TOML with serde (`deny_unknown_fields`), in two passes so that
//! each stage table is checked against its own kind's fields while keeping exact positions.
//!
//! Pass 1 reads only each stage's `kind` (and the positions of stage tables). Pass 2 streams
//! the document again and deserialises every stage table straight into its kind's parameter
//! struct (found by name with `stages::read_table`): no buffering, so type errors and unknown fields carry their line and column.

use super::PipelineError;
use super::layers::Sources;
use crate::stages::{self, KINDS, StageTable};
use indexmap::IndexMap;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use std::fmt;
use std::ops::Range;
use toml::Spanned;
use toml::de::DeTable;

/// The `[pipeline]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineTable {
    pub name: Option<String>,
    pub cache: Option<String>,
    /// Where each run writes its human-readable results: `<results>/<name>/`.
    pub results: Option<String>,
}

pub use super::executor::ExecutorTable;

#[derive(Debug)]
pub struct RawStage {
    pub name: String,
    /// Byte range of the stage's table header (`[stage.NAME]`).
    pub span: Range<usize>,
    /// Its kind, as the registry names it.
    pub kind: &'static str,
    /// The table, read by its kind.
    pub params: Box<dyn StageTable>,
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

/// Reads the merged pipeline (the file with its overlays, overrides and sweeps applied):
/// errors name the file, overlay or override that wrote what is wrong.
pub fn parse(sources: &Sources, root: &Spanned<DeTable<'_>>) -> Result<RawPipeline, PipelineError> {
    let probe = Probe::deserialize(toml::de::Deserializer::from(skeleton(root)))
        .map_err(|e| toml_error(sources, e))?;
    if probe.stage.is_empty() {
        return Err(sources.whole(
            "the pipeline declares no stages; add at least one `[stage.NAME]` table with a \
             `kind` (see the pipeline reference in docs/pipelines.md)",
        ));
    }
    let mut kinds = IndexMap::new();
    for (name, stage) in &probe.stage {
        check_variant_name(sources, name, stage.span())?;
        let Some(kind) = &stage.get_ref().kind else {
            return Err(sources.at(
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
            return Err(sources.at(kind.span().start, msg));
        }
        kinds.insert(name.clone(), (kind.get_ref().clone(), stage.span()));
    }
    FileSeed { kinds: &kinds }
        .deserialize(toml::de::Deserializer::from(root.clone()))
        .map_err(|e| toml_error(sources, e))
}

/// What pass 1 reads: the top-level tables, and of each stage table only its `kind` (a copy
/// of the whole pipeline would copy every inline item list once more).
fn skeleton<'s>(root: &Spanned<DeTable<'s>>) -> Spanned<DeTable<'s>> {
    let mut top = DeTable::new();
    for (key, value) in root.get_ref() {
        let kept = match (key.get_ref().as_ref(), value.get_ref()) {
            ("stage", toml::de::DeValue::Table(stages)) => {
                let mut only_kinds = DeTable::new();
                for (name, stage) in stages {
                    let kept = match stage.get_ref() {
                        toml::de::DeValue::Table(t) => {
                            let mut kind = DeTable::new();
                            if let Some((k, v)) = t.get_key_value("kind") {
                                kind.insert(k.clone(), v.clone());
                            }
                            Spanned::new(stage.span(), toml::de::DeValue::Table(kind))
                        }
                        _ => stage.clone(),
                    };
                    only_kinds.insert(name.clone(), kept);
                }
                Spanned::new(value.span(), toml::de::DeValue::Table(only_kinds))
            }
            _ => value.clone(),
        };
        top.insert(key.clone(), kept);
    }
    Spanned::new(root.span(), top)
}

/// A stage's name as the file writes it: letters, digits, `_` and `-`.
pub fn check_stage_name(
    sources: &Sources,
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
        Err(sources.at(
            span.start,
            format!(
                "stage name `{name}` may hold only letters, digits, `_` and `-` (it names \
                 directories and environment variables)"
            ),
        ))
    }
}

pub use crate::diag::closest;

/// A stage's name after sweeps: as the file writes it, or a variant of it (`NAME[...]`,
/// which only a sweep makes: the file's own names were checked before).
fn check_variant_name(
    sources: &Sources,
    name: &str,
    span: Range<usize>,
) -> Result<(), PipelineError> {
    match name.split_once('[') {
        Some((stage, _)) if name.ends_with(']') => check_stage_name(sources, stage, span),
        _ => check_stage_name(sources, name, span),
    }
}

/// Turns a TOML or serde error into `file:line:col: message`, adding the closest valid name
/// to "unknown field" errors, and saying "an integer" where serde says `u32`.
fn toml_error(sources: &Sources, e: toml::de::Error) -> PipelineError {
    let mut message = plain_types(e.message().trim());
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
        Some(span) => sources.at(span.start, message),
        None => sources.whole(message),
    }
}

/// serde's `expected u32` as a person says it: `expected an integer (u32)`.
fn plain_types(message: &str) -> String {
    let mut out = message.to_string();
    for ty in [
        "u8", "u16", "u32", "u64", "usize", "i8", "i16", "i32", "i64", "isize",
    ] {
        let serde_says = format!("expected {ty}");
        if let Some(at) = out.find(&serde_says)
            && !out[at + serde_says.len()..].starts_with(|c: char| c.is_ascii_alphanumeric())
        {
            out.replace_range(
                at..at + serde_says.len(),
                &format!("expected an integer ({ty})"),
            );
            break;
        }
    }
    out
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
            // Each kind reads its own table (streamed, so errors keep their position).
            let (kind, params) = stages::read_table(kind, &mut map)?;
            stages.push(RawStage {
                name,
                span: span.clone(),
                kind,
                params,
            });
        }
        Ok(stages)
    }
}
