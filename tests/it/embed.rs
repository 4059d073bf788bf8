//! Stage kind `embed`: renders and captions of a downloaded selection embedded by the fixture
//! CLIP (`tests/data/clip-tiny`), keyed so that only what changed is embedded again, exported
//! as one safetensors file, and equal to `mvc embed` on the same inputs.

use crate::common::Sandbox;
use crate::common::fixture;
use crate::common::mirror::{Mirror, Object};

fn objects() -> Vec<Object> {
    let mut objects: Vec<Object> = (0..3)
        .map(|n| {
            Object::new(
                10 + n,
                n as usize,
                &["food-drink"],
                ["Apple pie", "Cup of tea", ""][n as usize],
                600,
            )
        })
        .collect();
    objects.push(Object::new(20, 5, &["music"], "Drum", 600));
    objects
}

fn pipeline(embed_extra: &str) -> String {
    format!(
        r#"
[stage.objects]
kind = "download"
categories = ["food-drink"]

[stage.views]
kind = "render"
inputs = ["objects"]
backend = "builtin"
azimuths = [0, 90]
polar = [60]
resolution = 224
supersample = 1

[stage.clip]
kind = "embed"
inputs = ["views", "objects"]
model = "{}"
{embed_extra}
"#,
        fixture::dir().display()
    )
}

fn run(sb: &Sandbox, mirror: &Mirror) -> crate::common::Ran {
    let ran = sb.mvc_env(
        &["run", "p.toml", "--json"],
        &[("HF_ENDPOINT", &mirror.endpoint)],
    );
    ran.assert_ok();
    ran
}

