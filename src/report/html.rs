//! The results as HTML: the one template behind `report.html` (the report stage's
//! self-contained file) and the results view of the live page (`ui`), so that the two never
//! disagree. Everything shown is escaped by maud; figures come from a function the caller
//! gives (inline `data:` URIs in the file, `/blob/<digest>` on the page).

use super::coverage;
use super::table::{FIGURES, Missing, NAMES_NOTE, Results, Row, pm, study_comparison};
use super::variants::{self, Comparison, METRICS};
use maud::{DOCTYPE, Markup, PreEscaped, html};

/// The page's style sheet, shared by the live page (served as a file) and report.html
/// (inlined).
pub const STYLE: &str = include_str!("../../assets/page.css");

/// Where the image of a figure comes from, given its evaluation stage and file name; `None`
/// when it has no such figure.
pub type FigureSrc<'a> = &'a dyn Fn(&str, &str) -> Option<String>;

/// The whole results section: the table (beside the study's numbers when compared), the
/// objects left out, the per-ring table and every figure.
pub fn results(r: &Results, figure: FigureSrc) -> Markup {
    html! {
        h1 { (r.title) }
        @if let Some(note) = r.note { p.note { (note) } }
        p.muted { (NAMES_NOTE) }
        @match &r.variants {
            Some(c) => { (variants_table(c, r.compare_study)) }
            None => { (main_table(r.rows, r.compare_study)) }
        }
        (missing(r.missing))
        (left_out(r.rows))
        (per_ring(r.rows))
        (figures(r.rows, figure))
        @if let Some(c) = &r.variants { (sweep_figures(c, figure)) }
    }
}

