//! Planning at scale: a synthetic pipeline of N cached tasks (default 1,000,000), planned by
//! `mvc plan`; plus the same pipeline's first (uncached) run, as overhead per task against a
//! baseline of spawning the same shell commands directly.
//!
//!     cargo bench --bench plan_scale                  # N = 1,000,000 (the first run is long)
//!     MVC_BENCH_TASKS=100000 cargo bench --bench plan_scale
//!     MVC_BENCH_DIR=/tmp/mvc-bench cargo bench ...    # keep the cache to plan again later
//!
//! The pipeline: `gen` over N/2 items (from an items file), `copy` per item of `gen`, and one
//! all-at-once `count` over `copy`: N + 1 tasks. Every command spawns `sh`.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "common/timed.rs"]
mod timed;
use timed::{bench_dir, group, timed};

const GEN_CMD: &str = r#"echo "$MVC_ITEM" > "$MVC_OUT/o""#;
const COPY_CMD: &str = r#"cp "$MVC_IN_GEN/o" "$MVC_OUT/o""#;

fn main() {
    let tasks: usize = std::env::var("MVC_BENCH_TASKS")
        .ok()
        .and_then(|v| v.replace(['_', ','], "").parse().ok())
        .unwrap_or(1_000_000);
    let items = tasks / 2;
    let (dir, _kept) = bench_dir();
    let mvc = env!("CARGO_BIN_EXE_mvc");
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "plan_scale: {} tasks ({items} items x 2 stages + 1 gather), {cores} cores, cache in {}",
        group(tasks as u64 + 1),
        dir.display()
    );

    write_pipeline(&dir, items);

    // The first, uncached run (skipped when MVC_BENCH_DIR already holds it).
    let first = timed(mvc, &dir, &["run", "p.toml", "--json", "-q"]);
    let first_json = first.stdout.lines().last().unwrap_or("").to_string();
    let ran: u64 = serde_json::from_str::<serde_json::Value>(&first_json)
        .ok()
        .map(|j| {
            ["gen", "copy", "count"]
                .iter()
                .map(|s| j["stages"][s]["ran"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    assert_eq!(
        first.code,
        Some(0),
        "the first run failed:\n{}",
        first.stderr
    );
    if ran > 0 {
        println!(
            "first run: {} tasks ran in {:.1}s, peak RSS {} MB",
            group(ran),
            first.wall.as_secs_f64(),
            first.peak_rss_kb / 1024
        );
    } else {
        println!(
            "the cache already held this pipeline: `mvc run` with every task cached took \
             {:.2}s, peak RSS {} MB (no first-run figures)",
            first.wall.as_secs_f64(),
            first.peak_rss_kb / 1024
        );
    }

    // Planning the fully cached state: the measurement this benchmark is for.
    let mut plans = Vec::new();
    for _ in 0..3 {
        let plan = timed(mvc, &dir, &["plan", "p.toml", "--json"]);
        assert_eq!(plan.code, Some(0), "plan failed:\n{}", plan.stderr);
        let json: serde_json::Value = serde_json::from_str(plan.stdout.trim()).unwrap();
        for s in ["gen", "copy", "count"] {
            assert_eq!(json["stages"][s]["to_run"], 0, "not fully cached: {json}");
        }
        plans.push(plan);
    }
    let best = plans.iter().min_by_key(|p| p.wall).unwrap();
    let peak = plans.iter().map(|p| p.peak_rss_kb).max().unwrap();
    println!(
        "mvc plan (all cached): best of 3 {:.2}s, {:.2} us per task, peak RSS {} MB \
         (goal: under 2 s and 1,000 MB for 1,000,000 tasks)",
        best.wall.as_secs_f64(),
        best.wall.as_secs_f64() * 1e6 / tasks as f64,
        peak / 1024
    );

    // Overhead per task of the first run, against running the same commands directly with
    // the same parallelism (a sample of the items: gen then copy each, no orchestration).
    if ran > 0 {
        let sample = items.min(10_000);
        let baseline = baseline_spawns(&dir, sample, cores);
        let per_task_mvc = first.wall.as_secs_f64() / ran as f64;
        let per_task_raw = baseline.as_secs_f64() / (2 * sample) as f64;
        println!(
            "first run per task: {:.3} ms; the same commands run directly ({} gen + copy \
             pairs, {cores} at a time): {:.3} ms; ratio {:.2}x, overhead {:.3} ms per task",
            per_task_mvc * 1e3,
            group(sample as u64),
            per_task_raw * 1e3,
            per_task_mvc / per_task_raw,
            (per_task_mvc - per_task_raw) * 1e3
        );
        println!(
            "plan / first run: {:.4} (planning {} cached tasks costs {:.2}% of running them)",
            best.wall.as_secs_f64() / first.wall.as_secs_f64(),
            group(tasks as u64),
            100.0 * best.wall.as_secs_f64() / first.wall.as_secs_f64()
        );
    }
}

fn write_pipeline(dir: &Path, items: usize) {
    let mut ids = std::io::BufWriter::new(std::fs::File::create(dir.join("items.txt")).unwrap());
    for i in 0..items {
        writeln!(ids, "obj{i:07}").unwrap();
    }
    ids.flush().unwrap();
    std::fs::write(
        dir.join("p.toml"),
        format!(
            r#"[pipeline]
name = "plan-scale"

[stage.gen]
kind = "command"
items_file = "items.txt"
cmd = '{GEN_CMD}'

[stage.copy]
kind = "command"
inputs = ["gen"]
cmd = '{COPY_CMD}'

[stage.count]
kind = "command"
inputs = ["copy"]
per_item = false
cmd = 'ls "$MVC_IN_COPY" | wc -l > "$MVC_OUT/n"'
"#
        ),
    )
    .unwrap();
}

/// Runs the gen and copy commands of `sample` items directly, `parallel` items at a time,
/// each in its own directories.
fn baseline_spawns(dir: &Path, sample: usize, parallel: usize) -> Duration {
    let base = dir.join("baseline");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= sample {
                        break;
                    }
                    let item = format!("obj{i:07}");
                    let generated = base.join("gen").join(&item);
                    let copied = base.join("copy").join(&item);
                    std::fs::create_dir_all(&generated).unwrap();
                    std::fs::create_dir_all(&copied).unwrap();
                    let status = Command::new("sh")
                        .arg("-c")
                        .arg(GEN_CMD)
                        .env("MVC_ITEM", &item)
                        .env("MVC_OUT", &generated)
                        .status()
                        .unwrap();
                    assert!(status.success());
                    let status = Command::new("sh")
                        .arg("-c")
                        .arg(COPY_CMD)
                        .env("MVC_IN_GEN", &generated)
                        .env("MVC_OUT", &copied)
                        .status()
                        .unwrap();
                    assert!(status.success());
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let _ = std::fs::remove_dir_all(&base);
    elapsed
}
