//! One evaluation as the results show it, and the way every table writes a mean and its
//! spread: what the results table (`table.rs`), the variants (`variants.rs`) and the HTML
//! (`html.rs`) share.

use super::metrics::Evaluation;
use serde::{Deserialize, Serialize};

/// One evaluated head.
#[derive(Serialize)]
pub struct Row<'a> {
    /// The evaluate stage.
    pub stage: &'a str,
    pub evaluation: &'a Evaluation,
    /// The figure files it has (linked from results.md).
    #[serde(skip)]
    pub figures: Vec<String>,
    /// What makes it a variant, when the pipeline swept a parameter it depends on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<&'a VariantOf>,
}

/// An evaluation the report has no result of (a failed variant), and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Missing {
    pub evaluation: String,
    pub reason: String,
}

/// `mean ± std`, as every table writes it.
pub fn pm(mean: f64, std: f64) -> String {
    format!("{mean:.3} ± {std:.3}")
}

/// What makes an evaluation a variant: the stage the file names, the swept values that set it
/// apart (seeds apart), and its seeds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VariantOf {
    /// The stage as the pipeline file names it (`eval_contrastive`).
    pub stage: String,
    /// The swept parameters (its own and its inputs'), as `(name, value)`, seeds left out.
    pub params: Vec<(String, String)>,
    /// The swept seeds, as `(name, value)`.
    #[serde(default)]
    pub seeds: Vec<(String, String)>,
}

impl VariantOf {
    /// `STAGE[param=value,…]` without the seeds: the name the variant's seeds share.
    pub fn name(&self) -> String {
        if self.params.is_empty() {
            return self.stage.clone();
        }
        let shown: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("{}[{}]", self.stage, shown.join(","))
    }
}
