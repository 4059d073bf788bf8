//! The page's frame and its run view: the stage graph with counts, failures first (grouped
//! by reason, each with its log's last lines), the plan's reasons, what was left out, and the
//! workers of a distributed run.

use super::UiState;
use super::graph;
use super::layout::{Nav, page, pager};
use super::live::{FailureGroup, LiveState, Phase, StageNumbers};
use axum::extract::{Query, State};
use axum::response::Html;
use maud::{Markup, html};
use serde::Deserialize;
use std::sync::Arc;

fn phase_text(phase: Phase) -> &'static str {
    match phase {
        Phase::Idle => "no run in progress",
        Phase::Running => "running",
        Phase::Ok => "over: ok",
        Phase::Failed => "over: failed",
        Phase::Interrupted => "over: interrupted",
    }
}

fn phase_class(phase: Phase) -> &'static str {
    match phase {
        Phase::Idle | Phase::Ok => "ok",
        Phase::Running => "running",
        Phase::Failed => "failed",
        Phase::Interrupted => "interrupted",
    }
}

pub async fn overview(State(state): State<Arc<UiState>>) -> Html<String> {
    let body = state.live.read(|s| {
        html! {
            h1 {
                (s.pipeline) " "
                span #phase class=(format!("status {}", phase_class(s.phase))) { (phase_text(s.phase)) }
                @if s.phase != Phase::Idle { " " span.muted #elapsed { (format!("{:.0} s", s.elapsed_s())) } }
            }
            p.muted { "pipeline file " code { (s.pipeline_path) } }
            @if let Some(about) = &s.about { p.card { (about) } }
            p.muted #live-note {}
            (failures_section(s, &state))
            h2 { "Stages" }
            (graph::svg(&s.stages))
            p.legend {
                @for st in graph::STATES { span { i class=(format!("seg-{st}")) {} (st) } }
            }
            (stage_table(s))
            (reasons_section(s))
            (left_out_section(s))
            h2 { "Notes" }
            ul #notes { @for n in &s.notes { li { (n) } } }
        }
    });
    let title = state.live.read(|s| s.pipeline.clone());
    page(&title, Nav::Run, body)
}

fn stage_table(s: &LiveState) -> Markup {
    html! {
        table #stages {
            tr {
                th { "stage" } th { "kind" } th.num { "total" } th.num { "cached" }
                th.num { "ran" } th.num { "running" } th.num { "waiting" } th.num { "failed" }
                th.num { "tasks/s" } th.num { "time left" }
            }
            @for (i, stage) in s.stages.iter().enumerate() {
                @let n = StageNumbers::of(stage);
                tr data-stage=(i) {
                    td { (n.name) } td { (n.kind) }
                    td.num data-field="total" { (n.total) }
                    td.num data-field="cached" { (n.cached) }
                    td.num data-field="ran" { (n.ran) }
                    td.num data-field="running" { (n.running) }
                    td.num data-field="waiting" { (n.waiting) }
                    td.num data-field="failed" { (n.failed) }
                    td.num data-field="rate" { (n.rate.map(|r| format!("{r:.1}")).unwrap_or_default()) }
                    td.num data-field="eta" { (n.eta_s.map(|e| format!("{e:.0} s")).unwrap_or_default()) }
                }
            }
        }
    }
}

fn failures_section(s: &LiveState, state: &UiState) -> Markup {
    let groups = s.failure_groups();
    html! {
        section #failures-section {
            h2 { "Failures " span.muted #failures-total { "(" (s.failures_total) ")" } }
            div #failure-groups {
                @if groups.is_empty() { p.muted { "None." } }
                @for g in groups.iter().take(super::live::GROUPS_SENT) { (failure_group(g, state)) }
            }
            @if s.failures_total > 0 {
                p { a href="/failures" { "Every failure, page by page" } }
            }
        }
    }
}

