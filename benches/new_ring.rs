//! Incremental work after the study's everyday change, a new ring of views: the wall time of
//! the rerun as a fraction of a full run, against the fraction of views that are new.
//!
//!     cargo bench --bench new_ring
//!     MVC_BENCH_SAMPLES=32 cargo bench --bench new_ring     # Cycles samples (default 16)
//!
//! The pipeline is `pipelines/offline.toml` (eight objects, every stage: render with
//! Blender, embed with the test fixture's tiny CLIP, split, four heads, evaluate, report) at
//! the study's render settings: 12 azimuths, 224 px. First a full run with the rings
//! polar = [20, 50, 80] on an empty cache, timed; then, on another empty cache, a run with
//! [20, 50] and, timed, the rerun with [20, 50, 80]. A third of the views are new; the goal
//! is a rerun costing at most 1.2 times that share of the full run. Because views of
//! different rings cost Blender different times, it also compares by Blender's own time
//! (from `mvc run -v`'s log). Needs Blender.

#[path = "common/timed.rs"]
mod timed;

use std::path::Path;
use timed::{Timed, blender_seconds, timed};

const OBJECTS: u64 = 8;
const AZIMUTHS: u64 = 12;

fn main() {
    if mvc::render::blender::find_blender(None).is_none() {
        println!("Blender is not installed: this benchmark needs it (apt-get install blender)");
        return;
    }
    let samples: u32 = std::env::var("MVC_BENCH_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let mvc = env!("CARGO_BIN_EXE_mvc");
    let dir = tempfile::tempdir().expect("temp dir");
    // The pipeline's relative paths (objects, the CLIP fixture) resolve in the repository.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for sub in ["pipelines", "tests"] {
        std::os::unix::fs::symlink(repo.join(sub), dir.path().join(sub)).unwrap();
    }
    let offline = std::fs::read_to_string(repo.join("pipelines/offline.toml")).unwrap();
    let pipeline = |rings: &str| -> String {
        let text = offline
            .replace("name = \"offline\"", "name = \"new-ring\"")
            .replace("backend = \"auto\"", "backend = \"blender\"")
            .replace(
                "azimuths = { start = 0, step = 60, count = 6 }",
                &format!("azimuths = {{ start = 0, step = 30, count = {AZIMUTHS} }}"),
            )
            .replace("polar = [20, 50]", &format!("polar = {rings}"))
            .replace("resolution = 64", "resolution = 224")
            .replace("samples = 4", &format!("samples = {samples}"));
        assert!(
            text.contains("new-ring") && text.contains("step = 30") && text.contains("= 224"),
            "pipelines/offline.toml changed: update this benchmark's edits of it"
        );
        text
    };
    let run = |cache: &str, rings: &str| -> (Timed, serde_json::Value) {
        std::fs::write(dir.path().join("p.toml"), pipeline(rings)).unwrap();
        let out = timed(
            mvc,
            dir.path(),
            &["run", "p.toml", "--cache", cache, "--json", "-q", "-v"],
        );
        assert_eq!(out.code, Some(0), "mvc run failed:\n{}", out.stderr);
        let json = serde_json::from_str(out.stdout.lines().last().unwrap_or("")).unwrap();
        (out, json)
    };
    let ran = |json: &serde_json::Value, stage: &str| json["stages"][stage]["ran"].as_u64();

    println!(
        "new_ring: {OBJECTS} objects x {AZIMUTHS} azimuths, Blender Cycles {samples} samples, \
         224 px, tiny CLIP, four heads"
    );
    let (full, json) = run("full", "[20, 50, 80]");
    let all_views = OBJECTS * AZIMUTHS * 3;
    assert_eq!(ran(&json, "views"), Some(all_views), "{json}");
    println!(
        "  full run, 3 rings ({all_views} views): {:.1} s",
        full.wall.as_secs_f64()
    );

    let (before, _) = run("incremental", "[20, 50]");
    println!(
        "  first run, 2 rings ({} views): {:.1} s",
        OBJECTS * AZIMUTHS * 2,
        before.wall.as_secs_f64()
    );
    let (rerun, json) = run("incremental", "[20, 50, 80]");
    let new_views = OBJECTS * AZIMUTHS;
    assert_eq!(ran(&json, "views"), Some(new_views), "{json}");
    assert_eq!(ran(&json, "embed"), Some(new_views), "{json}");
    assert_eq!(ran(&json, "split"), Some(0), "{json}");
    let share = new_views as f64 / all_views as f64;
    let fraction = rerun.wall.as_secs_f64() / full.wall.as_secs_f64();
    println!(
        "  rerun after adding the ring ({new_views} new views): {:.1} s",
        rerun.wall.as_secs_f64()
    );
    println!(
        "  the rerun costs {:.3} of a full run for a new-view share of {share:.3}: \
         ratio {:.2} (goal: at most 1.2)",
        fraction,
        fraction / share
    );
    // Views of different rings cost Blender different times (a ring near the horizon sees
    // more of an object than one above it): the same comparison by Blender's own time, and
    // what is left around it.
    let (full_blender, rerun_blender) = (
        blender_seconds(&full.stderr),
        blender_seconds(&rerun.stderr),
    );
    let blender_share = rerun_blender / full_blender;
    println!(
        "  Blender's own time: {full_blender:.1} s in the full run, {rerun_blender:.1} s for the \
         new ring ({blender_share:.3} of it); the rerun costs {:.2}x that share; outside \
         Blender: {:.1} s in the full run, {:.1} s in the rerun",
        fraction / blender_share,
        full.wall.as_secs_f64() - full_blender,
        rerun.wall.as_secs_f64() - rerun_blender
    );
}
