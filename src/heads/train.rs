//! The study's training loop: full batch over the training objects, a fresh draw of distinct
//! views per object each step, Adam (AdamW with weight decay 0), validation every few steps,
//! the checkpoint with the best validation loss kept. Every random number comes from a
//! seeded RNG, so a run on the CPU is repeatable.

use super::Head;
use super::loss::Loss;
use anyhow::{Result, bail};
use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

/// Embeddings of some objects, every one with the same views: `images` `[objects, views,
/// dim]`, `texts` `[objects, dim]`, both object-major.
pub struct Embeddings<'a> {
    pub images: &'a [f32],
    pub texts: &'a [f32],
    pub objects: usize,
    pub views: usize,
    pub dim: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TrainSettings {
    pub steps: u32,
    pub views_per_step: usize,
    pub lr: f64,
    pub validate_every: u32,
    pub seed: u64,
    /// Draw the validation objects' views afresh at every validation (the study), or once
    /// for the whole run (every validation then compares the same views).
    pub redraw_validation: bool,
}

/// One term of a loss: its value enters the total times `coefficient`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Term {
    pub name: String,
    pub coefficient: f64,
}

/// The loss curves and the chosen checkpoint (`curve.json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    /// (step, training loss of that step's batch), from step 1.
    pub train: Vec<(u32, f32)>,
    /// (step, validation loss after that step).
    pub validation: Vec<(u32, f32)>,
    /// The step whose weights were kept (0: the initial weights, or nothing was trained).
    pub chosen_step: u32,
    pub best_validation: Option<f32>,
    /// The loss's terms (e.g. similarity, dissimilarity, reconstruction): each step's total
    /// is the sum of each term's value times its coefficient.
    #[serde(default)]
    pub terms: Vec<Term>,
    /// (step, each term's value in `terms` order) of every training step.
    #[serde(default)]
    pub train_terms: Vec<(u32, Vec<f32>)>,
    /// The same for every validation.
    #[serde(default)]
    pub validation_terms: Vec<(u32, Vec<f32>)>,
    /// Whether the validation views were drawn afresh at every validation.
    #[serde(default)]
    pub validation_redrawn: bool,
}

/// Picks `take` distinct views of each object (a partial Fisher–Yates shuffle per object) and
/// gathers them into a `[objects, take, dim]` batch.
fn draw_batch(
    data: &Embeddings,
    take: usize,
    rng: &mut fastrand::Rng,
    order: &mut [usize],
) -> Vec<f32> {
    let d = data.dim;
    let mut out = Vec::with_capacity(data.objects * take * d);
    for o in 0..data.objects {
        for k in 0..take {
            let j = k + rng.usize(..data.views - k);
            order.swap(k, j);
        }
        for &v in &order[..take] {
            let at = (o * data.views + v) * d;
            out.extend_from_slice(&data.images[at..at + d]);
        }
    }
    out
}

/// A loss value as f32, or the error that stops training at `step`.
fn finite(loss: &Tensor, step: u32, what: &str) -> Result<f32> {
    let value = scalar(loss)?;
    if !value.is_finite() {
        bail!(
            "the {what} loss is {value} at step {step}; training stopped (try a lower `lr`, or \
             check the embeddings for NaN)"
        );
    }
    Ok(value)
}

fn scalar(t: &Tensor) -> Result<f32> {
    Ok(t.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?)
}

/// The total of a loss (checked finite) and its terms' values.
fn values(loss: &Loss, step: u32, what: &str) -> Result<(f32, Vec<f32>)> {
    let total = finite(&loss.total, step, what)?;
    let terms = loss
        .terms
        .iter()
        .map(|(_, _, v)| scalar(v))
        .collect::<Result<_>>()?;
    Ok((total, terms))
}

