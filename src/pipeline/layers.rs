//! The layers of a pipeline: the file, then each `--with` overlay in order, then each `--set`
//! override, merged into one TOML table before any kind reads it. mvc never rewrites the
//! user's file: the merged table is what runs, and its text is what a run records.
//!
//! Every source's spans are moved into a range of its own in one offset space
//! ([`Sources`]), so that an error found later, by a kind reading its table or by the graph
//! check, names the right file, line and column, or the override it came from.

use super::PipelineError;
use crate::diag::closest;
use std::borrow::Cow;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// What a command line gives besides the pipeline file: overlay files (`--with FILE`) and
/// overrides (`--set STAGE.KEY=VALUE`), each applied in the order given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layers {
    pub with: Vec<PathBuf>,
    pub set: Vec<String>,
}

impl Layers {
    pub fn is_empty(&self) -> bool {
        self.with.is_empty() && self.set.is_empty()
    }
}

/// Where a piece of the merged pipeline was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The pipeline file itself.
    File,
    /// An overlay given with `--with`.
    Overlay(PathBuf),
    /// One `--set` argument, as given.
    Set(String),
}

impl Origin {
    /// How `mvc plan` names it beside a changed parameter: `--set`, `--with FILE`.
    pub fn label(&self) -> Option<String> {
        match self {
            Origin::File => None,
            Origin::Overlay(path) => Some(format!("--with {}", path.display())),
            Origin::Set(_) => Some("--set".to_string()),
        }
    }
}

#[derive(Debug)]
struct Source {
    origin: Origin,
    text: String,
    /// Where its offsets start in the shared offset space.
    start: usize,
}

/// The texts of every layer, each owning a range of one offset space.
#[derive(Debug)]
pub struct Sources {
    /// The pipeline file: errors about the whole pipeline name it.
    file: PathBuf,
    list: Vec<Source>,
}

impl Sources {
    /// The pipeline file's text, then every overlay's (read here) and every override's.
    pub fn read(file: &Path, text: &str, layers: &Layers) -> Result<Sources, PipelineError> {
        let mut sources = Sources {
            file: file.to_path_buf(),
            list: Vec::new(),
        };
        sources.add(Origin::File, text.to_string());
        for path in &layers.with {
            let text = std::fs::read_to_string(path).map_err(|e| {
                PipelineError::whole(path, format!("cannot read the overlay file (--with): {e}"))
            })?;
            sources.add(Origin::Overlay(path.clone()), text);
        }
        for arg in &layers.set {
            sources.add(Origin::Set(arg.clone()), arg.clone());
        }
        Ok(sources)
    }

    fn add(&mut self, origin: Origin, text: String) {
        // One offset of space between sources: an offset at the end of one text (an error at
        // its end) is still inside it.
        let start = self.list.last().map_or(0, |s| s.start + s.text.len() + 1);
        self.list.push(Source {
            origin,
            text,
            start,
        });
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The pipeline file's own text.
    pub fn file_text(&self) -> &str {
        &self.list[0].text
    }

    fn source_at(&self, offset: usize) -> &Source {
        let i = self.list.partition_point(|s| s.start <= offset);
        &self.list[i.saturating_sub(1)]
    }

    /// Where an offset was written.
    pub fn origin_at(&self, offset: usize) -> &Origin {
        &self.source_at(offset).origin
    }

    /// An error at an offset: `FILE:LINE:COL: message` in the file or overlay that wrote it,
    /// or `--set ARG: message` for an override.
    pub fn at(&self, offset: usize, message: impl Into<String>) -> PipelineError {
        let source = self.source_at(offset);
        let local = offset - source.start;
        match &source.origin {
            Origin::File => PipelineError::at(&self.file, &source.text, local, message),
            Origin::Overlay(path) => PipelineError::at(path, &source.text, local, message),
            Origin::Set(arg) => PipelineError::set(&self.file, arg, message),
        }
    }

    /// An error about the whole pipeline.
    pub fn whole(&self, message: impl Into<String>) -> PipelineError {
        PipelineError::whole(&self.file, message)
    }

    /// `line N` of the file, or `FILE line N` of an overlay, or the override: where a stage
    /// was written, for messages that name several.
    pub fn place(&self, offset: usize) -> String {
        let source = self.source_at(offset);
        let line = super::line_col(&source.text, offset - source.start).0;
        match &source.origin {
            Origin::File => format!("line {line}"),
            Origin::Overlay(path) => format!("{} line {line}", path.display()),
            Origin::Set(arg) => format!("--set {arg}"),
        }
    }

    /// The line an offset is on in its own text (1 for an override).
    pub fn line_of(&self, offset: usize) -> usize {
        let source = self.source_at(offset);
        super::line_col(&source.text, offset - source.start).0
    }

    /// Every layer merged: the file, each overlay, each override.
    pub fn merge(&self) -> Result<Merged<'_>, PipelineError> {
        let mut layers = self.list.iter();
        let file = layers.next().expect("the file is always the first source");
        let mut root = self.parse_document(file)?;
        let mut origins = Vec::new();
        for source in layers {
            match &source.origin {
                Origin::File => unreachable!("one file"),
                Origin::Overlay(_) => {
                    let overlay = self.parse_document(source)?;
                    note_stage_keys(&overlay, &source.origin, &mut origins);
                    merge_tables(root.get_mut(), overlay.into_inner());
                }
                Origin::Set(arg) => {
                    let (stage, key) = self.apply_set(root.get_mut(), arg, source.start)?;
                    if let Some(stage) = stage {
                        origins.push((stage, key, source.origin.clone()));
                    }
                }
            }
        }
        Ok(Merged { root, origins })
    }

