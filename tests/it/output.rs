//! One output path for every command: `--json` prints one line of JSON on stdout built from
//! the same value as the text, `--quiet` prints no result, and errors stay on stderr whatever
//! the format. Each command is run for real on a small command pipeline.

use crate::common::{Background, Sandbox};
use std::time::Duration;

fn pipeline(scale: u32) -> String {
    format!(
        r#"
[stage.gen]
kind = "command"
items = [{{ id = "a", params = {{ v = 1 }} }}, {{ id = "b", params = {{ v = 2 }} }}]
params = {{ scale = {scale} }}
cmd = 'echo $((MVC_PARAM_V * MVC_PARAM_SCALE)) > "$MVC_OUT/v.txt"'

[stage.total]
kind = "command"
inputs = ["gen"]
per_item = false
cmd = 'cat "$MVC_IN_GEN"/*/v.txt > "$MVC_OUT/all.txt"'
"#
    )
}

/// The JSON of a command that must succeed and print exactly one line on stdout.
fn json_of(sb: &Sandbox, args: &[&str]) -> serde_json::Value {
    let ran = sb.mvc(args);
    ran.assert_ok();
    assert_eq!(
        ran.stdout.lines().count(),
        1,
        "`mvc {}` printed more than one line:\n{}",
        args.join(" "),
        ran.stdout
    );
    ran.json()
}

#[test]
fn every_command_prints_json_from_the_value_its_text_shows() {
    let sb = Sandbox::new();
    sb.write("p.toml", &pipeline(10));

    // run: the summary on stderr, the JSON on stdout.
    let ran = sb.mvc(&["run", "p.toml", "--json"]);
    ran.assert_ok();
    assert_eq!(ran.json()["stages"]["gen"]["ran"], 2);
    assert!(ran.stderr.contains("ok in"), "{}", ran.stderr);

    // plan: the same counts as its text.
    let plan = json_of(&sb, &["plan", "p.toml", "--json"]);
    assert_eq!(plan["stages"]["gen"]["cached"], 2);
    let text = sb.mvc(&["plan", "p.toml"]);
    assert!(text.stdout.contains("nothing to run"), "{}", text.stdout);

    // why, after a parameter changed: the fields that differ, as text and as JSON.
    sb.write("p.toml", &pipeline(20));
    let why = json_of(&sb, &["why", "p.toml", "gen", "a", "--json"]);
    assert_eq!(why["task"]["stage"], "gen");
    assert_eq!(why["task"]["kind"], "command");
    let changes = why["history"]["changes"].as_array().expect("changes");
    assert!(
        changes
            .iter()
            .any(|c| c["field"] == "params.scale" && c["old"] == "10" && c["new"] == "20"),
        "{why}"
    );
    let text = sb.mvc(&["why", "p.toml", "gen", "a"]);
    text.assert_ok();
    assert!(
        text.stdout.contains("params.scale: 10 → 20"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout
            .contains(why["history"]["note"].as_str().unwrap()),
        "{}",
        text.stdout
    );
    sb.write("p.toml", &pipeline(10));

    // why KEY: the result's outputs.
    let key = why["history"]["compared_with"]
        .as_str()
        .expect("a key")
        .to_string();
    let by_key = json_of(&sb, &["why", &key[..16], "--json"]);
    assert_eq!(by_key["key"], key.as_str());
    assert_eq!(by_key["outputs"][0]["name"], "v.txt");
    let text = sb.mvc(&["why", &key[..16]]);
    assert!(text.stdout.contains("output v.txt ("), "{}", text.stdout);

    // status, with the stages of a pipeline and a verification.
    let status = json_of(&sb, &["status", "p.toml", "--verify", "--json"]);
    assert_eq!(status["cache"]["results"], 3);
    assert_eq!(status["stages"]["total"]["cached"], 1);
    assert_eq!(status["verify"]["clean"], true);

    // export: what it wrote, where.
    let export = json_of(&sb, &["export", "p.toml", "gen", "out", "--json"]);
    assert_eq!(export["stage"], "gen");
    assert_eq!(export["items"], 2);
    assert_eq!(export["files"], 2);
    assert_eq!(sb.read("out/b/v.txt").trim(), "20");

    // gc --dry-run: what it would keep, per stage.
    let gc = json_of(&sb, &["gc", "p.toml", "--dry-run", "--json"]);
    assert_eq!(gc["dry_run"], true);
    assert_eq!(gc["kept"]["gen"]["tasks"], 2);

    // embed, with the test model: what it wrote.
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/clip-tiny");
    let embed = json_of(
        &sb,
        &[
            "embed",
            "--model",
            model.to_str().unwrap(),
            "--out",
            "e.safetensors",
            "--text",
            "a cup",
            "--text",
            "a plate",
            "--json",
        ],
    );
    assert_eq!(embed["texts"], 2);
    assert_eq!(embed["images"], 0);
    assert!(embed["dim"].as_u64().unwrap() > 0, "{embed}");
    assert!(sb.path().join("e.safetensors").exists());
}

#[test]
fn quiet_prints_no_result_and_the_exit_status_still_tells() {
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        r#"
[stage.gen]
kind = "command"
items = ["good", "bad"]
cmd = 'test "$MVC_ITEM" = good && echo ok > "$MVC_OUT/v.txt"'
"#,
    );
    let ran = sb.mvc(&["run", "p.toml", "-q"]);
    assert_eq!(
        ran.code,
        Some(1),
        "a failed item fails the run: {}",
        ran.stderr
    );
    assert_eq!(ran.stdout, "", "--quiet prints no summary");
    let ran = sb.mvc(&["plan", "p.toml", "--quiet"]);
    ran.assert_ok();
    assert_eq!(ran.stdout, "");
    let ran = sb.mvc(&["status", "--quiet"]);
    ran.assert_ok();
    assert_eq!(ran.stdout, "");
}

