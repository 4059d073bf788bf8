//! The science stages through the real `mvc` binary: `pipelines/offline.toml` end to end
//! (no network), its reruns, and the bad inputs of split, train and evaluate.

use crate::common::{Sandbox, offline_sandbox};
use std::path::Path;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

const SCIENCE: &[&str] = &[
    "split",
    "train_identity",
    "train_object",
    "train_contrastive",
    "train_autoencoder",
    "eval_identity",
    "eval_object",
    "eval_contrastive",
    "eval_autoencoder",
    "report",
];

#[test]
fn the_offline_pipeline_runs_every_stage_and_reruns_only_what_changed() {
    let sb = offline_sandbox();
    let first = sb.mvc(&["run", "pipelines/offline.toml", "--json"]);
    first.assert_ok();
    assert_eq!(first.count("views", "ran"), 8 * 12);
    assert_eq!(first.count("embed", "ran"), 8 * 12 + 8);
    for stage in SCIENCE {
        assert_eq!(first.count(stage, "ran"), 1, "{stage}");
    }

    check_results_folder(&sb.path().join("runs/offline"));
    check_exported_metrics(&sb);

    // A second run does nothing.
    let second = sb.mvc(&["run", "pipelines/offline.toml", "--json"]);
    second.assert_ok();
    for (stage, _) in second.json()["stages"].as_object().unwrap() {
        assert_eq!(second.count(stage, "ran"), 0, "{stage} ran again");
    }

    // One head's weight: only that head's train and evaluate, and the report.
    let file = sb.path().join("pipelines/offline.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.matches("weight_similarity = 0.5").count(), 1);
    std::fs::write(
        &file,
        text.replace("weight_similarity = 0.5", "weight_similarity = 0.8"),
    )
    .unwrap();
    let plan = sb.mvc(&["plan", "pipelines/offline.toml"]);
    assert!(plan.stdout.contains("train_contrastive"), "{}", plan.stdout);
    let third = sb.mvc(&["run", "pipelines/offline.toml", "--json"]);
    third.assert_ok();
    let mut ran: Vec<String> = third.json()["stages"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, c)| c["ran"].as_u64() != Some(0))
        .map(|(s, _)| s.clone())
        .collect();
    ran.sort();
    assert_eq!(ran, ["eval_contrastive", "report", "train_contrastive"]);
}

/// results.md with all four heads, its CSV and JSON, every evaluation's figures.
fn check_results_folder(runs: &Path) {
    let md = std::fs::read_to_string(runs.join("results.md")).unwrap();
    for head in ["identity", "object", "contrastive", "autoencoder"] {
        assert!(
            md.contains(&format!("| eval_{head} | {head} | study |")),
            "{md}"
        );
    }
    assert!(md.contains("mean nothing about CLIP"), "{md}");
    let csv = std::fs::read_to_string(runs.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(runs.join("results.json")).unwrap()).unwrap();
    let results = json["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    let ae = &results[3]["evaluation"];
    assert!(ae["reconstruction_mse"].as_f64().unwrap() > 0.0, "{ae}");
    assert_eq!(ae["views"], 12);
    assert_eq!(ae["view_pair_mean"].as_array().unwrap().len(), 144);
    assert_eq!(
        ae["inter_object_similarity"], ae["same_object"],
        "the study's name is an alias"
    );
    for head in ["identity", "object", "contrastive", "autoencoder"] {
        for fig in [
            "heatmap_mean.png",
            "heatmap_std.png",
            "similarity_matrix.png",
            "by_azimuth_difference.png",
            "by_view_angle.png",
            "by_elevation_difference.png",
            "training_curves.png",
        ] {
            if head == "identity" && fig == "training_curves.png" {
                continue; // the baseline trains nothing
            }
            let path = runs.join(format!("figures/eval_{head}/{fig}"));
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let img = image::load_from_memory(&bytes).unwrap();
            assert!(img.width() >= 480, "{}", path.display());
            assert!(
                md.contains(&format!("figures/eval_{head}/{fig}")),
                "{fig} not linked"
            );
        }
    }
}

/// Each evaluation's metrics.json, exported.
fn check_exported_metrics(sb: &Sandbox) {
    let out = sb.path().join("export");
    sb.mvc(&[
        "export",
        "pipelines/offline.toml",
        "eval_object",
        out.to_str().unwrap(),
    ])
    .assert_ok();
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics/metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["head"]["head"], "object");
    assert_eq!(metrics["test_objects"].as_array().unwrap().len(), 2);
    // The test loss, with its one term (−mean same-object cosine), over all 12 views.
    let test_loss = &metrics["test_loss"];
    assert_eq!(test_loss["views"], 12, "{test_loss}");
    assert_eq!(test_loss["terms"][0]["name"], "similarity");
    let total = test_loss["total"].as_f64().unwrap();
    let value = test_loss["values"][0].as_f64().unwrap();
    assert!((total + value).abs() < 1e-5, "{test_loss}");
    // Rings compared within themselves: two rings of six azimuths each.
    assert_eq!(
        metrics["by_azimuth_within_ring"].as_array().unwrap().len(),
        2
    );
    assert!(!metrics["by_view_angle"].as_array().unwrap().is_empty());
}

