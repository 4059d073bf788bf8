//! Training and evaluation cost of the study's heads at the study's scale, on synthetic
//! 512-d embeddings: 2,000 objects x 36 views, full batch (6 views per object per step).
//! For each head: seconds per step and the GFLOP/s its matrix products achieve, next to the
//! GFLOP/s of a plain candle matmul of the first layer's shape measured in the same run (the
//! ratio is the figure of merit: how close training comes to the machine's matmul rate).
//! Then the evaluation of a 1,200-object x 36-view test split (blocked similarity matrix).
//!
//!   cargo bench --bench train
//!
//! MVC_BENCH_OBJECTS (2000), MVC_BENCH_STEPS (100), MVC_BENCH_EVAL_OBJECTS (1200, 0 skips),
//! MVC_BENCH_DEVICE (cpu; cuda on a `cuda` build).

// A benchmark is one measured scenario read top to bottom; the 100-line limit of
// clippy.toml holds for src/.
#![allow(clippy::too_many_lines)]

use candle_core::{Device, Tensor};
use mvc::clip::DeviceChoice;
use mvc::clip::model::select_device;
use mvc::heads::train::{Embeddings, TrainSettings, train};
use mvc::heads::{Head, HeadConfig, HeadKind, Variant};
use mvc::report::metrics::{EvalInput, ViewInfo, evaluate};
use std::time::Instant;

const DIM: usize = 512;
const VIEWS: usize = 36;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Object-structured random embeddings: a shared offset, an object part, a view part, noise.
fn synthetic(objects: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut r = |n: usize, s: f32| -> Vec<f32> { (0..n).map(|_| (rng.f32() - 0.5) * s).collect() };
    let offset = r(DIM, 1.0);
    let views: Vec<Vec<f32>> = (0..VIEWS).map(|_| r(DIM, 0.4)).collect();
    let mut images = Vec::with_capacity(objects * VIEWS * DIM);
    let mut texts = Vec::with_capacity(objects * DIM);
    for _ in 0..objects {
        let object = r(DIM, 0.8);
        for view in &views {
            let noise = r(DIM, 0.1);
            images.extend((0..DIM).map(|k| offset[k] + object[k] + view[k] + noise[k]));
        }
        let t = r(DIM, 0.2);
        texts.extend((0..DIM).map(|k| 0.5 * object[k] + t[k] - offset[k]));
    }
    (images, texts)
}

/// Multiply-adds per row of one forward pass and of its backward pass over every Linear
/// layer of the head. Backward takes two products per layer (the weight's gradient and the
/// input's), except that a network reading the raw embeddings needs no gradient for them.
fn macs_per_row(head: &Head) -> (f64, f64) {
    let mut forward = 0.0;
    let mut backward = 0.0;
    for (name, mlp) in &head.nets {
        for (k, layer) in mlp.layers.iter().enumerate() {
            let macs = layer.weight.elem_count() as f64;
            forward += macs;
            let reads_embeddings = k == 0 && name != "vi_dec" && name != "vd_dec";
            backward += if reads_embeddings { macs } else { 2.0 * macs };
        }
    }
    (forward, backward)
}

/// GFLOP/s of `[rows, DIM] x [DIM, DIM]` products, the shape of a head's first layer.
fn matmul_rate(rows: usize, device: &Device) -> f64 {
    let a = Tensor::rand(-1f32, 1f32, (rows, DIM), device).unwrap();
    let b = Tensor::rand(-1f32, 1f32, (DIM, DIM), device).unwrap();
    let _ = a.matmul(&b.t().unwrap()).unwrap();
    let reps = 10;
    let clock = Instant::now();
    for _ in 0..reps {
        let c = a.matmul(&b.t().unwrap()).unwrap();
        // Wait for the result, on any device.
        let _ = c.sum_all().unwrap().to_scalar::<f32>().unwrap();
    }
    let secs = clock.elapsed().as_secs_f64();
    reps as f64 * 2.0 * rows as f64 * (DIM * DIM) as f64 / secs / 1e9
}

/// The study's sizes and weights for `head`.
fn study_config(head: HeadKind, variant: Variant) -> HeadConfig {
    HeadConfig {
        head,
        variant,
        dim: DIM,
        hidden: 512,
        code: 128,
        weight_similarity: 0.5,
        weight_autoencoder: 0.5,
        temperature: 0.07,
    }
}