/// One row per variant, the parameters that vary as columns; then each variant against its
/// base.
fn variants_table(c: &Comparison, compare_study: bool) -> Markup {
    html! {
        table.results #variants {
            tr {
                th { "evaluation" }
                @for p in &c.params { th.param { (p) } }
                th { "seeds" } th { "head" } th { "variant" } th { "test objects × views" }
                @for m in METRICS { th { (m.title) } }
                @if compare_study {
                    th.study { "study: same-object" } th.study { "study: cross-object" }
                    th.study { "study: text-to-image" } th.study { "study: MSE" }
                }
            }
            @for g in &c.groups {
                @let e = g.first();
                tr {
                    td { (g.variant.stage) }
                    @for p in &c.params { td.param { (g.param(p).unwrap_or("–")) } }
                    td.num { (g.seeds()) }
                    td { (e.head.head.name()) } td { (e.head.variant.name()) }
                    td.num { (e.metrics.objects) " × " (e.metrics.views) }
                    @for k in 0..METRICS.len() { td.num { (variants::cell(g, k)) } }
                    @if compare_study { (study_cells(e)) }
                }
            }
        }
        @for note in variants::notes(c) { p.muted { (note) } }
        @if c.groups.iter().any(|g| g.base.is_some()) {
            h2 #against { "Variants against their base" }
            table.results {
                tr {
                    th { "variant" } th { "base" } th { "seeds" }
                    @for m in METRICS { th { (m.title) } }
                }
                @for g in &c.groups {
                    @if let Some(base) = g.base {
                        tr {
                            td { (g.variant.name()) } td { (c.groups[base].variant.name()) }
                            td.num { (g.seeds()) " vs " (c.groups[base].seeds()) }
                            @for a in &g.against {
                                @match a {
                                    Some(a) => { td.num class=(format!("verdict {}", a.verdict.words().replace(' ', "-"))) { (a.cell()) } }
                                    None => { td { "–" } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The evaluations without a result (failed variants), and why.
fn missing(missing: &[Missing]) -> Markup {
    html! {
        @if !missing.is_empty() {
            h2 #missing { "Evaluations left out" }
            p { "These evaluations have no result; the table is without them." }
            table {
                tr { th { "evaluation" } th { "reason" } }
                @for m in missing {
                    tr { td { (m.evaluation) } td { (coverage::one_line(&m.reason)) } }
                }
            }
        }
    }
}

/// A figure per swept parameter.
fn sweep_figures(c: &Comparison, figure: FigureSrc) -> Markup {
    let swept = variants::swept_params(c);
    html! {
        @if !swept.is_empty() {
            h2 #sweeps { "Sweeps" }
            div.figures {
                @for (stage, param) in &swept {
                    @let file = variants::sweep_figure_file(stage, param);
                    @if let Some(src) = figure(variants::SWEEP_FIGURES, &file) {
                        figure.sweep {
                            img src=(src) alt=(format!("{stage}: each metric against {param}"));
                            figcaption { (stage) ": each metric against " (param) }
                        }
                    }
                }
            }
        }
    }
}

/// The study's four numbers beside a row, or dashes.
fn study_cells(e: &super::metrics::Evaluation) -> Markup {
    let mse = |x: Option<f64>| x.map(|x| format!("{x:.2}")).unwrap_or_else(|| "–".into());
    html! {
        @match study_comparison(e) {
            Ok(s) => {
                td.num { (pm(s.same_object.0, s.same_object.1)) }
                td.num { (pm(s.cross_object.0, s.cross_object.1)) }
                td.num { (pm(s.text_to_image.0, s.text_to_image.1)) }
                td.num { (mse(s.reconstruction_mse)) }
            }
            Err(_) => { td { "–" } td { "–" } td { "–" } td { "–" } }
        }
    }
}

fn main_table(rows: &[Row], compare_study: bool) -> Markup {
    html! {
        table.results {
            tr {
                th { "evaluation" } th { "head" } th { "variant" } th { "test objects × views" }
                th { "same-object (\"inter\")" } th { "cross-object (\"intra\")" }
                th { "text-to-image" } th { "retrieval top-1" } th { "top-5" }
                th { "reconstruction MSE" }
                @if compare_study {
                    th.study { "study: same-object" } th.study { "study: cross-object" }
                    th.study { "study: text-to-image" } th.study { "study: MSE" }
                }
            }
            @for r in rows { (main_row(r, compare_study)) }
        }
        @if compare_study {
            p.muted {
                "The study's numbers are its published table (206 test objects × 36 views, \
                 ViT-B/32); its split differs from this one, so the baseline row is the first \
                 check."
            }
            @for r in rows {
                @if let Err(why) = study_comparison(r.evaluation) {
                    p.muted { "No study column for " code { (r.stage) } ": " (why) "." }
                }
            }
        }
    }
}

fn main_row(r: &Row, compare_study: bool) -> Markup {
    let e = r.evaluation;
    let m = &e.metrics;
    let mse = |x: Option<f64>, digits: usize| {
        x.map(|x| format!("{x:.digits$}"))
            .unwrap_or_else(|| "–".into())
    };
    html! {
        tr {
            td { (r.stage) } td { (e.head.head.name()) } td { (e.head.variant.name()) }
            td.num { (m.objects) " × " (m.views) }
            td.num { (pm(m.same_object.mean, m.same_object.std)) }
            td.num { (pm(m.cross_object.mean, m.cross_object.std)) }
            td.num { (pm(m.text_to_image.mean, m.text_to_image.std)) }
            td.num { (format!("{:.3}", m.retrieval_top1)) }
            td.num { (format!("{:.3}", m.retrieval_top5)) }
            td.num { (mse(m.reconstruction_mse, 4)) }
            @if compare_study { (study_cells(e)) }
        }
    }
}

/// The objects left out, per account of evaluations that saw the same objects.
fn left_out(rows: &[Row]) -> Markup {
    let mut accounts: Vec<(Vec<&str>, &Vec<coverage::Coverage>)> = Vec::new();
    for r in rows {
        match accounts.iter_mut().find(|(_, c)| *c == &r.evaluation.parts) {
            Some((stages, _)) => stages.push(r.stage),
            None => accounts.push((vec![r.stage], &r.evaluation.parts)),
        }
    }
    html! {
        h2 #left-out { "Objects left out" }
        @for (stages, parts) in &accounts {
            @if accounts.len() > 1 { h3 { (stages.join(", ")) } }
            @let lost: usize = parts.iter().map(|p| p.left_out.len()).sum();
            @if parts.is_empty() {
                p { "Not recorded by this evaluation." }
            } @else if lost == 0 {
                p { "Every object of the split was used (" (coverage::counts(parts)) ")." }
            } @else {
                p { "Objects used: " (coverage::counts(parts)) ". " (lost)
                    " left out: they lacked embeddings (a download, render or embed failed)." }
                table {
                    tr { th { "reason" } th { "objects" } }
                    @for (reason, objects) in coverage::by_reason(parts) {
                        tr {
                            td { (coverage::one_line(reason)) }
                            td { (objects.len()) ": "
                                @for (i, (uid, part)) in objects.iter().enumerate() {
                                    @if i > 0 { ", " }
                                    code { (uid) } " (" (part) ")"
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn per_ring(rows: &[Row]) -> Markup {
    html! {
        h2 #rings { "Per elevation ring" }
        table {
            tr {
                th { "evaluation" } th { "polar (elevation)" } th { "views" }
                th { "same-object" } th { "cross-object" } th { "text-to-image" }
                th { "retrieval top-1" } th { "top-5" }
            }
            @for r in rows {
                @for ring in &r.evaluation.metrics.rings {
                    tr {
                        td { (r.stage) }
                        td { @match (ring.polar, ring.elevation) {
                            (Some(p), Some(e)) => { (p) "° (" (e) "°)" }
                            _ => { "–" }
                        } }
                        td.num { (ring.views) }
                        td.num { (pm(ring.same_object.mean, ring.same_object.std)) }
                        td.num { (pm(ring.cross_object.mean, ring.cross_object.std)) }
                        td.num { (pm(ring.text_to_image.mean, ring.text_to_image.std)) }
                        td.num { (format!("{:.3}", ring.retrieval_top1)) }
                        td.num { (format!("{:.3}", ring.retrieval_top5)) }
                    }
                }
            }
        }
    }
}

fn figures(rows: &[Row], figure: FigureSrc) -> Markup {
    html! {
        h2 #figures { "Figures" }
        @for r in rows {
            h3 { (r.stage) " (" (r.evaluation.head.head.name()) ")" }
            div.figures {
                @for (file, caption) in FIGURES {
                    @if r.figures.iter().any(|f| f == file) {
                        @if let Some(src) = figure(r.stage, file) {
                            figure {
                                img src=(src) alt=(caption);
                                figcaption { (caption) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A whole page that needs nothing else: the style inline, and a Content-Security-Policy that
/// forbids every request and every script, so that the file opens offline and nothing in it
/// (a caption, an error) can run.
pub fn standalone(title: &str, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="Content-Security-Policy"
                    content="default-src 'none'; img-src data:; style-src 'unsafe-inline'";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body { main { (body) } }
        }
    }
    .into_string()
}

/// A PNG as a `data:` URI, for a page that must not fetch anything.
pub fn png_data_uri(bytes: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}
