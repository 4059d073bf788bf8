//! The results table: one row per evaluated head, as markdown (with the study's published
//! numbers beside ours when asked), CSV and JSON.

use super::coverage::{self, Coverage};
use super::metrics::Evaluation;
pub use super::row::{Missing, Row, pm};
use super::variants::{self, Comparison, METRICS};
use std::fmt::Write as _;

/// The study's published table (mean, std), by head: same-object ("inter"), cross-object
/// ("intra"), text-to-image.
#[derive(Debug)]
pub struct StudyRow {
    pub head: &'static str,
    pub same_object: (f64, f64),
    pub cross_object: (f64, f64),
    pub text_to_image: (f64, f64),
    pub reconstruction_mse: Option<f64>,
}

pub const STUDY: &[StudyRow] = &[
    StudyRow {
        head: "identity",
        same_object: (0.893, 0.067),
        cross_object: (0.710, 0.069),
        text_to_image: (0.266, 0.041),
        reconstruction_mse: None,
    },
    StudyRow {
        head: "object",
        same_object: (0.997, 0.003),
        cross_object: (0.978, 0.015),
        text_to_image: (0.822, 0.087),
        reconstruction_mse: None,
    },
    StudyRow {
        head: "contrastive",
        same_object: (0.895, 0.266),
        cross_object: (0.021, 0.676),
        text_to_image: (0.137, 0.139),
        reconstruction_mse: None,
    },
    StudyRow {
        head: "autoencoder",
        same_object: (0.965, 0.043),
        cross_object: (0.827, 0.094),
        text_to_image: (0.323, 0.039),
        reconstruction_mse: Some(0.17),
    },
];

pub fn study_row(head: &str) -> Option<&'static StudyRow> {
    STUDY.iter().find(|r| r.head == head)
}

/// The fewest test objects a row needs before the study's numbers are shown beside it (the
/// study's test split had 206; with a handful of objects the pooled means are noise).
pub const STUDY_LEAST_OBJECTS: usize = 50;

/// Views per object in the study's evaluation (12 azimuths x polar 20°, 50°, 80°).
pub const STUDY_VIEWS: usize = 36;

/// The study's row to show beside an evaluation, or why none is: the same head, the same
/// formulas (`variant = "study"`; the baseline has none) and a test split large enough, with
/// every one of the study's views.
pub fn study_comparison(e: &Evaluation) -> Result<&'static StudyRow, String> {
    use crate::heads::{HeadKind, Variant};
    let head = e.head.head;
    let row = study_row(head.name())
        .ok_or_else(|| format!("the study published no `{}` head", head.name()))?;
    if head != HeadKind::Identity && e.head.variant != Variant::Study {
        return Err(format!(
            "variant = \"{}\" changes the head's formulas; the study's numbers are for \
             variant = \"study\"",
            e.head.variant.name()
        ));
    }
    let m = &e.metrics;
    if m.objects < STUDY_LEAST_OBJECTS {
        return Err(format!(
            "{} test object{} (the study had 206; at least {STUDY_LEAST_OBJECTS} are needed for \
             a comparison to mean anything)",
            m.objects,
            if m.objects == 1 { "" } else { "s" }
        ));
    }
    if m.views != STUDY_VIEWS {
        return Err(format!(
            "{} views per object; the study's numbers are over its {STUDY_VIEWS} (12 azimuths \
             x polar 20°, 50°, 80°)",
            m.views
        ));
    }
    Ok(row)
}

/// What the study's names mean, said once above the table (in results.md and report.html).
pub const NAMES_NOTE: &str = "Same-object similarity is what the study calls \"inter-object\", \
    cross-object what it calls \"intra-object\" (its names are swapped). Mean ± std pooled \
    over all pairs; test split, all views.";

