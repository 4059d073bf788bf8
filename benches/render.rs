//! The built-in renderer's speed: views per second at the study's settings (224 px, 2x2
//! supersampling, the study's 36 views), for a textured box and a 5,000-triangle sphere.
//!
//!     cargo bench --bench render
//!
//! With Blender installed it then renders 8 objects x 18 views with Blender three ways: a
//! process per view (on the first 2 objects: it is slow), a process per object, and one
//! persistent process (the pool `mvc run` uses), and reports views per second, the ratios,
//! and the pool's overhead over Blender's own import and render time (which the worker
//! measures). `MVC_BENCH_SAMPLES` (default 16) sets Cycles' samples.

#[path = "../tests/common/glb.rs"]
mod glb;

use mvc::render::blender::{BlenderPool, Job, JobView, find_blender};
use mvc::render::camera::{ViewSpec, study_fov};
use mvc::render::raster::{LightRig, RasterSettings, render};
use mvc::render::scene::Scene;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn main() {
    builtin();
    match find_blender(None) {
        Some(blender) => blender_three_ways(blender),
        None => println!("Blender is not installed: the Blender part of this benchmark is skipped"),
    }
}

/// The study's 36 views, as the renderer's view specs.
fn builtin() {
    let views: Vec<ViewSpec> = [20.0, 50.0, 80.0]
        .iter()
        .flat_map(|&polar| {
            (0..12).map(move |i| ViewSpec {
                azimuth: i as f64 * 30.0,
                polar,
                distance: 1.5,
                fov: study_fov(),
            })
        })
        .collect();
    let settings = RasterSettings {
        size: 224,
        supersample: 2,
        lights: LightRig::Study,
    };
    for (name, bytes) in [
        (
            "textured box (12 triangles)",
            glb::box_glb([0.5, 0.2, 0.3], [0.0; 3], 1.0),
        ),
        ("sphere (5,000 triangles)", glb::sphere_glb(50, 50)),
    ] {
        let load = Instant::now();
        let scene = Scene::from_glb(&bytes).unwrap();
        let loaded = load.elapsed();
        let start = Instant::now();
        let mut rounds = 0;
        while start.elapsed().as_secs_f64() < 2.0 {
            for v in &views {
                let img = render(&scene, v, &settings);
                let mut png = std::io::Cursor::new(Vec::new());
                img.write_to(&mut png, image::ImageFormat::Png).unwrap();
            }
            rounds += 1;
        }
        let per_view = start.elapsed().as_secs_f64() / (rounds * views.len()) as f64;
        println!(
            "{name}: {:.0} views/s on one core ({:.1} ms a view, PNG included; scene loaded in \
             {:.1} ms)",
            1.0 / per_view,
            per_view * 1000.0,
            loaded.as_secs_f64() * 1000.0
        );
    }
}

/// 18 views: 6 azimuths x polar 20, 50, 80.
fn bench_views() -> Vec<JobView> {
    [20.0, 50.0, 80.0]
        .iter()
        .flat_map(|&polar| {
            (0..6).map(move |i| {
                let v = ViewSpec {
                    azimuth: i as f64 * 60.0,
                    polar,
                    distance: 1.5,
                    fov: study_fov(),
                };
                JobView {
                    id: v.id(),
                    azimuth: v.azimuth,
                    polar: v.polar,
                    distance: v.distance,
                    fov: v.fov,
                }
            })
        })
        .collect()
}

