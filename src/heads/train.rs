//! The study's training loop: full batch over the training objects, a fresh draw of distinct
//! views per object each step, Adam (AdamW with weight decay 0), validation every few steps,
//! the checkpoint with the best validation loss kept. Every random number comes from a
//! seeded RNG, so a run on the CPU is repeatable.

use super::Head;
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
    let value = loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
    if !value.is_finite() {
        bail!(
            "the {what} loss is {value} at step {step}; training stopped (try a lower `lr`, or \
             check the embeddings for NaN)"
        );
    }
    Ok(value)
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
    // The validation batch is drawn once, from its own stream, so every validation compares
    // the same views.
    let mut val_rng = fastrand::Rng::with_seed(settings.seed ^ 0x0005_eed0_f7a1);
    let mut order: Vec<usize> = (0..validation.views).collect();
    let val_images = Tensor::from_vec(
        draw_batch(validation, take, &mut val_rng, &mut order),
        (validation.objects, take, d),
        device,
    )?;
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
        curve.train.push((step, finite(&loss, step, "training")?));
        opt.backward_step(&loss)?;
        if step % settings.validate_every == 0 || step == settings.steps {
            let v = finite(&head.loss(&val_images, &val_texts)?, step, "validation")?;
            curve.validation.push((step, v));
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
