//! Why a task runs or ran: its key record, and what changed since the last record for its
//! item. `mvc why` prints it; the page's task view shows the same.

use super::ids::TaskId;
use super::resolve::{Engine, NotKeyed, State};
use crate::store::Store;
use crate::store::records::format_time;
use crate::task::{Digest, FieldChange, KeyRecord, TaskKey, diff_fields};
use anyhow::{Result, bail};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// `mvc why FILE STAGE ITEM`, on a planned engine.
pub fn why_task(engine: &Engine, stage: &str, item: &str) -> Result<Why> {
    let g = &engine.graph;
    let node = g.stage_named(stage)?;
    if let Some(why) = &node.deferred {
        bail!("stage `{stage}` has no items yet: {why}");
    }
    let Some(t) = node.tasks().find(|&t| g.item(t) == item) else {
        let sample: Vec<&str> = node.items.iter().take(5).map(|s| &**s).collect();
        bail!(
            "stage `{stage}` has no item `{item}` ({} items, e.g. {})",
            node.items.len(),
            sample.join(", ")
        );
    };
    let store = &engine.store;
    let (fields, key) = match engine.record_of(t) {
        Ok(record) => {
            let key = record.key();
            (record.fields(Some(&node.shared)), Some(key))
        }
        Err(NotKeyed::Pending(why)) | Err(NotKeyed::Blocked(why)) => {
            // Keyed as far as it can be: the inputs are not known yet.
            let mut partial = KeyRecord {
                schema: crate::task::KEY_SCHEMA,
                kind: node.kind.kind().to_string(),
                kind_version: node.kind.version(),
                item: item.to_string(),
                shared: node.shared_digest,
                item_params: g.item_params(t),
                inputs: BTreeMap::new(),
            }
            .fields(Some(&node.shared));
            for edge in &node.inputs {
                partial.insert(
                    format!("inputs.{}", g.stages[edge.stage].name),
                    format!("(unknown: {why})"),
                );
            }
            (partial, None)
        }
    };
    let state = engine.state[t];
    let status = status_line(engine, t, state, key.as_ref())?;
    let history = match (store.latest(stage, item)?, key) {
        (None, _) => History {
            note: format!("no earlier record for {stage}/{item}: it is a new item"),
            compared_with: None,
            changes: None,
        },
        (Some(latest), Some(key)) if latest.key == key => match latest.previous {
            Some(previous) => History {
                note: format!(
                    "this is the last record cached for {stage}/{item} (since {}); it replaced \
                     key {}:",
                    format_time(latest.when_ms),
                    previous.short()
                ),
                compared_with: Some(previous.to_hex()),
                changes: diff(store, &previous, &fields)?,
            },
            None => History {
                note: format!(
                    "this is the only record cached for {stage}/{item} (since {})",
                    format_time(latest.when_ms)
                ),
                compared_with: None,
                changes: None,
            },
        },
        (Some(latest), _) => History {
            note: format!(
                "changed since the last record cached for {stage}/{item} (key {}, {}):",
                latest.key.short(),
                format_time(latest.when_ms)
            ),
            compared_with: Some(latest.key.to_hex()),
            changes: diff(store, &latest.key, &fields)?,
        },
    };
    Ok(Why {
        task: Some(WhyTask {
            stage: stage.to_string(),
            item: item.to_string(),
            kind: node.kind.kind().to_string(),
            kind_version: node.kind.version(),
        }),
        key: key.map(|k| k.to_hex()),
        status,
        outputs: Vec::new(),
        record: fields,
        history: Some(history),
    })
}

fn status_line(engine: &Engine, t: TaskId, state: State, key: Option<&TaskKey>) -> Result<String> {
    Ok(match state {
        State::Cached => match key
            .map(|k| engine.stored_result(t, k))
            .transpose()?
            .flatten()
        {
            Some(r) => format!(
                "cached (ran {} in {:.2}s on {})",
                format_time(r.started_ms),
                r.duration_ms as f64 / 1000.0,
                r.host
            ),
            None => "cached".into(),
        },
        State::KnownFailure => format!(
            "failed in an earlier run, not retried (--retry-failed retries): {}",
            engine.notes.get(&t).cloned().unwrap_or_default()
        ),
        State::Blocked => format!(
            "blocked: {}",
            engine.notes.get(&t).cloned().unwrap_or_default()
        ),
        State::Pending => format!(
            "to run once its upstream has run ({})",
            engine.notes.get(&t).cloned().unwrap_or_default()
        ),
        _ => format!("to run ({})", engine.cause(t)?),
    })
}

fn write_fields(out: &mut String, fields: &BTreeMap<String, String>) {
    let width = fields.keys().map(|k| k.len()).max().unwrap_or(0);
    for (k, v) in fields {
        let _ = writeln!(out, "  {k:<width$} = {v}");
    }
}

/// What `mvc why` says about a task or a key.
#[derive(Debug, Serialize)]
pub struct Why {
    /// The task asked about (`why FILE STAGE ITEM`); none for `why KEY`.
    pub task: Option<WhyTask>,
    /// Its key (hex), when its inputs are known.
    pub key: Option<String>,
    pub status: String,
    /// The outputs of the cached result (`why KEY`).
    pub outputs: Vec<OutputLine>,
    /// The key record, field by field.
    pub record: BTreeMap<String, String>,
    /// How it compares with the last record cached for the item (`why FILE STAGE ITEM`).
    pub history: Option<History>,
}

#[derive(Debug, Serialize)]
pub struct WhyTask {
    pub stage: String,
    pub item: String,
    pub kind: String,
    pub kind_version: u32,
}

