//! The built-in renderer's speed: views per second at the study's settings (224 px, 2x2
//! supersampling, the study's 36 views), for a textured box and a 5,000-triangle sphere.
//!
//!     cargo bench --bench render
//!
//! The Blender backend's figures (one process per view, per object, the persistent pool)
//! join this benchmark with that backend.

#[path = "../tests/common/glb.rs"]
mod glb;

use mvc::render::camera::{ViewSpec, study_fov};
use mvc::render::raster::{LightRig, RasterSettings, render};
use mvc::render::scene::Scene;
use std::time::Instant;

fn main() {
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
