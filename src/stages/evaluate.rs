//! Stage kind `evaluate`: a trained head (or the baseline) on the test split, all views. One
//! task; reads a train stage, a split stage and an embed stage. Outputs `metrics.json` (see
//! `report::metrics` for every definition) and `figures/*.png`: the study's two V x V
//! heatmaps (mean and std over objects, jet, 0–1), the all-texts-then-all-images similarity
//! matrix, same-object similarity against azimuth difference (per ring), the angle between
//! the cameras and elevation difference, and the head's training curves.

use super::gather::{Gathered, Part, gather};
use super::train::{
    CURVE_FILE, HEAD_FILE, HeadFile, Role, WEIGHTS_FILE, max_missing_param, one_input,
};
use super::{
    Binding, ExecCtx, ExpandCtx, Expansion, ParamCtx, PlannedItem, StageKind, TaskOutcome,
    UnitTask, device_param, device_resources, each_task_blocking, read_named,
};
use crate::clip::DeviceChoice;
use crate::clip::model::select_device;
use crate::exec::workdir::{InputData, ingest_outputs};
use crate::heads::train::{Curve, Embeddings, loss_on};
use crate::heads::{Head, HeadKind};
use crate::report::coverage::coverage_note;
use crate::report::figures::{self, Series};
use crate::report::metrics::{self, EvalInput, TestLoss};
use crate::resources::Resources;
use crate::store::Store;
use crate::store::records::Output;
use crate::task::ParamSlice;
use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use toml::Spanned;

/// The `kind` of its tables in pipeline files (and of its key records).
pub const KIND: &str = "evaluate";

/// 2: incomplete test objects are left out (up to `max_missing`); `parts` in metrics.json.
/// 3: the test loss, similarity within rings and by view angle, the training curves' figure.
const VERSION: u32 = 3;

pub const ITEM: &str = "metrics";
pub const METRICS_FILE: &str = "metrics.json";

/// The most bytes of similarity matrix held at once.
pub const SIMILARITY_BLOCK_BYTES: usize = 256 << 20;

/// Rows and columns of the similarity-matrix figure at most (evenly sampled above).
const MATRIX_FIGURE_SIDE: usize = 2000;

/// Rows projected through a head per forward pass.
const PROJECT_ROWS: usize = 4096;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateParams {
    pub kind: String,
    /// A train stage, a split stage and an embed stage.
    #[serde(default)]
    pub inputs: Vec<Spanned<String>>,
    pub device: Option<Spanned<String>>,
    /// The largest fraction of the test part that may lack embeddings and be left out
    /// (default 0.1; 0 needs every object).
    pub max_missing: Option<Spanned<f64>>,
}

/// `metrics.json` (its type lives with the report that reads it).
pub use crate::report::metrics::Evaluation;

#[derive(Clone, Debug)]
pub struct EvaluateStage {
    stage: String,
    device: DeviceChoice,
    max_missing: f64,
    model: usize,
    split: usize,
    embeddings: usize,
}