fn blender_three_ways(blender: std::path::PathBuf) {
    let samples: u32 = std::env::var("MVC_BENCH_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let dir = tempfile::tempdir().unwrap();
    let objects: Vec<std::path::PathBuf> = (0..8)
        .map(|i| {
            let bytes = if i % 2 == 0 {
                glb::box_glb([0.5, 0.2 + 0.05 * i as f32, 0.3], [0.0; 3], 1.0)
            } else {
                glb::sphere_glb(50, 50)
            };
            let path = dir.path().join(format!("o{i}.glb"));
            std::fs::write(&path, bytes).unwrap();
            path
        })
        .collect();
    let views = bench_views();
    let job = |glb: &std::path::Path, views: Vec<JobView>| {
        let out = tempfile::tempdir_in(dir.path()).unwrap().keep();
        Job {
            object: glb.file_stem().unwrap().to_string_lossy().to_string(),
            glb: glb.to_path_buf(),
            out,
            resolution: 224,
            engine: "CYCLES".into(),
            samples,
            lights: "study".into(),
            views,
        }
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let kill = CancellationToken::new();
    let timeout = Duration::from_secs(600);
    rt.block_on(async {
        // A process per view, on the first two objects.
        let start = Instant::now();
        let mut n = 0;
        for glb in &objects[..2] {
            for v in &views {
                let pool = BlenderPool::new(blender.clone()).unwrap();
                pool.run(&job(glb, vec![v.clone()]), timeout, &kill)
                    .await
                    .unwrap();
                n += 1;
            }
        }
        let per_view = n as f64 / start.elapsed().as_secs_f64();

        // A process per object.
        let start = Instant::now();
        for glb in &objects {
            let pool = BlenderPool::new(blender.clone()).unwrap();
            pool.run(&job(glb, views.clone()), timeout, &kill)
                .await
                .unwrap();
        }
        let total = (objects.len() * views.len()) as f64;
        let per_object = total / start.elapsed().as_secs_f64();

        // The persistent pool: one process for every object (started before the clock,
        // as a run's pool is warm after its first object).
        let pool = BlenderPool::new(blender.clone()).unwrap();
        pool.run(&job(&objects[0], vec![views[0].clone()]), timeout, &kill)
            .await
            .unwrap();
        let start = Instant::now();
        let mut blender_own = 0.0;
        for glb in &objects {
            let done = pool
                .run(&job(glb, views.clone()), timeout, &kill)
                .await
                .unwrap();
            blender_own += done.import_seconds + done.render_seconds;
        }
        let wall = start.elapsed().as_secs_f64();
        let pooled = total / wall;
        println!("Blender (Cycles, {samples} samples, 224 px), 8 objects x 18 views:");
        println!("  a process per view:   {per_view:.2} views/s (first 2 objects)");
        println!(
            "  a process per object: {per_object:.2} views/s ({:.2}x per view)",
            per_object / per_view
        );
        println!(
            "  the persistent pool:  {pooled:.2} views/s ({:.2}x per view, {:.2}x per object)",
            pooled / per_view,
            pooled / per_object
        );
        println!(
            "  pool overhead over Blender's own import and render time: {:.1}% ({wall:.1} s \
             wall, {blender_own:.1} s in Blender)",
            (wall - blender_own) / blender_own * 100.0
        );
    });
    mvc_run(&objects, samples);
}

/// The same 8 objects x 18 views through `mvc run` (the pool, plus everything mvc does
/// around it: planning, keys, PNGs into the cache, the index), against Blender's own time
/// as the worker reports it in mvc's log.
fn mvc_run(objects: &[std::path::PathBuf], samples: u32) {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, glb) in objects.iter().enumerate() {
        std::fs::copy(glb, dir.path().join(format!("o{i}.glb"))).unwrap();
        files.push(format!("o{i} = \"o{i}.glb\""));
    }
    let items: Vec<String> = (0..objects.len()).map(|i| format!("\"o{i}\"")).collect();
    std::fs::write(
        dir.path().join("p.toml"),
        format!(
            "[stage.objects]\nkind = \"command\"\nitems = [{}]\nfiles = {{ {} }}\n\
             cmd = 'eval cp \"\\$MVC_FILE_$(echo \"$MVC_ITEM\" | tr a-z A-Z)\" \"$MVC_OUT/m.glb\"'\n\
             [stage.views]\nkind = \"render\"\ninputs = [\"objects\"]\nbackend = \"blender\"\n\
             azimuths = {{ start = 0, step = 60, count = 6 }}\npolar = [20, 50, 80]\n\
             samples = {samples}\n",
            items.join(", "),
            files.join(", ")
        ),
    )
    .unwrap();
    let start = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mvc"))
        .args(["run", "p.toml", "-v", "-q"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let wall = start.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "mvc run failed: {log}");
    let mut own = 0.0;
    for line in log.lines().filter(|l| l.contains("blender: ")) {
        for part in ["import ", "render "] {
            if let Some(rest) = line.split(part).nth(1) {
                own += rest
                    .split('s')
                    .next()
                    .unwrap()
                    .parse::<f64>()
                    .unwrap_or(0.0);
            }
        }
    }
    println!(
        "  mvc run, the same 144 views: {:.2} views/s, {wall:.1} s wall, {own:.1} s in Blender: \
         mvc's overhead {:.1}% (Blender's start-up included)",
        144.0 / wall,
        (wall - own) / own * 100.0
    );
}
