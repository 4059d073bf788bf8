//! Stage summaries (ARCHITECTURE.md, "Stage summaries"): a plan that decides "all cached"
//! per stage, without making a task.
//!
//! A stage's tasks, items and keys are a function of the pipeline's text, the stage's kind
//! and version, its shared parameters, the files its expansion reads, and what its input
//! stages made. The summary key is the digest of exactly those, with each input stage's
//! results standing in as the digest of all its tasks' keys and results. At the end of a
//! run, every stage whose tasks all ended cached, done or recorded as failed gets a summary
//! (`store::summaries`). A plan computes the summary keys top down (one hash each, plus the
//! shared parameters and file digests the stat cache answers) and, when every stage's key
//! is the one recorded, reports the recorded counts: a plan of a hundred million cached
//! tasks costs what one of three stages does.
//!
//! When any stage's key differs (a new ring, an edited items file, a changed parameter),
//! the plan keys and looks up every task as before, and says which and why; unless only
//! views were added, which the view columns decide (`exec/columns.rs`, whose summaries a
//! run's end records here too).

use super::columns::{self, ColumnResults};
use super::graph::expansion_file_digests;
use super::kind::ParamCtx;
use super::plan::{PlanReport, StagePlan};
use super::resolve::Engine;
use super::stage_results::{StageResults, settled};
use super::workflow::{Stage, Workflow};
use crate::store::Store;
use crate::task::{Digest, KEY_SCHEMA, slice_digest};
use anyhow::Result;
use indexmap::IndexMap;
use std::sync::Arc;

/// The digest of everything a stage's items and keys are made from, given the digests of
/// its expansion's files and its inputs' results (one per input, in the order of
/// `stage.inputs`).
fn summary_key(
    source: &Digest,
    stage: &Stage,
    shared: &Digest,
    files: &[Digest],
    inputs: &[Digest],
) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(b"mvc stage summary 1\0");
    h.update(&KEY_SCHEMA.to_le_bytes());
    // The whole text: each stage's table, and every setting a kind reads from elsewhere in
    // it. Any edit at all makes the next plan a full one, never a stale one.
    h.update(&source.0);
    for text in [stage.name.as_str(), stage.kind.kind()] {
        h.update(&(text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    }
    h.update(&stage.kind.version().to_le_bytes());
    h.update(&shared.0);
    for file in files {
        h.update(&file.0);
    }
    for (name, results) in stage.inputs.iter().zip(inputs) {
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(&results.0);
    }
    Digest(*h.finalize().as_bytes())
}

/// What [`plan_report`] does to find the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    /// The stage summaries when they all match; else every task.
    Summaries,
    /// Every task keyed and looked up, whatever the summaries say (`mvc plan --full`).
    Full,
}

/// The plan of a pipeline: from its stage summaries when every one matches (no engine, no
/// task made), else from every task keyed and looked up (with the engine that did it).
pub fn plan_report(
    pipeline: &Workflow,
    store: Arc<Store>,
    retry_failed: bool,
    depth: Depth,
) -> Result<(Option<Engine>, PlanReport)> {
    if depth == Depth::Summaries {
        if let Some(report) = plan(pipeline, &store, retry_failed)? {
            return Ok((None, report));
        }
        if let Some(report) = columns::plan(pipeline, &store, retry_failed)? {
            return Ok((None, report));
        }
    }
    // Opened here when its files changed since it was stamped, so that a damaged index is
    // its own error. Otherwise it is opened only if the plan memos and the presence filter
    // (copied and saved with the stamp) do not answer a lookup.
    if !store.main_unchanged() {
        store.open_main()?;
    }
    let (engine, report) = super::plan::plan(pipeline, store, retry_failed)?;
    Ok((Some(engine), report))
}

