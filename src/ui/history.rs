//! Results and history: the report's results (the same template as `report.html`), the runs
//! the cache has records of, and two runs side by side (the stages that ran, the parameters
//! that changed, the results and their differences).

use super::layout::{Nav, page};
use super::{UiError, UiState};
use crate::report::html;
use crate::report::metrics::Evaluation;
use crate::report::table::{Missing, Results, Row};
use crate::report::variants::VariantOf;
use crate::store::Store;
use crate::store::records::{RunRecord, TaskResult, format_time};
use crate::task::TaskKey;
use axum::extract::{Query, State};
use axum::response::Html;
use indexmap::IndexMap;
use maud::{Markup, html};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A report's `results.json`, as the report stage writes it.
#[derive(Deserialize)]
struct ResultsFile {
    title: String,
    note: Option<String>,
    results: Vec<OwnedRow>,
    #[serde(default)]
    study: Vec<serde_json::Value>,
    #[serde(default)]
    missing: Vec<Missing>,
}

#[derive(Deserialize)]
struct OwnedRow {
    stage: String,
    evaluation: Evaluation,
    #[serde(default)]
    variant: Option<VariantOf>,
}

/// A report's result: its table and its figures' URLs (by evaluation and file).
struct Published {
    results: ResultsFile,
    figures: HashMap<(String, String), String>,
    /// The report.html blob, when the report wrote one.
    page: Option<String>,
}

fn published(store: &Store, key: &TaskKey) -> Result<Option<Published>, UiError> {
    let Some(result) = store.result(key)? else {
        return Ok(None);
    };
    read_published(store, &result).map(Some)
}

fn read_published(store: &Store, result: &TaskResult) -> Result<Published, UiError> {
    let json = result
        .outputs
        .iter()
        .find(|o| o.name == "results.json")
        .ok_or_else(|| UiError::NotFound("the report has no results.json".into()))?;
    let bytes = store
        .read_output(json)
        .map_err(|e| UiError::NotFound(format!("results.json: {e}")))?;
    let results: ResultsFile = serde_json::from_slice(&bytes)
        .map_err(|e| UiError::Internal(anyhow::anyhow!("results.json: {e}")))?;
    let mut figures = HashMap::new();
    let mut page = None;
    for o in &result.outputs {
        if let Some(rest) = o.name.strip_prefix("figures/")
            && let Some((stage, file)) = rest.split_once('/')
        {
            figures.insert(
                (stage.to_string(), file.to_string()),
                format!("/blob/{}", o.digest.to_hex()),
            );
        }
        if o.name == "report.html" && o.inline.is_none() {
            page = Some(format!("/blob/{}", o.digest.to_hex()));
        }
    }
    Ok(Published {
        results,
        figures,
        page,
    })
}

fn results_markup(p: &Published) -> Markup {
    let rows: Vec<Row> = p
        .results
        .results
        .iter()
        .map(|r| Row {
            stage: &r.stage,
            evaluation: &r.evaluation,
            figures: p
                .figures
                .keys()
                .filter(|(s, _)| *s == r.stage)
                .map(|(_, f)| f.clone())
                .collect(),
            variant: r.variant.as_ref(),
        })
        .collect();
    let src = |stage: &str, file: &str| {
        p.figures
            .get(&(stage.to_string(), file.to_string()))
            .cloned()
    };
    html::results(
        &Results::new(
            (&p.results.title, p.results.note.as_deref()),
            &rows,
            !p.results.study.is_empty(),
            &p.results.missing,
        ),
        &src,
    )
}

pub async fn results_page(State(state): State<Arc<UiState>>) -> Result<Html<String>, UiError> {
    let reports: Vec<String> = state.live.read(|s| {
        s.stages
            .iter()
            .filter(|st| st.kind == "report")
            .map(|st| st.name.clone())
            .collect()
    });
    let mut sections = Vec::new();
    for stage in &reports {
        let found = match state.store.latest(stage, crate::stages::report::ITEM)? {
            Some(latest) => published(&state.store, &latest.key)?,
            None => None,
        };
        sections.push((stage.clone(), found));
    }
    let body = maud::html! {
        @if reports.is_empty() { h1 { "Results" } p { "This pipeline has no report stage." } }
        @for (stage, found) in &sections {
            @match found {
                None => { h1 { "Results" } p { "The report " b { (stage) } " has no result yet." } }
                Some(p) => {
                    @if let Some(href) = &p.page { p { a href=(href) { "report.html" } " (the same, as one file)" } }
                    (results_markup(p))
                }
            }
        }
    };
    Ok(page("Results", Nav::Results, body))
}