/// Four boxes (and any `extra` objects), six views, the tiny CLIP, a split and one head.
fn small_pipeline(sb: &Sandbox, split: &str, train: &str, extra: &[(&str, &[u8])]) -> String {
    let model = Path::new(REPO).join("tests/data/clip-tiny");
    let mut files = Vec::new();
    let mut ids = Vec::new();
    let glb = std::fs::read(Path::new(REPO).join("pipelines/offline/objects/crate.glb")).unwrap();
    let mut objects: Vec<(String, Vec<u8>)> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| (n.to_string(), glb.clone()))
        .collect();
    objects.extend(extra.iter().map(|(n, b)| (n.to_string(), b.to_vec())));
    for (name, bytes) in &objects {
        std::fs::write(sb.path().join(format!("{name}.glb")), bytes).unwrap();
        files.push(format!("{name} = \"{name}.glb\""));
        ids.push(format!(
            "{{ id = \"{name}\", params = {{ caption = \"object {name}\" }} }}"
        ));
    }
    format!(
        r#"[stage.objects]
kind = "command"
items = [{ids}]
files = {{ {files} }}
cmd = 'eval cp "\$MVC_FILE_$(echo "$MVC_ITEM" | tr a-z A-Z)" "$MVC_OUT/model.glb" && printf "%s" "$MVC_PARAM_CAPTION" > "$MVC_OUT/caption.txt"'
outputs = ["model.glb", "caption.txt"]

[stage.views]
kind = "render"
inputs = ["objects"]
backend = "builtin"
azimuths = {{ start = 0, step = 60, count = 6 }}
polar = [50]
resolution = 32

[stage.embed]
kind = "embed"
inputs = ["views", "objects"]
model = "{model}"
device = "cpu"

[stage.split]
kind = "split"
inputs = ["objects"]
{split}

[stage.train]
kind = "train"
inputs = ["split", "embed"]
steps = 5
hidden = 8
device = "cpu"
{train}

[stage.eval]
kind = "evaluate"
inputs = ["train", "split", "embed"]
"#,
        ids = ids.join(", "),
        files = files.join(", "),
        model = model.display(),
    )
}

#[test]
fn a_split_without_two_test_objects_says_so() {
    let sb = Sandbox::new();
    let p = small_pipeline(
        &sb,
        "fractions = [0.5, 0.25, 0.25]",
        "head = \"object\"",
        &[],
    );
    sb.write("p.toml", &p);
    let ran = sb.mvc(&["run", "p.toml"]);
    assert_ne!(ran.code, Some(0));
    assert!(
        ran.stderr.contains(
            "stage `split`: the test part has 1 of 4 objects; it needs at least 2 (evaluation \
             compares objects). Add objects or raise its fraction."
        ),
        "{}",
        ran.stderr
    );
}

