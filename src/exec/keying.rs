//! Keying a task and looking it up: the digests it reads from its inputs, its key record,
//! the cache lookup (memo, then index), and why a task runs (the fields that changed).

use super::graph::MISSING;
use super::ids::TaskId;
use super::resolve::{Aggregate, Engine, NotKeyed, Resolution, State};
use crate::exec::kind::Binding;
use crate::store::memo::MemoValue;
use crate::store::records::TaskResult;
use crate::task::{
    Digest, FieldChange, KEY_SCHEMA, KeyRecord, KeyRecordRef, ParamSlice, TaskKey, cause_of,
    diff_fields,
};
use anyhow::Result;

impl Engine {
    /// The digests a task reads from each input, sorted by input name.
    pub(super) fn input_digests(&self, t: TaskId) -> Result<Vec<(&str, Digest)>, NotKeyed> {
        let g = &self.graph;
        let node = g.stage_of(t);
        let mut inputs = Vec::with_capacity(node.inputs.len());
        let mut item_k = 0;
        for (position, edge) in node.inputs.iter().enumerate() {
            let up = &g.stages[edge.stage];
            let digest = match edge.binding {
                Binding::Item | Binding::ItemIfPresent => {
                    let u = g.item_dep(t, item_k);
                    item_k += 1;
                    if u == MISSING && edge.binding == Binding::ItemIfPresent {
                        continue;
                    }
                    if u == MISSING {
                        return Err(NotKeyed::Blocked(format!(
                            "input `{}` has no item `{}`",
                            up.name,
                            g.source_item(t)
                        )));
                    }
                    match self.state[u] {
                        State::Cached | State::Done => self.manifests[u],
                        State::Failed | State::KnownFailure | State::Blocked => {
                            return Err(NotKeyed::Blocked(format!(
                                "upstream {} failed",
                                g.task_label(u)
                            )));
                        }
                        _ => {
                            return Err(NotKeyed::Pending(format!("upstream reruns: {}", up.name)));
                        }
                    }
                }
                Binding::Expansion => continue,
                Binding::All => match &self.aggregates[edge.stage] {
                    Some(Aggregate::Digest(_))
                        if self.stage_failed[edge.stage] > 0 && node.kind.needs_every_item() =>
                    {
                        let n = self.stage_failed[edge.stage];
                        return Err(NotKeyed::Blocked(format!(
                            "{n} item{} of upstream `{}` failed, and `{}` needs every one",
                            if n == 1 { "" } else { "s" },
                            up.name,
                            node.name
                        )));
                    }
                    Some(Aggregate::Digest(d)) => match &self.left_out[edge.stage] {
                        // What the reader leaves out, and why, is part of what it reads.
                        Some((_, failures)) if node.kind.reads_failures() => Digest::of(
                            &postcard::to_stdvec(&(d, failures)).expect("digests always encode"),
                        ),
                        _ => *d,
                    },
                    Some(Aggregate::Pending(why)) => return Err(NotKeyed::Pending(why.clone())),
                    Some(Aggregate::Failed(why)) => match &self.left_out[edge.stage] {
                        // What the reader leaves out, and why, is all it reads.
                        Some((_, failures))
                            if node.kind.reads_failed_stages() && self.reads_some_results(t) =>
                        {
                            Digest::of(
                                &postcard::to_stdvec(&("failed", failures))
                                    .expect("digests always encode"),
                            )
                        }
                        _ => return Err(NotKeyed::Blocked(why.clone())),
                    },
                    None => {
                        return Err(NotKeyed::Pending(format!("upstream reruns: {}", up.name)));
                    }
                },
            };
            inputs.push((node.input_keys[position].as_str(), digest));
        }
        inputs.sort_unstable_by(|a, b| a.0.cmp(b.0));
        Ok(inputs)
    }

    /// Whether some whole stage a task reads has results (or may still have: not complete
    /// yet): a task that reads failed stages runs without them only beside one that has
    /// results (a report of nothing but failures is blocked, not an empty table).
    fn reads_some_results(&self, t: TaskId) -> bool {
        let node = self.graph.stage_of(t);
        node.inputs.iter().any(|e| {
            e.binding == Binding::All
                && !matches!(self.aggregates[e.stage], Some(Aggregate::Failed(_)))
        })
    }

    /// The result recorded for task `t` under `key` (its object's record holds it when it is
    /// a view).
    pub fn stored_result(&self, t: TaskId, key: &TaskKey) -> Result<Option<TaskResult>> {
        let stage = &self.graph.stage_of(t).name;
        self.store.result_of(key, stage, self.graph.item(t))
    }

    /// The key record of a task whose inputs are resolved.
    pub fn record_of(&self, t: TaskId) -> Result<KeyRecord, NotKeyed> {
        let node = self.graph.stage_of(t);
        let inputs = self.input_digests(t)?;
        Ok(KeyRecord {
            schema: KEY_SCHEMA,
            kind: node.kind.kind().to_string(),
            kind_version: node.kind.version(),
            item: self.graph.item(t).to_string(),
            shared: node.shared_digest,
            item_params: self.graph.item_params(t),
            inputs: inputs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        })
    }

