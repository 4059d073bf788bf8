//! The built-in renderer's speed: views per second at the study's settings (224 px, 2x2
//! supersampling, the study's 36 views), for a textured box and a 5,000-triangle sphere.
//!
//!     cargo bench --bench render
//!     MVC_BENCH_SAMPLES=32 cargo bench --bench render    # Cycles samples (default 16)
//!     MVC_BENCH_PART=engines cargo bench --bench render  # EEVEE against Cycles only
//!
//! With Blender installed it then renders the same objects (the six real models of the
//! end-to-end test when assimp-testmodels is installed) from the study's 36 views three
//! ways: the study's way (a new Blender process per object, one at a time), the same with
//! persistent render data, and mvc's persistent pool; it reports views per second, the
//! ratios, whether the pixels agree, and the pool's overhead over Blender's own import and
//! render time (which the worker measures). Then the same views through `mvc run`. Last,
//! EEVEE (the study's engine, 64 samples, on Mesa's software OpenGL under the pool's own
//! Xvfb when no display is set) against Cycles at 32 samples, both through the pool: views
//! per second and seconds per view, which is what `pipelines/full.toml`'s engine rests on.

#[path = "../tests/it/common/glb.rs"]
mod glb;
#[path = "common/timed.rs"]
mod timed;
// The end-to-end test's real models (it also holds have_blender, unused here).
#[allow(dead_code)]
#[path = "../tests/it/common/blender.rs"]
mod common_blender;

use mvc::render::blender::{BlenderPool, Job, JobView, find_blender};
use mvc::render::camera::{ViewSpec, study_fov};
use mvc::render::raster::{LightRig, RasterSettings, render};
use mvc::render::scene::Scene;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use timed::blender_seconds;
use tokio_util::sync::CancellationToken;

fn main() {
    // MVC_BENCH_PART=engines: only the engines' comparison (the rest takes ten minutes).
    let only_engines = std::env::var("MVC_BENCH_PART").is_ok_and(|p| p == "engines");
    if !only_engines {
        builtin();
    }
    match find_blender(None) {
        Some(blender) => {
            if !only_engines {
                blender_three_ways(blender.clone());
            }
            engines(blender);
        }
        None => println!("Blender is not installed: the Blender part of this benchmark is skipped"),
    }
}

/// The study's 36 views: 12 azimuths x polar 20, 50, 80.
fn study_specs() -> Vec<ViewSpec> {
    [20.0, 50.0, 80.0]
        .iter()
        .flat_map(|&polar| {
            (0..12).map(move |i| ViewSpec {
                azimuth: i as f64 * 30.0,
                polar,
                distance: 1.5,
                fov: study_fov(),
            })
        })
        .collect()
}

/// The built-in renderer on the study's views.
fn builtin() {
    let views = study_specs();
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

/// The study's 36 views, as Blender jobs' views.
fn study_views() -> Vec<JobView> {
    study_specs().iter().map(JobView::from).collect()
}

/// Real models when Debian's assimp-testmodels is installed (the end-to-end test's six:
/// three GLBs, three `.gltf` packed into GLBs), else four boxes and four 5,000-triangle
/// spheres.
fn bench_objects(dir: &Path) -> (Vec<PathBuf>, &'static str) {
    let real = Path::new(common_blender::MODELS).is_dir();
    let bytes: Vec<Vec<u8>> = if real {
        common_blender::REAL_MODELS
            .iter()
            .map(|(file, _)| common_blender::real_model_glb(file))
            .collect()
    } else {
        (0..8)
            .map(|i| {
                if i % 2 == 0 {
                    glb::box_glb([0.5, 0.2 + 0.05 * i as f32, 0.3], [0.0; 3], 1.0)
                } else {
                    glb::sphere_glb(50, 50)
                }
            })
            .collect()
    };
    let paths = bytes
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            let path = dir.join(format!("o{i}.glb"));
            std::fs::write(&path, b).unwrap();
            path
        })
        .collect();
    let what = if real {
        "6 real models from assimp-testmodels"
    } else {
        "8 generated objects (install assimp-testmodels for real ones)"
    };
    (paths, what)
}