#[test]
fn fractions_that_do_not_sum_to_one_name_the_line() {
    let sb = Sandbox::new();
    let p = small_pipeline(&sb, "fractions = [0.8, 0.1, 0.2]", "head = \"object\"", &[]);
    let line = p.lines().position(|l| l.starts_with("fractions")).unwrap() + 1;
    sb.write("p.toml", &p);
    let ran = sb.mvc(&["plan", "p.toml"]);
    assert_ne!(ran.code, Some(0));
    assert!(
        ran.stderr.contains(&format!(
            "p.toml:{line}:13: stage `split`: `fractions` sum to 1.1"
        )),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("they must sum to 1"), "{}", ran.stderr);
}

#[test]
fn an_unknown_head_lists_the_heads() {
    let sb = Sandbox::new();
    let p = small_pipeline(&sb, "", "head = \"objet\"", &[]);
    let line = p.lines().position(|l| l.starts_with("head")).unwrap() + 1;
    sb.write("p.toml", &p);
    let ran = sb.mvc(&["plan", "p.toml"]);
    assert_ne!(ran.code, Some(0));
    assert!(
        ran.stderr.contains(&format!(
            "p.toml:{line}:8: stage `train`: unknown head `objet`; heads: identity, object, \
             contrastive, autoencoder (did you mean `object`?)"
        )),
        "{}",
        ran.stderr
    );
}

#[test]
fn a_report_reads_only_evaluate_stages() {
    let sb = Sandbox::new();
    let mut p = small_pipeline(&sb, "", "head = \"object\"", &[]);
    p.push_str("\n[stage.report]\nkind = \"report\"\ninputs = [\"train\"]\n");
    sb.write("p.toml", &p);
    let ran = sb.mvc(&["plan", "p.toml"]);
    assert_ne!(ran.code, Some(0));
    assert!(
        ran.stderr
            .contains("stage `report`: a report stage reads evaluate stages"),
        "{}",
        ran.stderr
    );
}

/// Ten good objects and `broken` ones that are not GLBs (their views fail, so they have no
/// embeddings), a report over the evaluation, and `max_missing` set on train and evaluate
/// when given. With method = "hash" and seed 4, `broken` lands in the training part.
fn pipeline_with_broken_objects(sb: &Sandbox, broken: &[&str], max_missing: &str) -> String {
    let glb = std::fs::read(Path::new(REPO).join("pipelines/offline/objects/orange.glb")).unwrap();
    let names = ["e", "f", "g", "h", "i", "j"];
    let mut extra: Vec<(&str, &[u8])> = names.iter().map(|n| (*n, glb.as_slice())).collect();
    for b in broken {
        extra.push((b, b"not a glb at all"));
    }
    let mut p = small_pipeline(
        sb,
        "method = \"hash\"\nfractions = [0.6, 0.2, 0.2]\nseed = 4",
        &format!("head = \"contrastive\"\n{max_missing}"),
        &extra,
    );
    p.push_str(&format!(
        "{max_missing}\n\n[stage.report]\nkind = \"report\"\ninputs = [\"eval\"]\n"
    ));
    p
}