    /// A file's document, its spans moved to its range.
    fn parse_document<'s>(
        &self,
        source: &'s Source,
    ) -> Result<Spanned<DeTable<'s>>, PipelineError> {
        let doc = DeTable::parse(&source.text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start) + source.start;
            self.at(at, e.message().trim().to_string())
        })?;
        Ok(shift_table(doc, source.start))
    }

    /// Applies one `--set STAGE.KEY=VALUE`; returns the stage and key it set (no stage for
    /// `pipeline.KEY` and `executor.KEY`).
    fn apply_set<'s>(
        &self,
        root: &mut DeTable<'s>,
        arg: &'s str,
        start: usize,
    ) -> Result<(Option<String>, String), PipelineError> {
        let fail = |message: String| PipelineError::set(&self.file, arg, message);
        let Some((path, value_text)) = arg.split_once('=') else {
            return Err(fail(
                "write STAGE.KEY=VALUE, e.g. --set train_object.steps=2000".to_string(),
            ));
        };
        let segments: Vec<&str> = path.trim().split('.').collect();
        if segments.len() < 2 || segments.iter().any(|s| s.trim().is_empty()) {
            return Err(fail(format!(
                "`{path}` names no stage parameter; write STAGE.KEY=VALUE, e.g. --set \
                 train_object.steps=2000"
            )));
        }
        let (first, keys) = (segments[0].trim(), &segments[1..]);
        let stages: Vec<String> = root
            .get("stage")
            .and_then(|s| table_of(s.get_ref()))
            .map(|t| t.keys().map(|k| k.get_ref().to_string()).collect())
            .unwrap_or_default();
        let is_stage = stages.iter().any(|s| s == first);
        if !is_stage && !matches!(first, "pipeline" | "executor") {
            let names: Vec<&str> = stages.iter().map(String::as_str).collect();
            let mut message = format!("there is no stage `{first}`");
            if let Some(close) = closest(first, &names) {
                message.push_str(&format!("; the closest is `{close}`"));
            }
            message.push_str(&format!(" (stages: {})", names.join(", ")));
            return Err(fail(message));
        }
        if is_stage && matches!(keys[0].trim(), "kind" | "inputs") {
            return Err(fail(format!(
                "a stage's `{}` cannot be changed with --set: write an overlay file with the \
                 stage's table as it should be and give it with --with FILE (docs/variants.md)",
                keys[0].trim()
            )));
        }
        let value_start = start + path.len() + 1;
        let value = set_value(value_text, value_start).map_err(fail)?;
        // The key's span covers the last segment of the path, so that "unknown field" names
        // the override.
        let last = keys[keys.len() - 1].trim();
        let last_start = start + path.rfind(last).unwrap_or(0);
        let mut table: &mut DeTable<'s> = root;
        let mut walk: Vec<&str> = if is_stage {
            vec!["stage", first]
        } else {
            vec![first]
        };
        walk.extend(keys[..keys.len() - 1].iter().map(|k| k.trim()));
        for (depth, name) in walk.iter().enumerate() {
            let entry = table
                .entry(Spanned::new(
                    start..start + path.len(),
                    Cow::Borrowed(*name),
                ))
                .or_insert_with(|| {
                    Spanned::new(start..start + path.len(), DeValue::Table(DeTable::new()))
                });
            table = match entry.get_mut() {
                DeValue::Table(t) => t,
                _ => {
                    return Err(fail(format!(
                        "`{}` is not a table, so it has no `{}`",
                        walk[..=depth].join("."),
                        walk.get(depth + 1).copied().unwrap_or(last)
                    )));
                }
            };
        }
        let key = Spanned::new(last_start..last_start + last.len(), Cow::Borrowed(last));
        table.insert(key, value);
        let key = keys.iter().map(|k| k.trim()).collect::<Vec<_>>().join(".");
        Ok((is_stage.then(|| first.to_string()), key))
    }
}

