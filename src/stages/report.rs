//! Stage kind `report`: the evaluate stages named in `inputs`, gathered into one table. One
//! task; outputs `results.md`, `results.csv`, `results.json`, `report.html` (the same results as one
//! self-contained page, figures inline) and `figures/<evaluation>/*.png`.
//! After every run, `mvc run` copies a report stage's outputs into the pipeline's results
//! folder (`runs/<pipeline>/`).

use super::evaluate::{Evaluation, METRICS_FILE};
use super::{
    Binding, ExecCtx, ExpandCtx, Expansion, ParamCtx, PlannedItem, StageKind, TaskOutcome,
    UnitTask, outcome,
};
use crate::exec::workdir::output_from_bytes;
use crate::report::html;
use crate::report::table::{self, Missing, Results, Row, STUDY};
use crate::report::variants::{self, VariantOf};
use crate::resources::Resources;
use crate::store::Store;
use crate::store::records::{Output, now_ms};
use crate::task::ParamSlice;
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use toml::Spanned;

/// The `kind` of its tables in pipeline files (and of its key records).
pub const KIND: &str = "report";

/// 2: results.md has a section on the objects left out. 3: report.html. (Variants changed
/// nothing for a report without them: its key carries them when there are some.)
const VERSION: u32 = 3;

pub const ITEM: &str = "results";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportParams {
    pub kind: String,
    /// Evaluate stages, in the order of the table's rows.
    #[serde(default)]
    pub inputs: Vec<Spanned<String>>,
    /// The heading of results.md.
    pub title: Option<String>,
    /// A line shown under the heading (e.g. what the numbers do not mean).
    pub note: Option<String>,
    /// `"study"`: the study's published numbers in a second column group.
    pub compare: Option<Spanned<String>>,
}

#[derive(Debug)]
pub struct ReportStage {
    stage: String,
    title: String,
    note: Option<String>,
    compare_study: bool,
    /// The evaluations that are variants of a swept pipeline, by stage.
    variants: Vec<(String, VariantOf)>,
}

impl ReportStage {
    pub fn new(
        stage: &str,
        p: ReportParams,
        all_evaluate: bool,
        variants: Vec<(String, VariantOf)>,
    ) -> Result<ReportStage> {
        if p.inputs.is_empty() || !all_evaluate {
            bail!(
                "stage `{stage}`: a report stage reads evaluate stages, e.g. inputs = \
                 [\"eval_identity\", \"eval_object\"]"
            );
        }
        let compare_study = match &p.compare {
            None => false,
            Some(c) if c.get_ref() == "study" => true,
            Some(c) => {
                return Err(crate::diag::AtSpan {
                    span: c.span(),
                    message: format!(
                        "stage `{stage}`: compare = \"{}\" is not known; the one published \
                         table mvc has is the study's: compare = \"study\"",
                        c.get_ref()
                    ),
                }
                .into());
            }
        };
        Ok(ReportStage {
            stage: stage.to_string(),
            title: p.title.unwrap_or_else(|| "Results".to_string()),
            note: p.note,
            compare_study,
            variants,
        })
    }

    fn variant_of(&self, stage: &str) -> Option<&VariantOf> {
        self.variants.iter().find(|(s, _)| s == stage).map(|(_, v)| v)
    }

