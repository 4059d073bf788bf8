//! `mvc gc`: keep what the last N runs of each pipeline reached, delete the rest.

use super::Store;
use super::index::Tree;
use super::memo::{KeySet, MemoValue, StageMemo};
use super::object_stage::{Columns, ObjectStage};
use super::records::{Failure, RunOutcome, RunRecord, TaskResult, decode};
use crate::task::{Digest, KeyRecord, TaskKey};
use anyhow::{Context, Result, bail};
use indexmap::IndexMap;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StageBytes {
    pub tasks: u64,
    /// Bytes of the tasks' outputs (blobs and inline).
    pub bytes: u64,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub runs_kept: u64,
    pub runs_dropped: u64,
    pub kept: IndexMap<String, StageBytes>,
    pub deleted: IndexMap<String, StageBytes>,
    pub blobs_deleted: u64,
    pub blob_bytes_freed: u64,
    pub failures_deleted: u64,
    pub records_deleted: u64,
    pub temp_files_removed: u64,
    /// Partial downloads left by interrupted runs (`partial/`), and their bytes.
    pub partial_files_removed: u64,
    pub partial_bytes_freed: u64,
}

pub fn gc(
    store: &Store,
    keep_runs: usize,
    dry_run: bool,
    extra_roots: &[Digest],
) -> Result<GcReport> {
    let mut report = GcReport {
        dry_run,
        ..GcReport::default()
    };
    let (kept_runs, dropped_runs) = runs_to_keep(store, keep_runs)?;
    report.runs_kept = kept_runs.len() as u64;
    report.runs_dropped = dropped_runs.len() as u64;
    let (keep, mut keep_blobs) = reached(store, &kept_runs)?;
    // Blobs the caller keeps whatever the runs reached (models downloaded from the hub, while
    // their manifest in `models/` names them): gc is told, it does not ask who uses what.
    keep_blobs.extend(extra_roots.iter().copied());
    if kept_runs.is_empty()
        && (store.index().len(Tree::Tasks) > 0 || store.index().len(Tree::Objects) > 0)
    {
        bail!(
            "the cache holds results but no run records, so gc cannot tell what to keep; run \
             a pipeline first (gc keeps what the last runs reached)"
        );
    }
    let mut doomed = unreached_entries(store, &keep, &mut keep_blobs, &mut report)?;
    doomed.runs = dropped_runs;

    let listing = store.blobs().list()?;
    report.temp_files_removed = listing.temp_files.len() as u64;
    let partials = partial_files(store)?;
    report.partial_files_removed = partials.len() as u64;
    report.partial_bytes_freed = partials.iter().map(|(_, size)| size).sum();
    if !dry_run {
        // gc holds the cache's lock: no run is resuming them now.
        for (path, _) in &partials {
            std::fs::remove_file(path)
                .with_context(|| format!("removing the partial download {}", path.display()))?;
        }
    }
    if dry_run {
        let memo_blobs: HashSet<Digest> = memo_digests(store)?;
        for (digest, size) in &listing.blobs {
            if !keep_blobs.contains(digest) && !memo_blobs.contains(digest) {
                report.blobs_deleted += 1;
                report.blob_bytes_freed += size;
            }
        }
        return Ok(report);
    }
    // The stage summaries say "all cached" without asking the index or the blob store:
    // they go before anything they could speak for is deleted.
    store.forget_stage_summaries()?;
    // Index first (results disappear before their blobs, never the other way round).
    delete_entries(store, &keep, doomed)?;
    store.tighten_presence()?;
    let memo_blobs = memo_digests(store)?;
    for (digest, size) in &listing.blobs {
        if keep_blobs.contains(digest) || memo_blobs.contains(digest) {
            continue;
        }
        store.blobs().remove(digest)?;
        report.blobs_deleted += 1;
        report.blob_bytes_freed += size;
    }
    for tmp in &listing.temp_files {
        let _ = std::fs::remove_file(tmp);
    }
    // The journals still hold what was just deleted: one snapshot of what is left replaces
    // them (a repair must not bring back results gc removed, nor keep their bytes).
    store.snapshot_journal()?;
    Ok(report)
}

