//! The Blender backend with real Blender: real glTF models framed right, one Blender job per
//! object, the camera it shares with the built-in renderer, and a crash that costs one
//! object. Without Blender these tests say so and pass, unless MVC_REQUIRE_BLENDER=1 (which
//! `.ci/run` sets, having installed it).

use crate::common::blender::{MODELS, have_blender};
use crate::common::{Sandbox, glb};
use std::path::Path;

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

/// The three-object pipeline of `glb::render_pipeline`, rendered by Blender with `settings`
/// at `resolution` pixels.
fn blender_pipeline(
    dir: &Path,
    rings: &str,
    azimuths: &str,
    settings: &str,
    resolution: u32,
) -> String {
    glb::render_pipeline(dir, rings, azimuths)
        .replace(
            "backend = \"builtin\"",
            &format!("backend = \"blender\"\n{settings}"),
        )
        .replace("resolution = 64", &format!("resolution = {resolution}"))
}

/// The Blender jobs a run made (mvc logs one line per job at -v, with Blender's times).
fn units(ran: &crate::common::Ran) -> Vec<String> {
    ran.stderr
        .lines()
        .filter(|l| l.contains("blender: ") && l.contains(" views, import "))
        .map(str::to_string)
        .collect()
}

#[test]
fn real_models_are_framed_whole_and_centred() {
    if !have_blender(true) {
        return;
    }
    let sb = Sandbox::new();
    for (name, file) in [
        ("box", "BoxTextured-glTF-Binary/BoxTextured.glb"),
        ("engine", "2CylinderEngine-glTF-Binary/2CylinderEngine.glb"),
    ] {
        std::fs::copy(
            Path::new(MODELS).join(file),
            sb.path().join(format!("{name}.glb")),
        )
        .unwrap();
    }
    sb.write(
        "p.toml",
        r#"
[stage.objects]
kind = "command"
items = ["box", "engine"]
files = { box = "box.glb", engine = "engine.glb" }
cmd = 'eval cp "\$MVC_FILE_$(echo "$MVC_ITEM" | tr a-z A-Z)" "$MVC_OUT/model.glb"'

[stage.views]
kind = "render"
inputs = ["objects"]
backend = "blender"
azimuths = [0, 90, 180, 270]
polar = [50, 80]
# At the study's distance (1.5) an object filling the unit cube, as BoxTextured does,
# overflows a 49-degree view; 2.5 frames any normalised object.
distance = 2.5
samples = 8
"#,
    );
    let ran = sb.mvc(&["run", "p.toml", "--json", "-v"]);
    ran.assert_ok();
    assert_eq!(ran.count("views", "ran"), 16);
    assert_eq!(units(&ran).len(), 2, "one Blender job per object");
    let out = sb.path().join("out");
    sb.mvc(&["export", "p.toml", "views", out.to_str().unwrap()])
        .assert_ok();
    for object in ["box", "engine"] {
        let mut digests = std::collections::HashSet::new();
        for polar in ["050", "080"] {
            for az in ["000", "090", "180", "270"] {
                let id = format!("az{az}-pol{polar}-d2.5-fov49.1343");
                let img = image::open(out.join(object).join(format!("{id}.png")))
                    .unwrap()
                    .to_rgba8();
                assert_eq!(img.dimensions(), (224, 224));
                let (x0, y0, x1, y1) = alpha_box(&img);
                assert!(x1 > x0, "{object} {id} is empty");
                assert!(
                    x0 > 0 && y0 > 0 && x1 < 223 && y1 < 223,
                    "{object} {id} is cropped: {:?}",
                    (x0, y0, x1, y1)
                );
                let (cx, cy) = ((x0 + x1) as f64 / 2.0, (y0 + y1) as f64 / 2.0);
                assert!(
                    (cx - 112.0).abs() < 22.4 && (cy - 112.0).abs() < 22.4,
                    "{object} {id} is off-centre: ({cx}, {cy})"
                );
                digests.insert(blake3::hash(img.as_raw()));
            }
        }
        assert_eq!(digests.len(), 8, "the views of {object} differ");
    }
}

