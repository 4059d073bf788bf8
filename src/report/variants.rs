//! Variants in the report: evaluations of one variant over several seeds as one row, mean ±
//! std over the seeds; and each variant against its stage's base variant, with a verdict
//! (better, worse, or within the noise of the seeds) per metric.
//!
//! The method, said in docs/variants.md too: over a variant's seeds, the mean of each metric
//! and its sample standard deviation (n − 1). A difference from the base variant is a verdict
//! when it exceeds twice its standard error, √(s²₁/n₁ + s²₂/n₂) (Welch's: about a 95% interval
//! when the seeds' results are roughly normal). With one seed on either side there is no
//! estimate of the noise, and no verdict; with fewer than [`FEW_SEEDS`] the spread is itself
//! uncertain, and the report says so.

use super::metrics::Evaluation;
use super::row::Row;
pub use super::row::VariantOf;
use serde::Serialize;

/// Below this many seeds, a standard deviation is itself too uncertain to lean on (the
/// report says so beside the verdicts).
pub const FEW_SEEDS: usize = 5;

/// A metric the report compares variants on, and which way is better.
pub struct Metric {
    /// As the tables head its column.
    pub title: &'static str,
    /// As CSV and JSON name it.
    pub key: &'static str,
    pub higher_is_better: bool,
    pub of: fn(&Evaluation) -> Option<f64>,
    /// Its std pooled over pairs of views within one evaluation (the similarities have
    /// one): what a variant with one seed shows beside its mean.
    pub pooled_std: fn(&Evaluation) -> Option<f64>,
    /// Decimals a table gives it.
    pub digits: usize,
}

/// Same-object similarity up (views of one object agree), cross-object down (objects stay
/// apart), text-to-image up (captions still match), retrieval up, reconstruction error down.
pub const METRICS: &[Metric] = &[
    Metric {
        title: "same-object",
        key: "same_object",
        higher_is_better: true,
        of: |e| Some(e.metrics.same_object.mean),
        pooled_std: |e| Some(e.metrics.same_object.std),
        digits: 3,
    },
    Metric {
        title: "cross-object",
        key: "cross_object",
        higher_is_better: false,
        of: |e| Some(e.metrics.cross_object.mean),
        pooled_std: |e| Some(e.metrics.cross_object.std),
        digits: 3,
    },
    Metric {
        title: "text-to-image",
        key: "text_to_image",
        higher_is_better: true,
        of: |e| Some(e.metrics.text_to_image.mean),
        pooled_std: |e| Some(e.metrics.text_to_image.std),
        digits: 3,
    },
    Metric {
        title: "retrieval top-1",
        key: "retrieval_top1",
        higher_is_better: true,
        of: |e| Some(e.metrics.retrieval_top1),
        pooled_std: |_| None,
        digits: 3,
    },
    Metric {
        title: "top-5",
        key: "retrieval_top5",
        higher_is_better: true,
        of: |e| Some(e.metrics.retrieval_top5),
        pooled_std: |_| None,
        digits: 3,
    },
    Metric {
        title: "reconstruction MSE",
        key: "reconstruction_mse",
        higher_is_better: false,
        of: |e| e.metrics.reconstruction_mse,
        pooled_std: |_| None,
        digits: 4,
    },
];

/// A metric over a variant's seeds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OverSeeds {
    pub mean: f64,
    /// Sample standard deviation (n − 1); 0 for one seed.
    pub std: f64,
    pub n: usize,
    pub values: Vec<f64>,
}

impl OverSeeds {
    fn of(values: Vec<f64>) -> OverSeeds {
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n.max(1) as f64;
        let std = if n > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        OverSeeds {
            mean,
            std,
            n,
            values,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Better,
    Worse,
    WithinNoise,
    /// One seed on either side: nothing says how large the noise is.
    NoNoiseEstimate,
}

impl Verdict {
    pub fn words(self) -> &'static str {
        match self {
            Verdict::Better => "better",
            Verdict::Worse => "worse",
            Verdict::WithinNoise => "within noise",
            Verdict::NoNoiseEstimate => "one seed: no verdict",
        }
    }
}

/// One metric of a variant against its base.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Against {
    pub difference: f64,
    /// The standard error of the difference (0 with one seed on either side).
    pub standard_error: f64,
    pub verdict: Verdict,
}

impl Against {
    /// `+0.012 (better)`.
    pub fn cell(&self) -> String {
        // A difference that rounds to zero is written +0.000, not -0.000.
        let shown = if self.difference.abs() < 5e-4 {
            0.0
        } else {
            self.difference
        };
        format!("{shown:+.3} ({})", self.verdict.words())
    }
}