/// Which runs to keep: the last `keep_runs` of each pipeline (and back to the last one that
/// finished `ok`); returns (kept runs, ids of the dropped ones).
fn runs_to_keep(store: &Store, keep_runs: usize) -> Result<(Vec<RunRecord>, Vec<Vec<u8>>)> {
    let mut runs: Vec<(Vec<u8>, RunRecord)> = Vec::new();
    for entry in store.index().scan(Tree::Runs, b"") {
        let (id, value) = entry?;
        runs.push((id, super::records::decode_run(&value)?));
    }
    // Per pipeline: runs kept so far, and whether one of them finished `ok`.
    let mut per_pipeline: HashMap<String, (usize, bool)> = HashMap::new();
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    // Newest first (ids are big-endian start times). A run that was interrupted or failed
    // may not have reached everything (stages it never expanded, tasks after a failure):
    // runs are kept back to the last one that finished `ok`, even beyond `keep_runs`.
    for (id, run) in runs.into_iter().rev() {
        let (n, complete) = per_pipeline.entry(run.pipeline.clone()).or_default();
        if *n < keep_runs || !*complete {
            *n += 1;
            *complete |= run.outcome == RunOutcome::Ok;
            kept.push(run);
        } else {
            dropped.push(id);
        }
    }
    Ok((kept, dropped))
}

/// The keys the kept runs reached, and the blobs that hold their reach lists.
fn reached(store: &Store, runs: &[RunRecord]) -> Result<(KeySet, HashSet<Digest>)> {
    let mut keep = KeySet::default();
    let mut keep_blobs: HashSet<Digest> = HashSet::new();
    for run in runs {
        let bytes = store.blobs().read(&run.reach).with_context(|| {
            format!(
                "the list of tasks reached by the run of {} at {} is unreadable, so gc cannot \
                 tell what to keep; run the pipeline again, then gc",
                run.pipeline,
                super::records::format_time(run.started_ms)
            )
        })?;
        let keys: Vec<TaskKey> = decode(&bytes, "run reach list")?;
        keep.extend(keys);
        keep_blobs.insert(run.reach);
        // The pipeline's text, which the page's history compares runs by.
        keep_blobs.extend(run.source);
    }
    Ok((keep, keep_blobs))
}

/// Index entries no kept run reached, to delete.
#[derive(Default)]
struct Doomed {
    tasks: Vec<TaskKey>,
    failures: Vec<TaskKey>,
    records: Vec<TaskKey>,
    params: Vec<Vec<u8>>,
    runs: Vec<Vec<u8>>,
    /// Object records that lost views: written again, or deleted when none is left.
    objects: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Every stage's memo, filtered to what is kept (they stay a fast path for the kept
    /// runs).
    memos: Vec<(String, Vec<(TaskKey, MemoValue)>)>,
}

/// Sorts results, failures, records and shared parameters into kept (their blobs join
/// `keep_blobs`) and doomed, counting both per stage in `report`.
fn unreached_entries(
    store: &Store,
    keep: &KeySet,
    keep_blobs: &mut HashSet<Digest>,
    report: &mut GcReport,
) -> Result<Doomed> {
    let index = store.index();
    let mut doomed = Doomed::default();
    for entry in index.scan(Tree::Tasks, b"") {
        let (key, value) = entry?;
        let result: TaskResult = decode(&value, "task result")?;
        let bytes: u64 = result.outputs.iter().map(|o| o.size).sum();
        let key = to_key(&key);
        let counts = if keep.contains(&key) {
            keep_blobs.extend(result.referenced_blobs());
            report.kept.entry(result.stage.clone()).or_default()
        } else {
            doomed.tasks.push(key);
            report.deleted.entry(result.stage.clone()).or_default()
        };
        counts.tasks += 1;
        counts.bytes += bytes;
    }
    for entry in index.scan(Tree::Failures, b"") {
        let (key, value) = entry?;
        let key = to_key(&key);
        if keep.contains(&key) {
            let failure: Failure = decode(&value, "failure record")?;
            keep_blobs.extend(failure.stderr);
        } else {
            doomed.failures.push(key);
        }
    }
    let mut keep_params: HashSet<Digest> = HashSet::new();
    for entry in index.scan(Tree::Records, b"") {
        let (key, value) = entry?;
        let key = to_key(&key);
        if keep.contains(&key) {
            keep_params.insert(KeyRecord::decode(&value)?.shared);
        } else {
            doomed.records.push(key);
        }
    }
    kept_views(
        store,
        keep,
        keep_blobs,
        &mut keep_params,
        report,
        &mut doomed,
    )?;
    for entry in index.scan(Tree::Params, b"") {
        let (key, _) = entry?;
        if !keep_params.contains(&to_key(&key)) {
            doomed.params.push(key);
        }
    }
    for entry in index.scan(Tree::Memos, b"") {
        let (stage, _) = entry?;
        let stage = String::from_utf8_lossy(&stage).to_string();
        let memo = StageMemo::load(index, store.blobs(), &stage)?;
        let kept: Vec<(TaskKey, MemoValue)> =
            memo.iter().filter(|(k, _)| keep.contains(k)).collect();
        doomed.memos.push((stage, kept));
    }
    report.failures_deleted = doomed.failures.len() as u64;
    report.records_deleted = doomed.records.len() as u64;
    Ok(doomed)
}

