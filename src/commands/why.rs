//! `mvc why`: a task's key record, and what changed since the last record for its item.

use crate::exec::resolve::{Engine, NotKeyed, State};
use crate::store::Store;
use crate::store::index::Tree;
use crate::store::records::format_time;
use crate::task::{Digest, FieldChange, KeyRecord, TaskKey, diff_fields};
use anyhow::{Result, bail};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// `mvc why FILE STAGE ITEM`, on a planned engine.
pub fn why_task(engine: &Engine, stage: &str, item: &str) -> Result<String> {
    let g = &engine.graph;
    let Some(node) = g.stages.iter().find(|s| s.name == stage) else {
        let names: Vec<&str> = g.stages.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "no stage `{stage}` in this pipeline (stages: {})",
            names.join(", ")
        );
    };
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
    let mut out = String::new();
    let _ = writeln!(
        out,
        "task {stage}/{item} (kind {} v{})",
        node.kind.kind(),
        node.kind.version()
    );

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
    let state = engine.state[t as usize];
    match key {
        Some(key) => {
            let _ = writeln!(out, "key: {key}");
        }
        None => {
            let _ = writeln!(out, "key: not yet known");
        }
    }
    let _ = writeln!(
        out,
        "status: {}",
        status_line(engine, t, state, key.as_ref())?
    );
    let _ = writeln!(out, "\nkey record:");
    write_fields(&mut out, &fields);

    let latest = store.latest(stage, item)?;
    match (latest, key) {
        (None, _) => {
            let _ = writeln!(
                out,
                "\nno earlier record for {stage}/{item}: it is a new item"
            );
        }
        (Some(latest), Some(key)) if latest.key == key => match latest.previous {
            Some(previous) => {
                let _ = writeln!(
                    out,
                    "\nthis is the last record cached for {stage}/{item} (since {}); it replaced \
                     key {}:",
                    format_time(latest.when_ms),
                    previous.short()
                );
                write_diff(&mut out, store, &previous, &fields)?;
            }
            None => {
                let _ = writeln!(
                    out,
                    "\nthis is the only record cached for {stage}/{item} (since {})",
                    format_time(latest.when_ms)
                );
            }
        },
        (Some(latest), _) => {
            let _ = writeln!(
                out,
                "\nchanged since the last record cached for {stage}/{item} (key {}, {}):",
                latest.key.short(),
                format_time(latest.when_ms)
            );
            write_diff(&mut out, store, &latest.key, &fields)?;
        }
    }
    Ok(out)
}

fn status_line(engine: &Engine, t: u32, state: State, key: Option<&TaskKey>) -> Result<String> {
    let store = &engine.store;
    Ok(match state {
        State::Cached => match key.map(|k| store.result(k)).transpose()?.flatten() {
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

fn write_diff(
    out: &mut String,
    store: &Store,
    old_key: &TaskKey,
    new_fields: &BTreeMap<String, String>,
) -> Result<()> {
    let Some(old) = store.record(old_key)? else {
        let _ = writeln!(out, "  (its record is no longer in the cache)");
        return Ok(());
    };
    let old_shared = store.shared_params(&old.shared)?;
    let changes = diff_fields(&old.fields(old_shared.as_ref()), new_fields);
    if changes.is_empty() {
        let _ = writeln!(out, "  (no field differs)");
    }
    for FieldChange { field, old, new } in changes {
        let _ = writeln!(
            out,
            "  {field}: {} → {}",
            old.as_deref().unwrap_or("(absent)"),
            new.as_deref().unwrap_or("(absent)")
        );
    }
    Ok(())
}

/// `mvc why KEY`: the record stored under a key (or a unique prefix of at least 8 digits).
pub fn why_key(store: &Store, key_text: &str) -> Result<String> {
    let key = find_key(store, key_text)?;
    let Some(record) = store.record(&key)? else {
        bail!("no key record for {key} in this cache");
    };
    let mut out = String::new();
    let _ = writeln!(out, "key: {key}");
    if let Some(result) = store.result(&key)? {
        let _ = writeln!(
            out,
            "status: cached result of {}/{} (ran {} in {:.2}s on {})",
            result.stage,
            result.item,
            format_time(result.started_ms),
            result.duration_ms as f64 / 1000.0,
            result.host
        );
        for o in &result.outputs {
            let _ = writeln!(
                out,
                "  output {} ({} bytes, {})",
                o.name,
                o.size,
                o.digest.short()
            );
        }
    } else if let Some(failure) = store.failure(&key)? {
        let _ = writeln!(
            out,
            "status: failed ({}/{} at {}): {}",
            failure.stage,
            failure.item,
            format_time(failure.when_ms),
            failure.error
        );
    } else {
        let _ = writeln!(
            out,
            "status: no result (the task did not finish, or gc removed it)"
        );
    }
    let shared = store.shared_params(&record.shared)?;
    let _ = writeln!(out, "\nkey record:");
    write_fields(&mut out, &record.fields(shared.as_ref()));
    Ok(out)
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
    for entry in store.index().scan(Tree::Records, &prefix) {
        let (k, _) = entry?;
        let d = Digest(k.as_slice().try_into().unwrap_or([0; 32]));
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
