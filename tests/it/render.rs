//! The built-in renderer and the camera conventions it shares with the Blender backend:
//! framing (centred, not cropped), determinism (golden digests), the projection of a unit
//! cube, and GLBs it must refuse with a clear message.

use crate::common::glb;
use crate::common::glb::render_pipeline;
use mvc::render::camera::{ViewSpec, study_fov};
use mvc::render::raster::{LightRig, RasterSettings, render};
use mvc::render::scene::Scene;

fn settings() -> RasterSettings {
    RasterSettings {
        size: 224,
        supersample: 2,
        lights: LightRig::Study,
    }
}

fn view(azimuth: f64, polar: f64) -> ViewSpec {
    ViewSpec {
        azimuth,
        polar,
        distance: 1.5,
        fov: study_fov(),
    }
}

/// The study's 36 views: 12 azimuths x polar 20, 50, 80.
fn study_views() -> Vec<ViewSpec> {
    [20.0, 50.0, 80.0]
        .iter()
        .flat_map(|&p| (0..12).map(move |i| view(i as f64 * 30.0, p)))
        .collect()
}

/// (min x, min y, max x, max y) of pixels with alpha > 0.
fn alpha_box(img: &image::RgbaImage) -> (u32, u32, u32, u32) {
    let mut b = (u32::MAX, u32::MAX, 0, 0);
    for (x, y, p) in img.enumerate_pixels() {
        if p[3] > 0 {
            b = (b.0.min(x), b.1.min(y), b.2.max(x), b.3.max(y));
        }
    }
    b
}

#[test]
fn objects_are_centred_whole_and_differ_between_views() {
    // Off-centre and scaled in the file: normalisation must bring it back.
    let scene = Scene::from_glb(&glb::box_glb([0.5, 0.2, 0.3], [5.0, -2.0, 1.0], 3.0)).unwrap();
    let (lo, hi) = scene.bounds();
    let side = (0..3).map(|k| hi[k] - lo[k]).fold(0.0f32, f32::max);
    assert!((side - 1.0).abs() < 1e-5, "longest side {side}");
    for k in 0..3 {
        assert!(
            (lo[k] + hi[k]).abs() < 1e-5,
            "bounding box centred on axis {k}"
        );
    }
    let mut digests = std::collections::HashSet::new();
    for v in study_views() {
        let img = render(&scene, &v, &settings());
        assert_eq!(img.dimensions(), (224, 224));
        let (x0, y0, x1, y1) = alpha_box(&img);
        assert!(
            x0 > 0 && y0 > 0 && x1 < 223 && y1 < 223,
            "{} is cropped",
            v.id()
        );
        let (cx, cy) = ((x0 + x1) as f64 / 2.0, (y0 + y1) as f64 / 2.0);
        assert!(
            (cx - 112.0).abs() < 22.4 && (cy - 112.0).abs() < 22.4,
            "{} is off-centre: ({cx}, {cy})",
            v.id()
        );
        digests.insert(blake3::hash(img.as_raw()));
    }
    assert_eq!(digests.len(), 36, "every view differs from every other");
}

#[test]
fn the_renderer_gives_the_same_bytes_every_time() {
    // Golden digests: when the renderer's output changes on purpose, bump
    // mvc::render::raster::VERSION (it is in every render task's key) and update these.
    let scene = Scene::from_glb(&glb::box_glb([0.5, 0.2, 0.3], [5.0, -2.0, 1.0], 3.0)).unwrap();
    let a = render(&scene, &view(30.0, 50.0), &settings());
    let b = render(&scene, &view(30.0, 50.0), &settings());
    assert_eq!(a.as_raw(), b.as_raw());
    let four = RasterSettings {
        lights: LightRig::FourSun,
        ..settings()
    };
    let c = render(&scene, &view(300.0, 80.0), &four);
    let got = [
        blake3::hash(a.as_raw()).to_hex().to_string(),
        blake3::hash(c.as_raw()).to_hex().to_string(),
    ];
    assert_eq!(mvc::render::raster::VERSION, 2);
    assert_eq!(
        got,
        [
            "4ca095ea365c46593342d2840f4f6718be70216f7fed624d31c191d6df7593fb",
            "bf6591cd81d38ee27ddc2a7a58150811da418fd2976dba5da6874fbb1e3fa061"
        ],
        "renderer output changed"
    );
}