#[test]
fn objects_without_embeddings_are_left_out_and_named_everywhere() {
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        &pipeline_with_broken_objects(&sb, &["broken"], ""),
    );
    let ran = sb.mvc(&["run", "p.toml", "--json"]);
    // The broken object's views failed in this run; the science went on without it.
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert_eq!(ran.count("views", "failed"), 6);
    for stage in ["train", "eval", "report"] {
        assert_eq!(ran.count(stage, "ran"), 1, "{stage}: {}", ran.stderr);
    }
    let reason = "views: not a readable glTF 2.0 file";
    // The run summary: which objects each stage left out and why.
    let notes = ran.json()["notes"].clone();
    let train_note = notes["train"].as_str().unwrap_or_default();
    assert!(
        train_note.contains("(1 left out)") && train_note.contains(reason),
        "{notes}"
    );
    assert!(
        train_note.contains("broken"),
        "the object is named: {train_note}"
    );
    assert!(
        ran.stderr
            .contains("left out (objects without every embedding")
    );
    // The stages' outputs: head.json and metrics.json.
    let out = sb.path().join("out");
    sb.mvc(&["export", "p.toml", "train", out.to_str().unwrap()])
        .assert_ok();
    let head: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model/head.json")).unwrap())
            .unwrap();
    let training = &head["parts"][0];
    assert_eq!(training["part"], "training");
    assert_eq!(
        training["used"].as_u64().unwrap() + 1,
        training["objects"].as_u64().unwrap()
    );
    assert_eq!(training["left_out"][0]["uid"], "broken");
    assert!(
        training["left_out"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with(reason),
        "{head}"
    );
    sb.mvc(&["export", "p.toml", "eval", out.to_str().unwrap()])
        .assert_ok();
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics/metrics.json")).unwrap())
            .unwrap();
    let parts: Vec<&str> = metrics["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["part"].as_str().unwrap())
        .collect();
    assert_eq!(parts, ["training", "validation", "test"]);
    assert_eq!(metrics["parts"][0], head["parts"][0]);
    // results.md: how many of how many, and the objects grouped by reason.
    let results = std::fs::read_to_string(sb.path().join("runs/p/results.md")).unwrap();
    let section = results
        .split("## Objects left out")
        .nth(1)
        .expect("results.md has the section");
    assert!(
        section.contains(&format!(
            "training {} of {}",
            training["used"], training["objects"]
        )),
        "{section}"
    );
    assert!(
        section.contains(reason) && section.contains("`broken` (training)"),
        "{section}"
    );
    // A second run: the failure is recorded, nothing runs, and the run is ok.
    let again = sb.mvc(&["run", "p.toml", "--json"]);
    again.assert_ok();
    assert_eq!(again.count("train", "cached"), 1);
}

#[test]
fn max_missing_zero_is_strict() {
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        &pipeline_with_broken_objects(&sb, &["broken"], "max_missing = 0"),
    );
    let ran = sb.mvc(&["run", "p.toml", "--json"]);
    assert_ne!(ran.code, Some(0));
    assert_eq!(ran.count("views", "failed"), 6);
    assert_eq!(ran.count("train", "failed"), 1);
    let failures = ran.json()["failures"].to_string();
    assert!(
        failures.contains("of the")
            && failures.contains("training objects lack embeddings in `embed`"),
        "{failures}"
    );
    assert!(
        failures.contains("broken: views: not a readable glTF 2.0 file"),
        "{failures}"
    );
    assert!(
        failures.contains("At most 0 may be left out (max_missing = 0 of the part)"),
        "{failures}"
    );
}

