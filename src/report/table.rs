//! The results table: one row per evaluated head, as markdown (with the study's published
//! numbers beside ours when asked), CSV and JSON.

use super::coverage::{self, Coverage};
use super::metrics::Evaluation;
use serde::Serialize;
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

/// One evaluated head.
#[derive(Serialize)]
pub struct Row<'a> {
    /// The evaluate stage.
    pub stage: &'a str,
    pub evaluation: &'a Evaluation,
    /// The figure files it has (linked from results.md).
    #[serde(skip)]
    pub figures: Vec<String>,
}

/// What the study's names mean, said once above the table (in results.md and report.html).
pub const NAMES_NOTE: &str = "Same-object similarity is what the study calls \"inter-object\", \
    cross-object what it calls \"intra-object\" (its names are swapped). Mean ± std pooled \
    over all pairs; test split, all views.";

/// `mean ± std`, as every table writes it.
pub fn pm(mean: f64, std: f64) -> String {
    format!("{mean:.3} ± {std:.3}")
}

/// `results.md`.
pub fn markdown(title: &str, note: Option<&str>, rows: &[Row], compare_study: bool) -> String {
    let mut md = format!("# {title}\n\n");
    if let Some(note) = note {
        let _ = writeln!(md, "> {note}\n");
    }
    md.push_str(NAMES_NOTE);
    md.push_str("\n\n");
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
    md.push_str(&left_out_section(rows));
    md.push_str(&rings_and_figures(rows));
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
            match study_comparison(e) {
                Ok(s) => {
                    let _ = write!(
                        md,
                        " {} | {} | {} | {} |",
                        pm(s.same_object.0, s.same_object.1),
                        pm(s.cross_object.0, s.cross_object.1),
                        pm(s.text_to_image.0, s.text_to_image.1),
                        s.reconstruction_mse
                            .map(|x| format!("{x:.2}"))
                            .unwrap_or_else(|| "–".into()),
                    );
                }
                Err(_) => md.push_str(" – | – | – | – |"),
            }
        }
        md.push('\n');
    }
    if compare_study {
        md.push_str(
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

/// `results.csv`.
pub fn csv(rows: &[Row]) -> anyhow::Result<Vec<u8>> {
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