/// A run's id on the page: when it started (ms since the epoch).
fn run_by_id(runs: &[RunRecord], id: Option<u64>) -> Option<&RunRecord> {
    id.and_then(|id| runs.iter().find(|r| r.started_ms == id))
}

pub async fn runs_page(State(state): State<Arc<UiState>>) -> Result<Html<String>, UiError> {
    let mut runs = state.store.runs()?;
    runs.reverse();
    let body = maud::html! {
        h1 { "History" }
        p.muted { (runs.len()) @if runs.len() == 1 { " run" } @else { " runs" } " recorded in this cache, newest first." }
        @if runs.len() >= 2 {
            form.card method="get" action="/compare" {
                "Compare "
                select name="a" { @for r in &runs { option value=(r.started_ms) { (run_label(r)) } } }
                " with "
                select name="b" { @for (i, r) in runs.iter().enumerate() {
                    option value=(r.started_ms) selected[i == 1] { (run_label(r)) }
                } }
                " " button type="submit" { "side by side" }
            }
        }
        table {
            tr { th { "started" } th { "pipeline" } th { "outcome" } th.num { "seconds" }
                 th.num { "ran" } th.num { "cached" } th.num { "failed" } th { "command" } }
            @for r in &runs {
                tr {
                    td { (format_time(r.started_ms)) }
                    td { (pipeline_link(r)) }
                    td { (format!("{:?}", r.outcome).to_lowercase()) }
                    td.num { (format!("{:.1}", r.ended_ms.saturating_sub(r.started_ms) as f64 / 1000.0)) }
                    td.num { (r.stages.values().map(|s| s.ran).sum::<u64>()) }
                    td.num { (r.stages.values().map(|s| s.cached).sum::<u64>()) }
                    td.num { (r.stages.values().map(|s| s.failed).sum::<u64>()) }
                    td { code { (crate::text::shell_line(&r.command)) } }
                }
            }
        }
        p.muted { "A pipeline's link shows the text the run read: the file as it was, or with \
                   the run's --with and --set merged over it." }
    };
    Ok(page("History", Nav::History, body))
}

/// The run's pipeline, linked to the text it ran (when the run kept it).
fn pipeline_link(r: &RunRecord) -> Markup {
    html! {
        @match r.source {
            Some(digest) => a href=(format!("/log/{}", digest.to_hex())) title="the pipeline this run read" { (r.pipeline) },
            None => (r.pipeline),
        }
    }
}

fn run_label(r: &RunRecord) -> String {
    format!(
        "{} {} ({})",
        format_time(r.started_ms),
        r.pipeline,
        format!("{:?}", r.outcome).to_lowercase()
    )
}

#[derive(Deserialize)]
pub struct CompareQuery {
    pub a: Option<u64>,
    pub b: Option<u64>,
}

pub async fn compare_page(
    State(state): State<Arc<UiState>>,
    Query(q): Query<CompareQuery>,
) -> Result<Html<String>, UiError> {
    let runs = state.store.runs()?;
    let (Some(a), Some(b)) = (run_by_id(&runs, q.a), run_by_id(&runs, q.b)) else {
        return Err(UiError::NotFound(
            "no such runs: pick two on the History page".into(),
        ));
    };
    let params = parameter_changes(&state.store, a, b);
    let results = (results_of(&state.store, a)?, results_of(&state.store, b)?);
    let body = maud::html! {
        h1 { "Two runs side by side" }
        p { b { "A" } " " (run_label(a)) " " code { (crate::text::shell_line(&a.command)) } br;
            b { "B" } " " (run_label(b)) " " code { (crate::text::shell_line(&b.command)) } }
        h2 { "Stages" }
        (stages_table(a, b))
        h2 { "Parameters that changed" }
        @match &params {
            None => p.muted { "A run recorded before mvc kept the pipeline's text cannot be compared by parameters." },
            Some(changes) if changes.is_empty() => p { "None: the two runs read the same pipeline." },
            Some(changes) => table {
                tr { th { "parameter" } th { "A" } th { "B" } }
                @for (key, (va, vb)) in changes { tr.changed { td { code { (key) } } td { (va) } td { (vb) } } }
            },
        }
        h2 { "Results" }
        (results_diff(&results.0, &results.1))
    };
    Ok(page("Compare", Nav::History, body))
}

