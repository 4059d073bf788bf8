//! Embedding throughput on the CPU with a ViT-B/32-sized CLIP (random weights, the sizes of
//! `ClipConfig::vit_base_patch32`): 256 RGBA images of 224x224, at batch sizes 1, 16 and 64.
//! For each: images per second with decoding and preprocessing done before the model
//! (sequential), the share of each, and images per second with the next batch preprocessed
//! on another thread while the model runs (as the embed stage does). Ratios are against
//! batch 1 in the same run.
//!
//!   cargo bench --bench embed
//!
//! MVC_BENCH_IMAGES=N changes the count, MVC_BENCH_BATCHES=1,16,64 the batch sizes,
//! MVC_BENCH_DEVICE=cuda and MVC_BENCH_DTYPE=bf16 run it on a GPU (a `cuda` build, see
//! scripts/build-cuda.sh and scripts/gpu-check.sh).

use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::clip::ClipConfig;
use mvc::clip::config::Preprocess;
use mvc::clip::model::select_device;
use mvc::clip::{ClipEncoder, DeviceChoice, ModelConfig, Precision, preprocess};
use std::time::{Duration, Instant};

fn images(n: usize) -> Vec<Vec<u8>> {
    // Render-like RGBA PNGs: an opaque blob with soft edges on a transparent background.
    (0..n)
        .map(|k| {
            let img = image::RgbaImage::from_fn(224, 224, |x, y| {
                let dx = x as f32 - 112.0 - (k % 7) as f32;
                let dy = y as f32 - 112.0;
                let r = (dx * dx + dy * dy).sqrt();
                let a = (255.0 * (1.0 - (r - 70.0) / 10.0).clamp(0.0, 1.0)) as u8;
                image::Rgba([(x + k as u32) as u8, y as u8, ((x * y) >> 6) as u8, a])
            });
            let mut png = std::io::Cursor::new(Vec::new());
            img.write_to(&mut png, image::ImageFormat::Png).unwrap();
            png.into_inner()
        })
        .collect()
}

fn prepare(bytes: &[Vec<u8>], pre: &Preprocess) -> Vec<f32> {
    let mut out = Vec::with_capacity(bytes.len() * 3 * 224 * 224);
    for b in bytes {
        let img = preprocess::decode(b, "bench").unwrap();
        out.extend(preprocess::pixel_values(&img, pre).unwrap());
    }
    out
}

fn main() {
    let n: usize = std::env::var("MVC_BENCH_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let choice: DeviceChoice = env("MVC_BENCH_DEVICE", "cpu").parse().unwrap();
    let precision: Precision = env("MVC_BENCH_DTYPE", "f32").parse().unwrap();
    let batches: Vec<usize> = env("MVC_BENCH_BATCHES", "1,16,64")
        .split(',')
        .map(|b| b.trim().parse().expect("MVC_BENCH_BATCHES: numbers"))
        .collect();
    let (device, device_line) = select_device(choice).unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, precision.dtype(), &device);
    let config = ModelConfig {
        clip: ClipConfig::vit_base_patch32(),
        projection_dim: 512,
        max_tokens: 77,
        eos_token_id: None,
    };
    let encoder = ClipEncoder::from_var_builder(vb, config).unwrap();
    let pre = Preprocess::openai(224);
    let pngs = images(n);
    println!(
        "embed benchmark: {n} images of 224x224, ViT-B/32 sizes, random weights, {device_line} {}, {} CPU threads",
        precision.name(),
        std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(1)
    );
    // Warm-up: first use allocates and spins up the thread pool.
    encoder
        .image_features(&prepare(&pngs[..2], &pre), 2)
        .unwrap();

    let mut baseline = None;
    for batch in batches {
        // Sequential: preprocess a batch, then run it.
        let mut pre_time = Duration::ZERO;
        let mut fwd_time = Duration::ZERO;
        for chunk in pngs.chunks(batch) {
            let t = Instant::now();
            let pixels = prepare(chunk, &pre);
            pre_time += t.elapsed();
            let t = Instant::now();
            encoder.image_features(&pixels, chunk.len()).unwrap();
            fwd_time += t.elapsed();
        }
        let total = pre_time + fwd_time;
        let sequential = n as f64 / total.as_secs_f64();
        // Overlapped: a thread prepares the next batch while the model runs this one.
        let t = Instant::now();
        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Vec<f32>)>(1);
            let pre = &pre;
            let pngs = &pngs;
            s.spawn(move || {
                for chunk in pngs.chunks(batch) {
                    tx.send((chunk.len(), prepare(chunk, pre))).unwrap();
                }
            });
            for (k, pixels) in rx {
                encoder.image_features(&pixels, k).unwrap();
            }
        });
        let overlapped = n as f64 / t.elapsed().as_secs_f64();
        let base = *baseline.get_or_insert(overlapped);
        println!(
            "batch {batch:>3}: {overlapped:7.2} images/s overlapped ({:.2}x the first batch size), {sequential:7.2} images/s sequential; decode+preprocess {:.1}% ({:.2} ms/image), forward {:.1}% ({:.2} ms/image)",
            overlapped / base,
            100.0 * pre_time.as_secs_f64() / total.as_secs_f64(),
            1e3 * pre_time.as_secs_f64() / n as f64,
            100.0 * fwd_time.as_secs_f64() / total.as_secs_f64(),
            1e3 * fwd_time.as_secs_f64() / n as f64,
        );
    }
}