/// Sorts the views in object records as results are sorted: a view no kept run reached
/// leaves its record.
fn kept_views(
    store: &Store,
    keep: &KeySet,
    keep_blobs: &mut HashSet<Digest>,
    keep_params: &mut HashSet<Digest>,
    report: &mut GcReport,
    doomed: &mut Doomed,
) -> Result<()> {
    let index = store.index();
    let mut columns: HashMap<Vec<u8>, Columns> = HashMap::new();
    for entry in index.scan(Tree::Objects, b"") {
        let (key, value) = entry?;
        let Some(split) = key.iter().position(|&b| b == 0) else {
            continue;
        };
        if split + 1 == key.len() {
            columns.insert(
                key[..split].to_vec(),
                Columns::decode(&value).map_err(|e| anyhow::anyhow!(e))?,
            );
            continue;
        }
        let stage_columns = columns.get(&key[..split]).with_context(|| {
            format!(
                "the object record {} names a stage without view columns; run `mvc repair`",
                String::from_utf8_lossy(&key)
            )
        })?;
        let mut record = ObjectStage::decode(&value).map_err(|e| anyhow::anyhow!(e))?;
        let removed = record
            .retain(stage_columns, |r, result| {
                let bytes: u64 = result.outputs.iter().map(|o| o.size).sum();
                let kept = keep.contains(&r.key());
                let counts = match kept {
                    true => {
                        keep_blobs.extend(result.referenced_blobs());
                        keep_params.insert(r.shared);
                        report.kept.entry(result.stage.clone()).or_default()
                    }
                    false => report.deleted.entry(result.stage.clone()).or_default(),
                };
                counts.tasks += 1;
                counts.bytes += bytes;
                kept
            })
            .map_err(|e| anyhow::anyhow!(e))?;
        if removed > 0 {
            let value = (!record.is_empty()).then(|| record.encode());
            doomed.objects.push((key, value));
        }
    }
    Ok(())
}

/// Deletes the doomed entries, `latest` entries naming what is gone, and stat-cache entries
/// of files that no longer exist; rewrites the memos.
fn delete_entries(store: &Store, keep: &KeySet, doomed: Doomed) -> Result<()> {
    let index = store.index();
    for (tree, keys) in [
        (Tree::Tasks, &doomed.tasks),
        (Tree::Failures, &doomed.failures),
        (Tree::Records, &doomed.records),
    ] {
        for key in keys {
            index.delete(tree, &key.0)?;
        }
    }
    for key in &doomed.params {
        index.delete(Tree::Params, key)?;
    }
    for id in &doomed.runs {
        index.delete(Tree::Runs, id)?;
    }
    for (key, value) in &doomed.objects {
        match value {
            Some(value) => index.put(Tree::Objects, key, value)?,
            None => index.delete(Tree::Objects, key)?,
        }
    }
    let mut stale_latest = Vec::new();
    for entry in index.scan(Tree::Latest, b"") {
        let (k, value) = entry?;
        let latest: super::records::Latest = decode(&value, "latest entry")?;
        if !keep.contains(&latest.key) {
            stale_latest.push(k);
        }
    }
    for k in stale_latest {
        index.delete(Tree::Latest, &k)?;
    }
    // The stat cache lives in the side index; what an mvc before it left in the main index
    // is read no more.
    let legacy: Vec<Vec<u8>> = index.keys(Tree::Stats).collect::<Result<_>>()?;
    for key in legacy {
        index.delete(Tree::Stats, &key)?;
    }
    let stats = store.stat_index();
    let mut gone_stats = Vec::new();
    for entry in stats.scan(Tree::Stats, b"") {
        let (path, _) = entry?;
        let path = std::path::PathBuf::from(String::from_utf8_lossy(&path).to_string());
        if !path.exists() {
            gone_stats.push(path);
        }
    }
    for path in gone_stats {
        stats.delete(Tree::Stats, path.as_os_str().as_encoded_bytes())?;
    }
    for (stage, kept) in doomed.memos {
        StageMemo::save(index, store.blobs(), &stage, kept)?;
    }
    index.flush()
}

/// The files in `partial/` and their sizes (none when it does not exist).
fn partial_files(store: &Store) -> Result<Vec<(std::path::PathBuf, u64)>> {
    let Ok(entries) = std::fs::read_dir(store.partial_dir()) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() {
            out.push((entry.path(), meta.len()));
        }
    }
    Ok(out)
}

fn memo_digests(store: &Store) -> Result<HashSet<Digest>> {
    let mut out = HashSet::new();
    for entry in store.index().scan(Tree::Memos, b"") {
        let (_, value) = entry?;
        out.insert(to_key(&value));
    }
    Ok(out)
}

fn to_key(bytes: &[u8]) -> TaskKey {
    Digest(bytes.try_into().unwrap_or([0; 32]))
}