/// The message of a command's error with `--json`: its one line of JSON on stdout (issue
/// 27: it used to print nothing there; the message on stderr is unchanged).
fn json_error(ran: &crate::common::Ran) -> String {
    ran.json_error()["message"].as_str().unwrap().to_string()
}

#[test]
fn errors_go_to_stderr_whatever_the_format_and_with_json_also_as_json() {
    let sb = Sandbox::new();
    sb.write("p.toml", &pipeline(1));
    // Before anything opened a cache (the others create one).
    let ran = sb.mvc(&["status", "--json"]);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(json_error(&ran).contains("there is no cache at cache yet"));
    assert!(
        ran.stderr.contains("there is no cache at cache yet"),
        "{}",
        ran.stderr
    );
    for args in [
        &["why", "p.toml", "nosuch", "a", "--json"][..],
        &["export", "p.toml", "nosuch", "out", "--json"][..],
        &["plan", "missing.toml", "--json"][..],
    ] {
        let ran = sb.mvc(args);
        assert_eq!(
            ran.code,
            Some(1),
            "`mvc {}`: {}",
            args.join(" "),
            ran.stderr
        );
        assert!(ran.stderr.starts_with("error: "), "{}", ran.stderr);
        let message = json_error(&ran);
        assert!(ran.stderr.contains(&message), "{message} / {}", ran.stderr);
    }
    let ran = sb.mvc(&["why", "p.toml", "nosuch", "a", "--json"]);
    assert!(
        ran.stderr
            .contains("no stage `nosuch` in this pipeline (stages: gen, total)"),
        "{}",
        ran.stderr
    );
}

#[test]
fn a_worker_and_a_coordinator_status_print_json() {
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        r#"
[stage.gen]
kind = "command"
items = ["a", "b", "c"]
cmd = 'sleep 0.3; echo $MVC_ITEM > "$MVC_OUT/v.txt"'
"#,
    );
    let mut coordinator = Background::start(
        &mut sb.command(&[
            "run",
            "p.toml",
            "--json",
            "--listen",
            "127.0.0.1:0",
            "--no-local",
        ]),
        true,
    );
    let url = coordinator.url.clone().unwrap();
    let status = json_of(&sb, &["status", "--connect", &url, "--json"]);
    assert!(status["workers"].as_array().is_some(), "{status}");
    assert!(status["queued"].as_u64().is_some(), "{status}");
    let worker_cache = sb.path().join("worker-cache");
    let worker = sb.mvc(&[
        "--cache",
        worker_cache.to_str().unwrap(),
        "worker",
        "--connect",
        &url,
        "--slots",
        "cpu=2",
        "--exit-when-idle",
        "1",
        "--json",
    ]);
    worker.assert_ok();
    let ended = worker.json();
    assert_eq!(ended["units"], 3, "{ended}");
    assert!(ended["why"].is_string(), "{ended}");
    let run = coordinator.finish(Duration::from_secs(60));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.json()["stages"]["gen"]["ran"], 3);
}
