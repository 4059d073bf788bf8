//! The live updates: `/events` (server-sent events: the snapshot, then a new one after each
//! change, at most [`EVENTS_PER_SECOND`] a second) and `/state.json` (the same snapshot, for
//! polling when events cannot pass, e.g. through a proxy that buffers).
//!
//! A reader never holds the run back: each stream waits on a `watch` channel, which keeps
//! only the latest version, and is polled only when its connection can take more, so a slow
//! or stalled reader has at most one snapshot pending and, when it reads again, gets the
//! newest one rather than a backlog.

use super::UiState;
use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// Changes are merged to at most this many events a second per reader.
pub const EVENTS_PER_SECOND: u32 = 4;

pub async fn state_json(State(state): State<Arc<UiState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.live.snapshot_json().to_string(),
    )
        .into_response()
}

pub async fn stream(
    State(state): State<Arc<UiState>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = state.live.subscribe();
    let gap = Duration::from_secs(1) / EVENTS_PER_SECOND;
    let events = futures_util::stream::unfold((rx, true), move |(mut rx, first)| {
        let live = state.live.clone();
        async move {
            if first {
                rx.borrow_and_update();
            } else {
                tokio::time::sleep(gap).await;
                // The run's process is ending (the sender is gone): the stream ends.
                rx.changed().await.ok()?;
            }
            let json = live.snapshot_json();
            let event = Event::default().event("snapshot").data(&*json);
            Some((Ok(event), (rx, false)))
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