/// The loss of a head on embeddings of some objects with every one of their views (the
/// test-set loss in `metrics.json`), and its terms.
pub fn loss_on(
    head: &Head,
    data: &Embeddings,
    device: &Device,
) -> Result<(f32, Vec<Term>, Vec<f32>)> {
    let images = Tensor::from_slice(data.images, (data.objects, data.views, data.dim), device)?;
    let texts = Tensor::from_slice(data.texts, (data.objects, data.dim), device)?;
    let loss = head.loss(&images, &texts)?;
    let (total, values) = values(&loss, 0, "test")?;
    Ok((total, terms_of(&loss), values))
}

fn terms_of(loss: &Loss) -> Vec<Term> {
    loss.terms
        .iter()
        .map(|(name, coefficient, _)| Term {
            name: name.to_string(),
            coefficient: *coefficient,
        })
        .collect()
}

/// Trains `head` in place and leaves it at the best validation checkpoint. `stop` is polled
/// between steps (Ctrl-C).
pub fn train(
    head: &Head,
    train: &Embeddings,
    validation: &Embeddings,
    settings: &TrainSettings,
    device: &Device,
    stop: &dyn Fn() -> bool,
) -> Result<Curve> {
    let take = settings.views_per_step;
    for (what, data, least) in [("training", train, 2), ("validation", validation, 1)] {
        if data.objects < least {
            bail!(
                "the {what} split has {} object{}; training needs at least {least} (adjust \
                 the split's fractions or add objects)",
                data.objects,
                if data.objects == 1 { "" } else { "s" }
            );
        }
        if data.views < take {
            bail!(
                "views_per_step = {take} but the objects have {} views; lower views_per_step",
                data.views
            );
        }
    }
    let mut curve = Curve::default();
    if head.vars().is_empty() {
        return Ok(curve);
    }
    let d = train.dim;
    let mut rng = fastrand::Rng::with_seed(settings.seed);
    // The validation views come from their own stream: drawn afresh at every validation
    // when `redraw_validation` (the study), else once, so every validation compares the same
    // views.
    curve.validation_redrawn = settings.redraw_validation;
    let mut val_rng = fastrand::Rng::with_seed(settings.seed ^ 0x0005_eed0_f7a1);
    let mut val_order: Vec<usize> = (0..validation.views).collect();
    let mut draw_validation = || {
        Tensor::from_vec(
            draw_batch(validation, take, &mut val_rng, &mut val_order),
            (validation.objects, take, d),
            device,
        )
    };
    let mut val_images = draw_validation()?;
    let val_texts = Tensor::from_slice(validation.texts, (validation.objects, d), device)?;
    let texts = Tensor::from_slice(train.texts, (train.objects, d), device)?;

    let mut opt = AdamW::new(
        head.vars(),
        ParamsAdamW {
            lr: settings.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let mut best: Option<(f32, Vec<Tensor>)> = None;
    let mut order: Vec<usize> = (0..train.views).collect();
    for step in 1..=settings.steps {
        if stop() {
            bail!("stopped at step {step}");
        }
        let batch = Tensor::from_vec(
            draw_batch(train, take, &mut rng, &mut order),
            (train.objects, take, d),
            device,
        )?;
        let loss = head.loss(&batch, &texts)?;
        if curve.terms.is_empty() {
            curve.terms = terms_of(&loss);
        }
        let (total, terms) = values(&loss, step, "training")?;
        curve.train.push((step, total));
        curve.train_terms.push((step, terms));
        opt.backward_step(&loss.total)?;
        if step % settings.validate_every == 0 || step == settings.steps {
            if settings.redraw_validation && !curve.validation.is_empty() {
                val_images = draw_validation()?;
            }
            let (v, terms) = values(&head.loss(&val_images, &val_texts)?, step, "validation")?;
            curve.validation.push((step, v));
            curve.validation_terms.push((step, terms));
            if best.as_ref().is_none_or(|(b, _)| v < *b) {
                best = Some((v, head.snapshot()?));
                curve.chosen_step = step;
                curve.best_validation = Some(v);
            }
        }
    }
    if let Some((_, weights)) = best {
        head.restore(&weights)?;
    }
    Ok(curve)
}
