//! Variants of a pipeline without editing its file: `--set` overrides, `--with` overlays,
//! sweeps (product and zip) that share everything upstream, seeds reported as mean ± std with
//! verdicts, and every bad input of them, through the real `mvc` binary on
//! `pipelines/offline.toml` (no network).

use crate::common::browser::Browser;
use crate::common::{Background, Ran, Sandbox, offline_sandbox, raw_http};
use std::time::Duration;

const OFFLINE: &str = "pipelines/offline.toml";

fn plan(sb: &Sandbox, extra: &[&str]) -> Ran {
    let mut args = vec!["plan", OFFLINE, "--json"];
    args.extend_from_slice(extra);
    let ran = sb.mvc(&args);
    ran.assert_ok();
    ran
}

fn run(sb: &Sandbox, extra: &[&str]) -> Ran {
    let mut args = vec!["run", OFFLINE, "--json"];
    args.extend_from_slice(extra);
    sb.mvc(&args)
}

/// The stages a plan would run something of, with how many tasks each, by name.
fn to_run(plan: &Ran) -> Vec<(String, u64)> {
    let json = plan.json();
    let mut list: Vec<(String, u64)> = json["stages"]
        .as_object()
        .unwrap()
        .iter()
        .filter_map(|(name, s)| {
            let n = s["to_run"].as_u64().unwrap();
            (n > 0).then(|| (name.clone(), n))
        })
        .collect();
    list.sort();
    list
}

fn pairs(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    let mut list: Vec<(String, u64)> = list.iter().map(|(s, n)| (s.to_string(), *n)).collect();
    list.sort();
    list
}

const SWEEP_2: &str = "train_contrastive.weight_similarity={ sweep = [0.5, 0.1] }";
const SWEEP_3: &str = "train_contrastive.weight_similarity={ sweep = [0.5, 0.1, 1.0] }";