/// mvc's persistent pool against the study's way: a new `blender -b` process for each
/// object, one object at a time, rendering its 36 views with the study's script settings
/// (no persistent render data). Same objects, views, engine and samples; the pixels are
/// compared too.
fn blender_three_ways(blender: PathBuf) {
    let samples: u32 = std::env::var("MVC_BENCH_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let dir = tempfile::tempdir().unwrap();
    let (objects, what) = bench_objects(dir.path());
    let views = study_views();
    let job = |glb: &Path, persistent_data: bool| Job {
        object: glb.file_stem().unwrap().to_string_lossy().to_string(),
        glb: glb.to_path_buf(),
        out: tempfile::tempdir_in(dir.path()).unwrap().keep(),
        resolution: 224,
        engine: "CYCLES".into(),
        samples,
        lights: "study".into(),
        persistent_data,
        views: views.clone(),
    };
    let total = (objects.len() * views.len()) as f64;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let kill = CancellationToken::new();
    let timeout = Duration::from_secs(1200);
    rt.block_on(async {
        // A process per object, as the study ran Blender; with and without persistent data.
        let per_object = |persistent_data: bool| {
            let objects = &objects;
            let job = &job;
            let blender = blender.clone();
            let kill = kill.clone();
            async move {
                let start = Instant::now();
                let mut outs = Vec::new();
                for glb in objects {
                    let pool = BlenderPool::new(blender.clone(), "CYCLES").unwrap();
                    let job = job(glb, persistent_data);
                    pool.run(&job, timeout, &kill, false).await.unwrap();
                    outs.push(job.out);
                }
                (total / start.elapsed().as_secs_f64(), outs)
            }
        };
        let (study, study_outs) = per_object(false).await;
        let (per_object_persistent, _) = per_object(true).await;

        // The persistent pool: one process for every object (started before the clock,
        // as a run's pool is warm after its first object).
        let pool = BlenderPool::new(blender.clone(), "CYCLES").unwrap();
        let mut warm = job(&objects[0], true);
        warm.views.truncate(1);
        pool.run(&warm, timeout, &kill, false).await.unwrap();
        let start = Instant::now();
        let mut blender_own = 0.0;
        let mut pool_outs = Vec::new();
        for glb in &objects {
            let job = job(glb, true);
            let done = pool.run(&job, timeout, &kill, false).await.unwrap();
            blender_own += done.import_seconds + done.render_seconds;
            pool_outs.push(job.out);
        }
        let wall = start.elapsed().as_secs_f64();
        let pooled = total / wall;
        let differing = differing_pixels(&study_outs, &pool_outs, &views);
        println!("Blender (Cycles, {samples} samples, 224 px), {what} x the study's 36 views:");
        println!("  the study's way (a process per object): {study:.2} views/s");
        println!(
            "  a process per object, persistent data:  {per_object_persistent:.2} views/s \
             ({:.2}x)",
            per_object_persistent / study
        );
        println!(
            "  mvc's persistent pool:                  {pooled:.2} views/s ({:.2}x the \
             study's way; goal 1.3x)",
            pooled / study
        );
        println!(
            "  renders with different pixels, pool against the study's way: {differing} of {}",
            total as usize
        );
        println!(
            "  pool overhead over Blender's own import and render time: {:.1}% ({wall:.1} s \
             wall, {blender_own:.1} s in Blender)",
            (wall - blender_own) / blender_own * 100.0
        );
    });
    mvc_run(&objects, samples);
}

/// How many views' decoded pixels differ between two ways' output folders.
fn differing_pixels(a: &[PathBuf], b: &[PathBuf], views: &[JobView]) -> usize {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| views.iter().map(move |v| (x, y, v)))
        .filter(|(x, y, v)| {
            let name = format!("{}.png", v.id);
            let read = |d: &Path| image::open(d.join(&name)).unwrap().to_rgba8().into_raw();
            read(x) != read(y)
        })
        .count()
}

/// The same objects and views through `mvc run` (the pool, plus everything mvc does
/// around it: planning, keys, PNGs into the cache, the index), against Blender's own time
/// as the worker reports it in mvc's log.
fn mvc_run(objects: &[PathBuf], samples: u32) {
    let views = objects.len() * 36;
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
             azimuths = {{ start = 0, step = 30, count = 12 }}\npolar = [20, 50, 80]\n\
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
    let own = blender_seconds(&log);
    println!(
        "  mvc run, the same {views} views: {:.2} views/s, {wall:.1} s wall, {own:.1} s in Blender: \
         mvc's overhead {:.1}% (Blender's start-up included)",
        views as f64 / wall,
        (wall - own) / own * 100.0
    );
}

/// EEVEE at the study's 64 samples against Cycles at 32, through mvc's pool, on the same
/// objects and the study's 36 views (each pool warmed on one view first, as a run's pool is
/// after its first object).
fn engines(blender: PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (objects, what) = bench_objects(dir.path());
    let views = study_views();
    let total = (objects.len() * views.len()) as f64;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let kill = CancellationToken::new();
    let timeout = Duration::from_secs(1200);
    let mut measured = Vec::new();
    for (engine, samples) in [("CYCLES", 32), ("BLENDER_EEVEE", 64)] {
        let pool = BlenderPool::new(blender.clone(), engine).unwrap();
        let job = |glb: &Path, views: Vec<JobView>| Job {
            object: glb.file_stem().unwrap().to_string_lossy().to_string(),
            glb: glb.to_path_buf(),
            out: tempfile::tempdir_in(dir.path()).unwrap().keep(),
            resolution: 224,
            engine: engine.into(),
            samples,
            lights: "study".into(),
            persistent_data: true,
            views,
        };
        let per_view = rt.block_on(async {
            pool.run(
                &job(&objects[0], views[..1].to_vec()),
                timeout,
                &kill,
                false,
            )
            .await
            .unwrap();
            let start = Instant::now();
            for glb in &objects {
                pool.run(&job(glb, views.clone()), timeout, &kill, false)
                    .await
                    .unwrap();
            }
            start.elapsed().as_secs_f64() / total
        });
        measured.push((engine, samples, per_view));
    }
    println!("Blender engines through mvc's pool (224 px), {what} x the study's 36 views:");
    for (engine, samples, per_view) in &measured {
        println!(
            "  {engine}, {samples} samples: {:.2} views/s ({per_view:.2} s a view)",
            1.0 / per_view
        );
    }
    println!(
        "  EEVEE takes {:.2}x Cycles' time per view",
        measured[1].2 / measured[0].2
    );
}