#[test]
fn renders_and_captions_are_embedded_once_and_exported_as_one_file() {
    let mirror = Mirror::start(&objects());
    let sb = Sandbox::new();
    sb.write("p.toml", &pipeline("batch = 2"));
    let first = run(&sb, &mirror);
    // 3 objects × 2 views, and 3 captions (the empty name is a valid caption).
    assert_eq!(first.count("clip", "total"), 9);
    assert_eq!(first.count("clip", "ran"), 9);

    let again = run(&sb, &mirror);
    assert_eq!(again.count("clip", "cached"), 9);
    assert_eq!(again.count("clip", "ran"), 0);

    // The batch size is how the work is cut, not what it computes: nothing reruns.
    sb.write("p.toml", &pipeline("batch = 5"));
    assert_eq!(run(&sb, &mirror).count("clip", "ran"), 0);

    // Export: one safetensors file with every image row and every caption row.
    let exported = sb.mvc_env(
        &["export", "p.toml", "clip", "out"],
        &[("HF_ENDPOINT", &mirror.endpoint)],
    );
    exported.assert_ok();
    let st = sb.path().join("out/embeddings.safetensors");
    let (shape, images) = fixture::tensor(&st, "image_embeds");
    assert_eq!(shape, vec![6, 16]);
    let (shape, texts) = fixture::tensor(&st, "text_embeds");
    assert_eq!(shape, vec![3, 16]);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sb.path().join("out/embeddings.json")).unwrap())
            .unwrap();
    let captions: Vec<&str> = index["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["caption"].as_str().unwrap())
        .collect();
    assert_eq!(
        captions,
        vec!["Apple pie", "Cup of tea", ""],
        "rows in uid order"
    );
    let first_image = &index["images"][0];
    let (uid, view) = (
        first_image["uid"].as_str().unwrap(),
        first_image["view"].as_str().unwrap(),
    );

    // The stage computes what `mvc embed` computes on the same render and captions.
    let views = sb.mvc_env(
        &["export", "p.toml", "views", "renders"],
        &[("HF_ENDPOINT", &mirror.endpoint)],
    );
    views.assert_ok();
    let png = sb.path().join(format!("renders/{uid}/{view}.png"));
    let mut args = vec![
        "embed".to_string(),
        "--model".into(),
        fixture::dir().display().to_string(),
        "--out".into(),
        "cli.safetensors".into(),
        "--image".into(),
        png.display().to_string(),
    ];
    for c in &captions {
        args.push("--text".into());
        args.push(c.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sb.mvc(&args).assert_ok();
    let cli = sb.path().join("cli.safetensors");
    let (_, cli_images) = fixture::tensor(&cli, "image_embeds");
    let (_, cli_texts) = fixture::tensor(&cli, "text_embeds");
    // The same bytes: the stage ran batches of 2, the command one batch of its own.
    assert_eq!(cli_images, images[..16]);
    assert_eq!(cli_texts, texts);

    // A new background changes every image's input, not the captions.
    sb.write("p.toml", &pipeline("batch = 2\nbackground = \"#000000\""));
    let black = run(&sb, &mirror);
    assert_eq!(black.count("clip", "ran"), 6, "{}", black.stdout);
    assert_eq!(black.count("clip", "cached"), 3);
}

#[test]
fn an_image_that_is_not_an_image_fails_its_item_only() {
    let sb = Sandbox::new();
    let good = fixture::images()[0].clone();
    std::fs::copy(&good, sb.path().join("good.png")).unwrap();
    sb.write("bad.png", "<html>not a picture</html>");
    sb.write(
        "p.toml",
        &format!(
            r#"
[stage.pictures]
kind = "command"
items = ["good", "bad"]
files = {{ good = "good.png", bad = "bad.png" }}
cmd = 'eval cp "\$MVC_FILE_$(echo "$MVC_ITEM" | tr a-z A-Z)" "$MVC_OUT/picture.png"'

[stage.clip]
kind = "embed"
inputs = ["pictures"]
model = "{}"
"#,
            fixture::dir().display()
        ),
    );
    let ran = sb.mvc(&["run", "p.toml", "--json"]);
    assert_ne!(ran.code, Some(0));
    assert_eq!(ran.count("clip", "ran"), 1);
    assert_eq!(ran.count("clip", "failed"), 1);
    assert!(
        ran.stdout
            .contains("pictures/bad/picture.png is not an image"),
        "{}",
        ran.stdout
    );
}

#[test]
fn bad_embed_settings_point_at_the_value() {
    let sb = Sandbox::new();
    let model = fixture::dir().display().to_string();
    for (extra, want) in [
        (
            "device = \"tpu\"",
            "unknown device `tpu`; use auto, cpu or cuda",
        ),
        (
            "device = \"cpu\"\ndtype = \"bf16\"",
            "dtype = \"bf16\" is for GPU inference",
        ),
        ("background = \"pink\"", "background `pink` is not a colour"),
        ("batch = 0", "`batch` must be between 1 and 4096"),
    ] {
        sb.write(
            "p.toml",
            &format!(
                "[stage.pictures]\nkind = \"command\"\nitems = [\"a\"]\ncmd = \"true\"\n\n[stage.clip]\nkind = \"embed\"\ninputs = [\"pictures\"]\nmodel = \"{model}\"\n{extra}\n"
            ),
        );
        let ran = sb.mvc(&["plan", "p.toml"]);
        assert_ne!(ran.code, Some(0), "{extra}");
        assert!(ran.stderr.contains(want), "{extra}: {}", ran.stderr);
        assert!(
            ran.stderr.contains("p.toml:"),
            "names the file and line: {}",
            ran.stderr
        );
    }
    // A model folder that lacks a file is named when planning.
    sb.write(
        "p.toml",
        "[stage.pictures]\nkind = \"command\"\nitems = [\"a\"]\ncmd = \"true\"\n\n[stage.clip]\nkind = \"embed\"\ninputs = [\"pictures\"]\nmodel = \"./empty-model\"\n",
    );
    std::fs::create_dir(sb.path().join("empty-model")).unwrap();
    let ran = sb.mvc(&["plan", "p.toml"]);
    assert_ne!(ran.code, Some(0));
    assert!(
        ran.stderr
            .contains("model folder ./empty-model has no config.json"),
        "{}",
        ran.stderr
    );
}

#[test]
fn a_model_that_cannot_be_downloaded_waits_while_the_rest_runs() {
    let sb = Sandbox::new();
    std::fs::copy(&fixture::images()[0], sb.path().join("a.png")).unwrap();
    sb.write(
        "p.toml",
        r#"
[stage.pictures]
kind = "command"
items = ["a"]
files = { a = "a.png" }
cmd = 'cp "$MVC_FILE_A" "$MVC_OUT/picture.png"'

[stage.clip]
kind = "embed"
inputs = ["pictures"]
model = "tester/clip-tiny"
revision = "v1"
"#,
    );
    // Nothing listens on port 9 (discard) of this machine.
    let offline = [("HF_ENDPOINT", "http://127.0.0.1:9")];
    let plan = sb.mvc_env(&["plan", "p.toml"], &offline);
    plan.assert_ok();
    assert!(
        plan.stdout.contains("could not be downloaded"),
        "{}",
        plan.stdout
    );
    let ran = sb.mvc_env(&["run", "p.toml", "--json"], &offline);
    assert_ne!(ran.code, Some(0), "a stage that never ran is not a success");
    assert_eq!(
        ran.count("pictures", "ran"),
        1,
        "the rest of the pipeline runs"
    );
    let why = ran.json()["not_expanded"]["clip"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        why.contains("cannot reach HF_ENDPOINT http://127.0.0.1:9"),
        "{why}"
    );

    // With the hub back, the next run embeds.
    let mirror = Mirror::start(&[]);
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        mirror.put(
            &format!("/tester/clip-tiny/resolve/v1/{f}"),
            std::fs::read(fixture::dir().join(f)).unwrap(),
        );
    }
    let ran = sb.mvc_env(
        &["run", "p.toml", "--json"],
        &[("HF_ENDPOINT", &mirror.endpoint)],
    );
    ran.assert_ok();
    assert_eq!(ran.count("clip", "ran"), 1);
}