/// One row of the variants' table: a variant with all its seeds.
pub struct Group<'a> {
    pub variant: VariantOf,
    /// Its evaluations, one per seed that has a result.
    pub rows: Vec<&'a Row<'a>>,
    /// Per metric of [`METRICS`] (none when the head has no such metric).
    pub metrics: Vec<Option<OverSeeds>>,
    /// Per metric, against the base variant of its stage (none for the base itself, or
    /// when its stage has one variant).
    pub against: Vec<Option<Against>>,
    /// Index in [`Comparison::groups`] of its base variant, when it is compared with one.
    pub base: Option<usize>,
}

impl Group<'_> {
    pub fn seeds(&self) -> usize {
        self.rows.len()
    }
    /// The first seed's evaluation: what the head, its formulas and the objects are.
    pub fn first(&self) -> &Evaluation {
        self.rows[0].evaluation
    }
    pub fn param(&self, name: &str) -> Option<&str> {
        self.variant
            .params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every variant of the report, grouped over seeds and compared with its base.
pub struct Comparison<'a> {
    pub groups: Vec<Group<'a>>,
    /// The parameters that vary, in the order they first appear: the table's columns.
    pub params: Vec<String>,
    /// Whether any variant has more than one seed.
    pub seeded: bool,
    /// The fewest seeds of a variant with more than one.
    pub fewest_seeds: Option<usize>,
}