/// One group: its stage, error, first items (each linked to its task and log) and the last
/// lines of the first one's log. The script builds the same structure from the snapshot.
fn failure_group(g: &FailureGroup, state: &UiState) -> Markup {
    let tail = g
        .lines
        .iter()
        .find_map(|l| l.stderr)
        .and_then(|d| super::task::log_tail(&state.store, &d, 12));
    html! {
        div.card.failure {
            div {
                b { (g.stage) } " · " (g.count) " item" @if g.count != 1 { "s" }
                @if g.earlier { span.muted { " (recorded by an earlier run; --retry-failed retries it)" } }
            }
            pre.error { (g.error) }
            ul {
                @for l in &g.lines {
                    li {
                        @match l.key {
                            Some(k) => { a href=(format!("/task/{}", k.to_hex())) { (l.item) } }
                            None => { (l.item) }
                        }
                        @if let Some(d) = l.stderr {
                            " · " a href=(format!("/log/{}", d.to_hex())) { "whole log" }
                        }
                    }
                }
            }
            @if let Some(tail) = tail { pre.logtail { (tail) } }
        }
    }
}

fn reasons_section(s: &LiveState) -> Markup {
    html! {
        h2 { "Why these tasks run" }
        @if s.reasons.is_empty() {
            p.muted #reasons-pending { "The plan's reasons come once the plan behind this page is done." }
        }
        @for (stage, reasons) in &s.reasons {
            @if !reasons.is_empty() {
                h3 { (stage) }
                ul { @for (cause, n) in reasons { li { (n) " × " (cause) } } }
            }
        }
    }
}

fn left_out_section(s: &LiveState) -> Markup {
    html! {
        @if !s.left_out.is_empty() {
            h2 { "Objects left out of training and evaluation" }
            @for (stage, note) in &s.left_out {
                div.card { b { (stage) } pre { (note) } }
            }
        }
    }
}

#[derive(Deserialize)]
pub struct PageQuery {
    pub page: Option<usize>,
}

/// Failures kept per page of `/failures`.
const FAILURES_PER_PAGE: usize = 100;

/// Every failure the page keeps, a page at a time.
pub async fn failures(
    State(state): State<Arc<UiState>>,
    Query(q): Query<PageQuery>,
) -> Html<String> {
    let page_no = q.page.unwrap_or(0);
    let body = state.live.read(|s| {
        let pages = s.failures.len().div_ceil(FAILURES_PER_PAGE).max(1);
        let shown = s.failures.iter().skip(page_no * FAILURES_PER_PAGE).take(FAILURES_PER_PAGE);
        html! {
            h1 { "Failures" }
            p.muted {
                (s.failures_total) " in all"
                @if s.failures_total as usize > s.failures.len() { "; the first " (s.failures.len()) " are kept here" }
                ". Page " (page_no + 1) " of " (pages) "."
            }
            table {
                tr { th { "stage" } th { "item" } th { "error" } th { "log" } }
                @for f in shown {
                    tr {
                        td { (f.stage) }
                        td { @match f.key {
                            Some(k) => { a href=(format!("/task/{}", k.to_hex())) { (f.item) } }
                            None => { (f.item) }
                        } }
                        td { pre.error { (f.error) } }
                        td { @if let Some(d) = f.stderr { a href=(format!("/log/{}", d.to_hex())) { "log" } } }
                    }
                }
            }
            (pager("/failures?", page_no, pages))
        }
    });
    page("Failures", Nav::Failures, body)
}

/// The coordinator's workers: slots, what each runs, when it was last heard from; and the
/// Slurm jobs whose workers registered.
pub async fn workers(State(state): State<Arc<UiState>>) -> Html<String> {
    let body = match state.coordinator.get() {
        None => html! {
            h1 { "Workers" }
            p { "This run has no coordinator: every task runs in the mvc process. Start a run \
                 with --listen ADDR (or a Slurm executor) to have workers." }
        },
        Some(c) => {
            let status = c.status();
            let slurm = c.slurm_jobs();
            html! {
                h1 { "Workers" }
                p.muted { (status.workers.len()) " registered · " (status.queued) " tasks queued" }
                table {
                    tr { th { "worker" } th { "host" } th { "slots" } th { "running" }
                         th.num { "units done" } th.num { "last heard" } }
                    @for w in &status.workers {
                        tr {
                            td { (w.name) } td { (w.host) }
                            td { (w.slots.to_string()) }
                            td { @for r in &w.running { div { (r) } } }
                            td.num { (w.units_done) }
                            td.num { (format!("{:.1} s ago", w.last_seen_ms_ago as f64 / 1000.0)) }
                        }
                    }
                }
                h2 { "Slurm jobs" }
                @if slurm.is_empty() { p.muted { "None registered." } }
                ul { @for j in &slurm { li { (j) } } }
            }
        }
    };
    page("Workers", Nav::Workers, body)
}
