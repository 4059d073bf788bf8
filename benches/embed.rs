//! Embedding throughput with a ViT-B/32-sized CLIP (random weights): RGBA images of 224x224
//! at batch sizes 1, 16 and 64, against PyTorch + transformers on the same model and the same
//! images in the same command.
//!
//!   cargo bench --bench embed
//!
//! For each batch size, mvc's images per second with decoding and preprocessing overlapped
//! with the model (as the embed stage runs), sequential (end to end: decode, preprocess,
//! forward), and steady state (the forward pass alone on prepared pixel values); then
//! PyTorch's end to end (PIL, CLIPImageProcessor, get_image_features) and steady state, the
//! ratios, and how far apart the two models' features are. PyTorch runs from its own venv
//! (`target/bench-torch-venv`, from PyPI, versions `TORCH` and `TRANSFORMERS`), installed the
//! first time; it also makes the model (`CLIPModel(CLIPConfig())`, seed 0, save_pretrained)
//! that both load. When it cannot be installed, mvc is timed alone on a candle-initialised
//! model.
//!
//! MVC_BENCH_IMAGES=N changes the count (default 128), MVC_BENCH_BATCHES=1,16,64 the batch
//! sizes, MVC_BENCH_BREAKDOWN=1 prints where one batch's forward time goes instead (mvc's CPU
//! kernels, and candle's ops at the same shapes: what the CPU path ran before),
//! MVC_BENCH_DEVICE=cuda and MVC_BENCH_DTYPE=bf16 run it on a GPU (a `cuda` build, see
//! scripts/build-cuda.sh and scripts/gpu-check.sh; no PyTorch comparison there).

// A benchmark is one measured scenario read top to bottom; the 100-line limit of
// clippy.toml holds for src/.
#![allow(clippy::too_many_lines)]

use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::clip::ClipConfig;
use mvc::clip::config::Preprocess;
use mvc::clip::model::select_device;
use mvc::clip::{ClipEncoder, DeviceChoice, ModelConfig, Precision, preprocess};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// PyTorch and transformers as pinned for the comparison (the versions the issue measured).
const TORCH: &str = "2.15.0";
const TRANSFORMERS: &str = "5.24.0";

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

/// Python in `target/bench-torch-venv` with PyTorch and transformers, installed from PyPI the
/// first time; `None` (with the reason printed) when that cannot be done here.
fn install_torch() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-torch-venv");
    let python = venv.join("bin/python");
    let probe = "import torch, transformers; print(torch.__version__, transformers.__version__)";
    let installed = Command::new(&python)
        .args(["-c", probe])
        .output()
        .is_ok_and(|o| {
            // torch's version carries a local part on some wheels (2.15.0+cu130).
            let out = String::from_utf8_lossy(&o.stdout);
            let mut v = out.split_whitespace();
            v.next().is_some_and(|t| t.split('+').next() == Some(TORCH))
                && v.next() == Some(TRANSFORMERS)
        });
    if installed {
        return Some(python);
    }
    println!(
        "installing torch {TORCH} and transformers {TRANSFORMERS} into {} (from PyPI, a few GB)",
        venv.display()
    );
    let result = venv::install(
        &venv,
        &[
            &format!("torch=={TORCH}"),
            &format!("transformers=={TRANSFORMERS}"),
            "pillow",
            "numpy",
        ],
    );
    match result {
        Ok(()) => Some(python),
        Err(e) => {
            println!("PyTorch could not be installed, so mvc is timed alone: {e}");
            None
        }
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/embed_torch.py")
}