#[test]
fn the_silhouette_of_a_cube_matches_the_camera_model() {
    // A cube of side 1 (already normalised): its 8 corners, projected by the camera model
    // that the camera JSON records, must bound the rendered silhouette within 2 pixels.
    // (At the study's distance of 1.5 a unit cube seen face-on overflows the frame, so the
    // cameras here stand at 2.5.)
    let scene = Scene::from_glb(&glb::box_glb([0.5, 0.5, 0.5], [0.0; 3], 1.0)).unwrap();
    let far = |azimuth, polar| ViewSpec {
        distance: 2.5,
        ..view(azimuth, polar)
    };
    for v in [
        far(0.0, 90.0),
        far(30.0, 50.0),
        far(135.0, 20.0),
        far(250.0, 80.0),
    ] {
        let img = render(&scene, &v, &settings());
        let (x0, y0, x1, y1) = alpha_box(&img);
        let mut lo = [f64::INFINITY; 2];
        let mut hi = [f64::NEG_INFINITY; 2];
        for corner in 0..8 {
            let p = [0, 1, 2].map(|k| if corner >> k & 1 == 1 { 0.5 } else { -0.5 });
            let (uv, _) = v.project(224, p);
            for k in 0..2 {
                lo[k] = lo[k].min(uv[k]);
                hi[k] = hi[k].max(uv[k]);
            }
        }
        // Pixel i covers [i, i+1): the silhouette's first and last pixels.
        let want = (
            lo[0].floor(),
            lo[1].floor(),
            hi[0].ceil() - 1.0,
            hi[1].ceil() - 1.0,
        );
        let got = (x0 as f64, y0 as f64, x1 as f64, y1 as f64);
        for (g, w) in [
            (got.0, want.0),
            (got.1, want.1),
            (got.2, want.2),
            (got.3, want.3),
        ] {
            assert!(
                (g - w).abs() <= 2.0,
                "{}: silhouette {got:?}, camera model {want:?}",
                v.id()
            );
        }
    }
}

#[test]
fn broken_glbs_are_refused_with_the_reason() {
    let err = |bytes: &[u8]| format!("{:#}", Scene::from_glb(bytes).unwrap_err());
    let e = err(b"<html>not a model</html>");
    assert!(e.contains("not a readable glTF 2.0 file"), "{e}");
    let e = err(&glb::out_of_range_glb());
    assert!(e.contains("index 7 is out of range"), "{e}");
    let e = err(&glb::infinite_glb());
    assert!(e.contains("not finite"), "{e}");
    let e = err(&glb::empty_glb());
    assert!(e.contains("no triangles to render"), "{e}");
}

