//! The page: a live view of a run in a browser (`mvc run --ui ADDR`, a coordinator's own
//! address), and of a cache that no run holds (`mvc ui`). ARCHITECTURE.md, "The page".
//!
//! It is one more view of what the terminal and `--json` show ([`live::UiView`] is a
//! [`RunView`](crate::exec::view::RunView)), read-only, and light whatever the run's size:
//! stage totals and failure groups, never every task; task lists are paged. Templates are
//! maud's (checked when mvc compiles, everything escaped); the style sheet and the script
//! are compiled into the binary, so the page works on a cluster with no internet.
//!
//! Safety: every response carries a Content-Security-Policy that lets scripts come only
//! from mvc's own `/assets/`; blobs and logs are served by digest or task key only, parsed
//! before any lookup; off loopback the page needs the token (then kept as a cookie) and TLS.

pub mod assets;
pub mod events;
pub mod graph;
pub mod history;
pub mod layout;
pub mod live;
pub mod objects;
pub mod pages;
pub mod serve;
pub mod task;

use crate::remote::auth::Token;
use crate::remote::coordinator::Coordinator;
use crate::store::Store;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use live::Live;
use std::sync::{Arc, OnceLock};

/// What every handler of the page reads.
pub struct UiState {
    pub live: Arc<Live>,
    pub store: Arc<Store>,
    /// The coordinator whose workers the page lists, when the run has one.
    pub coordinator: OnceLock<Arc<Coordinator>>,
}

impl UiState {
    pub fn new(live: Arc<Live>, store: Arc<Store>) -> Arc<UiState> {
        Arc::new(UiState {
            live,
            store,
            coordinator: OnceLock::new(),
        })
    }
}

/// Why a page cannot be shown: a bad request (a digest that is not hex), something that does
/// not exist, or the cache failing to answer.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = match &self {
            UiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            UiError::NotFound(_) => StatusCode::NOT_FOUND,
            UiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = layout::message_page(status.as_str(), &self.to_string());
        (status, body).into_response()
    }
}

/// The page's routes. `token`: required from every request (as a bearer header, a cookie,
/// or once as `?token=`), when set.
pub fn router(state: Arc<UiState>, token: Option<Token>) -> Router {
    let routes = Router::new()
        .route("/", get(pages::overview))
        .route("/failures", get(pages::failures))
        .route("/state.json", get(events::state_json))
        .route("/events", get(events::stream))
        .route("/task/{key}", get(task::task_page))
        .route("/task/{key}/output/{index}", get(task::inline_output))
        .route("/blob/{digest}", get(task::blob))
        .route("/log/{digest}", get(task::log))
        .route("/objects", get(objects::objects_page))
        .route("/results", get(history::results_page))
        .route("/runs", get(history::runs_page))
        .route("/compare", get(history::compare_page))
        .route("/workers", get(pages::workers))
        .route("/assets/{name}", get(assets::asset))
        .route("/favicon.ico", get(assets::favicon))
        .with_state(state);
    serve::guarded(routes, token)
}

/// The page of a run: its state, and the view the engine feeds it through.
pub struct RunPage {
    pub state: Arc<UiState>,
}

impl RunPage {
    pub fn new(workflow: &crate::exec::workflow::Workflow, store: Arc<Store>) -> RunPage {
        RunPage {
            state: UiState::new(Live::new(workflow, live::Phase::Running), store),
        }
    }

    /// The run's view: `inner` (the terminal's) and the page, fed together.
    pub fn view(
        &self,
        inner: Box<dyn crate::exec::view::RunView>,
    ) -> Box<dyn crate::exec::view::RunView> {
        Box::new(live::UiView::new(inner, self.state.live.clone()))
    }

    /// Plans `workflow` beside the run, for the plan's reasons ("parameter changed: polar"),
    /// which the engine of a run does not group, and the failures earlier runs recorded
    /// (which the run reports only at its end). It reads the cache as the run begins; the
    /// page shows them when it is done.
    pub fn plan_in_background(
        &self,
        workflow: crate::exec::workflow::Workflow,
        retry_failed: bool,
    ) {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            match crate::exec::plan::plan(&workflow, state.store.clone(), retry_failed) {
                Ok((engine, report)) => {
                    let mut earlier = crate::exec::summary::known_failures(&engine);
                    earlier.retain(|f| f.earlier);
                    state.live.apply_plan(&report, &earlier, false);
                }
                Err(e) => tracing::warn!("the page's plan failed: {e:#}"),
            }
        });
    }
}