/// What results.md, results.csv, results.json and report.html are written from.
pub struct Results<'a> {
    pub title: &'a str,
    pub note: Option<&'a str>,
    pub rows: &'a [Row<'a>],
    pub compare_study: bool,
    /// Evaluations without a result (failed variants), left out of the table.
    pub missing: &'a [Missing],
    /// The rows grouped into variants, once for every output; `None` when no row is one.
    pub variants: Option<Comparison<'a>>,
}

impl<'a> Results<'a> {
    pub fn new(
        (title, note): (&'a str, Option<&'a str>),
        rows: &'a [Row<'a>],
        compare_study: bool,
        missing: &'a [Missing],
    ) -> Results<'a> {
        Results {
            title,
            note,
            rows,
            compare_study,
            missing,
            variants: variants::compare(rows),
        }
    }
}

/// `results.md`.
pub fn markdown(r: &Results) -> String {
    let (rows, compare_study) = (r.rows, r.compare_study);
    let mut md = format!("# {}\n\n", r.title);
    if let Some(note) = r.note {
        let _ = writeln!(md, "> {note}\n");
    }
    md.push_str(NAMES_NOTE);
    md.push_str("\n\n");
    match &r.variants {
        Some(c) => md.push_str(&variants_markdown(c, compare_study)),
        None => md.push_str(&plain_table(rows, compare_study)),
    }
    md.push_str(&missing_section(r.missing));
    md.push_str(&left_out_section(rows));
    md.push_str(&rings_and_figures(rows));
    if let Some(c) = &r.variants {
        md.push_str(&sweep_figures(c));
    }
    md
}

/// The table of one row per evaluation, beside the study's numbers when compared.
fn plain_table(rows: &[Row], compare_study: bool) -> String {
    let mut md = String::new();
    let mut header = String::from(
        "| evaluation | head | variant | test objects × views | same-object (\"inter\") | \
         cross-object (\"intra\") | text-to-image | retrieval top-1 | top-5 | reconstruction MSE |",
    );
    let mut rule = String::from("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    if compare_study {
        header.push_str(
            " study: same-object | study: cross-object | study: text-to-image | study: MSE |",
        );
        rule.push_str(" --- | --- | --- | --- |");
    }
    let _ = writeln!(md, "{header}\n{rule}");
    md.push_str(&main_rows(rows, compare_study));
    md
}

/// The study's four numbers beside a row, or dashes.
fn study_cells(e: &Evaluation) -> String {
    match study_comparison(e) {
        Ok(s) => format!(
            " {} | {} | {} | {} |",
            pm(s.same_object.0, s.same_object.1),
            pm(s.cross_object.0, s.cross_object.1),
            pm(s.text_to_image.0, s.text_to_image.1),
            s.reconstruction_mse
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "–".into()),
        ),
        Err(_) => " – | – | – | – |".to_string(),
    }
}