#[derive(Debug, Serialize)]
pub struct OutputLine {
    pub name: String,
    pub bytes: u64,
    pub digest: String,
}

#[derive(Debug, Serialize)]
pub struct History {
    pub note: String,
    /// The key compared with (hex).
    pub compared_with: Option<String>,
    /// The fields that differ from it; `None` when there is nothing to compare with, or
    /// its record is no longer in the cache.
    pub changes: Option<Vec<FieldChange>>,
}

impl Why {
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if let Some(task) = &self.task {
            let _ = writeln!(
                out,
                "task {}/{} (kind {} v{})",
                task.stage, task.item, task.kind, task.kind_version
            );
        }
        let _ = writeln!(
            out,
            "key: {}",
            self.key.as_deref().unwrap_or("not yet known")
        );
        let _ = writeln!(out, "status: {}", self.status);
        for o in &self.outputs {
            let short = &o.digest[..o.digest.len().min(12)];
            let _ = writeln!(out, "  output {} ({} bytes, {short})", o.name, o.bytes);
        }
        let _ = writeln!(out, "\nkey record:");
        write_fields(&mut out, &self.record);
        if let Some(history) = &self.history {
            let _ = writeln!(out, "\n{}", history.note);
            match &history.changes {
                None if history.compared_with.is_some() => {
                    let _ = writeln!(out, "  (its record is no longer in the cache)");
                }
                None => {}
                Some(changes) if changes.is_empty() => {
                    let _ = writeln!(out, "  (no field differs)");
                }
                Some(changes) => {
                    for FieldChange { field, old, new } in changes {
                        let _ = writeln!(
                            out,
                            "  {field}: {} → {}",
                            old.as_deref().unwrap_or("(absent)"),
                            new.as_deref().unwrap_or("(absent)")
                        );
                    }
                }
            }
        }
        out
    }
}

/// What differs between the record under `old_key` and `new_fields`; `None` when that
/// record is no longer in the cache.
fn diff(
    store: &Store,
    old_key: &TaskKey,
    new_fields: &BTreeMap<String, String>,
) -> Result<Option<Vec<FieldChange>>> {
    let Some(old) = store.record(old_key)? else {
        return Ok(None);
    };
    let old_shared = store.shared_params(&old.shared)?;
    Ok(Some(diff_fields(
        &old.fields(old_shared.as_ref()),
        new_fields,
    )))
}

/// `mvc why KEY`: the record stored under a key (or a unique prefix of at least 8 digits).
pub fn why_key(store: &Store, key_text: &str) -> Result<Why> {
    let key = find_key(store, key_text)?;
    let Some(record) = store.record(&key)? else {
        bail!("no key record for {key} in this cache");
    };
    let mut outputs = Vec::new();
    let status = if let Some(result) = store.result(&key)? {
        outputs = result
            .outputs
            .iter()
            .map(|o| OutputLine {
                name: o.name.clone(),
                bytes: o.size,
                digest: o.digest.to_hex(),
            })
            .collect();
        format!(
            "cached result of {}/{} (ran {} in {:.2}s on {})",
            result.stage,
            result.item,
            format_time(result.started_ms),
            result.duration_ms as f64 / 1000.0,
            result.host
        )
    } else if let Some(failure) = store.failure(&key)? {
        format!(
            "failed ({}/{} at {}): {}",
            failure.stage,
            failure.item,
            format_time(failure.when_ms),
            failure.error
        )
    } else {
        "no result (the task did not finish, or gc removed it)".to_string()
    };
    let shared = store.shared_params(&record.shared)?;
    Ok(Why {
        task: None,
        key: Some(key.to_hex()),
        status,
        outputs,
        record: record.fields(shared.as_ref()),
        history: None,
    })
}

fn find_key(store: &Store, text: &str) -> Result<TaskKey> {
    let text = text.trim().to_ascii_lowercase();
    if let Ok(d) = text.parse::<Digest>() {
        return Ok(d);
    }
    if text.len() < 8 || !text.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("`{text}` is not a task key (64 hex digits, or a unique prefix of at least 8)");
    }
    let even = &text[..text.len() & !1];
    let prefix: Vec<u8> = (0..even.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&even[i..i + 2], 16).unwrap())
        .collect();
    let mut found = Vec::new();
    for d in store.record_keys_with_prefix(&prefix)? {
        if d.to_hex().starts_with(&text) {
            found.push(d);
        }
        if found.len() > 1 {
            bail!("`{text}` matches several keys; give more digits");
        }
    }
    found
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no task key starting with `{text}` in this cache"))
}

/// [`why_key`] with what changed since the record its item had before it (or since the
/// item's latest, when this key is an older one): the page's task view. Also returns the
/// (stage, item) the key belongs to, when the cache knows it.
pub fn why_key_with_history(
    store: &Store,
    key: &TaskKey,
) -> Result<(Why, Option<(String, String)>)> {
    let mut why = why_key(store, &key.to_hex())?;
    let owner = match store.result(key)? {
        Some(r) => Some((r.stage, r.item)),
        None => store.failure(key)?.map(|f| (f.stage, f.item)),
    };
    if let Some((stage, item)) = &owner {
        let compared = match store.latest(stage, item)? {
            Some(latest) if latest.key == *key => latest.previous,
            Some(latest) => Some(latest.key),
            None => None,
        };
        why.history = Some(match compared {
            None => History {
                note: "no earlier record for this item: it is new".into(),
                compared_with: None,
                changes: None,
            },
            Some(old) => History {
                note: format!("what changed since the record {}…", &old.to_hex()[..12]),
                compared_with: Some(old.to_hex()),
                changes: diff(store, &old, &why.record)?,
            },
        });
    }
    Ok((why, owner))
}
