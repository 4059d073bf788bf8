//! The page's files, compiled into mvc: no CDN, no build step, nothing to fetch on a cluster
//! without internet. Served by name from this fixed list; any other name is a 404.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The script: live updates (server-sent events, polling when they fail) and the failure
/// list, built with `textContent` only.
pub const SCRIPT: &str = include_str!("../../assets/page.js");
/// mvc's mark, as the browser's tab icon.
pub const ICON: &str = include_str!("../../assets/icon.svg");

/// (name, content type, bytes).
const FILES: &[(&str, &str, &str)] = &[
    (
        "page.css",
        "text/css; charset=utf-8",
        crate::report::html::STYLE,
    ),
    ("page.js", "text/javascript; charset=utf-8", SCRIPT),
    ("icon.svg", "image/svg+xml", ICON),
];

pub async fn asset(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, mime, body)) => (
            [
                (header::CONTENT_TYPE, *mime),
                (header::CACHE_CONTROL, "max-age=300"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

pub async fn favicon() -> Response {
    ([(header::CONTENT_TYPE, "image/svg+xml")], ICON).into_response()
}