/// `rows` rows of `x` through `f`, a few thousand at a time, back on the host as f32.
fn in_batches(
    x: &[f32],
    dim: usize,
    device: &Device,
    f: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(x.len());
    for chunk in x.chunks(PROJECT_ROWS * dim) {
        let t = Tensor::from_slice(chunk, (chunk.len() / dim, dim), device)?;
        out.extend(
            f(&t)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
    }
    Ok(out)
}

impl EvaluateStage {
    pub fn new(stage: &str, p: EvaluateParams, roles: &[Role]) -> Result<EvaluateStage> {
        let example = "\"train_object\", \"split\", \"embed\"";
        Ok(EvaluateStage {
            stage: stage.to_string(),
            device: device_param(stage, &p.device)?,
            max_missing: max_missing_param(stage, &p.max_missing)?,
            model: one_input(stage, roles, Role::Model, example)?,
            split: one_input(stage, roles, Role::Split, example)?,
            embeddings: one_input(stage, roles, Role::Embeddings, example)?,
        })
    }

    fn run(&self, store: &Store, inputs: &[InputData]) -> Result<tempfile::TempDir> {
        let single = |k: usize| -> Result<&[Output]> {
            let input = &inputs[k];
            input
                .items
                .first()
                .map(|(_, r)| r.outputs.as_slice())
                .with_context(|| format!("`{}` has no result", input.stage))
        };
        let model_stage = &inputs[self.model].stage;
        let model_outputs = single(self.model)?;
        let head_file: HeadFile =
            serde_json::from_slice(&read_named(store, model_outputs, HEAD_FILE, model_stage)?)
                .with_context(|| format!("reading {model_stage}/{HEAD_FILE}"))?;
        let config = head_file.head;
        let curve: Curve =
            serde_json::from_slice(&read_named(store, model_outputs, CURVE_FILE, model_stage)?)
                .with_context(|| format!("reading {model_stage}/{CURVE_FILE}"))?;
        let split = super::split::read(store, single(self.split)?)?;
        let test = gather(
            store,
            &inputs[self.embeddings],
            &Part {
                name: "test",
                uids: &split.test,
                max_missing: self.max_missing,
                least: 2,
            },
        )?;
        if test.dim != config.dim {
            bail!(
                "`{model_stage}` was trained on {}-d embeddings; `{}` has {}-d ones",
                config.dim,
                inputs[self.embeddings].stage,
                test.dim
            );
        }
        let (device, line) = select_device(self.device).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        tracing::info!(
            "{}: {} head on {line}, {} test objects x {} views",
            self.stage,
            config.head.name(),
            test.uids.len(),
            test.views.len()
        );
        let head = match config.head {
            HeadKind::Identity => Head::init(config.clone(), 0, &device)?,
            _ => Head::from_safetensors(
                config.clone(),
                &read_named(store, model_outputs, WEIGHTS_FILE, model_stage)?,
                &device,
            )
            .with_context(|| format!("loading {model_stage}/{WEIGHTS_FILE}"))?,
        };
        let projected = in_batches(&test.images, test.dim, &device, |x| head.project(x))?;
        let input = EvalInput {
            images: &projected,
            texts: &test.texts,
            objects: test.uids.len(),
            views: &test.views,
            dim: test.dim,
        };
        let mut m = metrics::evaluate(&input, SIMILARITY_BLOCK_BYTES)?;
        let test_loss = match config.head {
            HeadKind::Identity => None,
            _ => Some(test_loss(&head, &test, &device)?),
        };
        if config.head == HeadKind::Autoencoder {
            m.reconstruction_mse = Some(reconstruction_mse(&head, &test, &device)?);
        }
        let out = tempfile::tempdir()?;
        let fig = out.path().join("figures");
        std::fs::create_dir_all(&fig)?;
        let name = format!("{} ({})", self.stage, config.head.name());
        draw_heatmaps(&fig, &name, &m, &input)?;
        draw_curves(&fig, &name, &m, &curve)?;
        let evaluation = Evaluation {
            head: config,
            chosen_step: curve.chosen_step,
            test_loss,
            test_objects: test.uids.clone(),
            parts: head_file
                .parts
                .into_iter()
                .chain([test.coverage.clone()])
                .collect(),
            inter_object_similarity: m.same_object,
            intra_object_similarity: m.cross_object,
            metrics: m,
        };
        std::fs::write(
            out.path().join(METRICS_FILE),
            serde_json::to_vec_pretty(&evaluation)?,
        )?;
        Ok(out)
    }
}

/// The head's loss on the test objects, each of its terms, with the views used.
fn test_loss(head: &Head, test: &Gathered, device: &Device) -> Result<TestLoss> {
    let data = Embeddings {
        images: &test.images,
        texts: &test.texts,
        objects: test.uids.len(),
        views: test.views.len(),
        dim: test.dim,
    };
    let (total, terms, values) = loss_on(head, &data, device)?;
    Ok(TestLoss {
        total,
        terms,
        values,
        views: test.views.len(),
    })
}

/// An autoencoder's mean squared reconstruction error over every test view's embedding.
fn reconstruction_mse(head: &Head, test: &Gathered, device: &Device) -> Result<f64> {
    let full = in_batches(&test.images, test.dim, device, |x| head.reconstruct(x))?;
    let sq: f64 = test
        .images
        .iter()
        .zip(&full)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    Ok(sq / test.images.len().max(1) as f64)
}

/// The square figures: the study's mean and std heatmaps per view pair, and the
/// similarity matrix of every caption and image (shrunk to a readable side).
fn draw_heatmaps(
    fig: &std::path::Path,
    name: &str,
    m: &metrics::Metrics,
    input: &EvalInput,
) -> Result<()> {
    let v = m.views;
    std::fs::write(
        fig.join("heatmap_mean.png"),
        figures::heatmap(
            &m.view_pair_mean,
            v,
            &format!("{name}: mean cosine per view pair"),
            "view",
        )?,
    )?;
    std::fs::write(
        fig.join("heatmap_std.png"),
        figures::heatmap(
            &m.view_pair_std,
            v,
            &format!("{name}: std over objects"),
            "view",
        )?,
    )?;
    let (matrix, side, full) = metrics::similarity_matrix(input, MATRIX_FIGURE_SIDE);
    let matrix: Vec<f64> = matrix.into_iter().map(f64::from).collect();
    let title = if side < full {
        format!(
            "{name}: texts then images ({full} rows, every {:.1}th shown)",
            full as f64 / side as f64
        )
    } else {
        format!("{name}: texts then images")
    };
    std::fs::write(
        fig.join("similarity_matrix.png"),
        figures::heatmap(&matrix, side, &title, "texts, then images (object-major)")?,
    )?;
    Ok(())
}

/// The line figures: same-object similarity by azimuth difference (one line per ring), by
/// the angle between the cameras and by elevation difference (with more than one ring), and
/// the head's training curves (its loss terms, training and validation).
fn draw_curves(fig: &std::path::Path, name: &str, m: &metrics::Metrics, curve: &Curve) -> Result<()> {
    if !m.by_azimuth_within_ring.is_empty() {
        let series: Vec<Series> = m
            .by_azimuth_within_ring
            .iter()
            .map(|ring| Series {
                name: match ring.polar {
                    Some(p) => format!("polar {p}° (elevation {}°)", 90.0 - p),
                    None => "views without a polar angle".into(),
                },
                points: ring
                    .points
                    .iter()
                    .map(|g| (g.difference, g.similarity.mean))
                    .collect(),
            })
            .collect();
        std::fs::write(
            fig.join("by_azimuth_difference.png"),
            figures::lines(
                &series,
                &format!("{name}: same-object similarity by azimuth difference, within rings"),
                "azimuth difference (degrees)",
                "same-object cosine",
                None,
            )?,
        )?;
    }
    for (groups, least, file, what) in [
        (
            &m.by_view_angle,
            1,
            "by_view_angle.png",
            "angle between the cameras",
        ),
        (
            &m.by_elevation_difference,
            2,
            "by_elevation_difference.png",
            "elevation difference",
        ),
    ] {
        if groups.len() < least {
            continue;
        }
        let points: Vec<(f64, f64, f64)> = groups
            .iter()
            .map(|g| (g.difference, g.similarity.mean, g.similarity.std))
            .collect();
        std::fs::write(
            fig.join(file),
            figures::line_plot(
                &points,
                &format!("{name}: same-object similarity by {what}"),
                &format!("{what} (degrees)"),
            )?,
        )?;
    }
    if !curve.train.is_empty() {
        draw_training_curves(fig, name, curve)?;
    }
    Ok(())
}

/// The head's training curves: its loss for training and validation, and each of its
/// terms (unless the loss is its one term).
fn draw_training_curves(fig: &std::path::Path, name: &str, curve: &Curve) -> Result<()> {
    let step_values = |rows: &[(u32, f32)]| -> Vec<(f64, f64)> {
        rows.iter().map(|(s, v)| (*s as f64, *v as f64)).collect()
    };
    let mut series = vec![
        Series {
            name: "training loss".into(),
            points: step_values(&curve.train),
        },
        Series {
            name: "validation loss".into(),
            points: step_values(&curve.validation),
        },
    ];
    for (k, term) in curve.terms.iter().enumerate() {
        if curve.terms.len() == 1 && term.coefficient.abs() == 1.0 {
            continue; // the term is the loss itself, up to its sign
        }
        for (part, rows) in [
            ("training", &curve.train_terms),
            ("validation", &curve.validation_terms),
        ] {
            series.push(Series {
                name: format!("{} ({part}; weight {:.3})", term.name, term.coefficient),
                points: rows
                    .iter()
                    .filter_map(|(s, v)| v.get(k).map(|v| (*s as f64, *v as f64)))
                    .collect(),
            });
        }
    }
    std::fs::write(
        fig.join("training_curves.png"),
        figures::lines(
            &series,
            &format!("{name}: training (best step {})", curve.chosen_step),
            "step",
            "loss, and each term's value",
            None,
        )?,
    )?;
    Ok(())
}

#[async_trait::async_trait]
impl StageKind for EvaluateStage {
    fn kind(&self) -> &'static str {
        KIND
    }
    fn version(&self) -> u32 {
        VERSION
    }
    fn resources(&self) -> Resources {
        device_resources(self.device)
    }
    fn shared_params(&self, _: &ParamCtx) -> Result<ParamSlice> {
        Ok(ParamSlice::from([(
            "max_missing".to_string(),
            self.max_missing.to_string(),
        )]))
    }
    fn fans_out(&self) -> bool {
        false
    }

    fn reads_failures(&self) -> bool {
        true
    }
    fn has_result_notes(&self) -> bool {
        true
    }
    fn result_note(&self, store: &Store, outputs: &[Output]) -> Option<String> {
        let bytes = read_named(store, outputs, METRICS_FILE, &self.stage).ok()?;
        let file: Evaluation = serde_json::from_slice(&bytes).ok()?;
        // Its training and validation parts are the train stage's note.
        coverage_note(&file.parts[file.parts.len().saturating_sub(1)..])
    }
    fn expand(&self, ctx: &ExpandCtx) -> Result<Expansion> {
        Ok(Expansion {
            items: vec![PlannedItem::new(ITEM)],
            bindings: vec![Binding::All; ctx.inputs.len()],
        })
    }
    async fn execute(&self, ctx: &ExecCtx, unit: Vec<UnitTask>) -> Vec<TaskOutcome> {
        let me = self.clone();
        each_task_blocking(&self.stage, ctx, unit, move |store, task, _| {
            let out = me.run(store, &task.inputs)?;
            ingest_outputs(store, out.path()).map_err(anyhow::Error::msg)
        })
        .await
    }
}

impl super::table::StageTable for EvaluateParams {
    fn inputs(&self) -> &[Spanned<String>] {
        &self.inputs
    }
    fn build(
        self: Box<Self>,
        name: &str,
        inputs: Vec<String>,
        around: &super::table::Around,
    ) -> Result<Vec<super::table::Built>> {
        let roles = super::train::input_roles(name, &inputs, around)?;
        let stage = EvaluateStage::new(name, *self, &roles)?;
        Ok(super::table::Built::one(name, inputs, stage))
    }
}