    fn run(&self, store: &Store, task: &UnitTask) -> Result<Vec<Output>> {
        let mut evaluations = Vec::new();
        let mut figures: Vec<Vec<(String, Output)>> = Vec::new();
        let mut missing = Vec::new();
        for input in &task.inputs {
            let Some((_, result)) = input.items.first() else {
                // A failed evaluation (a variant whose training failed): the table is
                // without it, and says why.
                missing.push(Missing {
                    evaluation: input.stage.clone(),
                    reason: input
                        .left_out
                        .first()
                        .map(|l| l.reason.clone())
                        .unwrap_or_else(|| "no result".into()),
                });
                continue;
            };
            let metrics = result
                .outputs
                .iter()
                .find(|o| o.name == METRICS_FILE)
                .with_context(|| {
                    format!(
                        "`{}` has no {METRICS_FILE}; is it an evaluate stage?",
                        input.stage
                    )
                })?;
            let bytes = store
                .read_output(metrics)
                .with_context(|| format!("reading {}/{METRICS_FILE}", input.stage))?;
            let e: Evaluation = serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}/{METRICS_FILE}", input.stage))?;
            evaluations.push((input.stage.clone(), e));
            figures.push(
                result
                    .outputs
                    .iter()
                    .filter_map(|o| {
                        o.name
                            .strip_prefix("figures/")
                            .map(|f| (f.to_string(), o.clone()))
                    })
                    .collect(),
            );
        }
        let rows: Vec<Row> = evaluations
            .iter()
            .zip(&figures)
            .map(|((stage, e), figs)| Row {
                stage,
                evaluation: e,
                figures: figs.iter().map(|(f, _)| f.clone()).collect(),
                variant: self.variant_of(stage),
            })
            .collect();
        let results = Results::new(
            (&self.title, self.note.as_deref()),
            &rows,
            self.compare_study,
            &missing,
        );
        let md = table::markdown(&results);
        let csv = table::csv(&results)?;
        let json = self.results_json(&results);
        let sweeps = sweep_figures(&results)?;
        let page = self.standalone_page(store, &results, &figures, &sweeps)?;
        let mut outputs = vec![
            output_from_bytes(store, "report.html".into(), page.into_bytes()),
            output_from_bytes(store, "results.md".into(), md.into_bytes()),
            output_from_bytes(store, "results.csv".into(), csv),
            output_from_bytes(
                store,
                "results.json".into(),
                serde_json::to_vec_pretty(&json)?,
            ),
        ]
        .into_iter()
        .collect::<Result<Vec<Output>, String>>()
        .map_err(anyhow::Error::msg)?;
        // The figures are the evaluations' own blobs, listed again under this stage's name.
        for ((stage, _), figs) in evaluations.iter().zip(figures) {
            for (file, output) in figs {
                outputs.push(Output {
                    name: format!("figures/{stage}/{file}"),
                    ..output
                });
            }
        }
        for (file, png) in sweeps {
            let name = format!("figures/{}/{file}", variants::SWEEP_FIGURES);
            outputs.push(output_from_bytes(store, name, png).map_err(anyhow::Error::msg)?);
        }
        outputs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(outputs)
    }

    /// `report.html`: the results section of the live page as one file that needs nothing
    /// else (figures as `data:` URIs), to open offline or send by mail.
    fn standalone_page(
        &self,
        store: &Store,
        results: &Results,
        figures: &[Vec<(String, Output)>],
        sweeps: &[(String, Vec<u8>)],
    ) -> Result<String> {
        let mut inline = std::collections::HashMap::new();
        for (file, png) in sweeps {
            let folder = variants::SWEEP_FIGURES.to_string();
            inline.insert((folder, file.clone()), html::png_data_uri(png));
        }
        for (row, figs) in results.rows.iter().zip(figures) {
            for (file, output) in figs {
                let bytes = store
                    .read_output(output)
                    .with_context(|| format!("reading {}/figures/{file}", row.stage))?;
                inline.insert((row.stage.to_string(), file.clone()), html::png_data_uri(&bytes));
            }
        }
        let src = |stage: &str, file: &str| inline.get(&(stage.to_string(), file.to_string())).cloned();
        let body = html::results(results, &src);
        Ok(html::standalone(&self.title, body))
    }

    /// `results.json`: the rows, and with `compare = "study"` the study's published numbers
    /// and, per row, whether they stand beside it or why not.
    fn results_json(&self, results: &Results) -> serde_json::Value {
        let rows = results.rows;
        let study: Vec<serde_json::Value> = if self.compare_study {
            STUDY
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "head": s.head,
                        "same_object": { "mean": s.same_object.0, "std": s.same_object.1 },
                        "cross_object": { "mean": s.cross_object.0, "std": s.cross_object.1 },
                        "text_to_image": { "mean": s.text_to_image.0, "std": s.text_to_image.1 },
                        "reconstruction_mse": s.reconstruction_mse,
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        let comparisons: Vec<serde_json::Value> = if self.compare_study {
            rows.iter()
                .map(|r| match table::study_comparison(r.evaluation) {
                    Ok(s) => serde_json::json!({ "evaluation": r.stage, "study_head": s.head }),
                    Err(why) => serde_json::json!({ "evaluation": r.stage, "not_compared": why }),
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut json = serde_json::json!({
            "title": self.title,
            "note": self.note,
            "results": rows,
            "study": study,
            "comparisons": comparisons,
        });
        if let Some(c) = &results.variants {
            json["variants"] = variants::to_json(c);
        }
        if !results.missing.is_empty() {
            json["missing"] = serde_json::json!(results.missing);
        }
        json
    }
}

/// Each swept parameter's figure, as `(file, png)`.
fn sweep_figures(results: &Results) -> Result<Vec<(String, Vec<u8>)>> {
    let Some(c) = &results.variants else {
        return Ok(Vec::new());
    };
    variants::swept_params(c)
        .into_iter()
        .map(|(stage, param)| {
            let png = variants::sweep_figure(c, &stage, &param)?;
            Ok((variants::sweep_figure_file(&stage, &param), png))
        })
        .collect()
}

#[async_trait::async_trait]
impl StageKind for ReportStage {
    fn kind(&self) -> &'static str {
        KIND
    }
    fn fans_out(&self) -> bool {
        false
    }

    fn publishes_results(&self) -> bool {
        true
    }
    fn version(&self) -> u32 {
        VERSION
    }
    fn resources(&self) -> Resources {
        Resources::ONE_CPU
    }
    fn reads_failures(&self) -> bool {
        true
    }
    fn reads_failed_stages(&self) -> bool {
        true
    }
    fn shared_params(&self, _: &ParamCtx) -> Result<ParamSlice> {
        let mut p = ParamSlice::from([
            ("title".to_string(), self.title.clone()),
            (
                "compare".to_string(),
                if self.compare_study { "study" } else { "" }.to_string(),
            ),
        ]);
        if let Some(n) = &self.note {
            p.insert("note".into(), n.clone());
        }
        // What makes each evaluation a variant is in the table, so in the key (absent when
        // nothing was swept: the key of a report without variants is what it always was).
        if !self.variants.is_empty() {
            p.insert("variants".into(), serde_json::to_string(&self.variants)?);
        }
        Ok(p)
    }
    fn expand(&self, ctx: &ExpandCtx) -> Result<Expansion> {
        Ok(Expansion {
            items: vec![PlannedItem::new(ITEM)],
            bindings: vec![Binding::All; ctx.inputs.len()],
        })
    }
    async fn execute(&self, ctx: &ExecCtx, unit: Vec<UnitTask>) -> Vec<TaskOutcome> {
        // Reading the evaluations and writing a table is quick: it runs here.
        unit.iter()
            .map(|task| outcome(&self.stage, now_ms(), &ctx.kill, self.run(&ctx.store, task)))
            .collect()
    }
}

impl super::table::StageTable for ReportParams {
    fn inputs(&self) -> &[toml::Spanned<String>] {
        &self.inputs
    }
    fn build(
        self: Box<Self>,
        name: &str,
        inputs: Vec<String>,
        around: &super::table::Around,
    ) -> Result<Vec<super::table::Built>> {
        let all_evaluate = inputs.iter().all(|i| around.kind_of(i) == Some(super::evaluate::KIND));
        let variants = inputs
            .iter()
            .filter_map(|i| around.variant_of(i).map(|v| (i.clone(), v.clone())))
            .collect();
        let stage = ReportStage::new(name, *self, all_evaluate, variants)?;
        Ok(super::table::Built::one(name, inputs, stage))
    }
}
