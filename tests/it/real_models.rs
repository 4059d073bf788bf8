//! Every glTF 2.0 model of Debian's assimp-testmodels (46 files, most of them deliberately
//! broken: cycles, indices out of range, infinities, Draco, missing buffers, wrong types,
//! points and lines only) through every stage kind from `render` on, with real Blender and
//! with the built-in renderer. The run must end by itself, every object must render or fail
//! alone with a reason, and train, evaluate and report must complete on the rest, naming
//! the objects they left out.

use crate::common::blender::{MODELS, have_blender};
use crate::common::{Background, Sandbox};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every `.gltf` and `.glb` under `dir`, sorted.
fn model_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "gltf" || x == "glb") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The item id of a model: its path under the models folder, folders joined with `__`.
fn item_id(path: &Path) -> String {
    let rel = path.strip_prefix(MODELS).unwrap().with_extension("");
    rel.to_string_lossy().replace('/', "__").replace(
        |c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'),
        "_",
    )
}

/// Models Blender 3.4 imports with at least one polygon, which must therefore reach it and
/// render (BoxWithInfinites imports too, but its infinite coordinates are refused: they
/// would frame garbage).
const BLENDER_RENDERS: &[&str] = &[
    "2CylinderEngine-glTF-Binary__2CylinderEngine",
    "BoxBadNormals-glTF-Binary__BoxBadNormals",
    "BoxTexcoords-glTF__boxTexcoords",
    "BoxTextured-glTF-Binary__BoxTextured",
    "BoxTextured-glTF-Embedded__BoxTextured",
    "BoxTextured-glTF-pbrSpecularGlossiness__BoxTextured",
    "BoxTextured-glTF__BoxTextured",
    "ClearCoat-glTF__ClearCoatTest",
    "cameras__Cameras",
    "glTF-Asset-Generator__Mesh_PrimitiveMode__Mesh_PrimitiveMode_04",
    "glTF-Asset-Generator__Mesh_PrimitiveMode__Mesh_PrimitiveMode_05",
    "glTF-Asset-Generator__Mesh_PrimitiveMode__Mesh_PrimitiveMode_06",
    "glTF-Asset-Generator__Mesh_PrimitiveMode__Mesh_PrimitiveMode_11",
    "glTF-Asset-Generator__Mesh_PrimitiveMode__Mesh_PrimitiveMode_12",
    "glTF-Asset-Generator__Mesh_PrimitiveMode__Mesh_PrimitiveMode_13",
    "glTF-Asset-Generator__Mesh_PrimitiveMode__Mesh_PrimitiveMode_14",
    "glTF-Asset-Generator__Mesh_PrimitiveMode__Mesh_PrimitiveMode_15",
    "glTF-Sample-Models__AnimatedMorphCube-glTF__AnimatedMorphCube",
    "issue_3269__texcoord_crash",
    "simple_skin__simple_skin",
    "textureTransform__TextureTransformTest",
    "wrongTypes__badUint",
];

/// Broken models and (a piece of) the reason each must fail with, with either backend.
const BROKEN: &[(&str, &str)] = &[
    (
        "RecursiveNodes__RecursiveNodes",
        "node hierarchy has a cycle",
    ),
    ("IndexOutOfRange__IndexOutOfRange", "is out of range"),
    ("IndexOutOfRange__AllIndicesOutOfRange", "is out of range"),
    (
        "BoxWithInfinites-glTF-Binary__BoxWithInfinites",
        "not finite",
    ),
    (
        "MissingBin__BoxTextured",
        "separate files that did not come with it",
    ),
    ("IncorrectVertexArrays__Cube", "not a multiple of 3"),
    ("draco__2CylinderEngine", "Draco"),
    (
        "glTF-Asset-Generator__Mesh_PrimitiveMode__Mesh_PrimitiveMode_00",
        "only points and lines",
    ),
    (
        "glTF-Asset-Generator__Mesh_PrimitiveMode__Mesh_PrimitiveMode_03",
        "only points and lines",
    ),
];

/// Strips and fans, plain and indexed.
const STRIPS_AND_FANS: &[&str] = &[
    "glTF-Asset-Generator__Mesh_PrimitiveMode__Mesh_PrimitiveMode_04",
    "glTF-Asset-Generator__Mesh_PrimitiveMode__Mesh_PrimitiveMode_05",
    "glTF-Asset-Generator__Mesh_PrimitiveMode__Mesh_PrimitiveMode_11",
    "glTF-Asset-Generator__Mesh_PrimitiveMode__Mesh_PrimitiveMode_12",
];

fn science(backend: &str) -> String {
    format!(
        r#"
[stage.views_{backend}]
kind = "render"
inputs = ["objects"]
backend = "{backend}"
azimuths = [30, 120]
polar = [60]
resolution = 32
samples = 1
timeout = 120

[stage.embed_{backend}]
kind = "embed"
inputs = ["views_{backend}", "objects"]
model = "{model}"
device = "cpu"

# About half of these objects are broken on purpose: far more than a real dataset loses.
[stage.train_{backend}]
kind = "train"
inputs = ["split", "embed_{backend}"]
head = "object"
steps = 20
hidden = 16
views_per_step = 2
device = "cpu"
max_missing = 0.9

[stage.eval_{backend}]
kind = "evaluate"
inputs = ["train_{backend}", "split", "embed_{backend}"]
max_missing = 0.9

[stage.report_{backend}]
kind = "report"
inputs = ["eval_{backend}"]
"#,
        model = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/clip-tiny")
            .display()
    )
}