/// Runs the PyTorch side; its JSON lines.
fn torch_lines(python: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(python)
        .arg(script())
        .args(args)
        .output()
        .expect("running python");
    assert!(
        out.status.success(),
        "embed_torch.py {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn main() {
    let n: usize = std::env::var("MVC_BENCH_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let choice: DeviceChoice = env("MVC_BENCH_DEVICE", "cpu").parse().unwrap();
    let precision: Precision = env("MVC_BENCH_DTYPE", "f32").parse().unwrap();
    let batches: Vec<usize> = env("MVC_BENCH_BATCHES", "1,16,64")
        .split(',')
        .map(|b| b.trim().parse().expect("MVC_BENCH_BATCHES: numbers"))
        .collect();
    let (device, device_line) = select_device(choice).unwrap();
    let work = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-embed");
    let pngs = images(n);
    // PyTorch (and the files it reads) only on the CPU: on a GPU machine the prebuilt
    // benchmark runs far from this repository (scripts/gpu-check.sh).
    let torch = if device.is_cpu() {
        install_torch()
    } else {
        None
    };
    let image_dir = work.join(format!("images-{n}"));
    if torch.is_some() && !image_dir.join(format!("{:04}.png", n - 1)).is_file() {
        std::fs::create_dir_all(&image_dir).unwrap();
        for (k, png) in pngs.iter().enumerate() {
            std::fs::write(image_dir.join(format!("{k:04}.png")), png).unwrap();
        }
    }
    let model_dir = work.join("model");
    let encoder = match &torch {
        Some(python) => {
            if !model_dir.join("model.safetensors").is_file() {
                torch_lines(python, &["make", model_dir.to_str().unwrap()]);
            }
            let config =
                mvc::clip::config::read_model_config(&model_dir.join("config.json")).unwrap();
            ClipEncoder::load(
                &model_dir.join("model.safetensors"),
                config,
                &device,
                precision,
            )
            .unwrap()
        }
        None => {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, precision.dtype(), &device);
            let config = ModelConfig {
                clip: ClipConfig::vit_base_patch32(),
                projection_dim: 512,
                max_tokens: 77,
                eos_token_id: None,
            };
            ClipEncoder::from_var_builder(vb, config).unwrap()
        }
    };
    let pre = Preprocess::openai(224);
    println!(
        "embed benchmark: {n} images of 224x224, ViT-B/32 sizes, random weights, {device_line} {} ({}), {} CPU threads",
        precision.name(),
        encoder.implementation(),
        std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(1)
    );
    // Warm-up: first use allocates and spins up the thread pool.
    encoder
        .image_features(&prepare(&pngs[..2], &pre), 2)
        .unwrap();
    if std::env::var("MVC_BENCH_BREAKDOWN").is_ok() {
        let batch = batches.iter().copied().max().unwrap_or(64).min(n);
        breakdown::run(&encoder, &prepare(&pngs[..batch], &pre), batch, &device);
        return;
    }

    let mut baseline = None;
    let mut mvc_rates = Vec::new();
    let mut features = Vec::new();
    for &batch in &batches {
        // Sequential: read and preprocess a batch, then run it.
        let mut pre_time = Duration::ZERO;
        let mut fwd_time = Duration::ZERO;
        features.clear();
        for chunk in pngs.chunks(batch) {
            let t = Instant::now();
            let pixels = prepare(chunk, &pre);
            pre_time += t.elapsed();
            let t = Instant::now();
            features.extend(encoder.image_features(&pixels, chunk.len()).unwrap());
            fwd_time += t.elapsed();
        }
        let total = pre_time + fwd_time;
        let sequential = n as f64 / total.as_secs_f64();
        let steady = n as f64 / fwd_time.as_secs_f64();
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
            "batch {batch:>3}: {overlapped:7.2} images/s overlapped ({:.2}x the first batch size), {sequential:7.2} images/s sequential, {steady:7.2} images/s steady state (forward only); decode+preprocess {:.1}% ({:.2} ms/image), forward {:.1}% ({:.2} ms/image)",
            overlapped / base,
            100.0 * pre_time.as_secs_f64() / total.as_secs_f64(),
            1e3 * pre_time.as_secs_f64() / n as f64,
            100.0 * fwd_time.as_secs_f64() / total.as_secs_f64(),
            1e3 * fwd_time.as_secs_f64() / n as f64,
        );
        mvc_rates.push((batch, sequential, steady));
    }

    let Some(python) = torch else {
        println!("(the stage-against-command timing needs the PyTorch-made model: skipped)");
        return;
    };
    stage_against_command(&model_dir, &work, n);
    let list = batches
        .iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let theirs = work.join("torch-features.f32");
    let lines = torch_lines(
        &python,
        &[
            "time",
            model_dir.to_str().unwrap(),
            image_dir.to_str().unwrap(),
            &list,
            theirs.to_str().unwrap(),
        ],
    );
    let rate = |b: usize, key: &str| {
        lines
            .iter()
            .find(|l| l["batch"] == b)
            .and_then(|l| l[key].as_f64())
            .unwrap_or(f64::NAN)
    };
    let version = lines.iter().find(|l| l["torch"].is_string());
    println!(
        "PyTorch {} ({} threads), transformers {TRANSFORMERS}, same model and images:",
        version.map_or("?".into(), |v| v["torch"].to_string()),
        version.map_or("?".into(), |v| v["threads"].to_string()),
    );
    println!(
        "| batch | mvc end to end | PyTorch end to end | ratio | mvc steady state | PyTorch steady state | ratio |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for &(b, seq, steady) in &mvc_rates {
        let (te, ts) = (rate(b, "end_to_end"), rate(b, "steady"));
        println!(
            "| {b} | {seq:.2} | {te:.2} | {:.2}x | {steady:.2} | {ts:.2} | {:.2}x |",
            seq / te,
            steady / ts
        );
    }
    let best_mvc = mvc_rates.iter().map(|r| r.2).fold(0.0, f64::max);
    let best_torch = batches
        .iter()
        .map(|&b| rate(b, "steady"))
        .fold(0.0, f64::max);
    println!(
        "best steady state: mvc {best_mvc:.2} images/s, PyTorch {best_torch:.2} images/s: {:.2}x",
        best_mvc / best_torch
    );
    // The features of the last batch size's run against PyTorch's, image by image.
    let bytes = std::fs::read(&theirs).unwrap();
    let theirs: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let worst = features
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!(
        "features: mvc and PyTorch differ by at most {worst:.2e} ({} values compared)",
        theirs.len().min(features.len())
    );
}