#[test]
fn a_new_ring_is_one_blender_job_per_object() {
    if !have_blender(false) {
        return;
    }
    let sb = Sandbox::new();
    let six = "{ start = 0, step = 60, count = 6 }";
    let pipeline = |rings: &str| blender_pipeline(sb.path(), rings, six, "samples = 1", 32);
    sb.write("p.toml", &pipeline("polar = [20, 50]"));
    let first = sb.mvc(&["run", "p.toml", "--json", "-v"]);
    first.assert_ok();
    assert_eq!(first.count("views", "ran"), 36);
    assert_eq!(units(&first).len(), 3);

    sb.write("p.toml", &pipeline("polar = [20, 50, 80]"));
    let second = sb.mvc(&["run", "p.toml", "--json", "-v"]);
    second.assert_ok();
    assert_eq!(second.count("views", "ran"), 18);
    let u = units(&second);
    assert_eq!(u.len(), 3, "{u:?}");
    assert!(u.iter().all(|l| l.contains("6 views")), "{u:?}");

    sb.write("p.toml", &pipeline("polar = [50, 80]"));
    let third = sb.mvc(&["run", "p.toml", "--json", "-v"]);
    third.assert_ok();
    assert_eq!(third.count("views", "ran"), 0);
    assert!(units(&third).is_empty());
}

#[test]
fn blender_and_the_builtin_renderer_agree_on_the_camera() {
    if !have_blender(false) {
        return;
    }
    let sb = Sandbox::new();
    std::fs::write(
        sb.path().join("cube.glb"),
        glb::box_glb([0.5, 0.5, 0.5], [0.0; 3], 1.0),
    )
    .unwrap();
    let stage = |name: &str, backend: &str| {
        format!(
            r#"
[stage.{name}]
kind = "render"
inputs = ["objects"]
backend = "{backend}"
azimuths = [0, 30, 135, 250]
polar = [20, 50, 90]
distance = 2.5
samples = 1
"#
        )
    };
    sb.write(
        "p.toml",
        &format!(
            r#"
[stage.objects]
kind = "command"
items = ["cube"]
files = {{ cube = "cube.glb" }}
cmd = 'cp "$MVC_FILE_CUBE" "$MVC_OUT/cube.glb"'
{}{}"#,
            stage("blender", "blender"),
            stage("builtin", "builtin")
        ),
    );
    sb.mvc(&["run", "p.toml"]).assert_ok();
    for backend in ["blender", "builtin"] {
        sb.mvc(&["export", "p.toml", backend, backend]).assert_ok();
    }
    let mut compared = 0;
    for entry in std::fs::read_dir(sb.path().join("blender/cube")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("png") {
            continue;
        }
        let name = path.file_name().unwrap();
        let a = alpha_box(&image::open(&path).unwrap().to_rgba8());
        let b = alpha_box(
            &image::open(sb.path().join("builtin/cube").join(name))
                .unwrap()
                .to_rgba8(),
        );
        for (x, y) in [(a.0, b.0), (a.1, b.1), (a.2, b.2), (a.3, b.3)] {
            assert!(
                (x as i64 - y as i64).abs() <= 2,
                "{name:?}: Blender's silhouette {a:?}, the built-in one {b:?}"
            );
        }
        compared += 1;
    }
    assert_eq!(compared, 12);
}

#[test]
fn a_crashing_blender_costs_one_object_and_the_pool_recovers() {
    if !have_blender(false) {
        return;
    }
    let sb = Sandbox::new();
    let text = blender_pipeline(
        sb.path(),
        "polar = [50]",
        "[0, 120, 240]",
        "samples = 1",
        32,
    );
    sb.write("p.toml", &text);
    let ran = sb.mvc_env(&["run", "p.toml", "--json"], &[("MVC_TEST_CRASH_ON", "b")]);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert_eq!(ran.count("views", "ran"), 6);
    assert_eq!(ran.count("views", "failed"), 3);
    let failures = ran.json()["failures"].as_array().unwrap().clone();
    assert!(
        failures
            .iter()
            .all(|f| f["item"].as_str().unwrap().starts_with("b@"))
    );
    let error = failures[0]["error"].as_str().unwrap();
    // A death is tried once more in a new Blender; the second one is recorded.
    assert!(
        error.contains(
            "Blender exited with status 134, twice on this object, each time in a new process"
        ),
        "{error}"
    );
}