/// The plan of a pipeline whose every stage's summary key is the one its last run recorded;
/// `None` when one is not (then every task must be keyed and looked up).
pub fn plan(pipeline: &Workflow, store: &Store, retry_failed: bool) -> Result<Option<PlanReport>> {
    // The summaries speak for the main index as its last user left it. When its files have
    // changed since (another process died with it open, or damage), it is opened first: a
    // damaged one is then an error, as it would be for the full plan.
    if !store.main_unchanged() {
        tracing::debug!("the main index changed since it was last closed: opening it");
        store.open_main()?;
    }
    let source = Digest::of(pipeline.source.as_bytes());
    let mut results: Vec<Option<Digest>> = vec![None; pipeline.stages.len()];
    let mut stages = IndexMap::new();
    for &s in &pipeline.order {
        let stage = &pipeline.stages[s];
        let Some(summary) = store.stage_summary(&stage.name)? else {
            return Ok(miss(stage, "no summary recorded"));
        };
        if retry_failed && summary.failed > 0 {
            return Ok(miss(stage, "failures to retry"));
        }
        // A stage whose parameters cannot be known now (a model not downloaded yet) is
        // planned the full way, which says why.
        let Ok(shared) = stage.kind.shared_params(&ParamCtx { store }) else {
            return Ok(miss(stage, "shared parameters not known"));
        };
        let inputs: Option<Vec<Digest>> = stage
            .inputs
            .iter()
            .map(|name| results[pipeline.stage_index(name)?])
            .collect();
        let Some(inputs) = inputs else {
            return Ok(miss(stage, "an input has no summary"));
        };
        // A file that cannot be read now: the full plan says why.
        let Some(files) = expansion_file_digests(stage.kind.as_ref(), store) else {
            return Ok(miss(stage, "a file its items come from cannot be read"));
        };
        let key = summary_key(&source, stage, &slice_digest(&shared), &files, &inputs);
        if key != summary.key {
            return Ok(miss(stage, "its summary key changed"));
        }
        // As a memo hit does for its task: cached only while its blobs are still there.
        if !store.summary_blobs_present(&summary) {
            return Ok(miss(stage, "an output blob is missing"));
        }
        results[s] = Some(summary.results);
        stages.insert(
            stage.name.clone(),
            StagePlan {
                total: summary.tasks,
                cached: summary.cached,
                to_run: 0,
                failed_skipped: summary.failed,
                reasons: IndexMap::new(),
                not_expanded: None,
                new_views: Vec::new(),
            },
        );
    }
    Ok(Some(PlanReport {
        stages,
        variants: pipeline.variants.clone(),
        from_summaries: true,
        from_columns: false,
    }))
}

/// Says (at `-vv`) why the summaries did not decide the plan.
fn miss(stage: &Stage, why: &str) -> Option<PlanReport> {
    tracing::debug!("planning every task: stage `{}`: {why}", stage.name);
    None
}

/// Records the summary of every stage whose tasks all ended as the next plan will find
/// them, and whose inputs have summaries too, and of every view column of a stage made of
/// them whose tasks did (`exec/columns.rs`). Called where a run saves its plan memos.
pub fn record(pipeline: &Workflow, engine: &Engine) -> Result<()> {
    let source = Digest::of(pipeline.source.as_bytes());
    let g = &engine.graph;
    let store = &engine.store;
    let mut results: Vec<Option<Digest>> = vec![None; g.stages.len()];
    let mut column_results: Vec<Option<ColumnResults>> = vec![None; g.stages.len()];
    let mut recorded = Vec::new();
    for &s in &g.order {
        let node = &g.stages[s];
        let stage = &pipeline.stages[s];
        let skip = |why: &str| tracing::debug!("no summary for stage `{}`: {why}", node.name);
        if node.deferred.is_some() {
            skip("not expanded");
            continue;
        }
        let Some(files) = &node.expansion_files else {
            skip("a file its items come from could not be read");
            continue;
        };
        let inputs: Option<Vec<Digest>> = node.inputs.iter().map(|e| results[e.stage]).collect();
        let mut columns = columns::ColumnKeys::of(stage, node, files, &results, &column_results);
        if inputs.is_none() && columns.is_none() {
            skip("an input has none");
            continue;
        }
        // One pass over the tasks for the stage and its columns.
        let mut whole = inputs.as_ref().map(|_| StageResults::new());
        for t in node.tasks() {
            let settled = settled(engine, s, t)?;
            if let Some(whole) = whole.as_mut() {
                whole.add(engine, t, settled.as_ref());
            }
            if let Some(c) = columns.as_mut()
                && let Some(found) = c.results_of(g.item(t))
            {
                found.add(engine, t, settled.as_ref());
            }
        }
        if let Some(c) = columns {
            let (found, summaries) = c.summaries(&stage.name);
            column_results[s] = Some(found);
            recorded.extend(summaries);
        }
        let (Some(inputs), Some(whole)) = (inputs, whole) else {
            skip("an input has none");
            continue;
        };
        let key = summary_key(&source, stage, &node.shared_digest, files, &inputs);
        let Some((summary, blob_list)) = whole.summary(key) else {
            skip("a task is not settled (to run, running, or failed unrecorded)");
            continue;
        };
        results[s] = Some(summary.results);
        recorded.push((stage.name.clone(), summary, blob_list));
    }
    // Only what changed is written again.
    let mut changed = Vec::new();
    for (name, summary, blob_list) in recorded {
        if store.stage_summary(&name)?.as_ref() != Some(&summary)
            || summary
                .blob_list
                .is_some_and(|list| store.blobs().size(&list).is_none())
        {
            changed.push((name, summary, blob_list));
        }
    }
    store.record_stage_summaries(&changed)?;
    Ok(())
}