fn units(ran: &crate::common::Ran) -> Vec<String> {
    ran.stderr
        .lines()
        .filter(|l| l.contains("in one unit"))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_new_ring_renders_only_its_views_one_unit_per_object() {
    let sb = crate::common::Sandbox::new();
    let six = "{ start = 0, step = 60, count = 6 }";
    sb.write(
        "p.toml",
        &render_pipeline(sb.path(), "polar = [20, 50]", six),
    );
    let first = sb.mvc(&["run", "p.toml", "--json", "-v"]);
    first.assert_ok();
    assert_eq!(first.count("views", "ran"), 36);
    let u = units(&first);
    assert_eq!(u.len(), 3, "{u:?}");
    assert!(u.iter().all(|l| l.contains("12 views")), "{u:?}");

    // A third ring: 3 x 6 new views, each object's in one unit.
    sb.write(
        "p.toml",
        &render_pipeline(sb.path(), "polar = [20, 50, 80]", six),
    );
    let second = sb.mvc(&["run", "p.toml", "--json", "-v"]);
    second.assert_ok();
    assert_eq!(second.count("views", "ran"), 18);
    assert_eq!(second.count("views", "cached"), 36);
    let u = units(&second);
    assert_eq!(u.len(), 3, "{u:?}");
    assert!(u.iter().all(|l| l.contains("6 views")), "{u:?}");

    // Fewer rings, the same azimuths written another way and in another order: nothing runs.
    sb.write(
        "p.toml",
        &render_pipeline(
            sb.path(),
            "elevations = [10, 40]",
            "[300, 0, 60, 120, 180, 240]",
        ),
    );
    let third = sb.mvc(&["run", "p.toml", "--json"]);
    third.assert_ok();
    assert_eq!(third.count("views", "ran"), 0);
    assert_eq!(third.count("views", "cached"), 36);

    // Every view is a PNG of the asked size with its camera.
    let out = sb.path().join("out");
    sb.mvc(&["export", "p.toml", "views", out.to_str().unwrap()])
        .assert_ok();
    let dir = out.join("a");
    let png = image::open(dir.join("az060-pol050-d1.5-fov49.1343.png")).unwrap();
    assert_eq!(png.width(), 64);
    assert!(png.color().has_alpha());
    let camera: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("az060-pol050-d1.5-fov49.1343.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(camera["elevation"], 40.0);
    assert_eq!(camera["K"][0][2], 32.0);
    let cameras: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cameras.json")).unwrap()).unwrap();
    assert_eq!(cameras.as_object().unwrap().len(), 12);
    assert_eq!(cameras["az060-pol050-d1.5-fov49.1343"], camera);
}

#[test]
fn bad_grids_and_models_are_reported() {
    let sb = crate::common::Sandbox::new();
    let six = "[0, 60]";
    let plan_err = |rings: &str, extra: &str| {
        let mut text = render_pipeline(sb.path(), rings, six);
        if !extra.is_empty() {
            text = text.replace("backend = \"builtin\"", extra);
        }
        sb.write("p.toml", &text);
        let ran = sb.mvc(&["plan", "p.toml"]);
        assert_eq!(ran.code, Some(1), "{}", ran.stdout);
        ran.stderr
    };
    let e = plan_err("polar = [20, 190]", "");
    assert!(e.contains("polar angle 190 is outside [0, 180]"), "{e}");
    assert!(e.contains("p.toml:13:"), "{e}");
    let e = plan_err("polar = [20]\nelevations = [40]", "");
    assert!(e.contains("either `polar`"), "{e}");
    let e = plan_err("", "");
    assert!(e.contains("give the camera rings"), "{e}");
    let e = plan_err(
        "polar = [20]",
        "backend = \"blender\"\nblender_path = \"/nonexistent/blender\"",
    );
    assert!(
        e.contains("`blender_path` /nonexistent/blender is not a file"),
        "{e}"
    );
    assert!(e.contains("apt-get install blender python3-numpy"), "{e}");
    assert!(e.contains("backend = \"builtin\""), "{e}");

    // Duplicate angles are rendered once, with a warning.
    sb.write(
        "p.toml",
        &render_pipeline(sb.path(), "polar = [50, 50]", "[0, 60, 0]"),
    );
    let ran = sb.mvc(&["run", "p.toml", "--json"]);
    ran.assert_ok();
    assert_eq!(ran.count("views", "total"), 6);
    assert!(ran.stderr.contains("lists 0 twice"), "{}", ran.stderr);

    // A broken model fails its views, with the reason; the others render.
    let text = render_pipeline(sb.path(), "polar = [50]", "[0, 60]");
    std::fs::write(sb.path().join("b.glb"), b"<html>not a model</html>").unwrap();
    sb.write("p.toml", &text);
    let ran = sb.mvc(&["run", "p.toml", "--json"]);
    assert_eq!(ran.code, Some(1));
    assert_eq!(ran.count("views", "failed"), 2);
    let failures = ran.json()["failures"].as_array().unwrap().clone();
    assert!(
        failures
            .iter()
            .all(|f| f["item"].as_str().unwrap().starts_with("b@"))
    );
    assert!(
        failures[0]["error"]
            .as_str()
            .unwrap()
            .contains("not a readable glTF 2.0 file"),
        "{failures:?}"
    );
}

/// The objects whose views failed in a run's JSON summary, with the first error of each.
fn failed_objects(
    ran: &crate::common::Ran,
    stage: &str,
) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for f in ran.json()["failures"].as_array().unwrap() {
        if f["stage"] != stage {
            continue;
        }
        let object = f["item"].as_str().unwrap().split('@').next().unwrap();
        out.entry(object.to_string())
            .or_insert_with(|| f["error"].as_str().unwrap().to_string());
    }
    out
}

#[test]
fn node_cycles_fail_with_a_reason_and_a_deep_chain_renders() {
    // A cycle once sent the walk round for ever (the run hung at 100% CPU); a chain 20,000
    // nodes deep is valid glTF and must not overflow a recursive walk.
    let e = format!(
        "{:#}",
        Scene::from_glb(&glb::two_node_cycle_glb()).unwrap_err()
    );
    assert!(
        e.contains("its node hierarchy has a cycle (node 0 → node 1 → node 0)"),
        "{e}"
    );
    let e = format!("{:#}", Scene::from_glb(&glb::self_cycle_glb()).unwrap_err());
    assert!(e.contains("has a cycle (node 0 → node 0)"), "{e}");
    let chain = Scene::from_glb(&glb::deep_chain_glb(20_000)).unwrap();
    assert_eq!(chain.triangles.len(), 1);

    // Through a run: the cycles fail alone with their reason, the chain renders, the run ends.
    let sb = crate::common::Sandbox::new();
    let objects = glb::objects_stage(
        sb.path(),
        &[
            ("cycle", glb::two_node_cycle_glb()),
            ("selfcycle", glb::self_cycle_glb()),
            ("chain", glb::deep_chain_glb(20_000)),
            ("good", glb::box_glb([0.5, 0.2, 0.3], [0.0; 3], 1.0)),
        ],
    );
    sb.write(
        "p.toml",
        &format!(
            "{objects}\n[stage.views]\nkind = \"render\"\ninputs = [\"objects\"]\n\
             backend = \"builtin\"\nazimuths = [0, 90]\npolar = [50]\nresolution = 32\n"
        ),
    );
    let ran = sb.mvc(&["run", "p.toml", "--json"]);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert_eq!(ran.count("views", "ran"), 4, "chain and good render");
    let failed = failed_objects(&ran, "views");
    assert_eq!(
        failed.keys().map(String::as_str).collect::<Vec<_>>(),
        ["cycle", "selfcycle"]
    );
    assert!(
        failed.values().all(|e| e.contains("has a cycle")),
        "{failed:?}"
    );
}

#[test]
fn strips_and_fans_render_as_the_triangles_they_make() {
    // The quad (0,0) (1,0) (0,1) (1,1) as a strip [0 1 2 3] is the triangles (0 1 2) and
    // (2 1 3); as a fan [0 1 3 2], (0 1 3) and (0 3 2). Drawn, each is the same image as its
    // triangle list.
    let image = |bytes: Vec<u8>| {
        let scene = Scene::from_glb(&bytes).unwrap();
        assert_eq!(scene.triangles.len(), 2);
        render(&scene, &view(90.0, 60.0), &settings())
    };
    let strip = image(glb::quad_glb(5, &[0, 1, 2, 3]));
    assert_eq!(strip, image(glb::quad_glb(4, &[0, 1, 2, 2, 1, 3])));
    let fan = image(glb::quad_glb(6, &[0, 1, 3, 2]));
    assert_eq!(fan, image(glb::quad_glb(4, &[0, 1, 3, 0, 3, 2])));
    let covered = strip.pixels().filter(|p| p[3] > 0).count();
    assert!(covered > 1000, "the quad covers {covered} pixels");
}

#[test]
fn a_builtin_render_past_its_timeout_fails_that_object_and_the_run_goes_on() {
    let sb = crate::common::Sandbox::new();
    // The slow object takes minutes; `timeout = 5` stops it.
    sb.write("p.toml", &glb::slow_render_pipeline(sb.path(), true, 5));
    let started = std::time::Instant::now();
    let ran = sb.mvc(&["run", "p.toml", "--json"]);
    let took = started.elapsed();
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert_eq!(ran.count("views", "ran"), 1, "the good object rendered");
    let failed = failed_objects(&ran, "views");
    assert_eq!(failed.keys().collect::<Vec<_>>(), ["slow"]);
    assert!(
        failed["slow"].contains("took longer than the timeout (5s) and was abandoned"),
        "{failed:?}"
    );
    assert!(took.as_secs() < 60, "the run took {took:?}");
}

#[test]
fn too_many_samples_for_the_builtin_renderer_is_an_error() {
    let sb = crate::common::Sandbox::new();
    let text = render_pipeline(sb.path(), "polar = [50]", "[0]")
        .replace("resolution = 64", "resolution = 4096\nsupersample = 4");
    sb.write("p.toml", &text);
    let ran = sb.mvc(&["plan", "p.toml"]);
    assert_eq!(ran.code, Some(1));
    assert!(
        ran.stderr.contains(
            "resolution x supersample = 16384 samples a side, more than its 8192: lower \
             `resolution` or `supersample`"
        ),
        "{}",
        ran.stderr
    );
}

#[test]
fn models_that_claim_gigabytes_are_bounded() {
    // A texture whose header claims 100,000 pixels a side is left out, not decoded.
    let scene = Scene::from_glb(&glb::textured_triangle_glb(&glb::png_claiming(100_000))).unwrap();
    assert!(scene.textures.is_empty());
    assert!(
        scene
            .warnings
            .iter()
            .any(|w| w.contains("textures left out: image 0")),
        "{:?}",
        scene.warnings
    );
    // A sound texture is kept.
    let red = glb::png_claiming(1);
    let scene = Scene::from_glb(&glb::textured_triangle_glb(&red)).unwrap();
    assert_eq!(scene.textures.len(), 1);
    // Positions declared by the billion in a few bytes are refused before any allocation.
    let e = format!(
        "{:#}",
        Scene::from_glb(&glb::sparse_bomb_glb(3_000_000_000)).unwrap_err()
    );
    assert!(
        e.contains("declares 3000000000 vertices or indices in one primitive, more than mvc reads"),
        "{e}"
    );
}