    /// The key of a task whose inputs are resolved, without building its record.
    pub(super) fn key_of(&self, t: TaskId) -> Result<TaskKey, NotKeyed> {
        let node = self.graph.stage_of(t);
        let inputs = self.input_digests(t)?;
        let local = node.local(t);
        let no_params = ParamSlice::new();
        Ok(task_key(
            node.kind.as_ref(),
            &node.shared_digest,
            &node.items[local as usize],
            node.item_params.get(local).unwrap_or(&no_params),
            &inputs,
        ))
    }

    pub(super) fn resolve_one(&self, t: TaskId) -> Result<Resolution> {
        // Item ids come from outside too (a dataset's metadata, a mirror's file list) and
        // name directories (exports, inputs of all-at-once stages): one that could name a
        // path outside them fails its item here, before any kind sees it.
        if let Err(why) = crate::task::validate_item_id(self.graph.item(t)) {
            return Ok(Resolution::Blocked(why));
        }
        match self.key_of(t) {
            Ok(key) => self.look_up(t, key),
            Err(why) => Ok(why.into()),
        }
    }

    pub(super) fn look_up(&self, t: TaskId, key: TaskKey) -> Result<Resolution> {
        let s = self.graph.task_stage[t];
        let mut blobs_missing = false;
        match self.memos[s].get(&key) {
            Some(MemoValue::Done { manifest, blobs }) => {
                if self.store.outputs_present(blobs.into_iter()) {
                    return Ok(Resolution::Cached {
                        key,
                        manifest,
                        memo_value: None,
                    });
                }
                blobs_missing = true;
            }
            Some(MemoValue::Failed) if !self.retry_failed => {
                if let Some(f) = self.store.failure(&key)? {
                    return Ok(Resolution::KnownFailure {
                        key,
                        error: f.error,
                    });
                }
            }
            _ => {}
        }
        if !blobs_missing && let Some(result) = self.stored_result(t, &key)? {
            if self.store.outputs_present(result.blob_outputs()) {
                return Ok(Resolution::Cached {
                    key,
                    manifest: result.manifest,
                    memo_value: Some(MemoValue::Done {
                        manifest: result.manifest,
                        blobs: result.blob_outputs().collect(),
                    }),
                });
            }
            blobs_missing = true;
        }
        if !self.retry_failed
            && let Some(f) = self.store.failure(&key)?
        {
            return Ok(Resolution::KnownFailure {
                key,
                error: f.error,
            });
        }
        Ok(Resolution::ToRun { key, blobs_missing })
    }

    /// Why a task is to run, grouped as `mvc plan` reports it.
    pub fn cause(&self, t: TaskId) -> Result<String> {
        let i = t.index();
        match self.state[i] {
            State::Pending => {
                // A task waiting for its upstream that was never run for this item (the
                // embedding of a new view) is new, whatever its upstream makes.
                let node = self.graph.stage_of(t);
                if self.store.latest(&node.name, self.graph.item(t))?.is_none() {
                    return Ok("new item".into());
                }
                return Ok(self.notes.get(&t).cloned().unwrap_or_default());
            }
            State::Blocked => {
                return Ok(self.notes.get(&t).cloned().unwrap_or_default());
            }
            State::ToRun | State::Running | State::Done | State::Failed => {}
            _ => return Ok(String::new()),
        }
        if self.blobs_missing.contains(&t) {
            return Ok("blob missing or corrupt".into());
        }
        let node = self.graph.stage_of(t);
        let Some(latest) = self.store.latest(&node.name, self.graph.item(t))? else {
            return Ok("new item".into());
        };
        if latest.key == self.keys[i] {
            return Ok(if self.retry_failed {
                "retrying a failed item".into()
            } else {
                "result missing from the cache".into()
            });
        }
        let changes = self.changes_since(t, &latest.key)?;
        Ok(match changes {
            Some(changes) => cause_of(&changes, &node.set_by),
            None => "new item (earlier record unavailable)".into(),
        })
    }

    /// Field changes of a task's record against the record stored under `old`.
    pub fn changes_since(&self, t: TaskId, old: &TaskKey) -> Result<Option<Vec<FieldChange>>> {
        let node = self.graph.stage_of(t);
        let Some(old_record) = self.store.record_of(old, &node.name, self.graph.item(t))? else {
            return Ok(None);
        };
        let Ok(new_record) = self.record_of(t) else {
            return Ok(None);
        };
        let node = self.graph.stage_of(t);
        let old_shared = self.store.shared_params(&old_record.shared)?;
        let old_fields = old_record.fields(old_shared.as_ref());
        let new_fields = new_record.fields(Some(&node.shared));
        Ok(Some(diff_fields(&old_fields, &new_fields)))
    }
}

/// The key of a task of a stage of `kind` whose shared parameters digest to `shared`:
/// `inputs` are the digests it reads from each input, sorted by the name they count under.
/// The engine keys every task so, and a plan by view columns a new column's
/// (`exec/columns.rs`).
pub(super) fn task_key(
    kind: &dyn crate::exec::kind::StageKind,
    shared: &Digest,
    item: &str,
    item_params: &ParamSlice,
    inputs: &[(&str, Digest)],
) -> TaskKey {
    KeyRecordRef {
        schema: KEY_SCHEMA,
        kind: kind.kind(),
        kind_version: kind.version(),
        item,
        shared,
        item_params,
        inputs,
    }
    .key()
}