fn stages_table(a: &RunRecord, b: &RunRecord) -> Markup {
    let mut names: Vec<&String> = a.stages.keys().collect();
    names.extend(b.stages.keys().filter(|k| !a.stages.contains_key(*k)));
    let cell = |r: &RunRecord, n: &str| {
        r.stages
            .get(n)
            .map(|c| format!("{} ran, {} cached, {} failed", c.ran, c.cached, c.failed))
            .unwrap_or_else(|| "–".into())
    };
    html! {
        table {
            tr { th { "stage" } th { "A" } th { "B" } }
            @for n in names { tr { td { (n) } td { (cell(a, n)) } td { (cell(b, n)) } } }
        }
    }
}

/// Every value of a pipeline's TOML, by its dotted path.
fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&path, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// The parameters whose values differ (absent on one side: `–`); `None` when a run did not
/// keep its pipeline's text.
fn parameter_changes(
    store: &Store,
    a: &RunRecord,
    b: &RunRecord,
) -> Option<IndexMap<String, (String, String)>> {
    let read = |r: &RunRecord| -> Option<BTreeMap<String, String>> {
        let bytes = store.blobs().read(&r.source?).ok()?;
        let value: toml::Value = toml::from_str(std::str::from_utf8(&bytes).ok()?).ok()?;
        let mut out = BTreeMap::new();
        flatten("", &value, &mut out);
        Some(out)
    };
    let (fa, fb) = (read(a)?, read(b)?);
    let mut keys: Vec<&String> = fa.keys().chain(fb.keys()).collect();
    keys.sort();
    keys.dedup();
    Some(
        keys.into_iter()
            .filter(|k| fa.get(*k) != fb.get(*k))
            .map(|k| {
                let side = |f: &BTreeMap<String, String>| f.get(k).cloned().unwrap_or("–".into());
                (k.clone(), (side(&fa), side(&fb)))
            })
            .collect(),
    )
}

/// A run's results: every evaluation of its reports, by evaluation stage.
fn results_of(store: &Store, r: &RunRecord) -> Result<IndexMap<String, Evaluation>, UiError> {
    let mut out = IndexMap::new();
    for (_, key) in &r.published {
        if let Some(p) = published(store, key)? {
            for row in p.results.results {
                out.insert(row.stage, row.evaluation);
            }
        }
    }
    Ok(out)
}

/// How to read one metric of an evaluation.
type Metric = fn(&Evaluation) -> f64;

/// The metrics compared, with how to read each.
const METRICS: &[(&str, Metric)] = &[
    ("same-object", |e| e.metrics.same_object.mean),
    ("cross-object", |e| e.metrics.cross_object.mean),
    ("text-to-image", |e| e.metrics.text_to_image.mean),
    ("retrieval top-1", |e| e.metrics.retrieval_top1),
    ("retrieval top-5", |e| e.metrics.retrieval_top5),
];

fn results_diff(a: &IndexMap<String, Evaluation>, b: &IndexMap<String, Evaluation>) -> Markup {
    let mut names: Vec<&String> = a.keys().collect();
    names.extend(b.keys().filter(|k| !a.contains_key(*k)));
    html! {
        @if names.is_empty() { p.muted { "Neither run has results." } }
        @else {
            table {
                tr { th { "evaluation" } th { "metric" } th.num { "A" } th.num { "B" } th.num { "B − A" } }
                @for n in names {
                    @for (metric, get) in METRICS {
                        @let va = a.get(n).map(get);
                        @let vb = b.get(n).map(get);
                        tr {
                            td { (n) } td { (metric) }
                            td.num { (va.map(|v| format!("{v:.3}")).unwrap_or("–".into())) }
                            td.num { (vb.map(|v| format!("{v:.3}")).unwrap_or("–".into())) }
                            @match (va, vb) {
                                (Some(x), Some(y)) if (y - x).abs() >= 0.0005 => {
                                    td.num.changed { (format!("{:+.3}", y - x)) }
                                }
                                (Some(_), Some(_)) => { td.num { "0" } }
                                _ => { td.num { "–" } }
                            }
                        }
                    }
                }
            }
        }
    }
}