#[test]
fn broken_models_fail_alone_with_both_backends() {
    if !have_blender(true) {
        return;
    }
    let sb = Sandbox::new();
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("good", glb::box_glb([0.5, 0.2, 0.3], [0.0; 3], 1.0)),
        ("html", b"<html>not a model</html>".to_vec()),
        (
            "infinite",
            std::fs::read(
                Path::new(MODELS).join("BoxWithInfinites-glTF-Binary/BoxWithInfinites.glb"),
            )
            .unwrap(),
        ),
        ("outofrange", glb::out_of_range_glb()),
        ("empty", glb::empty_glb()),
        ("notexture", glb::missing_texture_glb()),
        ("cycle", glb::two_node_cycle_glb()),
        ("selfcycle", glb::self_cycle_glb()),
        ("chain", glb::deep_chain_glb(20_000)),
    ];
    for (name, bytes) in &files {
        std::fs::write(sb.path().join(format!("{name}.glb")), bytes).unwrap();
    }
    let names: Vec<&str> = files.iter().map(|f| f.0).collect();
    let stage = |name: &str, backend: &str| {
        format!(
            "\n[stage.{name}]\nkind = \"render\"\ninputs = [\"objects\"]\nbackend = \"{backend}\"\n\
             azimuths = [0, 180]\npolar = [60]\nresolution = 32\nsamples = 1\n"
        )
    };
    sb.write(
        "p.toml",
        &format!(
            "[stage.objects]\nkind = \"command\"\nitems = {:?}\nfiles = {{ {} }}\n\
             cmd = 'eval cp \"\\$MVC_FILE_$(echo \"$MVC_ITEM\" | tr a-z A-Z)\" \"$MVC_OUT/model.glb\"'\n{}{}",
            names,
            names
                .iter()
                .map(|n| format!("{n} = \"{n}.glb\""))
                .collect::<Vec<_>>()
                .join(", "),
            stage("blender", "blender"),
            stage("builtin", "builtin")
        ),
    );
    let ran = sb.mvc(&["run", "p.toml", "--json"]);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    for backend in ["blender", "builtin"] {
        check_broken_models(&ran, backend);
    }
    assert!(
        ran.stderr.contains("textures left out"),
        "a missing texture is reported: {}",
        ran.stderr
    );
    // Blender's pool survived all that: the good object was rendered by it.
    assert!(ran.count("blender", "ran") >= 2);
}

