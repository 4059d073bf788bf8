//! `MVC_BENCH_BREAKDOWN=1 cargo bench --bench embed`: where one batch's forward pass goes, op
//! by op: mvc's CPU kernels as they run, and candle's ops on tensors of the same shapes, as
//! candle-transformers' CLIP runs them (what the CPU path was before mvc's kernels).

use candle_core::{D, DType, Device, Module, Tensor};
use mvc::clip::ClipEncoder;
use mvc::clip::cpu::Profile;
use std::time::{Duration, Instant};

fn print(title: &str, ops: &[(&str, Duration)], images: usize) {
    let total: Duration = ops.iter().map(|(_, d)| *d).sum();
    println!(
        "{title}: {:.1} ms/image",
        1e3 * total.as_secs_f64() / images as f64
    );
    println!("| op | ms/image | share |");
    println!("| --- | --- | --- |");
    for (op, d) in ops {
        println!(
            "| {op} | {:.2} | {:.1}% |",
            1e3 * d.as_secs_f64() / images as f64,
            100.0 * d.as_secs_f64() / total.as_secs_f64()
        );
    }
}

pub fn run(encoder: &ClipEncoder, pixels: &[f32], n: usize, device: &Device) {
    println!("forward pass of a batch of {n}, ViT-B/32 sizes");
    if let Some(cpu) = encoder.cpu() {
        let mut profile = Profile::default();
        cpu.image_features_profiled(pixels, n, Some(&mut profile));
        let mut profile = Profile::default();
        cpu.image_features_profiled(pixels, n, Some(&mut profile));
        print("mvc's CPU kernels", &profile.ops, n);
    }
    candle_ops(n, device);
}

/// Adds the time of `f` (run after the device is idle) under `op`.
fn time<T>(ops: &mut Vec<(&'static str, Duration)>, op: &'static str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    match ops.iter_mut().find(|(o, _)| *o == op) {
        Some((_, d)) => *d += start.elapsed(),
        None => ops.push((op, start.elapsed())),
    }
    out
}

/// One pass of candle-transformers' vision encoder, op by op, on random tensors.
fn candle_ops(n: usize, device: &Device) {
    let (len, width, heads, inner, layers) = (50usize, 768usize, 12usize, 3072usize, 12);
    let head_dim = width / heads;
    let r = |dims: &[usize]| Tensor::randn(0f32, 0.02, dims, device).unwrap();
    let pixels = r(&[n, 3, 224, 224]);
    let conv = r(&[width, 3, 32, 32]);
    let ln = candle_nn::LayerNorm::new(r(&[width]), r(&[width]), 1e-5);
    let lin = |o: usize, i: usize| candle_nn::Linear::new(r(&[o, i]), Some(r(&[o])));
    let (q, k, v, out) = (
        lin(width, width),
        lin(width, width),
        lin(width, width),
        lin(width, width),
    );
    let (fc1, fc2) = (lin(inner, width), lin(width, inner));
    let mut ops = Vec::new();
    let x = time(&mut ops, "patch embedding (conv2d)", || {
        pixels
            .conv2d(&conv, 0, 32, 1, 1)
            .unwrap()
            .flatten_from(2)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
    });
    let cls = r(&[n, 1, width]);
    let mut h = Tensor::cat(&[cls, x], 1).unwrap();
    let shape = |t: Tensor| {
        t.reshape((n, len, heads, head_dim))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((n * heads, len, head_dim))
            .unwrap()
    };
    for _ in 0..layers {
        let a = time(&mut ops, "layer norm", || ln.forward(&h).unwrap());
        let (qs, ks, vs) = time(&mut ops, "q, k, v products (+ bias)", || {
            (
                (q.forward(&a).unwrap() * 0.125).unwrap(),
                k.forward(&a).unwrap(),
                v.forward(&a).unwrap(),
            )
        });
        let (qs, ks, vs) = time(&mut ops, "heads: transposes and copies", || {
            (shape(qs), shape(ks), shape(vs))
        });
        let w = time(&mut ops, "attention products", || {
            qs.matmul(&ks.t().unwrap()).unwrap()
        });
        let w = time(&mut ops, "softmax", || {
            candle_nn::ops::softmax(&w, D::Minus1).unwrap()
        });
        let o = time(&mut ops, "attention products", || w.matmul(&vs).unwrap());
        let o = time(&mut ops, "heads: transposes and copies", || {
            o.reshape((n, heads, len, head_dim))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((n, len, width))
                .unwrap()
        });
        let o = time(&mut ops, "out product (+ bias)", || {
            out.forward(&o).unwrap()
        });
        h = time(&mut ops, "residual adds", || (o + &h).unwrap());
        let a = time(&mut ops, "layer norm", || ln.forward(&h).unwrap());
        let m = time(&mut ops, "fc1 product (+ bias)", || {
            fc1.forward(&a).unwrap()
        });
        let m = time(&mut ops, "quick-GELU", || {
            (&m * candle_nn::ops::sigmoid(&(&m * 1.702).unwrap()).unwrap()).unwrap()
        });
        let m = time(&mut ops, "fc2 product (+ bias)", || {
            fc2.forward(&m).unwrap()
        });
        h = time(&mut ops, "residual adds", || (m + &h).unwrap());
    }
    let _ = h.to_dtype(DType::F32).unwrap().sum_all();
    print("candle's ops (before)", &ops, n);
}
