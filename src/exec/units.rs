//! A unit's tasks between the queue and the index: taking a unit from a stage's queue,
//! preparing its tasks (keys and what each reads), reading their inputs, and committing each
//! outcome. Shared by local execution (`run`) and remote units (`remote_units`).

use super::graph::MISSING;
use super::ids::TaskId;
use super::resolve::Engine;
use super::workdir::{InputData, LeftOut};
use crate::exec::kind::{Binding, TaskOutcome};
use crate::store::Store;
use crate::store::memo::MemoValue;
use crate::store::records::*;
use crate::task::{Digest, KeyRecord, TaskKey};
use anyhow::{Result, bail};
use std::sync::Arc;

/// What a task's outcome did to the index, for the scheduler.
pub(super) enum Reported {
    Success(Digest, MemoValue),
    Failed(String),
    InputCorrupt {
        stage: String,
        item: String,
        error: String,
    },
    Cancelled,
    Aborted(String),
    /// Not run for want of room on the cache's file system: not recorded, and no new work
    /// starts (every task would fail the same way).
    DiskFull(String),
}

/// What a task reads from one input.
#[derive(Clone, Debug)]
pub(super) struct InputKeys {
    /// The upstream stage.
    pub(super) stage: String,
    pub(super) binding: Binding,
    /// The (item, key) of each upstream task it reads.
    pub(super) items: Vec<(String, TaskKey)>,
    /// For a kind that reads failures: the upstream items without a result.
    pub(super) left_out: Option<Arc<Vec<LeftOut>>>,
}

/// A task of a unit with what the scheduler knows of it; the upstream results themselves
/// are read from the index inside the unit's own task, off the scheduler.
pub(super) struct PreparedTask {
    pub(super) task: TaskId,
    pub(super) identity: TaskIdentity,
    pub(super) inputs: Vec<InputKeys>,
}

/// What recording a task's outcome needs: its key, key record and item.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct TaskIdentity {
    pub(super) key: TaskKey,
    pub(super) record: KeyRecord,
    pub(super) item: String,
}

pub(super) fn prepare_unit(engine: &Engine, unit: &[TaskId]) -> Result<Vec<PreparedTask>> {
    let g = &engine.graph;
    unit.iter()
        .map(|&t| {
            let node = g.stage_of(t);
            let record = engine.record_of(t).map_err(|_| {
                anyhow::anyhow!("internal: {} dispatched before its inputs", g.task_label(t))
            })?;
            let mut inputs = Vec::with_capacity(node.inputs.len());
            let mut item_k = 0;
            for edge in &node.inputs {
                let up = &g.stages[edge.stage];
                if edge.binding == Binding::Expansion {
                    continue;
                }
                let items: Vec<(String, TaskKey)> = match edge.binding {
                    Binding::Item | Binding::ItemIfPresent => {
                        let u = g.item_dep(t, item_k);
                        item_k += 1;
                        if u == MISSING {
                            // Only an ItemIfPresent input can lack the item: it reads nothing.
                            debug_assert_eq!(edge.binding, Binding::ItemIfPresent);
                            Vec::new()
                        } else {
                            vec![(g.item(u).to_string(), engine.keys[u])]
                        }
                    }
                    Binding::Expansion => unreachable!("skipped above"),
                    Binding::All => {
                        let mut items: Vec<(String, TaskKey)> = up
                            .tasks()
                            .filter(|&u| engine.state[u].is_success())
                            .map(|u| (g.item(u).to_string(), engine.keys[u]))
                            .collect();
                        items.sort_by(|a, b| a.0.cmp(&b.0));
                        items
                    }
                };
                let left_out = (edge.binding == Binding::All && node.kind.reads_failures())
                    .then(|| engine.left_out(edge.stage))
                    .flatten();
                inputs.push(InputKeys {
                    stage: up.name.clone(),
                    binding: edge.binding,
                    items,
                    left_out,
                });
            }
            Ok(PreparedTask {
                task: t,
                identity: TaskIdentity {
                    key: engine.keys[t],
                    record,
                    item: g.item(t).to_string(),
                },
                inputs,
            })
        })
        .collect()
}

/// An upstream result a task reads that the index does not give (gone, or unreadable): the
/// task is not run, and its producer runs again ([`Reported::InputCorrupt`]).
#[derive(Clone, Debug, thiserror::Error)]
#[error("{stage}/{item}: {error}")]
pub(super) struct MissingInput {
    pub(super) stage: String,
    pub(super) item: String,
    pub(super) error: String,
}