#[test]
fn a_part_gutted_beyond_max_missing_names_the_part_the_count_and_the_setting() {
    let sb = Sandbox::new();
    // Three broken objects: with seed 4 at least two land in the training part, more than
    // the default max_missing (0.1 of it, rounded up: one) lets go.
    sb.write(
        "p.toml",
        &pipeline_with_broken_objects(&sb, &["broken", "bad", "worse"], ""),
    );
    let ran = sb.mvc(&["run", "p.toml", "--json"]);
    assert_ne!(ran.code, Some(0));
    let failures = ran.json()["failures"].to_string();
    let train = ran.json()["failures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["stage"] == "train")
        .cloned()
        .unwrap_or_else(|| panic!("train did not fail: {failures}"));
    let error = train["error"].as_str().unwrap();
    assert!(
        error.contains("training objects lack embeddings in `embed`")
            && error.contains("At most 1 may be left out (max_missing = 0.1 of the part)")
            && error.contains("raise the stage's `max_missing`"),
        "{error}"
    );
    // Raising the setting lets the same objects through: the stage's key holds it.
    let p = pipeline_with_broken_objects(&sb, &["broken", "bad", "worse"], "max_missing = 0.5");
    sb.write("p.toml", &p);
    let again = sb.mvc(&["run", "p.toml", "--json"]);
    assert_eq!(again.count("train", "ran"), 1, "{}", again.stderr);
    assert_eq!(again.count("eval", "ran"), 1, "{}", again.stderr);
}

#[test]
fn max_missing_out_of_range_is_an_error_at_its_place() {
    let sb = Sandbox::new();
    let p = small_pipeline(&sb, "", "head = \"object\"\nmax_missing = 1.5", &[]);
    sb.write("p.toml", &p);
    let line = p
        .lines()
        .position(|l| l.starts_with("max_missing"))
        .unwrap()
        + 1;
    let ran = sb.mvc(&["plan", "p.toml"]);
    assert_ne!(ran.code, Some(0));
    assert!(
        ran.stderr.contains(&format!(
            "p.toml:{line}:15: stage `train`: `max_missing` is 1.5; it is the largest fraction"
        )),
        "{}",
        ran.stderr
    );
}

#[test]
fn objects_with_different_views_are_named() {
    use mvc::exec::workdir::InputData;
    use mvc::stages::Binding;
    use mvc::store::records::{Output, TaskResult, manifest_digest};
    use mvc::task::Digest;
    let dir = tempfile::tempdir().unwrap();
    let store = mvc::store::Store::open(&dir.path().join("cache")).unwrap();
    let item = |id: &str| {
        let bytes: Vec<u8> = [1f32, 0.5].iter().flat_map(|v| v.to_le_bytes()).collect();
        let outputs = vec![Output {
            name: "embedding.f32".into(),
            digest: Digest::of(&bytes),
            size: bytes.len() as u64,
            inline: Some(bytes),
        }];
        let result = TaskResult {
            stage: "embed".into(),
            item: id.into(),
            manifest: manifest_digest(&outputs),
            outputs,
            stdout: None,
            stderr: None,
            started_ms: 0,
            duration_ms: 0,
            host: "local".into(),
        };
        (id.to_string(), result)
    };
    let mut items = Vec::new();
    for uid in ["u1", "u2", "u3"] {
        items.push(item(&format!("{uid}#caption")));
        let views = if uid == "u2" { 1 } else { 3 };
        for v in 0..views {
            items.push(item(&format!(
                "{uid}@az{:03}-pol050-d1.5-fov49.1343",
                v * 120
            )));
        }
    }
    let input = InputData {
        stage: "embed".into(),
        binding: Binding::All,
        items,
        left_out: Vec::new(),
    };
    let uids: Vec<String> = ["u1", "u2", "u3"].iter().map(|s| s.to_string()).collect();
    let part = |uids| mvc::stages::gather::Part {
        name: "test",
        uids,
        max_missing: 0.0,
        least: 2,
    };
    let e = match mvc::stages::gather::gather(&store, &input, &part(&uids)) {
        Ok(_) => panic!("objects with 3, 1 and 3 views were accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.starts_with("1 of the 3 test objects lack embeddings in `embed` (every object needs the same views and its caption): u2: 2 of 3 views missing (az120-pol050-d1.5-fov49.1343, az240-pol050-d1.5-fov49.1343)"),
        "{e}"
    );
    // With u2 left out the others gather, views in the study's order.
    let two = [uids[0].clone(), uids[2].clone()];
    let g = mvc::stages::gather::gather(&store, &input, &part(&two)).unwrap();
    assert_eq!((g.uids.len(), g.views.len(), g.dim), (2, 3, 2));
    assert_eq!(g.views[1].azimuth, Some(120.0));
}

#[test]
fn the_study_split_counts_and_the_hash_split_keeps_objects_in_place() {
    use mvc::stages::split::{Method, assign};
    let uids: Vec<String> = (0..2050).map(|k| format!("{k:032x}")).collect();
    let s = assign(&uids, Method::Study, [0.8, 0.1, 0.1], 42);
    // int(0.8 N), int(0.1 N), the rest (the study had 206 test objects of about 2,050).
    assert_eq!(
        (s.train.len(), s.validation.len(), s.test.len()),
        (1640, 205, 205)
    );
    assert_eq!(s, assign(&uids, Method::Study, [0.8, 0.1, 0.1], 42));
    let other = assign(&uids, Method::Study, [0.8, 0.1, 0.1], 7);
    assert_ne!(s.test, other.test, "the seed shuffles");

    let h = assign(&uids[..1000], Method::Hash, [0.8, 0.1, 0.1], 42);
    let more = assign(&uids, Method::Hash, [0.8, 0.1, 0.1], 42);
    for uid in &h.test {
        assert!(
            more.test.contains(uid),
            "{uid} moved when objects were added"
        );
    }
    for uid in &h.train {
        assert!(
            more.train.contains(uid),
            "{uid} moved when objects were added"
        );
    }
    let share = more.test.len() as f64 / 2050.0;
    assert!((share - 0.1).abs() < 0.03, "hash test share {share}");
}

#[test]
fn the_study_split_shuffles_exactly_as_numpy() {
    use mvc::numpy_random::Mt19937;
    // NumPy's own output (tests/data/make_numpy_shuffle.py, NumPy 1.24): np.random.seed(s);
    // np.random.shuffle(list(range(n))).
    let data: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/numpy_shuffle.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let cases = data["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 24);
    for case in cases {
        let seed = case["seed"].as_u64().unwrap() as u32;
        let n = case["n"].as_u64().unwrap() as usize;
        let want: Vec<u64> = case["permutation"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let mut got: Vec<u64> = (0..n as u64).collect();
        Mt19937::new(seed).shuffle(&mut got);
        assert_eq!(got, want, "seed {seed}, {n} items");
    }
    // The split stage uses it: sorted uids, NumPy's shuffle with the seed, int(0.8 N) train.
    use mvc::stages::split::{Method, assign};
    let uids: Vec<String> = (0..100).map(|k| format!("u{k:03}")).collect();
    let s = assign(&uids, Method::Study, [0.8, 0.1, 0.1], 42);
    let seed42 = cases
        .iter()
        .find(|c| c["seed"] == 42 && c["n"] == 100)
        .unwrap();
    let mut test: Vec<String> = seed42["permutation"].as_array().unwrap()[90..]
        .iter()
        .map(|k| format!("u{:03}", k.as_u64().unwrap()))
        .collect();
    test.sort();
    assert_eq!(s.test, test);
}

#[test]
fn a_study_seed_numpy_would_refuse_names_the_line() {
    let sb = Sandbox::new();
    let p = small_pipeline(&sb, "seed = 4294967296", "head = \"object\"", &[]);
    let line = p.lines().position(|l| l.starts_with("seed")).unwrap() + 1;
    sb.write("p.toml", &p);
    let ran = sb.mvc(&["plan", "p.toml"]);
    assert_ne!(ran.code, Some(0));
    assert!(
        ran.stderr.contains(&format!(
            "p.toml:{line}:8: stage `split`: seed = 4294967296 is above 4294967295"
        )),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("the study's is 42"), "{}", ran.stderr);
}

/// A stage that makes the results (train, evaluate, report) and failed leaves the run with no
/// results: it exits 1 and says "no results" on every run, not only the one it failed in,
/// until the failure is fixed. (A recorded failure of a broken object alone lets a run
/// exit 0: that is what the views above do.)
#[test]
fn a_run_without_results_exits_non_zero_every_time_until_they_exist() {
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        &pipeline_with_broken_objects(&sb, &["broken"], "max_missing = 0"),
    );
    let first = sb.mvc(&["run", "p.toml", "--json"]);
    assert_eq!(first.code, Some(1), "{}", first.stderr);
    assert_eq!(first.count("train", "failed"), 1);
    for _ in 0..2 {
        let again = sb.mvc(&["run", "p.toml", "--json"]);
        assert_eq!(again.code, Some(1), "{}", again.stderr);
        assert_eq!(again.count("train", "ran") + again.count("eval", "ran"), 0);
        assert_eq!(again.json()["ok"], false);
        assert_eq!(
            again.json()["no_results"],
            serde_json::json!(["train", "eval", "report"]),
            "{}",
            again.stdout
        );
        assert!(
            again.stderr.contains("no results in")
                && again.stderr.contains("`train`, `eval`, `report` failed")
                && !again.stderr.contains("\nok in"),
            "{}",
            again.stderr
        );
    }
    assert!(!sb.path().join("runs/p/results.md").exists());
    // Fixed (the setting is in the key): the results exist and the run is ok again, though
    // the broken object's views are still recorded as failed.
    sb.write(
        "p.toml",
        &pipeline_with_broken_objects(&sb, &["broken"], "max_missing = 0.5"),
    );
    let fixed = sb.mvc(&["run", "p.toml", "--json"]);
    fixed.assert_ok();
    assert_eq!(fixed.count("views", "failed"), 6);
    assert!(fixed.stderr.contains("\nok in"), "{}", fixed.stderr);
    assert!(sb.path().join("runs/p/results.md").exists());
}