#[test]
fn every_assimp_model_renders_or_fails_alone_and_the_science_completes_on_the_rest() {
    if !have_blender(true) {
        return;
    }
    let sb = Sandbox::new();
    let files = model_files(Path::new(MODELS));
    assert_eq!(files.len(), 46, "assimp-testmodels' glTF 2.0 models");
    let mut items = Vec::new();
    for path in &files {
        let id = item_id(path);
        let glb = sb.path().join(format!("{id}.glb"));
        std::fs::write(&glb, crate::common::glb::model_file_bytes(path)).unwrap();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        items.push(format!(
            "  {{ id = \"{id}\", params = {{ path = \"{}\", caption = \"a model named {name}\" }} }}",
            glb.display()
        ));
    }
    let ids: BTreeSet<String> = files.iter().map(|p| item_id(p)).collect();
    assert_eq!(ids.len(), 46, "item ids are distinct");
    sb.write(
        "p.toml",
        &format!(
            r#"[pipeline]
name = "assimp"

# Each model's file and caption, as a download would give them.
[stage.objects]
kind = "command"
items = [
{}
]
cmd = 'cp "$MVC_PARAM_PATH" "$MVC_OUT/model.glb" && printf "%s" "$MVC_PARAM_CAPTION" > "$MVC_OUT/caption.txt"'
outputs = ["model.glb", "caption.txt"]

[stage.split]
kind = "split"
inputs = ["objects"]
fractions = [0.5, 0.2, 0.3]
{}{}"#,
            items.join(",\n"),
            science("blender"),
            science("builtin")
        ),
    );
    let mut run = Background::start(&mut sb.command(&["run", "p.toml", "--json"]), false);
    // The run ends by itself (a cycle once hung it for ever).
    let ran = run.finish(Duration::from_secs(900));
    assert_eq!(
        ran.code,
        Some(1),
        "objects failed in this run:\n{}",
        ran.stderr
    );
    let json = ran.json();

    for backend in ["blender", "builtin"] {
        check_backend(&sb, &ran, &ids, backend);
    }
    // The run summary says which objects each stage left out, and why.
    let notes = &json["notes"];
    for stage in [
        "train_blender",
        "train_builtin",
        "eval_blender",
        "eval_builtin",
    ] {
        assert!(
            notes[stage]
                .as_str()
                .is_some_and(|n| n.contains("left out")),
            "{stage}: {notes}"
        );
    }
}

/// With `backend`: every object rendered both views or failed alone with a reason (the
/// known broken ones with theirs), the science completed on the rest, results.md names what
/// it left out, and the strips and fans drew something.
fn check_backend(sb: &Sandbox, ran: &crate::common::Ran, ids: &BTreeSet<String>, backend: &str) {
    let json = ran.json();
    let views = format!("views_{backend}");
    // Every object rendered both views, or failed alone with a reason.
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    for f in json["failures"].as_array().unwrap() {
        if f["stage"] != views.as_str() {
            continue;
        }
        let object = f["item"].as_str().unwrap().split('@').next().unwrap();
        let error = f["error"].as_str().unwrap();
        assert!(
            !error.trim().is_empty(),
            "{backend}: {object} failed without a reason"
        );
        failed
            .entry(object.to_string())
            .or_insert(error.to_string());
    }
    let rendered = ids.len() - failed.len();
    assert_eq!(
        ran.count(&views, "ran") as usize,
        2 * rendered,
        "{backend}: an object half rendered: {failed:#?}"
    );
    for (object, reason) in BROKEN {
        let got = failed
            .get(*object)
            .unwrap_or_else(|| panic!("{backend}: {object} did not fail: {failed:#?}"));
        assert!(got.contains(reason), "{backend}: {object}: {got}");
    }
    for object in STRIPS_AND_FANS {
        assert!(
            !failed.contains_key(*object),
            "{backend}: {object}: {failed:#?}"
        );
    }
    if backend == "blender" {
        // Everything Blender can import reaches it and renders.
        for object in BLENDER_RENDERS {
            assert!(
                !failed.contains_key(*object),
                "blender: {object}: {failed:#?}"
            );
        }
    }
    // Train, evaluate and report complete on the rest.
    for stage in ["train", "eval", "report"] {
        assert_eq!(
            ran.count(&format!("{stage}_{backend}"), "ran"),
            1,
            "{backend}: {stage} did not run:\n{}",
            ran.stderr
        );
    }
    // results.md names the objects left out, grouped by reason.
    let results = std::fs::read_to_string(
        sb.path()
            .join(format!("runs/assimp/report_{backend}/results.md")),
    )
    .unwrap();
    let section = results.split("## Objects left out").nth(1).unwrap();
    assert!(
        section.contains("`RecursiveNodes__RecursiveNodes`")
            && section.contains("node hierarchy has a cycle"),
        "{backend}: {section}"
    );
    for object in failed.keys() {
        assert!(
            section.contains(&format!("`{object}` (")),
            "{backend}: {object} failed and is not named:\n{section}"
        );
    }
    // The strips and fans drew something.
    let out = sb.path().join(format!("export-{backend}"));
    sb.mvc(&["export", "p.toml", &views, out.to_str().unwrap()])
        .assert_ok();
    for object in STRIPS_AND_FANS {
        for view in [
            "az030-pol060-d1.5-fov49.1343",
            "az120-pol060-d1.5-fov49.1343",
        ] {
            let png = image::open(out.join(object).join(format!("{view}.png")))
                .unwrap()
                .to_rgba8();
            let covered = png.pixels().filter(|p| p[3] > 0).count();
            assert!(
                covered > 20,
                "{backend}: {object} {view}: {covered} pixels drawn"
            );
        }
    }
}