#[path = "common/embed_breakdown.rs"]
mod breakdown;
#[path = "common/timed.rs"]
mod timed;
#[path = "common/venv.rs"]
mod venv;

/// `mvc run` embedding `views` rendered views (only the embed stage runs: the renders are
/// cached, the background changed) against `mvc embed` on the same images exported as files,
/// both whole processes with the model's load, the same model and batch.
fn stage_against_command(model_dir: &Path, work: &Path, views: usize) {
    let mvc = env!("CARGO_BIN_EXE_mvc");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = work.join("stage");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The stage reads the tokenizer too (for captions); the fixture's is CLIP's.
    std::fs::copy(
        root.join("tests/data/clip-tiny/tokenizer.json"),
        model_dir.join("tokenizer.json"),
    )
    .unwrap();
    let objects = [
        "bar", "carton", "cone", "crate", "cup", "donut", "orange", "plate",
    ];
    let per_object = views.div_ceil(objects.len() * 2).max(1);
    let items: Vec<String> = objects
        .iter()
        .map(|o| format!("{{ id = \"{o}\" }}"))
        .collect();
    let files: Vec<String> = objects
        .iter()
        .map(|o| {
            format!(
                "{o} = \"{}\"",
                root.join(format!("pipelines/offline/objects/{o}.glb"))
                    .display()
            )
        })
        .collect();
    let pipeline = |background: &str| {
        format!(
            r#"[pipeline]
name = "stage-bench"
cache = "cache"

[stage.objects]
kind = "command"
items = [{}]
files = {{ {} }}
cmd = 'eval cp "\$MVC_FILE_$(echo "$MVC_ITEM" | tr a-z A-Z)" "$MVC_OUT/model.glb"'
outputs = ["model.glb"]

[stage.views]
kind = "render"
inputs = ["objects"]
backend = "builtin"
azimuths = {{ start = 0, step = {}, count = {per_object} }}
polar = [20, 50]
resolution = 224
supersample = 1

[stage.clip]
kind = "embed"
inputs = ["views"]
model = "{}"
batch = 64
device = "cpu"
background = "{background}"
"#,
            items.join(", "),
            files.join(", "),
            360.0 / per_object as f64,
            model_dir.display()
        )
    };
    let p = dir.join("p.toml");
    std::fs::write(&p, pipeline("#ffffff")).unwrap();
    let first = timed::timed(mvc, &dir, &["run", "p.toml"]);
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    std::fs::write(&p, pipeline("#fefefe")).unwrap();
    let stage = timed::timed(mvc, &dir, &["run", "p.toml"]);
    assert_eq!(stage.code, Some(0), "{}", stage.stderr);
    let exported = timed::timed(mvc, &dir, &["export", "p.toml", "views", "renders"]);
    assert_eq!(exported.code, Some(0), "{}", exported.stderr);
    let mut images = Vec::new();
    for object in std::fs::read_dir(dir.join("renders")).unwrap() {
        let object = object.unwrap().path();
        if object.is_dir() {
            for f in std::fs::read_dir(&object).unwrap() {
                let f = f.unwrap().path();
                if f.extension().is_some_and(|e| e == "png") {
                    images.push(f.display().to_string());
                }
            }
        }
    }
    images.sort();
    let model = model_dir.display().to_string();
    let mut args = vec![
        "embed",
        "--model",
        &model,
        "--device",
        "cpu",
        "--batch",
        "64",
        "--background",
        "#fefefe",
        "--out",
        "cli.safetensors",
    ];
    for image in &images {
        args.extend(["--image", image.as_str()]);
    }
    let command = timed::timed(mvc, &dir, &args);
    assert_eq!(command.code, Some(0), "{}", command.stderr);
    println!(
        "stage against command, {} views, batch 64, whole processes: `mvc run` (embed stage only) {:.2} s, `mvc embed` {:.2} s: {:.2}x",
        images.len(),
        stage.wall.as_secs_f64(),
        command.wall.as_secs_f64(),
        stage.wall.as_secs_f64() / command.wall.as_secs_f64()
    );
}