/// One row per variant (its seeds together), the parameters that vary as columns; then each
/// variant against its base.
fn variants_markdown(c: &Comparison, compare_study: bool) -> String {
    let mut md = String::new();
    let mut header = String::from("| evaluation |");
    for p in &c.params {
        let _ = write!(header, " {p} |");
    }
    header.push_str(" seeds | head | variant | test objects × views |");
    for m in METRICS {
        let _ = write!(header, " {} |", m.title);
    }
    if compare_study {
        header.push_str(
            " study: same-object | study: cross-object | study: text-to-image | study: MSE |",
        );
    }
    let columns = header.matches('|').count() - 1;
    let _ = writeln!(md, "{header}\n|{}", " --- |".repeat(columns));
    for g in &c.groups {
        let e = g.first();
        let _ = write!(md, "| {} |", g.variant.stage);
        for p in &c.params {
            let _ = write!(md, " {} |", g.param(p).unwrap_or("–"));
        }
        let _ = write!(
            md,
            " {} | {} | {} | {} × {} |",
            g.seeds(),
            e.head.head.name(),
            e.head.variant.name(),
            e.metrics.objects,
            e.metrics.views
        );
        for k in 0..METRICS.len() {
            let _ = write!(md, " {} |", variants::cell(g, k));
        }
        if compare_study {
            md.push_str(&study_cells(e));
        }
        md.push('\n');
    }
    if compare_study {
        md.push_str(&study_notes(c.groups.iter().map(|g| g.rows[0])));
    }
    for note in variants::notes(c) {
        let _ = writeln!(md, "\n{note}");
    }
    if c.groups.iter().any(|g| g.base.is_some()) {
        md.push_str("\n## Variants against their base\n\n| variant | base | seeds |");
        for m in METRICS {
            let _ = write!(md, " {} |", m.title);
        }
        let _ = writeln!(md, "\n|{}", " --- |".repeat(3 + METRICS.len()));
        for g in &c.groups {
            let Some(base) = g.base else { continue };
            let _ = write!(
                md,
                "| {} | {} | {} vs {} |",
                g.variant.name(),
                c.groups[base].variant.name(),
                g.seeds(),
                c.groups[base].seeds()
            );
            for a in &g.against {
                let _ = write!(md, " {} |", a.as_ref().map_or("–".into(), |a| a.cell()));
            }
            md.push('\n');
        }
    }
    md
}

/// "Evaluations left out": the evaluations (failed variants) the table lacks, and why.
fn missing_section(missing: &[Missing]) -> String {
    if missing.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\n## Evaluations left out\n\nThese evaluations have no result; the table is \
         without them.\n\n| evaluation | reason |\n| --- | --- |\n",
    );
    for m in missing {
        let _ = writeln!(
            md,
            "| {} | {} |",
            m.evaluation,
            coverage::one_line(&m.reason).replace('|', "\\|")
        );
    }
    md
}

/// A figure per swept parameter: each metric against its values.
fn sweep_figures(c: &Comparison) -> String {
    let swept = variants::swept_params(c);
    if swept.is_empty() {
        return String::new();
    }
    let mut md = String::from("\n## Sweeps\n");
    for (stage, param) in swept {
        let _ = writeln!(
            md,
            "\n### {stage}: {param}\n\n![each metric against {param}](figures/{}/{})",
            variants::SWEEP_FIGURES,
            variants::sweep_figure_file(&stage, &param)
        );
    }
    md
}

/// The rows of the main table (with the study's columns when compared), and the notes that
/// say why a row has no study column.
fn main_rows(rows: &[Row], compare_study: bool) -> String {
    let mut md = String::new();
    for r in rows {
        let e = r.evaluation;
        let m = &e.metrics;
        let _ = write!(
            md,
            "| {} | {} | {} | {} × {} | {} | {} | {} | {:.3} | {:.3} | {} |",
            r.stage,
            e.head.head.name(),
            e.head.variant.name(),
            m.objects,
            m.views,
            pm(m.same_object.mean, m.same_object.std),
            pm(m.cross_object.mean, m.cross_object.std),
            pm(m.text_to_image.mean, m.text_to_image.std),
            m.retrieval_top1,
            m.retrieval_top5,
            m.reconstruction_mse
                .map(|x| format!("{x:.4}"))
                .unwrap_or_else(|| "–".into()),
        );
        if compare_study {
            md.push_str(&study_cells(e));
        }
        md.push('\n');
    }
    if compare_study {
        md.push_str(&study_notes(rows));
    }
    md
}

/// Under a table compared with the study: what its numbers are, and why a row has none.
fn study_notes<'a>(rows: impl IntoIterator<Item = &'a Row<'a>>) -> String {
    let mut md = String::from(
        "\nThe study's numbers are its published table (206 test objects × 36 views, \
         ViT-B/32). Its split came from NumPy's shuffle (`np.random.shuffle`, seed 42) over \
         its own list of objects, so the test objects differ; the baseline row depends only \
         on data, rendering and CLIP and is the first check.\n",
    );
    for r in rows {
        if let Err(why) = study_comparison(r.evaluation) {
            let _ = writeln!(md, "\nNo study column for `{}`: {why}.", r.stage);
        }
    }
    md
}

