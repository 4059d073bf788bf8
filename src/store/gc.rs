//! `mvc gc`: keep what the last N runs of each pipeline reached, delete the rest.

use super::Store;
use super::index::Tree;
use super::memo::{KeySet, MemoValue, StageMemo};
use super::records::{Failure, RunOutcome, RunRecord, TaskResult, decode};
use crate::task::{Digest, KeyRecord, TaskKey};
use anyhow::{Context, Result, bail};
use indexmap::IndexMap;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StageBytes {
    pub tasks: u64,
    /// Bytes of the tasks' outputs (blobs and inline).
    pub bytes: u64,
}

#[derive(Debug, Default)]
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
}

pub fn gc(store: &Store, keep_runs: usize, dry_run: bool) -> Result<GcReport> {
    let index = store.index();
    let mut report = GcReport {
        dry_run,
        ..GcReport::default()
    };

    // 1. Which runs to keep: the last `keep_runs` of each pipeline.
    let mut runs: Vec<(Vec<u8>, RunRecord)> = Vec::new();
    for entry in index.scan(Tree::Runs, b"") {
        let (id, value) = entry?;
        runs.push((id, decode(&value, "run record")?));
    }
    // Per pipeline: runs kept so far, and whether one of them finished `ok`.
    let mut per_pipeline: HashMap<String, (usize, bool)> = HashMap::new();
    let mut keep_runs_ids = Vec::new();
    let mut drop_runs_ids = Vec::new();
    // Newest first (ids are big-endian start times). A run that was interrupted or failed
    // may not have reached everything (stages it never expanded, tasks after a failure):
    // runs are kept back to the last one that finished `ok`, even beyond `keep_runs`.
    for (id, run) in runs.iter().rev() {
        let (n, complete) = per_pipeline.entry(run.pipeline.clone()).or_default();
        if *n < keep_runs || !*complete {
            *n += 1;
            *complete |= run.outcome == RunOutcome::Ok;
            keep_runs_ids.push((id.clone(), run.clone()));
        } else {
            drop_runs_ids.push(id.clone());
        }
    }
    report.runs_kept = keep_runs_ids.len() as u64;
    report.runs_dropped = drop_runs_ids.len() as u64;

    // 2. The keys they reached.
    let mut keep = KeySet::default();
    let mut keep_blobs: HashSet<Digest> = HashSet::new();
    for (_, run) in &keep_runs_ids {
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
    }
    // Models downloaded from the hub are kept while their manifest in `models/` names them.
    keep_blobs.extend(crate::clip::hub::manifest_blobs(store)?);
    if keep_runs_ids.is_empty() && index.len(Tree::Tasks) > 0 {
        bail!(
            "the cache holds results but no run records, so gc cannot tell what to keep; run \
             a pipeline first (gc keeps what the last runs reached)"
        );
    }

    // 3. Task results.
    let mut delete_tasks = Vec::new();
    for entry in index.scan(Tree::Tasks, b"") {
        let (key, value) = entry?;
        let result: TaskResult = decode(&value, "task result")?;
        let bytes: u64 = result.outputs.iter().map(|o| o.size).sum();
        let key = to_key(&key);
        if keep.contains(&key) {
            let s = report.kept.entry(result.stage.clone()).or_default();
            s.tasks += 1;
            s.bytes += bytes;
            keep_blobs.extend(result.referenced_blobs());
        } else {
            let s = report.deleted.entry(result.stage.clone()).or_default();
            s.tasks += 1;
            s.bytes += bytes;
            delete_tasks.push(key);
        }
    }

    // 4. Failures, records, shared parameters.
    let mut delete_failures = Vec::new();
    for entry in index.scan(Tree::Failures, b"") {
        let (key, value) = entry?;
        let key = to_key(&key);
        if keep.contains(&key) {
            let failure: Failure = decode(&value, "failure record")?;
            keep_blobs.extend(failure.stderr);
        } else {
            delete_failures.push(key);
        }
    }
    let mut delete_records = Vec::new();
    let mut keep_params: HashSet<Digest> = HashSet::new();
    for entry in index.scan(Tree::Records, b"") {
        let (key, value) = entry?;
        let key = to_key(&key);
        if keep.contains(&key) {
            keep_params.insert(KeyRecord::decode(&value)?.shared);
        } else {
            delete_records.push(key);
        }
    }
    let mut delete_params = Vec::new();
    for entry in index.scan(Tree::Params, b"") {
        let (key, _) = entry?;
        if !keep_params.contains(&to_key(&key)) {
            delete_params.push(key);
        }
    }

    // 5. Memos, filtered to what is kept (they stay a fast path for the kept runs).
    let mut memos: Vec<(String, Vec<(TaskKey, MemoValue)>)> = Vec::new();
    for entry in index.scan(Tree::Memos, b"") {
        let (stage, _) = entry?;
        let stage = String::from_utf8_lossy(&stage).to_string();
        let memo = StageMemo::load(index, store.blobs(), &stage)?;
        let kept: Vec<(TaskKey, MemoValue)> =
            memo.iter().filter(|(k, _)| keep.contains(k)).collect();
        memos.push((stage, kept));
    }

    report.failures_deleted = delete_failures.len() as u64;
    report.records_deleted = delete_records.len() as u64;
    let listing = store.blobs().list()?;
    report.temp_files_removed = listing.temp_files.len() as u64;
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

    // Index first (results disappear before their blobs, never the other way round).
    for key in &delete_tasks {
        index.delete(Tree::Tasks, &key.0)?;
    }
    for key in &delete_failures {
        index.delete(Tree::Failures, &key.0)?;
    }
    for key in &delete_records {
        index.delete(Tree::Records, &key.0)?;
    }
    for key in &delete_params {
        index.delete(Tree::Params, key)?;
    }
    for id in &drop_runs_ids {
        index.delete(Tree::Runs, id)?;
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
    let mut gone_stats = Vec::new();
    for entry in index.scan(Tree::Stats, b"") {
        let (path, _) = entry?;
        let path = std::path::PathBuf::from(String::from_utf8_lossy(&path).to_string());
        if !path.exists() {
            gone_stats.push(path);
        }
    }
    for path in gone_stats {
        index.delete(Tree::Stats, path.as_os_str().as_encoded_bytes())?;
    }
    for (stage, kept) in memos {
        StageMemo::save(index, store.blobs(), &stage, kept)?;
    }
    index.flush()?;

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
    Ok(report)
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
