//! A task's page (what `mvc why KEY` says, what changed since the item's record before,
//! its outputs with images inline, its logs) and the bytes the page shows: blobs and logs
//! by digest, small outputs by key and position. Every id is parsed as 64 hex digits before
//! anything is looked up, so no request names a path.

use super::layout::{Nav, page};
use super::{UiError, UiState};
use crate::exec::why::why_key_with_history;
use crate::store::Store;
use crate::store::records::Output;
use crate::task::Digest;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use maud::html;
use serde::Deserialize;
use std::sync::Arc;

/// A digest or key from a request: 64 hex digits, or a 400.
fn parse_digest(text: &str) -> Result<Digest, UiError> {
    text.parse().map_err(UiError::BadRequest)
}

/// The last `lines` lines of a log blob, as text; `None` when the cache lacks it.
pub fn log_tail(store: &Store, digest: &Digest, lines: usize) -> Option<String> {
    let bytes = store.blobs().read(digest).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    Some(all[all.len().saturating_sub(lines)..].join("\n"))
}

pub async fn task_page(
    State(state): State<Arc<UiState>>,
    Path(key): Path<String>,
) -> Result<Html<String>, UiError> {
    let key = parse_digest(&key)?;
    if state.store.record(&key)?.is_none() {
        return Err(UiError::NotFound(format!(
            "no task with key {key} in this cache"
        )));
    }
    let (why, owner) = why_key_with_history(&state.store, &key)?;
    let result = state.store.result(&key)?;
    let failure = state.store.failure(&key)?;
    let logs: Vec<(&str, Digest)> = match (&result, &failure) {
        (Some(r), _) => [("stdout", r.stdout), ("stderr", r.stderr)]
            .into_iter()
            .filter_map(|(n, d)| d.map(|d| (n, d)))
            .collect(),
        (None, Some(f)) => f.stderr.map(|d| vec![("stderr", d)]).unwrap_or_default(),
        _ => Vec::new(),
    };
    let title = owner
        .as_ref()
        .map(|(s, i)| format!("{s}/{i}"))
        .unwrap_or_else(|| key.to_hex());
    let body = html! {
        h1 { (title) }
        p { b { "key " } code { (key.to_hex()) } }
        p.card { (why.status) }
        @if let Some(r) = &result { (outputs(&key, &r.outputs)) }
        @for (name, d) in &logs {
            h2 { (name) }
            @if let Some(tail) = log_tail(&state.store, d, 40) { pre { (tail) } }
            p { a href=(format!("/log/{}", d.to_hex())) { "the whole " (name) } }
        }
        @if let Some(history) = &why.history {
            h2 { "What changed" }
            p { (history.note) }
            @match &history.changes {
                None if history.compared_with.is_some() => p.muted { "(that record is no longer in the cache)" },
                None => {},
                Some(changes) if changes.is_empty() => p.muted { "(no field differs)" },
                Some(changes) => table {
                    tr { th { "field" } th { "before" } th { "now" } }
                    @for c in changes {
                        tr.changed { td { (c.field) } td { (c.old.as_deref().unwrap_or("(absent)")) }
                                     td { (c.new.as_deref().unwrap_or("(absent)")) } }
                    }
                },
            }
        }
        h2 { "Key record" }
        table { @for (field, value) in &why.record { tr { td { code { (field) } } td { (value) } } } }
    };
    Ok(page(&title, Nav::None, body))
}

/// The outputs, images shown inline.
fn outputs(key: &Digest, outputs: &[Output]) -> maud::Markup {
    html! {
        h2 { "Outputs" }
        div.outputs {
            table {
                @for (i, o) in outputs.iter().enumerate() {
                    @let href = match o.inline {
                        Some(_) => format!("/task/{}/output/{i}", key.to_hex()),
                        None => format!("/blob/{}", o.digest.to_hex()),
                    };
                    tr {
                        td { a href=(href) { (o.name) } }
                        td.num { (crate::text::human_bytes(o.size)) }
                        td { @if o.name.ends_with(".png") { img src=(href) alt=(o.name); } }
                    }
                }
            }
        }
    }
}

/// The content type of bytes the page serves: images as images, text as plain text (never
/// HTML, whatever it holds), the rest as a download.
fn content_type(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        "image/png"
    } else if std::str::from_utf8(bytes).is_ok() {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

fn bytes_response(bytes: Vec<u8>, force_text: bool) -> Response {
    let mime = if force_text {
        "text/plain; charset=utf-8"
    } else {
        content_type(&bytes)
    };
    // Content-addressed: the same digest is the same bytes for ever.
    (
        [
            (header::CONTENT_TYPE, mime),
            (header::CACHE_CONTROL, "max-age=31536000, immutable"),
        ],
        bytes,
    )
        .into_response()
}

fn read_blob(store: &Store, digest: &Digest) -> Result<Vec<u8>, UiError> {
    store
        .blobs()
        .read(digest)
        .map_err(|e| UiError::NotFound(format!("no blob {digest} in this cache ({e})")))
}

pub async fn blob(
    State(state): State<Arc<UiState>>,
    Path(digest): Path<String>,
) -> Result<Response, UiError> {
    let digest = parse_digest(&digest)?;
    Ok(bytes_response(read_blob(&state.store, &digest)?, false))
}

#[derive(Deserialize)]
pub struct TailQuery {
    /// Only the last N lines.
    pub tail: Option<usize>,
}

pub async fn log(
    State(state): State<Arc<UiState>>,
    Path(digest): Path<String>,
    Query(q): Query<TailQuery>,
) -> Result<Response, UiError> {
    let digest = parse_digest(&digest)?;
    let bytes = read_blob(&state.store, &digest)?;
    let bytes = match q.tail {
        None => bytes,
        Some(n) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n.min(1000))..]
                .join("\n")
                .into_bytes()
        }
    };
    Ok(bytes_response(bytes, true))
}

/// A small output kept in the index (not a blob file), by its task's key and position.
pub async fn inline_output(
    State(state): State<Arc<UiState>>,
    Path((key, index)): Path<(String, String)>,
) -> Result<Response, UiError> {
    let key = parse_digest(&key)?;
    let index: usize = index
        .parse()
        .map_err(|_| UiError::BadRequest(format!("`{index}` is not an output's position")))?;
    let result = state
        .store
        .result(&key)?
        .ok_or_else(|| UiError::NotFound(format!("no result for {key}")))?;
    let output = result
        .outputs
        .get(index)
        .ok_or_else(|| UiError::NotFound(format!("{key} has no output {index}")))?;
    let bytes = state
        .store
        .read_output(output)
        .map_err(|e| UiError::NotFound(format!("{}: {e}", output.name)))?;
    Ok(bytes_response(bytes, false))
}