/// The per-ring table and the figures of each evaluation.
fn rings_and_figures(rows: &[Row]) -> String {
    let mut md = String::new();
    md.push_str("\n## Per elevation ring\n\n");
    md.push_str(
        "| evaluation | polar (elevation) | views | same-object | cross-object | text-to-image | \
         retrieval top-1 | top-5 |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        for ring in &r.evaluation.metrics.rings {
            let angle = match (ring.polar, ring.elevation) {
                (Some(p), Some(e)) => format!("{p}° ({e}°)"),
                _ => "–".into(),
            };
            let _ = writeln!(
                md,
                "| {} | {angle} | {} | {} | {} | {} | {:.3} | {:.3} |",
                r.stage,
                ring.views,
                pm(ring.same_object.mean, ring.same_object.std),
                pm(ring.cross_object.mean, ring.cross_object.std),
                pm(ring.text_to_image.mean, ring.text_to_image.std),
                ring.retrieval_top1,
                ring.retrieval_top5,
            );
        }
    }
    md.push_str("\n## Figures\n");
    for r in rows {
        let _ = writeln!(
            md,
            "\n### {} ({})\n",
            r.stage,
            r.evaluation.head.head.name()
        );
        for (file, caption) in FIGURES {
            if r.figures.iter().any(|f| f == file) {
                let _ = writeln!(md, "![{caption}](figures/{}/{file})", r.stage);
            }
        }
    }
    md
}

/// "Objects left out": per part, how many objects of how many were used, and the objects
/// left out grouped by reason. Evaluations that saw the same objects share one account.
fn left_out_section(rows: &[Row]) -> String {
    let mut md = String::from("\n## Objects left out\n\n");
    let mut accounts: Vec<(Vec<&str>, &Vec<Coverage>)> = Vec::new();
    for r in rows {
        let objects = &r.evaluation.parts;
        match accounts.iter_mut().find(|(_, c)| *c == objects) {
            Some((stages, _)) => stages.push(r.stage),
            None => accounts.push((vec![r.stage], objects)),
        }
    }
    for (stages, parts) in &accounts {
        if accounts.len() > 1 {
            let _ = writeln!(md, "### {}\n", stages.join(", "));
        }
        if parts.is_empty() {
            md.push_str("Not recorded by this evaluation.\n\n");
            continue;
        }
        let counts = coverage::counts(parts);
        let lost: usize = parts.iter().map(|p| p.left_out.len()).sum();
        if lost == 0 {
            let _ = writeln!(md, "Every object of the split was used ({counts}).\n");
            continue;
        }
        let _ = writeln!(
            md,
            "Objects used: {counts}. {lost} object{} lacked embeddings (a download, render or \
             embed failed) and {} left out, as the study's scripts dropped objects whose \
             renders failed; the split itself is unchanged.\n",
            if lost == 1 { "" } else { "s" },
            if lost == 1 { "was" } else { "were" }
        );
        md.push_str("| reason | objects |\n| --- | --- |\n");
        for (reason, objects) in coverage::by_reason(parts) {
            let listed: Vec<String> = objects
                .iter()
                .map(|(uid, part)| format!("`{uid}` ({part})"))
                .collect();
            let _ = writeln!(
                md,
                "| {} | {}: {} |",
                coverage::one_line(reason).replace('|', "\\|"),
                listed.len(),
                listed.join(", ")
            );
        }
        md.push('\n');
    }
    md
}

/// Figures each evaluation draws (the elevation plot only with more than one ring).
pub const FIGURES: &[(&str, &str)] = &[
    ("heatmap_mean.png", "mean cosine per view pair"),
    ("heatmap_std.png", "std over objects per view pair"),
    ("similarity_matrix.png", "texts then images"),
    (
        "by_azimuth_difference.png",
        "by azimuth difference, within rings",
    ),
    ("by_view_angle.png", "by angle between the cameras"),
    ("by_elevation_difference.png", "by elevation difference"),
    ("training_curves.png", "training curves"),
];