/// Seconds per call of `f`, best of 3 after a warm-up.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    (0..3)
        .map(|_| {
            let clock = Instant::now();
            f();
            clock.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Where one training step of `h` goes: the forward pass, the loss with its backward pass
/// on fixed head outputs, and the whole step (forward, loss, backward; no optimiser).
fn breakdown(h: &Head, data: &Embeddings, device: &Device) {
    let b = data.objects;
    let batch: Vec<f32> = (0..b)
        .flat_map(|o| {
            data.images[o * VIEWS * DIM..(o * VIEWS + 6) * DIM]
                .iter()
                .copied()
        })
        .collect();
    let x = Tensor::from_vec(batch, (b, 6, DIM), device).unwrap();
    let t = Tensor::from_slice(data.texts, (b, DIM), device).unwrap();
    let flat = x.reshape((b * 6, DIM)).unwrap();
    let sync = |t: &Tensor| t.sum_all().unwrap().to_scalar::<f32>().unwrap();
    let forward = time(|| {
        sync(&h.project(&flat).unwrap());
    });
    let out =
        candle_core::Var::from_tensor(&h.project(&flat).unwrap().reshape((b, 6, DIM)).unwrap())
            .unwrap();
    let loss_only = time(|| {
        let l = mvc::heads::loss::object_loss(out.as_tensor(), &t)
            .unwrap()
            .total;
        let g = l.backward().unwrap();
        sync(g.get(out.as_tensor()).unwrap());
    });
    let step = time(|| {
        let l = h.loss(&x, &t).unwrap().total;
        let g = l.backward().unwrap();
        sync(g.get(&h.vars()[0]).unwrap());
    });
    println!(
        "breakdown of one {} step: forward {forward:.3} s, the loss with its backward {loss_only:.3} s, \
         forward + loss + backward {step:.3} s",
        h.config.head.name()
    );
}

fn main() {
    let objects = env("MVC_BENCH_OBJECTS", 2000);
    let steps = env("MVC_BENCH_STEPS", 100) as u32;
    let eval_objects = env("MVC_BENCH_EVAL_OBJECTS", 1200);
    let choice: DeviceChoice = std::env::var("MVC_BENCH_DEVICE")
        .unwrap_or_else(|_| "cpu".into())
        .parse()
        .unwrap();
    let (device, line) = select_device(choice).unwrap();
    let validation = (objects / 10).max(2);
    println!(
        "train: {objects} objects x {VIEWS} views x {DIM}-d, {steps} steps, 6 views per object per \
         step, validation every 10 steps on {validation} objects; {line}, {} threads",
        rayon::current_num_threads()
    );
    let (images, texts) = synthetic(objects, 1);
    let (val_images, val_texts) = synthetic(validation, 2);
    let data = Embeddings {
        images: &images,
        texts: &texts,
        objects,
        views: VIEWS,
        dim: DIM,
    };
    let val = Embeddings {
        images: &val_images,
        texts: &val_texts,
        objects: validation,
        views: VIEWS,
        dim: DIM,
    };
    let rows = objects * 6;
    let matmul = matmul_rate(rows, &device);
    if std::env::var("MVC_BENCH_BREAKDOWN").is_ok() {
        let head = Head::init(study_config(HeadKind::Object, Variant::Study), 42, &device).unwrap();
        breakdown(&head, &data, &device);
        println!("matmul: {matmul:.1} GFLOP/s");
        return;
    }
    println!("plain candle matmul [{rows} x {DIM}] x [{DIM} x {DIM}]: {matmul:.1} GFLOP/s");
    println!("| head | variant | s/step | GFLOP/step | GFLOP/s | ratio to matmul |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (head, variant) in [
        (HeadKind::Object, Variant::Study),
        (HeadKind::Contrastive, Variant::Study),
        (HeadKind::Contrastive, Variant::Fixed),
        (HeadKind::Autoencoder, Variant::Study),
    ] {
        let h = Head::init(study_config(head, variant), 42, &device).unwrap();
        let settings = TrainSettings {
            steps,
            views_per_step: 6,
            lr: 1e-3,
            validate_every: 10,
            seed: 42,
            redraw_validation: variant == Variant::Study,
        };
        let clock = Instant::now();
        train(&h, &data, &val, &settings, &device, &|| false).unwrap();
        let secs = clock.elapsed().as_secs_f64();
        // Forward and backward on the training batch; forward only on the validation batch.
        let (forward, backward) = macs_per_row(&h);
        let validations = (steps / 10).max(1) as f64;
        let mut flops = steps as f64 * 2.0 * (forward + backward) * rows as f64
            + validations * 2.0 * forward * (validation * 6) as f64;
        if variant == Variant::Fixed {
            // InfoNCE's [B·D, B] logits: forward, and the gradient for the images.
            flops += steps as f64 * 2.0 * 2.0 * (rows * objects * DIM) as f64;
        }
        let per_step = secs / steps as f64;
        let rate = flops / secs / 1e9;
        println!(
            "| {} | {} | {per_step:.3} | {:.1} | {rate:.1} | {:.2} |",
            head.name(),
            variant.name(),
            flops / steps as f64 / 1e9,
            rate / matmul
        );
    }

    if eval_objects > 0 {
        let (images, texts) = synthetic(eval_objects, 3);
        let views: Vec<ViewInfo> = (0..VIEWS)
            .map(|v| ViewInfo {
                id: v.to_string(),
                azimuth: Some((v % 12) as f64 * 30.0),
                polar: Some([20.0, 50.0, 80.0][v / 12]),
            })
            .collect();
        let input = EvalInput {
            images: &images,
            texts: &texts,
            objects: eval_objects,
            views: &views,
            dim: DIM,
        };
        let clock = Instant::now();
        let m = evaluate(&input, mvc::stages::evaluate::SIMILARITY_BLOCK_BYTES).unwrap();
        let secs = clock.elapsed().as_secs_f64();
        let n = (eval_objects * VIEWS) as f64;
        println!(
            "evaluate: {eval_objects} objects x {VIEWS} views ({n} images, {:.2e} similarities) in \
             {secs:.1} s, blocks of at most {} MB; same-object {:.3}, cross-object {:.3}, top-1 {:.3}",
            n * n,
            mvc::stages::evaluate::SIMILARITY_BLOCK_BYTES >> 20,
            m.same_object.mean,
            m.cross_object.mean,
            m.retrieval_top1
        );
    }
}