/// The rows grouped into variants; `None` when no row is a variant (the report is then the
/// plain table of one row per evaluation).
pub fn compare<'a>(rows: &'a [Row<'a>]) -> Option<Comparison<'a>> {
    if rows.iter().all(|r| r.variant.is_none()) {
        return None;
    }
    let mut groups: Vec<Group> = Vec::new();
    for row in rows {
        let mut variant = row.variant.cloned().unwrap_or_else(|| VariantOf {
            stage: row.stage.to_string(),
            params: Vec::new(),
            seeds: Vec::new(),
        });
        variant.seeds.clear();
        match groups.iter_mut().find(|g| g.variant == variant) {
            Some(g) => g.rows.push(row),
            None => groups.push(Group {
                variant,
                rows: vec![row],
                metrics: Vec::new(),
                against: Vec::new(),
                base: None,
            }),
        }
    }
    for g in &mut groups {
        g.metrics = METRICS
            .iter()
            .map(|m| {
                let values: Option<Vec<f64>> =
                    g.rows.iter().map(|r| (m.of)(r.evaluation)).collect();
                values.filter(|v| !v.is_empty()).map(OverSeeds::of)
            })
            .collect();
    }
    for i in 0..groups.len() {
        let stage = &groups[i].variant.stage;
        let base = groups
            .iter()
            .position(|g| &g.variant.stage == stage)
            .expect("itself");
        let siblings = groups.iter().filter(|g| &g.variant.stage == stage).count();
        if base == i || siblings < 2 {
            groups[i].against = vec![None; METRICS.len()];
            continue;
        }
        let against: Vec<Option<Against>> = METRICS
            .iter()
            .enumerate()
            .map(
                |(k, m)| match (&groups[base].metrics[k], &groups[i].metrics[k]) {
                    (Some(b), Some(v)) => Some(verdict(b, v, m.higher_is_better)),
                    _ => None,
                },
            )
            .collect();
        groups[i].against = against;
        groups[i].base = Some(base);
    }
    let mut params: Vec<String> = Vec::new();
    for g in &groups {
        for (k, _) in &g.variant.params {
            if !params.contains(k) {
                params.push(k.clone());
            }
        }
    }
    let seeded = groups.iter().any(|g| g.seeds() > 1);
    let fewest_seeds = groups.iter().map(|g| g.seeds()).filter(|&n| n > 1).min();
    Some(Comparison {
        groups,
        params,
        seeded,
        fewest_seeds,
    })
}

/// A variant's metric against its base's: better or worse when the difference exceeds twice
/// its standard error, else within the noise; no verdict without two seeds on each side.
pub fn verdict(base: &OverSeeds, variant: &OverSeeds, higher_is_better: bool) -> Against {
    let difference = variant.mean - base.mean;
    if base.n < 2 || variant.n < 2 {
        return Against {
            difference,
            standard_error: 0.0,
            verdict: Verdict::NoNoiseEstimate,
        };
    }
    let standard_error =
        (base.std.powi(2) / base.n as f64 + variant.std.powi(2) / variant.n as f64).sqrt();
    let verdict = if difference.abs() <= 2.0 * standard_error {
        Verdict::WithinNoise
    } else if (difference > 0.0) == higher_is_better {
        Verdict::Better
    } else {
        Verdict::Worse
    };
    Against {
        difference,
        standard_error,
        verdict,
    }
}

/// The lines said under the variants' table: what the ± means, and how far to trust it.
pub fn notes(c: &Comparison) -> Vec<String> {
    let mut notes = Vec::new();
    if c.seeded {
        notes.push(
            "Where a variant has several seeds, each cell is the mean over its seeds ± their \
             standard deviation (n − 1); where it has one, the mean ± std pooled over pairs, \
             as in the study."
                .to_string(),
        );
    }
    if c.groups.iter().any(|g| g.base.is_some()) {
        notes.push(format!(
            "Each variant is compared with the first variant of its stage (the first value of \
             each sweep): better or worse when the difference exceeds twice its standard error \
             over the seeds, else within noise. Better means higher for {}, lower for {}.",
            METRICS
                .iter()
                .filter(|m| m.higher_is_better)
                .map(|m| m.title)
                .collect::<Vec<_>>()
                .join(", "),
            METRICS
                .iter()
                .filter(|m| !m.higher_is_better)
                .map(|m| m.title)
                .collect::<Vec<_>>()
                .join(" and ")
        ));
    }
    match c.fewest_seeds {
        Some(n) if n < FEW_SEEDS => notes.push(format!(
            "With {n} seeds the spread is itself uncertain: a standard deviation from fewer than \
             {FEW_SEEDS} seeds can be off by half or more, and so can the verdicts."
        )),
        None if c.groups.iter().any(|g| g.base.is_some()) => notes.push(format!(
            "Every variant has one seed, so nothing says how large the noise is and no \
             difference gets a verdict: sweep the seed ({FEW_SEEDS} values or more) to get one."
        )),
        _ => {}
    }
    notes
}

/// A metric's cell in the variants' table: over seeds when there are several, else as the
/// plain table writes it (`mean ± std` pooled over pairs for the similarities).
pub fn cell(group: &Group, k: usize) -> String {
    let Some(m) = &group.metrics[k] else {
        return "–".into();
    };
    if m.n > 1 {
        return super::row::pm(m.mean, m.std);
    }
    let metric = &METRICS[k];
    match (metric.pooled_std)(group.first()) {
        Some(std) => super::row::pm(m.mean, std),
        None => format!("{:.*}", metric.digits, m.mean),
    }
}

/// The swept parameters of each stage with more than one variant, `(stage, param)`: one
/// figure each.
pub fn swept_params(c: &Comparison) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for g in &c.groups {
        for (k, _) in &g.variant.params {
            let pair = (g.variant.stage.clone(), k.clone());
            let values: Vec<&str> = c
                .groups
                .iter()
                .filter(|o| o.variant.stage == g.variant.stage)
                .filter_map(|o| o.param(k))
                .collect();
            let distinct = values
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            if distinct > 1 && !out.contains(&pair) {
                out.push(pair);
            }
        }
    }
    out
}

/// The file name of a sweep's figure, under `figures/sweeps/`.
pub fn sweep_figure_file(stage: &str, param: &str) -> String {
    format!("{stage}.{param}.png")
}

/// The variants for results.json: each with its parameters, seeds, metrics over seeds, and
/// its verdicts against its base.
pub fn to_json(c: &Comparison) -> serde_json::Value {
    let list: Vec<serde_json::Value> = c
        .groups
        .iter()
        .map(|g| {
            let metrics: serde_json::Map<String, serde_json::Value> = METRICS
                .iter()
                .zip(&g.metrics)
                .filter_map(|(m, v)| Some((m.key.to_string(), serde_json::json!(v.as_ref()?))))
                .collect();
            let against: serde_json::Map<String, serde_json::Value> = METRICS
                .iter()
                .zip(&g.against)
                .filter_map(|(m, a)| Some((m.key.to_string(), serde_json::json!(a.as_ref()?))))
                .collect();
            let params: serde_json::Map<String, serde_json::Value> = g
                .variant
                .params
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::json!(v)))
                .collect();
            serde_json::json!({
                "name": g.variant.name(),
                "stage": g.variant.stage,
                "params": params,
                "seeds": g.seeds(),
                "evaluations": g.rows.iter().map(|r| r.stage).collect::<Vec<_>>(),
                "metrics": metrics,
                "base": g.base.map(|b| c.groups[b].variant.name()),
                "against": against,
            })
        })
        .collect();
    serde_json::json!(list)
}