/// `results.csv`: one row per evaluation, or with variants one row per variant.
pub fn csv(r: &Results) -> anyhow::Result<Vec<u8>> {
    if let Some(c) = &r.variants {
        return variants_csv(c);
    }
    let rows = r.rows;
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "evaluation",
        "head",
        "variant",
        "test_objects",
        "views",
        "same_object_mean",
        "same_object_std",
        "cross_object_mean",
        "cross_object_std",
        "text_to_image_mean",
        "text_to_image_std",
        "retrieval_top1",
        "retrieval_top5",
        "reconstruction_mse",
    ])?;
    for r in rows {
        let e = r.evaluation;
        let m = &e.metrics;
        w.write_record([
            r.stage.to_string(),
            e.head.head.name().to_string(),
            e.head.variant.name().to_string(),
            m.objects.to_string(),
            m.views.to_string(),
            m.same_object.mean.to_string(),
            m.same_object.std.to_string(),
            m.cross_object.mean.to_string(),
            m.cross_object.std.to_string(),
            m.text_to_image.mean.to_string(),
            m.text_to_image.std.to_string(),
            m.retrieval_top1.to_string(),
            m.retrieval_top5.to_string(),
            m.reconstruction_mse
                .map(|x| x.to_string())
                .unwrap_or_default(),
        ])?;
    }
    Ok(w.into_inner()?)
}

/// `results.csv` with variants: one row per variant, its varying parameters as columns, each
/// metric's mean and std (over seeds when `spread` is `seeds`, over pairs when `pairs`), and
/// each metric's verdict against the variant's base.
fn variants_csv(c: &Comparison) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = vec!["evaluation".into()];
    header.extend(c.params.iter().cloned());
    header.extend(
        [
            "seeds",
            "spread",
            "head",
            "variant",
            "test_objects",
            "views",
        ]
        .map(String::from),
    );
    for m in METRICS {
        header.push(format!("{}_mean", m.key));
        header.push(format!("{}_std", m.key));
    }
    header.push("base".into());
    for m in METRICS {
        header.push(format!("{}_difference", m.key));
        header.push(format!("{}_verdict", m.key));
    }
    w.write_record(&header)?;
    for g in &c.groups {
        let e = g.first();
        let mut record: Vec<String> = vec![g.variant.stage.clone()];
        record.extend(
            c.params
                .iter()
                .map(|p| g.param(p).unwrap_or_default().to_string()),
        );
        let spread = if g.seeds() > 1 { "seeds" } else { "pairs" };
        record.extend([
            g.seeds().to_string(),
            spread.to_string(),
            e.head.head.name().to_string(),
            e.head.variant.name().to_string(),
            e.metrics.objects.to_string(),
            e.metrics.views.to_string(),
        ]);
        for (m, over) in METRICS.iter().zip(&g.metrics) {
            let std = match over {
                Some(over) if over.n > 1 => Some(over.std),
                _ => (m.pooled_std)(e),
            };
            record.push(
                over.as_ref()
                    .map(|o| o.mean.to_string())
                    .unwrap_or_default(),
            );
            record.push(std.map(|s| s.to_string()).unwrap_or_default());
        }
        record.push(
            g.base
                .map(|b| c.groups[b].variant.name())
                .unwrap_or_default(),
        );
        for a in &g.against {
            record.push(
                a.as_ref()
                    .map(|a| a.difference.to_string())
                    .unwrap_or_default(),
            );
            record.push(
                a.as_ref()
                    .map(|a| a.verdict.words().to_string())
                    .unwrap_or_default(),
            );
        }
        w.write_record(&record)?;
    }
    Ok(w.into_inner()?)
}