/// Each broken model failed alone with `backend`, with its reason; the good one, the one
/// missing its texture and the 20,000-deep chain rendered.
fn check_broken_models(ran: &crate::common::Ran, backend: &str) {
    // The good object renders; the missing texture leaves a model to render or fails
    // alone; every other object fails alone, with its reason.
    let failures: Vec<serde_json::Value> = ran.json()["failures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["stage"] == backend)
        .cloned()
        .collect();
    let failed: std::collections::BTreeSet<&str> = failures
        .iter()
        .map(|f| f["item"].as_str().unwrap().split('@').next().unwrap())
        .collect();
    for broken in [
        "html",
        "infinite",
        "outofrange",
        "empty",
        "cycle",
        "selfcycle",
    ] {
        assert!(
            failed.contains(broken),
            "{backend}: {broken} did not fail: {failures:?}"
        );
    }
    // A missing texture costs the texture, not the object.
    assert!(
        !failed.contains("good") && !failed.contains("notexture"),
        "{backend}: {failures:?}"
    );
    // A chain 20,000 nodes deep is valid glTF: mvc walks it without recursion and both
    // backends draw it (Blender's importer recurses; the worker raises Python's
    // recursion limit for it, which stopped it at 1,000 before).
    assert!(!failed.contains("chain"), "{backend}: {failures:?}");
    assert_eq!(failed.len(), 6, "{backend}: {failures:?}");
    let error = |object: &str| {
        failures
            .iter()
            .find(|f| {
                f["item"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{object}@"))
            })
            .unwrap()["error"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        error("html").contains("not a readable glTF 2.0 file"),
        "{}",
        error("html")
    );
    assert!(
        error("outofrange").contains("index 7 is out of range"),
        "{}",
        error("outofrange")
    );
    assert!(
        error("empty").contains("no triangles to render"),
        "{}",
        error("empty")
    );
    assert!(!error("infinite").is_empty());
    for cycle in ["cycle", "selfcycle"] {
        assert!(
            error(cycle).contains("node hierarchy has a cycle"),
            "{}",
            error(cycle)
        );
    }
}

#[test]
fn an_object_past_its_timeout_is_stopped_and_the_next_gets_a_fresh_blender() {
    if !have_blender(false) {
        return;
    }
    let sb = Sandbox::new();
    // Far too many samples for a one-second budget: every object runs out of time.
    let text = blender_pipeline(
        sb.path(),
        "polar = [50]",
        "[0, 120, 240]",
        "samples = 4096\ntimeout = 1",
        224,
    );
    sb.write("p.toml", &text);
    let ran = sb.mvc(&["run", "p.toml", "--json"]);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert_eq!(ran.count("views", "failed"), 9);
    let failures = ran.json()["failures"].as_array().unwrap().clone();
    for f in &failures {
        let error = f["error"].as_str().unwrap();
        assert!(error.contains("longer than the timeout (1s)"), "{error}");
    }
}

/// True when Xvfb is installed (EEVEE without a display needs it). Otherwise the test says
/// so and skips its EEVEE part, unless MVC_REQUIRE_BLENDER=1 (`.ci/run`, which installs it).
fn have_xvfb() -> bool {
    if mvc::render::display::find_xvfb().is_some() {
        return true;
    }
    if std::env::var("MVC_REQUIRE_BLENDER").as_deref() == Ok("1") {
        panic!("MVC_REQUIRE_BLENDER=1 but Xvfb is not installed (apt-get install xvfb)");
    }
    eprintln!("SKIPPED: Xvfb is not installed (apt-get install xvfb); the EEVEE part needs it");
    false
}

/// Mean of R, G and B (0–255) of each pixel at least half opaque.
fn opaque_luminances(img: &image::RgbaImage) -> Vec<f64> {
    img.pixels()
        .filter(|p| p[3] >= 128)
        .map(|p| (p[0] as f64 + p[1] as f64 + p[2] as f64) / 3.0)
        .collect()
}

#[test]
fn the_underside_turned_away_from_the_area_light_is_lit_by_the_world_with_cycles_and_eevee() {
    if !have_blender(false) {
        return;
    }
    // A cube shows no face turned away from the light to the 80° ring (its underside is
    // hidden from cameras above it, and the huge area light reaches every side): a slab on
    // a pillar does, the slab's underside, which the cameras 10° above the horizon look up
    // at. Without the World only light bounced off the pillar reaches it (black in Cycles,
    // as mvc rendered before).
    for (engine, samples) in [("CYCLES", 16), ("BLENDER_EEVEE", 16)] {
        if engine == "BLENDER_EEVEE" && !have_xvfb() {
            continue;
        }
        let sb = Sandbox::new();
        let objects = glb::objects_stage(sb.path(), &[("table", glb::slab_on_pillar_glb())]);
        sb.write(
            "p.toml",
            &format!(
                "{objects}\n[stage.views]\nkind = \"render\"\ninputs = [\"objects\"]\n\
                 backend = \"blender\"\nengine = \"{engine}\"\nsamples = {samples}\n\
                 azimuths = [0, 180]\npolar = [80]\nresolution = 96\n"
            ),
        );
        // No display: EEVEE must get the pool's own Xvfb.
        let ran = sb.mvc_env(&["run", "p.toml", "--json", "-v"], &[("DISPLAY", "")]);
        ran.assert_ok();
        assert_eq!(ran.count("views", "ran"), 2, "{engine}");
        let virtual_display = ran.stderr.contains("OpenGL on the virtual display");
        assert_eq!(
            virtual_display,
            engine == "BLENDER_EEVEE",
            "{engine}: the pool starts Xvfb for EEVEE alone:\n{}",
            ran.stderr
        );
        let out = sb.path().join("out");
        sb.mvc(&["export", "p.toml", "views", out.to_str().unwrap()])
            .assert_ok();
        for az in ["000", "180"] {
            let id = format!("az{az}-pol080-d1.5-fov49.1343");
            let img = image::open(out.join("table").join(format!("{id}.png")))
                .unwrap()
                .to_rgba8();
            let mut lum = opaque_luminances(&img);
            assert!(lum.len() > 500, "{engine} {id}: the table is missing");
            lum.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let darkest = lum[lum.len() / 100];
            assert!(
                darkest > 25.0,
                "{engine} {id}: the darkest 1% of the table is {darkest:.1} of 255: the \
                 underside is black, no World lights it"
            );
            // What produced the pixels is in the view's record.
            let record: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(out.join("table").join(format!("{id}.json"))).unwrap(),
            )
            .unwrap();
            let by = &record["produced_by"];
            assert_eq!(by["engine"], engine, "{record}");
            assert!(by["blender"].as_str().unwrap().starts_with('3'), "{record}");
            assert_eq!(by["view_transform"], "Filmic", "{record}");
            assert_eq!(by["look"], "None", "{record}");
        }
    }
}

/// The pids of the Blender processes `mvc` (pid `parent`) runs now.
fn blender_children(parent: u32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid …
        let Some((comm, rest)) = stat.split_once(") ") else {
            continue;
        };
        let ppid: u32 = rest.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
        if comm.ends_with("(blender") && ppid == parent && !rest.starts_with('Z') {
            pids.push(pid);
        }
    }
    pids
}

/// The newest PNG Blender has written into a render work directory of `cache`, if any.
fn newest_png(cache: &Path) -> Option<std::time::SystemTime> {
    let tmp = std::fs::read_dir(cache.join("tmp")).ok()?;
    tmp.flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with("render-"))
        .filter_map(|d| std::fs::read_dir(d.path().join("out")).ok())
        .flat_map(|dir| dir.flatten())
        .filter(|f| f.path().extension().is_some_and(|e| e == "png"))
        .filter_map(|f| f.metadata().ok()?.modified().ok())
        .max()
}

