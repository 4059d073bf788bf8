//! `mvc export FILE STAGE DIR`: a stage's outputs as ordinary files, `DIR/<item>/<output>`
//! (a kind may choose another folder per item: a render view goes under its object), plus
//! `DIR/index.json` listing items, keys and files.

use crate::exec::ids::TaskId;
use crate::exec::resolve::{Engine, State};
use crate::exec::workdir::safe_relative;
use crate::stages::ExportedItem;
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Default, Serialize)]
pub struct ExportReport {
    pub items: u64,
    pub files: u64,
    pub bytes: u64,
    /// Items skipped because they failed.
    pub failed: Vec<String>,
}

#[derive(Serialize)]
struct IndexEntry<'a> {
    item: &'a str,
    key: String,
    files: Vec<&'a str>,
}

pub fn export(
    engine: &Engine,
    pipeline_file: &Path,
    stage: &str,
    dir: &Path,
) -> Result<ExportReport> {
    let g = &engine.graph;
    let node = exportable_stage(engine, pipeline_file, stage)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut report = ExportReport::default();
    // The cached results, read once; failed items are skipped and listed.
    let mut results = Vec::new();
    for t in node.tasks() {
        let item = g.item(t);
        if engine.state[t] != State::Cached {
            report.failed.push(item.to_string());
            continue;
        }
        let key = engine.keys[t];
        let result = engine
            .stored_result(t, &key)?
            .with_context(|| format!("the result of {stage}/{item} vanished from the index"))?;
        results.push((t, item, key, result));
    }
    report.items = results.len() as u64;
    if node.kind.exports_combined() {
        // One file for the whole stage, written by the kind from every item's outputs.
        let params: Vec<_> = results.iter().map(|(t, ..)| g.item_params(*t)).collect();
        let items: Vec<ExportedItem> = results
            .iter()
            .zip(&params)
            .map(|((_, item, _, result), params)| ExportedItem {
                item,
                params,
                outputs: &result.outputs,
            })
            .collect();
        (report.files, report.bytes) = node
            .kind
            .export_combined(&engine.store, &items, dir)
            .with_context(|| format!("exporting stage `{stage}`"))?;
        return Ok(report);
    }
    for (_, item, key, result) in &results {
        write_item(engine, node, item, key, &result.outputs, dir, &mut report)?;
    }
    let entries: Vec<IndexEntry> = results
        .iter()
        .map(|(_, item, key, result)| IndexEntry {
            item,
            key: key.to_hex(),
            files: result.outputs.iter().map(|o| o.name.as_str()).collect(),
        })
        .collect();
    std::fs::write(dir.join("index.json"), serde_json::to_vec_pretty(&entries)?)
        .with_context(|| format!("writing {}", dir.join("index.json").display()))?;
    let exported: Vec<&str> = results.iter().map(|(_, item, ..)| *item).collect();
    node.kind
        .export_finish(dir, &exported)
        .with_context(|| format!("finishing the export of {stage}"))?;
    Ok(report)
}

/// The stage to export, once every one of its tasks has a result or a failure cached.
fn exportable_stage<'e>(
    engine: &'e Engine,
    pipeline_file: &Path,
    stage: &str,
) -> Result<&'e crate::exec::graph::StageNode> {
    let g = &engine.graph;
    let node = g.stage_named(stage)?;
    if let Some(why) = &node.deferred {
        bail!(
            "stage `{stage}` has no items yet ({why}); run the pipeline first (`mvc run {}`)",
            pipeline_file.display()
        );
    }
    let missing: Vec<TaskId> = node
        .tasks()
        .filter(|&t| matches!(engine.state[t], State::ToRun | State::Pending))
        .collect();
    if let Some(&first) = missing.first() {
        bail!(
            "stage `{stage}`: {} of {} tasks are not in the cache (e.g. {}: {}); run the pipeline \
             first (`mvc run {}`)",
            missing.len(),
            node.len(),
            g.task_label(first),
            engine.cause(first).unwrap_or_default(),
            pipeline_file.display()
        );
    }
    Ok(node)
}

/// Writes one item's outputs under its folder of `dir`. Every exported file lies under
/// `dir`: an item whose folder would not be a plain name (a result recorded before ids
/// were checked) is left out. A blob found missing or damaged is forgotten, so the next
/// run recomputes it.
fn write_item(
    engine: &Engine,
    node: &crate::exec::graph::StageNode,
    item: &str,
    key: &crate::task::TaskKey,
    outputs: &[crate::store::records::Output],
    dir: &Path,
    report: &mut ExportReport,
) -> Result<()> {
    let stage = &node.name;
    if let Err(why) = crate::task::validate_item_id(&node.kind.export_dir(item)) {
        tracing::warn!("{stage}/{item}: not exported: {why}");
        return Ok(());
    }
    for output in outputs {
        let rel = safe_relative(&output.name)
            .with_context(|| format!("{stage}/{item}: output name `{}` is unsafe", output.name))?;
        let dest = dir.join(node.kind.export_dir(item)).join(rel);
        if let Err(e) = engine.store.materialize_output(output, &dest) {
            if e.is_missing_or_corrupt() {
                engine.store.forget_result(key, stage, item)?;
                engine.store.flush()?;
            }
            bail!(
                "{stage}/{item}: output `{}`: {e}; run the pipeline again to recompute it",
                output.name
            );
        }
        report.files += 1;
        report.bytes += output.size;
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    pub file: std::path::PathBuf,
    pub stage: String,
    pub dir: std::path::PathBuf,
    #[command(flatten)]
    pub variants: super::VariantArgs,
}

/// `mvc export`: plans the pipeline (so only cached results are exported) and writes them.
pub fn run(args: ExportArgs, global: &super::Global) -> Result<super::Output> {
    let pipeline = super::load(&args.file, &args.variants)?;
    let store = super::open_store(&global.cache_dir(Some(&pipeline)), global)?;
    let (engine, _) =
        crate::exec::plan::plan(&pipeline.workflow, std::sync::Arc::new(store), false)?;
    let report = export(&engine, &args.file, &args.stage, &args.dir)?;
    let mut text = format!(
        "exported {} item(s), {} file(s) ({}) of stage `{}` to {}\n",
        report.items,
        report.files,
        crate::text::human_bytes(report.bytes),
        args.stage,
        args.dir.display()
    );
    if !report.failed.is_empty() {
        let shown: Vec<&str> = report.failed.iter().take(10).map(String::as_str).collect();
        text.push_str(&format!(
            "skipped {} failed item(s): {}\n",
            report.failed.len(),
            shown.join(", ")
        ));
    }
    #[derive(Serialize)]
    struct Json<'a> {
        stage: &'a str,
        dir: String,
        #[serde(flatten)]
        report: &'a ExportReport,
    }
    let json = Json {
        stage: &args.stage,
        dir: args.dir.display().to_string(),
        report: &report,
    };
    Ok(super::Output::new(text, &json))
}