/// Acceptance 1: a sweep shares everything upstream; its base value is the cached head of the
/// file; adding a value runs exactly one train, one evaluate and the report; removing one runs
/// only the report.
#[test]
fn adding_a_sweep_value_runs_one_train_one_evaluate_and_the_report() {
    let sb = offline_sandbox();
    run(&sb, &[]).assert_ok();
    let file = sb.read(OFFLINE);

    // 0.5 is the file's own value: that variant is the cached head, and only 0.1 trains.
    let first = plan(&sb, &["--set", SWEEP_2]);
    assert_eq!(
        to_run(&first),
        pairs(&[
            ("train_contrastive[weight_similarity=0.1]", 1),
            ("eval_contrastive[weight_similarity=0.1]", 1),
            ("report", 1),
        ]),
        "{}",
        first.stdout
    );
    let ran = run(&sb, &["--set", SWEEP_2]);
    ran.assert_ok();
    assert_eq!(
        ran.count("train_contrastive[weight_similarity=0.5]", "cached"),
        1
    );
    assert_eq!(
        ran.count("train_contrastive[weight_similarity=0.1]", "ran"),
        1
    );
    assert_eq!(ran.count("embed", "ran"), 0);

    let added = plan(&sb, &["--set", SWEEP_3]);
    assert_eq!(
        to_run(&added),
        pairs(&[
            ("train_contrastive[weight_similarity=1.0]", 1),
            ("eval_contrastive[weight_similarity=1.0]", 1),
            ("report", 1),
        ]),
        "{}",
        added.stdout
    );
    let ran = run(&sb, &["--set", SWEEP_3]);
    ran.assert_ok();
    let total_ran: u64 = ran.json()["stages"]
        .as_object()
        .unwrap()
        .values()
        .map(|s| s["ran"].as_u64().unwrap())
        .sum();
    assert_eq!(total_ran, 3, "{}", ran.stdout);

    // Removing a value runs the report alone (and not even that for a set of values it has
    // already reported: [0.5, 0.1] is cached).
    let removed = plan(
        &sb,
        &[
            "--set",
            "train_contrastive.weight_similarity={ sweep = [0.5, 1.0] }",
        ],
    );
    assert_eq!(
        to_run(&removed),
        pairs(&[("report", 1)]),
        "{}",
        removed.stdout
    );
    assert_eq!(to_run(&plan(&sb, &["--set", SWEEP_2])), vec![]);

    named_everywhere(&sb);
    reported_one_row_per_variant(&sb);

    // The file was never rewritten; the run recorded what it ran and how it was asked.
    assert_eq!(sb.read(OFFLINE), file);
    let ran_text = sb.read("runs/offline/pipeline.toml");
    assert!(ran_text.contains("sweep = [0.5, 0.1, 1.0]"), "{ran_text}");
    let run_json: serde_json::Value =
        serde_json::from_str(&sb.read("runs/offline/run.json")).unwrap();
    let command: Vec<&str> = run_json["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(command.contains(&SWEEP_3), "{command:?}");
}

/// Variants are named in plans, `mvc why` and exports.
fn named_everywhere(sb: &Sandbox) {
    let text = sb.mvc(&["plan", OFFLINE, "--set", SWEEP_3]);
    assert!(
        text.stdout
            .contains("train_contrastive: 3 variants [weight_similarity=0.5] [weight_similarity=0.1] [weight_similarity=1.0]"),
        "{}",
        text.stdout
    );
    let why = sb.mvc(&[
        "why",
        OFFLINE,
        "eval_contrastive[weight_similarity=1.0]",
        "metrics",
        "--set",
        SWEEP_3,
    ]);
    why.assert_ok();
    assert!(
        why.stdout
            .contains("eval_contrastive[weight_similarity=1.0]"),
        "{}",
        why.stdout
    );
    let out = sb.path().join("exported");
    sb.mvc(&[
        "export",
        OFFLINE,
        "train_contrastive[weight_similarity=0.1]",
        out.to_str().unwrap(),
        "--set",
        SWEEP_3,
    ])
    .assert_ok();
    assert!(out.join("model").is_dir(), "{}", out.display());
}

/// The report of three weights: one row per variant, the swept parameter as a column, the
/// variants against their base, and the sweep's figure.
fn reported_one_row_per_variant(sb: &Sandbox) {
    let md = sb.read("runs/offline/results.md");
    for value in ["0.5", "0.1", "1.0"] {
        assert!(
            md.contains(&format!("| eval_contrastive | {value} | 1 | contrastive |")),
            "{md}"
        );
    }
    assert!(md.contains("| eval_object | – | 1 | object |"), "{md}");
    assert!(md.contains("## Variants against their base"), "{md}");
    assert!(md.contains("(one seed: no verdict)"), "{md}");
    assert!(md.contains("sweep the seed"), "{md}");
    let figure = sb
        .path()
        .join("runs/offline/figures/sweeps/eval_contrastive.weight_similarity.png");
    assert!(std::fs::read(&figure).unwrap().starts_with(b"\x89PNG"));
    let csv = sb.read("runs/offline/results.csv");
    assert!(
        csv.starts_with("evaluation,weight_similarity,seeds,spread,"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 1 + 6, "{csv}");
}

/// `--set` gives exactly the file with that value changed: the file's own value is a full
/// cache hit, another names the override as the cause; nested keys and bare words work.
#[test]
fn an_override_is_the_file_with_one_value_changed() {
    let sb = offline_sandbox();
    run(&sb, &[]).assert_ok();
    assert_eq!(
        to_run(&plan(&sb, &["--set", "train_object.steps=50"])),
        vec![]
    );
    let changed = sb.mvc(&["plan", OFFLINE, "--set", "train_object.steps=60"]);
    changed.assert_ok();
    assert!(
        changed
            .stdout
            .contains("train_object: 1 parameter changed: steps (--set)"),
        "{}",
        changed.stdout
    );
    // A bare word is a string (`cpu`); a nested key sets one field of a table.
    assert_eq!(
        to_run(&plan(&sb, &["--set", "train_object.device=cpu"])),
        vec![]
    );
    let nested = plan(&sb, &["--set", "views.azimuths.count=6"]);
    assert_eq!(to_run(&nested), vec![]);
    let ring = plan(&sb, &["--set", "views.azimuths.count=7"]);
    assert!(
        to_run(&ring).iter().any(|(s, _)| s == "views"),
        "{}",
        ring.stdout
    );
    // Precedence: the file, then each --with in order, then each --set.
    sb.write("a.toml", "[stage.train_object]\nsteps = 70\n");
    sb.write("b.toml", "[stage.train_object]\nsteps = 50\n");
    assert_eq!(
        to_run(&plan(&sb, &["--with", "a.toml", "--with", "b.toml"])),
        vec![]
    );
    assert_eq!(
        to_run(&plan(
            &sb,
            &["--with", "a.toml", "--set", "train_object.steps=50"]
        )),
        vec![]
    );
    let overlay = sb.mvc(&["plan", OFFLINE, "--with", "b.toml", "--with", "a.toml"]);
    assert!(
        overlay
            .stdout
            .contains("parameter changed: steps (--with a.toml)"),
        "{}",
        overlay.stdout
    );
    // An overlay adds a stage only it has.
    sb.write(
        "extra.toml",
        "[stage.note]\nkind = \"command\"\ninputs = [\"objects\"]\ncmd = 'echo \"$MVC_ITEM\" > \"$MVC_OUT/id.txt\"'\noutputs = [\"id.txt\"]\n",
    );
    let added = plan(&sb, &["--with", "extra.toml"]);
    assert_eq!(to_run(&added), pairs(&[("note", 8)]), "{}", added.stdout);
}

/// `zip` pairs values one by one; `sweep` takes the product.
#[test]
fn zip_pairs_values_and_sweep_takes_their_product() {
    let sb = offline_sandbox();
    let zipped = sb.mvc(&[
        "plan",
        OFFLINE,
        "--set",
        "train_object.steps={ zip = [20, 30] }",
        "--set",
        "train_object.lr={ zip = [0.01, 0.001] }",
    ]);
    zipped.assert_ok();
    for name in [
        "train_object[steps=20,lr=0.01]",
        "train_object[steps=30,lr=0.001]",
        "eval_object[steps=20,lr=0.01]",
    ] {
        assert!(zipped.stdout.contains(name), "{name}: {}", zipped.stdout);
    }
    assert!(!zipped.stdout.contains("train_object[steps=20,lr=0.001]"));
    let product = sb.mvc(&[
        "plan",
        OFFLINE,
        "--set",
        "train_object.steps={ sweep = [20, 30] }",
        "--set",
        "train_object.lr={ sweep = [0.01, 0.001] }",
    ]);
    product.assert_ok();
    assert!(
        product.stdout.contains("train_object: 4 variants"),
        "{}",
        product.stdout
    );
    // Paired seeds of the split and of training: variants downstream agree with both.
    let seeds = sb.mvc(&[
        "plan",
        OFFLINE,
        "--set",
        "split.seed={ sweep = [1, 2] }",
        "--set",
        "train_object.seed={ sweep = [1, 2] }",
    ]);
    seeds.assert_ok();
    assert!(
        seeds
            .stdout
            .contains("eval_object[split.seed=2,train_object.seed=1]"),
        "{}",
        seeds.stdout
    );
    assert!(
        seeds.stdout.contains("eval_identity[seed=2]"),
        "{}",
        seeds.stdout
    );
}

/// Acceptance 2: the shipped experiments apply to full.toml, quick.toml and offline.toml
/// alike, and offline.toml runs with each; 5 seeds give mean ± std and verdicts.
#[test]
fn the_shipped_experiments_apply_to_every_pipeline_and_run_offline() {
    let sb = offline_sandbox();
    let experiments: Vec<String> = std::fs::read_dir(sb.path().join("experiments"))
        .unwrap()
        .map(|e| format!("experiments/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    assert!(experiments.len() >= 2, "{experiments:?}");
    for pipeline in ["pipelines/full.toml", "pipelines/quick.toml", OFFLINE] {
        for experiment in &experiments {
            let planned = sb.mvc(&["plan", pipeline, "--with", experiment]);
            planned.assert_ok();
            assert!(
                planned
                    .stdout
                    .contains("variants (the stages each sweep makes):"),
                "{pipeline} --with {experiment}: {}",
                planned.stdout
            );
        }
    }
    for experiment in &experiments {
        let ran = run(&sb, &["--with", experiment]);
        ran.assert_ok();
    }
    // Both together: three weights, five seeds each.
    let ran = run(
        &sb,
        &[
            "--with",
            "experiments/contrastive-weights.toml",
            "--with",
            "experiments/seeds.toml",
        ],
    );
    ran.assert_ok();
    let md = sb.read("runs/offline/results.md");
    assert!(md.contains("| eval_object | – | 5 | object |"), "{md}");
    assert!(
        md.contains("| eval_contrastive | 0.1 | 5 | contrastive |"),
        "{md}"
    );
    assert!(
        md.contains("mean over its seeds ± their standard deviation"),
        "{md}"
    );
    assert!(!md.contains("the spread is itself uncertain"), "{md}");
    let against = md
        .lines()
        .find(|l| l.starts_with("| eval_contrastive[weight_similarity=0.1] |"))
        .unwrap_or_else(|| panic!("{md}"));
    assert!(against.contains("| 5 vs 5 |"), "{against}");
    assert!(!against.contains("(one seed"), "{against}");
    assert!(
        ["(better)", "(worse)", "(within noise)"]
            .iter()
            .any(|v| against.contains(v)),
        "{against}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&sb.read("runs/offline/results.json")).unwrap();
    let variants = json["variants"].as_array().unwrap();
    let strong = variants
        .iter()
        .find(|v| v["name"] == "eval_contrastive[weight_similarity=1.0]")
        .unwrap();
    assert_eq!(strong["seeds"], 5);
    assert_eq!(strong["metrics"]["same_object"]["n"], 5);
    assert_eq!(strong["base"], "eval_contrastive[weight_similarity=0.5]");
    assert!(strong["against"]["same_object"]["verdict"].is_string());

    // Fewer than 5 seeds: the report says the spread is itself uncertain.
    let three = run(&sb, &["--set", "train_object.seed={ sweep = [42, 1, 2] }"]);
    three.assert_ok();
    let md = sb.read("runs/offline/results.md");
    assert!(
        md.contains("With 3 seeds the spread is itself uncertain"),
        "{md}"
    );
    assert!(md.contains("| eval_object | 3 | object |"), "{md}");
}

/// A failed variant does not stop the others: it is reported like any failed item, and the
/// report is written without it, saying why.
#[test]
fn a_failed_variant_is_left_out_of_the_report_with_its_reason() {
    let sb = offline_sandbox();
    let ran = run(
        &sb,
        &["--set", "train_object.views_per_step={ sweep = [6, 100] }"],
    );
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert_eq!(ran.count("train_object[views_per_step=6]", "ran"), 1);
    assert_eq!(ran.count("train_object[views_per_step=100]", "failed"), 1);
    assert_eq!(ran.count("report", "ran"), 1);
    assert!(ran.stderr.contains("results without"), "{}", ran.stderr);
    let md = sb.read("runs/offline/results.md");
    assert!(md.contains("## Evaluations left out"), "{md}");
    assert!(
        md.contains("| eval_object[views_per_step=100] |")
            && md.contains("train_object[views_per_step=100]"),
        "{md}"
    );
    assert!(md.contains("| eval_object | 6 | 1 | object |"), "{md}");
}

/// The page of a cache shows each run's command line and links the pipeline as it ran.
#[test]
fn the_page_shows_a_runs_command_line_and_its_merged_pipeline() {
    let sb = offline_sandbox();
    run(&sb, &["--set", SWEEP_2, "--set", "train_object.steps=40"]).assert_ok();
    let page = Background::start(
        &mut sb.command(&[
            "ui",
            OFFLINE,
            "--listen",
            "127.0.0.1:0",
            "--set",
            SWEEP_2,
            "--set",
            "train_object.steps=40",
        ]),
        true,
    );
    let url = page.url.clone().unwrap();
    let (status, runs) = raw_http(&url, "GET", "/runs");
    assert_eq!(status, 200, "{runs}");
    assert!(runs.contains("train_object.steps=40"), "{runs}");
    let link = runs
        .split("href=\"/log/")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no pipeline link: {runs}"));
    let (status, text) = raw_http(&url, "GET", &format!("/log/{link}"));
    assert_eq!(status, 200);
    assert!(text.contains("steps = 40"), "{text}");
    assert!(text.contains("sweep = [0.5, 0.1]"), "{text}");
    let (status, results) = raw_http(&url, "GET", "/results");
    assert_eq!(status, 200);
    assert!(results.contains("id=\"variants\""), "{results}");
    assert!(results.contains("weight_similarity"), "{results}");

    // report.html as a person opens it: the variants' table and the sweep's figure show.
    let Some(browser) =
        Browser::start("the_page_shows_a_runs_command_line_and_its_merged_pipeline")
    else {
        return;
    };
    let report = sb.path().join("runs/offline/report.html");
    browser.goto(&format!("file://{}", report.display()));
    let sweep = browser.wait_until(
        "the sweep's figure",
        "const img = [...document.images].find(i => i.alt.includes('against weight_similarity'));
         return img && img.complete && img.naturalWidth > 0 ? img.naturalWidth : null;",
        Duration::from_secs(30),
    );
    assert!(sweep.as_u64().unwrap() > 100);
    let rows = browser.eval("return document.querySelectorAll('#variants tr').length");
    assert_eq!(rows, 1 + 5, "a header and five variants");
    browser.eval("document.getElementById('variants').scrollIntoView()");
    browser.screenshot("report-variants-table");
    browser.eval("document.getElementById('sweeps').scrollIntoView()");
    browser.screenshot("report-variants-sweep");
    assert_eq!(browser.console_errors(), Vec::<String>::new());
}

/// Plans `extra` on offline.toml and returns the error line mvc printed (nothing may touch
/// the cache).
fn error_of(sb: &Sandbox, extra: &[&str]) -> String {
    let mut args = vec!["plan", OFFLINE];
    args.extend_from_slice(extra);
    let ran = sb.mvc(&args);
    assert_eq!(ran.code, Some(1), "expected a failure: {}", ran.stdout);
    assert!(
        !sb.cache().exists(),
        "a bad variant must be refused before the cache is touched"
    );
    ran.stderr.trim().to_string()
}

#[test]
fn bad_overrides_are_refused_at_the_override() {
    let sb = offline_sandbox();
    let cases: &[(&str, &[&str])] = &[
        (
            "trian_object.steps=5",
            &[
                "error: --set trian_object.steps=5: there is no stage `trian_object`; the closest is `train_object`",
            ],
        ),
        (
            "train_object.stepz=5",
            &[
                "error: --set train_object.stepz=5: unknown field `stepz`",
                "the closest valid name is `steps`",
            ],
        ),
        (
            "train_object.steps=\"many\"",
            &[
                "error: --set train_object.steps=\"many\": ",
                "expected an integer",
            ],
        ),
        (
            "train_object.steps=many",
            &[
                "error: --set train_object.steps=many: ",
                "expected an integer",
            ],
        ),
        (
            "train_object.kind=\"report\"",
            &["`kind` cannot be changed with --set", "--with FILE"],
        ),
        (
            "train_object.inputs=[\"split\"]",
            &["`inputs` cannot be changed with --set", "--with FILE"],
        ),
        ("train_object", &["write STAGE.KEY=VALUE"]),
        ("train_object.steps=", &["no value after `=`"]),
        ("train_object.steps=[1,", &["is not a TOML value"]),
        (
            "train_object.steps={ sweep = [] }",
            &["the sweep of `steps` is empty"],
        ),
        (
            "train_object.steps={ sweep = [1, \"a\"] }",
            &["mixes types: a number and a string"],
        ),
        ("train_object.steps={ sweep = [1, 1] }", &["has `1` twice"]),
        (
            "train_object.kind={ sweep = [\"train\"] }",
            &["`kind` cannot be changed with --set"],
        ),
        (
            "views.azimuths.count={ sweep = [6, 12] }",
            &["a sweep varies a stage's own parameter"],
        ),
        (
            "executor.cpu={ sweep = [1, 2] }",
            &["`executor.cpu`: a sweep varies a stage's own parameter"],
        ),
        (
            "train_contrastive.weight_similarity={ sweep = [0.5, 2.0] }",
            &[
                "error: --set train_contrastive.weight_similarity={ sweep = [0.5, 2.0] }: stage `train_contrastive[weight_similarity=2.0]`",
            ],
        ),
    ];
    for (set, says) in cases {
        let err = error_of(&sb, &["--set", set]);
        for s in *says {
            assert!(err.contains(s), "--set {set}: wanted {s:?} in\n{err}");
        }
    }
    // Two zipped lists of different lengths.
    let err = error_of(
        &sb,
        &[
            "--set",
            "train_object.steps={ zip = [1, 2] }",
            "--set",
            "train_object.lr={ zip = [0.1] }",
        ],
    );
    assert!(err.contains("zips 2 values and `lr` 1"), "{err}");
    // Without a pipeline file, --set means nothing.
    let ran = sb.mvc(&["status", "--set", "a.b=1"]);
    assert!(
        ran.stderr
            .contains("--with and --set change a pipeline: give its file"),
        "{}",
        ran.stderr
    );
}

/// 10,000 variants from one product are refused before anything runs, with the product's
/// size and the limit.
#[test]
fn a_product_over_the_limit_names_its_size_and_the_limit() {
    let sb = offline_sandbox();
    let hundred: Vec<String> = (1..=100).map(|i| i.to_string()).collect();
    let steps = format!("train_object.steps={{ sweep = [{}] }}", hundred.join(", "));
    let lrs: Vec<String> = (1..=100).map(|i| format!("{}.0e-4", i)).collect();
    let lr = format!("train_object.lr={{ sweep = [{}] }}", lrs.join(", "));
    let err = error_of(&sb, &["--set", &steps, "--set", &lr]);
    assert!(
        err.contains(
            "its sweeps (100 × 100) make 10000 variants; the most one stage may have is 1000"
        ),
        "{err}"
    );
    assert!(err.starts_with(&format!("error: {OFFLINE}:")), "{err}");
}

#[test]
fn bad_overlays_name_their_file_line_and_column() {
    let sb = offline_sandbox();
    sb.write("broken.toml", "[stage.train_object]\nsteps = \n");
    let err = error_of(&sb, &["--with", "broken.toml"]);
    assert!(err.starts_with("error: broken.toml:2:"), "{err}");
    sb.write(
        "kind.toml",
        "[stage.extra]\nkind = \"trian\"\ninputs = [\"split\"]\n",
    );
    let err = error_of(&sb, &["--with", "kind.toml"]);
    assert!(
        err.starts_with("error: kind.toml:2:8: unknown stage kind `trian`"),
        "{err}"
    );
    assert!(err.contains("did you mean `train`?"), "{err}");
    sb.write(
        "sweepkind.toml",
        "[stage.train_object]\nkind = { sweep = [\"train\", \"evaluate\"] }\n",
    );
    let err = error_of(&sb, &["--with", "sweepkind.toml"]);
    assert!(err.starts_with("error: sweepkind.toml:2:8:"), "{err}");
    assert!(err.contains("`kind` cannot be swept"), "{err}");
    sb.write("type.toml", "[stage.train_object]\nsteps = 1.5\n");
    let err = error_of(&sb, &["--with", "type.toml"]);
    assert!(err.starts_with("error: type.toml:2:9:"), "{err}");
    let err = error_of(&sb, &["--with", "missing.toml"]);
    assert!(
        err.contains("missing.toml: cannot read the overlay file (--with)"),
        "{err}"
    );
    // A sweep in the pipeline file itself is named at its line.
    let text = sb.read(OFFLINE).replace(
        "steps = 50\nhidden = 32\ndevice = \"cpu\"\n\n[stage.train_contrastive]",
        "steps = { sweep = [] }\nhidden = 32\ndevice = \"cpu\"\n\n[stage.train_contrastive]",
    );
    sb.write("swept.toml", &text);
    let ran = sb.mvc(&["plan", "swept.toml"]);
    assert!(
        ran.stderr.starts_with("error: swept.toml:"),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr.contains("the sweep of `steps` is empty"),
        "{}",
        ran.stderr
    );
}