/// Waits until a Blender of `mvc` has written a PNG newer than `after`, then kills it with
/// SIGKILL from outside (as the OOM killer would) and returns its pid.
fn kill_blender_mid_object(
    mvc: &crate::common::Background,
    cache: &Path,
    after: std::time::SystemTime,
) -> i32 {
    let parent = mvc.child.as_ref().unwrap().id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no Blender wrote a view in time:\n{}",
            mvc.stderr.lock().unwrap()
        );
        let drawing = newest_png(cache).is_some_and(|t| t > after);
        if let (true, [pid]) = (drawing, blender_children(parent).as_slice()) {
            // SAFETY: kill(2) on a process of this test's own mvc.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
            return *pid;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A Blender killed from outside in the middle of an object (the OOM killer's SIGKILL) is
/// not the object's failure: the object is tried again in a new Blender and renders, and
/// nothing is recorded. A Blender that dies twice on the same object is recorded, and the
/// record names the signal and says what to check.
#[test]
fn a_blender_killed_from_outside_is_tried_again_and_a_second_death_is_recorded() {
    if !have_blender(false) {
        return;
    }
    let azimuths = format!(
        "[{}]",
        (0..24)
            .map(|a| (a * 15).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Once: the object renders in a second Blender, and the run is whole.
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        &blender_pipeline(sb.path(), "polar = [50]", &azimuths, "samples = 1", 32),
    );
    let mut run =
        crate::common::Background::start(&mut sb.command(&["run", "p.toml", "--json"]), false);
    kill_blender_mid_object(&run, &sb.cache(), std::time::UNIX_EPOCH);
    let ran = run.finish(std::time::Duration::from_secs(300));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(ran.count("views", "ran"), 72, "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("killed by SIGKILL: out of memory? see dmesg")
            && ran.stderr.contains("trying it again in a new Blender"),
        "{}",
        ran.stderr
    );
    let plan = sb.mvc(&["plan", "p.toml", "--json"]);
    assert_eq!(plan.count("views", "failed_skipped"), 0);
    assert_eq!(plan.count("views", "to_run"), 0);

    // Twice on the same object: recorded, with the signal and what to check.
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        &blender_pipeline(sb.path(), "polar = [50]", &azimuths, "samples = 1", 32),
    );
    let mut run =
        crate::common::Background::start(&mut sb.command(&["run", "p.toml", "--json"]), false);
    let first = kill_blender_mid_object(&run, &sb.cache(), std::time::UNIX_EPOCH);
    let at = std::time::SystemTime::now();
    let second = kill_blender_mid_object(&run, &sb.cache(), at);
    assert_ne!(first, second, "the second try runs in a new Blender");
    let ran = run.finish(std::time::Duration::from_secs(300));
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert_eq!(ran.count("views", "ran"), 48, "{}", ran.stderr);
    assert_eq!(ran.count("views", "failed"), 24, "{}", ran.stderr);
    let error = ran.json()["failures"][0]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains("Blender killed by SIGKILL: out of memory? see dmesg")
            && error.contains("twice on this object, each time in a new process")
            && error.contains("render it on a machine with more"),
        "{error}"
    );
    let plan = sb.mvc(&["plan", "p.toml", "--json"]);
    assert_eq!(plan.count("views", "failed_skipped"), 24);
}