/// A line's points in their order along the axis, so that it is drawn from left to right.
fn sorted_by_value(mut points: Vec<(usize, f64, f64)>) -> Vec<(usize, f64, f64)> {
    points.sort_by_key(|p| p.0);
    points
}

/// The folder of the sweeps' figures among the report's figures.
pub const SWEEP_FIGURES: &str = "sweeps";

/// The figure of one swept parameter of one stage: a panel per metric, the parameter's values
/// along the axis, a line per combination of the stage's other swept values, error bars of
/// the std over seeds where seeds were swept.
pub fn sweep_figure(c: &Comparison, stage: &str, param: &str) -> anyhow::Result<Vec<u8>> {
    use super::figures::{ErrorSeries, Panel, sweep_panels};
    let groups: Vec<&Group> = c
        .groups
        .iter()
        .filter(|g| g.variant.stage == stage && g.param(param).is_some())
        .collect();
    let mut values: Vec<String> = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    let others = |g: &Group| {
        g.variant
            .params
            .iter()
            .filter(|(k, _)| k != param)
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    for g in &groups {
        let value = g.param(param).expect("filtered").to_string();
        if !values.contains(&value) {
            values.push(value);
        }
        if !lines.contains(&others(g)) {
            lines.push(others(g));
        }
    }
    // Numbers in their order along the axis; anything else in the order swept.
    let numbers: Option<Vec<f64>> = values.iter().map(|v| v.parse::<f64>().ok()).collect();
    if let Some(numbers) = numbers {
        let mut order: Vec<usize> = (0..values.len()).collect();
        order.sort_by(|&a, &b| numbers[a].total_cmp(&numbers[b]));
        values = order.into_iter().map(|i| values[i].clone()).collect();
    }
    let panels: Vec<Panel> = METRICS
        .iter()
        .enumerate()
        .filter(|(k, _)| groups.iter().any(|g| g.metrics[*k].is_some()))
        .map(|(k, m)| Panel {
            title: format!(
                "{} ({} is better)",
                m.title,
                if m.higher_is_better {
                    "higher"
                } else {
                    "lower"
                }
            ),
            series: lines
                .iter()
                .map(|line| ErrorSeries {
                    name: if line.is_empty() {
                        stage.to_string()
                    } else {
                        line.clone()
                    },
                    points: sorted_by_value(
                        groups
                            .iter()
                            .filter(|g| &others(g) == line)
                            .filter_map(|g| {
                                let at = values
                                    .iter()
                                    .position(|v| Some(v.as_str()) == g.param(param))?;
                                let m = g.metrics[k].as_ref()?;
                                Some((at, m.mean, if m.n > 1 { m.std } else { 0.0 }))
                            })
                            .collect(),
                    ),
                })
                .collect(),
        })
        .collect();
    let seeds = if c.seeded { ", ± std over seeds" } else { "" };
    sweep_panels(
        &format!("{stage}: each metric against {param}{seeds}"),
        param,
        &values,
        &panels,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn over(values: &[f64]) -> OverSeeds {
        OverSeeds::of(values.to_vec())
    }

    #[test]
    fn a_difference_beyond_twice_its_standard_error_is_a_verdict() {
        let base = over(&[0.80, 0.81, 0.79, 0.80, 0.80]);
        let better = over(&[0.90, 0.91, 0.89, 0.90, 0.90]);
        let close = over(&[0.803, 0.79, 0.81, 0.80, 0.805]);
        assert_eq!(verdict(&base, &better, true).verdict, Verdict::Better);
        assert_eq!(verdict(&base, &better, false).verdict, Verdict::Worse);
        assert_eq!(verdict(&base, &close, true).verdict, Verdict::WithinNoise);
        assert_eq!(
            verdict(&over(&[0.8]), &better, true).verdict,
            Verdict::NoNoiseEstimate
        );
        let a = verdict(&base, &better, true);
        assert!((a.difference - 0.1).abs() < 1e-12);
        // Sample std of [0.8, 0.81, 0.79, 0.8, 0.8] is sqrt(0.0002 / 4).
        let s = (0.0002f64 / 4.0).sqrt();
        assert!((a.standard_error - (2.0 * s * s / 5.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn seeds_are_left_out_of_a_variants_name() {
        let v = VariantOf {
            stage: "eval_object".into(),
            params: vec![("lr".into(), "1e-3".into())],
            seeds: vec![("seed".into(), "3".into())],
        };
        assert_eq!(v.name(), "eval_object[lr=1e-3]");
    }
}