/// Reads the upstream results of each task's inputs, in order.
pub(super) fn read_inputs(
    store: &Store,
    wanted: Vec<Vec<InputKeys>>,
) -> Result<Vec<Vec<InputData>>, MissingInput> {
    // One reader for the unit: its tasks read the views of a few objects.
    let mut reader = store.result_reader();
    wanted
        .into_iter()
        .map(|inputs| {
            inputs
                .into_iter()
                .map(|input| {
                    let InputKeys {
                        stage,
                        binding,
                        items,
                        left_out,
                    } = input;
                    let mut loaded = Vec::with_capacity(items.len());
                    for (item, key) in items {
                        let missing = |error: String| MissingInput {
                            stage: stage.clone(),
                            item: item.clone(),
                            error,
                        };
                        match reader.result_of(&key, &stage, &item) {
                            Ok(Some(result)) => loaded.push((item, result)),
                            Ok(None) => {
                                let error =
                                    format!("the result of {stage}/{item} is gone from the index");
                                return Err(missing(error));
                            }
                            Err(e) => return Err(missing(format!("{e:#}"))),
                        }
                    }
                    Ok(InputData {
                        stage,
                        binding,
                        items: loaded,
                        left_out: left_out.map(|l| l.to_vec()).unwrap_or_default(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .collect()
}

/// Where a task that ran on this machine ran, in its result.
pub(super) const LOCAL: &str = "local";

/// A failure that is the machine's, not the item's: the cache's file system is full (by the
/// error's words, or by its space when the task ran here: a worker judges its own disk and
/// says so with [`TaskOutcome::DiskFull`]).
fn disk_full(store: &Store, host: &str, error: &str) -> Option<Reported> {
    let full = match host {
        LOCAL => crate::disk::full_disk(store.dir(), error),
        _ => crate::disk::says_full(error).then(|| {
            format!(
                "worker {host} ran out of disk space; make room there and run again (it said: \
                 {error})"
            )
        }),
    }?;
    Some(Reported::DiskFull(full))
}

/// Records an outcome in the index (the commit point of a task) and says what happened.
/// `host` is where it ran: [`LOCAL`] or a worker's name. A failure is recorded against the
/// item only when the item could have caused it: not when the disk is full.
pub(super) fn commit_outcome(
    store: &Store,
    stage: &str,
    p: &TaskIdentity,
    host: &str,
    outcome: TaskOutcome,
) -> Reported {
    match outcome {
        TaskOutcome::Success {
            outputs,
            stdout,
            stderr,
            started_ms,
            duration_ms,
        } => {
            let manifest = manifest_digest(&outputs);
            let result = TaskResult {
                stage: stage.to_string(),
                item: p.item.clone(),
                manifest,
                stdout,
                stderr,
                started_ms,
                duration_ms,
                host: host.to_string(),
                outputs,
            };
            match store.commit_success(&p.key, &p.record, &result) {
                Ok(()) => Reported::Success(
                    manifest,
                    MemoValue::Done {
                        manifest,
                        blobs: result.blob_outputs().collect(),
                    },
                ),
                // The index could not take it: the cache's fault, never the item's.
                Err(e) => {
                    let error = format!("recording the result failed: {e:#}");
                    disk_full(store, LOCAL, &error).unwrap_or(Reported::Aborted(error))
                }
            }
        }
        TaskOutcome::Failed { error, stderr } => {
            if let Some(full) = disk_full(store, host, &error) {
                return full;
            }
            let failure = Failure {
                stage: stage.to_string(),
                item: p.item.clone(),
                error: error.clone(),
                stderr,
                when_ms: now_ms(),
            };
            if let Err(e) = store.commit_failure(&p.key, &p.record, &failure) {
                let error = format!("{error} (and recording the failure failed: {e:#})");
                return disk_full(store, LOCAL, &error).unwrap_or(Reported::Aborted(error));
            }
            Reported::Failed(error)
        }
        TaskOutcome::InputCorrupt { stage, item, error } => {
            Reported::InputCorrupt { stage, item, error }
        }
        TaskOutcome::Cancelled => Reported::Cancelled,
        TaskOutcome::Aborted(error) => match crate::disk::says_full(&error) {
            true => disk_full(store, host, &error).unwrap_or(Reported::Aborted(error)),
            false => Reported::Aborted(error),
        },
        TaskOutcome::DiskFull(error) => Reported::DiskFull(error),
    }
}

pub(super) fn find_item(engine: &Engine, stage: &str, item: &str) -> Option<TaskId> {
    let node = engine.graph.stages.iter().find(|s| s.name == stage)?;
    node.tasks().find(|&t| engine.graph.item(t) == item)
}

/// Whether task `t` reads the output of task `producer`.
pub(super) fn reads_from(engine: &Engine, t: TaskId, producer: TaskId) -> bool {
    let g = &engine.graph;
    let producer_stage = g.task_stage[producer];
    let mut item_k = 0;
    for edge in &g.stage_of(t).inputs {
        match edge.binding {
            Binding::Expansion => {}
            Binding::All if edge.stage == producer_stage => return true,
            Binding::All => {}
            Binding::Item | Binding::ItemIfPresent => {
                if g.item_dep(t, item_k) == producer {
                    return true;
                }
                item_k += 1;
            }
        }
    }
    false
}

/// A consumer found an input blob corrupt: its producer runs again and the consumer waits.
/// Returns whether the producer was re-opened now (false when it already was).
pub(super) fn reopen_producer(
    engine: &mut Engine,
    consumer: TaskId,
    stage: &str,
    item: &str,
) -> Result<bool> {
    let Some(producer) = find_item(engine, stage, item) else {
        bail!(
            "internal: input {stage}/{item} of {} is not a task",
            engine.graph.task_label(consumer)
        );
    };
    let node = engine.graph.stage_of(consumer);
    let all = node
        .inputs
        .iter()
        .any(|e| engine.graph.stages[e.stage].name == stage && e.binding == Binding::All);
    // False when another consumer re-opened it already: the consumer just waits for it.
    engine.reopen(producer, consumer, all)
}