/// The merged pipeline: one table, and which stage keys the overlays and overrides set.
pub struct Merged<'s> {
    pub root: Spanned<DeTable<'s>>,
    /// `(stage, key, origin)` for every stage key an overlay or override set, in order.
    pub origins: Vec<(String, String, Origin)>,
}

impl Merged<'_> {
    /// The merged pipeline as TOML text: what a run records and a remote worker reads.
    pub fn to_text(&self) -> Result<String, String> {
        let table: toml::Table =
            serde::Deserialize::deserialize(toml::de::Deserializer::from(self.root.clone()))
                .map_err(|e| e.message().to_string())?;
        toml::to_string(&table).map_err(|e| e.to_string())
    }
}

/// The value of an override: TOML (`2000`, `[20, 50]`, `"cpu"`, `{ sweep = [1, 2] }`), or a
/// bare word taken as a string (`cpu`), as a shell user writes it.
fn set_value(text: &str, start: usize) -> Result<Spanned<DeValue<'_>>, String> {
    let trimmed = text.trim();
    let lead = text.len() - text.trim_start().len();
    if trimmed.is_empty() {
        return Err(
            "no value after `=`; give a TOML value, e.g. 2000, 0.5, \"cpu\" or [20, 50]".into(),
        );
    }
    match DeValue::parse(trimmed) {
        Ok(value) => Ok(shift_value(value, start + lead)),
        Err(_) if is_bare_word(trimmed) => Ok(Spanned::new(
            start + lead..start + lead + trimmed.len(),
            DeValue::String(Cow::Borrowed(trimmed)),
        )),
        Err(e) => Err(format!(
            "`{trimmed}` is not a TOML value ({}); write numbers as 2000 or 0.5, lists as \
             [20, 50], and strings in quotes: '\"text\"'",
            e.message().trim()
        )),
    }
}

/// A word a shell user means as a string: letters, digits and `_-./:+@`.
fn is_bare_word(text: &str) -> bool {
    text.chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-./:+@".contains(c))
}

fn table_of<'a, 's>(value: &'a DeValue<'s>) -> Option<&'a DeTable<'s>> {
    match value {
        DeValue::Table(t) => Some(t),
        _ => None,
    }
}

/// Whether a value is a sweep (`{ sweep = [...] }` or `{ zip = [...] }`): an overlay's
/// sweep replaces a table rather than merging into it.
pub fn is_sweep(value: &DeValue) -> bool {
    table_of(value)
        .is_some_and(|t| t.len() == 1 && (t.contains_key("sweep") || t.contains_key("zip")))
}

/// Overlay semantics: tables merge, values replace, and a key only the overlay has is added.
fn merge_tables<'s>(into: &mut DeTable<'s>, from: DeTable<'s>) {
    for (key, value) in from {
        match into.get_mut(key.get_ref().as_ref()) {
            Some(existing)
                if table_of(existing.get_ref()).is_some()
                    && table_of(value.get_ref()).is_some()
                    && !is_sweep(existing.get_ref())
                    && !is_sweep(value.get_ref()) =>
            {
                if let (DeValue::Table(into), DeValue::Table(from)) =
                    (existing.get_mut(), value.into_inner())
                {
                    merge_tables(into, from);
                }
            }
            Some(existing) => *existing = value,
            None => {
                into.insert(key, value);
            }
        }
    }
}

/// The stage keys an overlay sets, for `mvc plan` to name it as a cause.
fn note_stage_keys(
    overlay: &Spanned<DeTable>,
    origin: &Origin,
    out: &mut Vec<(String, String, Origin)>,
) {
    let Some(stages) = overlay
        .get_ref()
        .get("stage")
        .and_then(|s| table_of(s.get_ref()))
    else {
        return;
    };
    for (stage, table) in stages {
        if let Some(table) = table_of(table.get_ref()) {
            for key in table.keys() {
                out.push((
                    stage.get_ref().to_string(),
                    key.get_ref().to_string(),
                    origin.clone(),
                ));
            }
        }
    }
}

fn shift(span: Range<usize>, by: usize) -> Range<usize> {
    span.start + by..span.end + by
}

