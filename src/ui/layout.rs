//! The frame every page shares: the style sheet, the script, the navigation; a page that
//! only says something; links between pages of a list.

use axum::response::Html;
use maud::{DOCTYPE, Markup, html};

/// The sections of the page, for its navigation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Run,
    Failures,
    Objects,
    Results,
    History,
    Workers,
    None,
}

const LINKS: &[(Nav, &str, &str)] = &[
    (Nav::Run, "/", "Run"),
    (Nav::Failures, "/failures", "Failures"),
    (Nav::Objects, "/objects", "Objects"),
    (Nav::Results, "/results", "Results"),
    (Nav::History, "/runs", "History"),
    (Nav::Workers, "/workers", "Workers"),
];

/// A whole page: the frame (style, script, navigation) around `body`.
pub fn page(title: &str, here: Nav, body: Markup) -> Html<String> {
    let page_name = match here {
        Nav::Run => "run",
        _ => "other",
    };
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · mvc" }
                    link rel="stylesheet" href="/assets/page.css";
                    link rel="icon" href="/assets/icon.svg" type="image/svg+xml";
                    script src="/assets/page.js" defer {}
                }
                body data-page=(page_name) {
                    header.top {
                        span.brand { "mvc" }
                        @for (nav, href, name) in LINKS {
                            a href=(href) class=[(*nav == here).then_some("here")] { (name) }
                        }
                    }
                    main { (body) }
                }
            }
        }
        .into_string(),
    )
}

/// A page that only says something (an error, a refusal).
pub fn message_page(status: &str, message: &str) -> Html<String> {
    page(
        status,
        Nav::None,
        html! { h1 { (status) } p { (message) } p { a href="/" { "Back to the run" } } },
    )
}

/// Links to the previous and next pages.
pub fn pager(base: &str, page_no: usize, pages: usize) -> Markup {
    html! {
        p.pager {
            @if page_no > 0 { a href=(format!("{base}page={}", page_no - 1)) { "← previous" } }
            span { "page " (page_no + 1) " of " (pages) }
            @if page_no + 1 < pages { a href=(format!("{base}page={}", page_no + 1)) { "next →" } }
        }
    }
}
