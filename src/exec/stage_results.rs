//! What the tasks of a stage, or of one of its view columns, ended as, summed up: the counts
//! and the digest of their results that a summary records (`exec/stage_summaries.rs`,
//! `exec/columns.rs`), and that the summary keys of the stages reading them are made from.

use super::ids::{StageId, TaskId};
use super::resolve::{Engine, State};
use crate::store::memo::MemoValue;
use crate::store::summaries::{BlobList, StageSummary};
use crate::task::Digest;
use anyhow::Result;

/// What one task ended as, as its summary counts it.
pub(super) enum Settled {
    /// Cached or done: its key, its manifest, and its output blobs.
    Done {
        key: Digest,
        manifest: Digest,
        blobs: Vec<(Digest, u64)>,
    },
    /// Failed, and recorded as failed against its item.
    Failed { key: Digest },
    /// Blocked by such a failure upstream.
    Blocked,
}

/// How task `t` (of stage `s`) ended, when it ended as the next plan will find it: cached or
/// done, failed and recorded as failed, or blocked by such a failure. `None` when it is
/// still to run, running, or failed for a reason that was not recorded against its item.
pub(super) fn settled(engine: &Engine, s: StageId, t: TaskId) -> Result<Option<Settled>> {
    let key = engine.keys[t];
    Ok(match engine.state[t] {
        State::Cached | State::Done => {
            let value = engine.learnt(t).or_else(|| engine.memos[s].get(&key));
            let blobs: Vec<(Digest, u64)> = match value {
                Some(MemoValue::Done { blobs, .. }) => blobs,
                _ => match engine.stored_result(t, &key)? {
                    Some(result) => result.blob_outputs().collect(),
                    None => return Ok(None),
                },
            };
            Some(Settled::Done {
                key,
                manifest: engine.manifests[t],
                blobs,
            })
        }
        State::Failed | State::KnownFailure => {
            // A failure of the machine, not the item, is not recorded: the next plan runs
            // that task again, so there is nothing to summarize yet.
            let recorded = engine.state[t] == State::KnownFailure || engine.learnt_failed(t);
            recorded.then_some(Settled::Failed { key })
        }
        State::Blocked => Some(Settled::Blocked),
        State::Waiting | State::ToRun | State::Running | State::Pending => None,
    })
}

/// What every task of one stage (or of one of its view columns) ended as, summed up as
/// they are added in item order.
pub(super) struct StageResults {
    tasks: u64,
    cached: u64,
    failed: u64,
    hasher: blake3::Hasher,
    blob_list: BlobList,
    /// Cleared by a task that has not settled: then there is nothing to summarize.
    all_settled: bool,
}

impl StageResults {
    pub(super) fn new() -> StageResults {
        StageResults {
            tasks: 0,
            cached: 0,
            failed: 0,
            hasher: blake3::Hasher::new(),
            blob_list: BlobList::default(),
            all_settled: true,
        }
    }

    pub(super) fn add(&mut self, engine: &Engine, t: TaskId, settled: Option<&Settled>) {
        self.tasks += 1;
        let h = &mut self.hasher;
        match settled {
            None => self.all_settled = false,
            Some(Settled::Done {
                key,
                manifest,
                blobs,
            }) => {
                for (digest, size) in blobs {
                    self.blob_list.push(digest, *size);
                }
                self.cached += 1;
                h.update(b"d");
                h.update(&key.0);
                h.update(&manifest.0);
            }
            Some(Settled::Failed { key }) => {
                self.failed += 1;
                h.update(b"f");
                h.update(&key.0);
            }
            Some(Settled::Blocked) => {
                self.failed += 1;
                h.update(b"b");
                h.update(engine.graph.item(t).as_bytes());
                h.update(b"\0");
            }
        }
    }

    /// The summary of these tasks under `key`, with the digest of their results; `None`
    /// when one has not settled.
    pub(super) fn summary(self, key: Digest) -> Option<(StageSummary, BlobList)> {
        if !self.all_settled {
            return None;
        }
        let blob_list = (!self.blob_list.is_empty()).then(|| Digest::of(self.blob_list.bytes()));
        let summary = StageSummary {
            key,
            tasks: self.tasks,
            cached: self.cached,
            failed: self.failed,
            results: Digest(*self.hasher.finalize().as_bytes()),
            blob_list,
        };
        Some((summary, self.blob_list))
    }
}

/// The digest of the results of every task of stage `s`, as its summary would record them;
/// `None` when one has not settled.
pub(super) fn stage_results(engine: &Engine, s: StageId) -> Result<Option<Digest>> {
    let mut found = StageResults::new();
    for t in engine.graph.stages[s].tasks() {
        found.add(engine, t, settled(engine, s, t)?.as_ref());
    }
    Ok(found
        .summary(Digest::default())
        .map(|(summary, _)| summary.results))
}