fn shift_table(table: Spanned<DeTable<'_>>, by: usize) -> Spanned<DeTable<'_>> {
    let span = shift(table.span(), by);
    Spanned::new(span, shift_entries(table.into_inner(), by))
}

fn shift_entries(table: DeTable<'_>, by: usize) -> DeTable<'_> {
    let mut out = DeTable::new();
    for (key, value) in table {
        let key_span = shift(key.span(), by);
        out.insert(
            Spanned::new(key_span, key.into_inner()),
            shift_value(value, by),
        );
    }
    out
}

fn shift_value(value: Spanned<DeValue<'_>>, by: usize) -> Spanned<DeValue<'_>> {
    let span = shift(value.span(), by);
    let value = match value.into_inner() {
        DeValue::Table(t) => DeValue::Table(shift_entries(t, by)),
        DeValue::Array(a) => DeValue::Array(a.into_iter().map(|v| shift_value(v, by)).collect()),
        scalar => scalar,
    };
    Spanned::new(span, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(file: &str, overlays: &[&str], set: &[&str]) -> Result<String, PipelineError> {
        let dir = tempfile::tempdir().unwrap();
        let mut with = Vec::new();
        for (i, text) in overlays.iter().enumerate() {
            let path = dir.path().join(format!("o{i}.toml"));
            std::fs::write(&path, text).unwrap();
            with.push(path);
        }
        let layers = Layers {
            with,
            set: set.iter().map(|s| s.to_string()).collect(),
        };
        let sources = Sources::read(Path::new("p.toml"), file, &layers)?;
        let merged = sources.merge()?;
        Ok(merged.to_text().unwrap())
    }

    const FILE: &str = "[stage.a]\nkind = \"command\"\ncmd = \"x\"\nopts = { x = 1, y = 2 }\n";

    #[test]
    fn overlays_merge_tables_and_replace_values_then_sets_win() {
        let text = merged(
            FILE,
            &["[stage.a]\ncmd = \"y\"\nopts = { y = 3 }\n[stage.b]\nkind = \"report\"\n"],
            &["a.cmd=\"z\"", "a.opts.x=5"],
        )
        .unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        let a = &table["stage"]["a"];
        assert_eq!(a["cmd"].as_str(), Some("z"));
        assert_eq!(a["opts"]["x"].as_integer(), Some(5));
        assert_eq!(a["opts"]["y"].as_integer(), Some(3));
        assert_eq!(table["stage"]["b"]["kind"].as_str(), Some("report"));
    }

    #[test]
    fn a_sweep_replaces_a_table_rather_than_merging_into_it() {
        let text = merged(
            FILE,
            &["[stage.a]\nopts = { sweep = [{ x = 1 }, { x = 2 }] }\n"],
            &[],
        )
        .unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        let opts = table["stage"]["a"]["opts"].as_table().unwrap();
        assert_eq!(opts.keys().collect::<Vec<_>>(), ["sweep"]);
    }

    #[test]
    fn a_bare_word_is_a_string_and_a_broken_value_is_named() {
        let text = merged(FILE, &[], &["a.cmd=hello"]).unwrap();
        assert!(text.contains("cmd = \"hello\""), "{text}");
        let err = merged(FILE, &[], &["a.cmd=[1,"]).unwrap_err().to_string();
        assert!(
            err.starts_with("--set a.cmd=[1,: `[1,` is not a TOML value"),
            "{err}"
        );
    }

    #[test]
    fn overrides_of_unknown_stages_kind_and_inputs_are_refused_at_the_override() {
        let err = merged(FILE, &[], &["b.cmd=1"]).unwrap_err().to_string();
        assert!(
            err.contains("--set b.cmd=1: there is no stage `b`; the closest is `a`"),
            "{err}"
        );
        let err = merged(FILE, &[], &["a.kind=report"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("use") || err.contains("--with FILE"), "{err}");
        let err = merged(FILE, &[], &["a.inputs=[]"]).unwrap_err().to_string();
        assert!(
            err.contains("`inputs` cannot be changed with --set"),
            "{err}"
        );
        let err = merged(FILE, &[], &["steps"]).unwrap_err().to_string();
        assert!(err.contains("write STAGE.KEY=VALUE"), "{err}");
    }

    #[test]
    fn an_overlay_that_does_not_parse_names_its_line_and_column() {
        let err = merged(FILE, &["[stage.a]\ncmd = \n"], &[]).unwrap_err();
        assert!(err.file.ends_with("o0.toml"), "{err}");
        assert_eq!(err.position.map(|p| p.0), Some(2), "{err}");
    }
}
