//! Stage summaries (issue 30): after a run, a plan of a pipeline in which nothing changed is
//! decided per stage, without making a task. It must say what the full plan says, and step
//! aside for the full plan whenever anything a task's key is made from changed.

use crate::common::{Ran, Sandbox};
use serde_json::Value;

/// Three objects, one of which fails for good; a per-item stage after them; a stage that
/// reads them all; a script given as a file (its digest is a shared parameter).
const PIPELINE: &str = r#"[pipeline]
name = "summaries"
cache = "cache"

[stage.objects]
kind = "command"
items_file = "ids.txt"
cmd = 'if [ "$MVC_ITEM" = broken ]; then echo "no mesh" >&2; exit 1; fi; echo "$MVC_ITEM" > "$MVC_OUT/model.glb"; head -c 6000 /dev/zero | tr "\0" "$MVC_ITEM" > "$MVC_OUT/big.bin"'
outputs = ["model.glb", "big.bin"]

[stage.copy]
kind = "command"
inputs = ["objects"]
per_item = true
cmd = 'sh "$MVC_FILE_SCRIPT" "$MVC_IN_OBJECTS" > "$MVC_OUT/listing"'
files = { script = "list.sh" }
outputs = ["listing"]

[stage.all]
kind = "command"
inputs = ["copy"]
per_item = false
cmd = 'ls -R "$MVC_IN_COPY" | wc -l > "$MVC_OUT/count"'
outputs = ["count"]
"#;

fn sandbox() -> Sandbox {
    let sb = Sandbox::new();
    sb.write("p.toml", PIPELINE);
    sb.write("ids.txt", "a\nb\nbroken\n");
    sb.write("list.sh", "ls -R \"$1\"\n");
    sb
}

fn plan(sb: &Sandbox, more: &[&str]) -> Value {
    let mut args = vec!["plan", "p.toml", "--json"];
    args.extend_from_slice(more);
    sb.mvc(&args).assert_ok().json()
}

fn from_summaries(plan: &Value) -> bool {
    plan["from_summaries"] == Value::Bool(true)
}

/// A run to its end, which leaves `broken` failed and everything else done.
fn run(sb: &Sandbox) -> Ran {
    sb.run_with_one_failed("p.toml", "objects")
}

#[test]
fn a_plan_after_a_run_is_decided_by_the_summaries_and_says_what_the_full_plan_says() {
    let sb = sandbox();
    // Nothing recorded yet: the full plan.
    assert!(!from_summaries(&plan(&sb, &[])));
    run(&sb);

    let quick = plan(&sb, &[]);
    assert!(from_summaries(&quick), "{quick}");
    let mut full = plan(&sb, &["--full"]);
    assert!(!from_summaries(&full), "--full keys every task: {full}");
    full.as_object_mut()
        .unwrap()
        .insert("from_summaries".into(), Value::Bool(true));
    assert_eq!(quick, full);
    assert_eq!(quick["stages"]["objects"]["cached"], 2, "{quick}");
    assert_eq!(quick["stages"]["objects"]["failed_skipped"], 1, "{quick}");
    assert_eq!(quick["stages"]["copy"]["failed_skipped"], 1, "{quick}");
    assert_eq!(quick["stages"]["all"]["cached"], 1, "{quick}");

    // The text is the same too.
    let text = |more: &[&str]| {
        let mut args = vec!["plan", "p.toml"];
        args.extend_from_slice(more);
        sb.mvc(&args).assert_ok().stdout.clone()
    };
    assert_eq!(text(&[]), text(&["--full"]));

    // A run with nothing to do keeps them: the next plan is decided by them again.
    let again = run(&sb);
    assert_eq!(again.count("objects", "ran"), 0, "{}", again.stdout);
    assert!(from_summaries(&plan(&sb, &[])));
}

#[test]
fn an_edit_to_anything_a_key_is_made_from_plans_every_task_and_says_why() {
    let sb = sandbox();
    run(&sb);
    assert!(from_summaries(&plan(&sb, &[])));

    // The items file: one new object.
    sb.write("ids.txt", "a\nb\nbroken\nc\n");
    let p = plan(&sb, &[]);
    assert!(!from_summaries(&p), "{p}");
    assert_eq!(p["stages"]["objects"]["to_run"], 1, "{p}");
    assert_eq!(p["stages"]["objects"]["reasons"]["new item"], 1, "{p}");
    sb.write("ids.txt", "a\nb\nbroken\n");
    assert!(from_summaries(&plan(&sb, &[])), "the old items file again");

    // A file a stage reads (a shared parameter's digest).
    sb.write("list.sh", "ls -lR \"$1\"\n");
    let p = plan(&sb, &[]);
    assert!(!from_summaries(&p), "{p}");
    assert_eq!(p["stages"]["copy"]["to_run"], 2, "{p}");
    sb.write("list.sh", "ls -R \"$1\"\n");
    assert!(from_summaries(&plan(&sb, &[])));

    // A parameter set on the command line.
    let p = plan(
        &sb,
        &[
            "--set",
            "all.cmd='ls \"$MVC_IN_COPY\" > \"$MVC_OUT/count\"'",
        ],
    );
    assert!(!from_summaries(&p), "{p}");
    assert_eq!(p["stages"]["all"]["to_run"], 1, "{p}");
    assert_eq!(
        p["stages"]["all"]["reasons"]["parameter changed: cmd (--set)"], 1,
        "{p}"
    );
    assert_eq!(p["stages"]["objects"]["cached"], 2, "{p}");

    // Failures to retry.
    let p = plan(&sb, &["--retry-failed"]);
    assert!(!from_summaries(&p), "{p}");
    assert_eq!(p["stages"]["objects"]["to_run"], 1, "{p}");
    assert!(from_summaries(&plan(&sb, &[])));
}

#[test]
fn a_missing_output_blob_or_a_gc_or_a_lost_items_file_is_never_planned_from_a_summary() {
    let sb = sandbox();
    run(&sb);
    assert!(from_summaries(&plan(&sb, &[])));

    // An object's 6,000-byte output is a blob (the rest are inline in the index).
    let blob = |byte: u8| {
        let digest = blake3::hash(&[byte; 6000]).to_hex().to_string();
        sb.cache()
            .join("blobs")
            .join(&digest[..2])
            .join(&digest[2..])
    };
    std::fs::remove_file(blob(b'a')).expect("object a's blob");
    let p = plan(&sb, &[]);
    assert!(!from_summaries(&p), "{p}");
    assert_eq!(
        p["stages"]["objects"]["reasons"]["blob missing or corrupt"], 1,
        "{p}"
    );
    run(&sb);
    assert!(blob(b'a').exists(), "the run made it again");
    assert!(from_summaries(&plan(&sb, &[])));

    // A blob damaged without changing its size passes the summary's check (a size, as a
    // memo hit's). `mvc export` verifies it, removes it and forgets the result: the next
    // plan is the full one.
    std::fs::write(blob(b'a'), [b'x'; 6000]).unwrap();
    let export = sb.mvc(&["export", "p.toml", "objects", "out"]);
    assert_ne!(export.code, Some(0), "{}", export.stdout);
    assert!(
        export.stderr.contains("run the pipeline again"),
        "{}",
        export.stderr
    );
    let p = plan(&sb, &[]);
    assert!(!from_summaries(&p), "{p}");
    assert_eq!(p["stages"]["objects"]["to_run"], 1, "{p}");
    run(&sb);
    assert!(from_summaries(&plan(&sb, &[])));

    // gc deletes what the runs did not reach: the summaries go first.
    sb.mvc(&["gc"]).assert_ok();
    let p = plan(&sb, &[]);
    assert!(!from_summaries(&p), "{p}");
    assert_eq!(p["stages"]["objects"]["cached"], 2, "{p}");

    // The items file gone: the plan says so, naming it, instead of calling the stage cached.
    run(&sb);
    assert!(from_summaries(&plan(&sb, &[])));
    std::fs::remove_file(sb.path().join("ids.txt")).unwrap();
    let failed = sb.mvc(&["plan", "p.toml"]);
    assert_ne!(failed.code, Some(0), "{}", failed.stdout);
    assert!(
        failed.stderr.contains("items_file ids.txt"),
        "the error names the file: {}",
        failed.stderr
    );
}

/// A plan decided by the summaries does not open the main index (whose page table grows with
/// the tasks), unless its files changed since the last process that had it open closed it.
#[test]
fn the_main_index_is_opened_only_when_its_files_changed_since_it_was_closed() {
    let sb = sandbox();
    run(&sb);
    let quiet = sb.mvc(&["-vv", "plan", "p.toml", "--json"]);
    assert!(
        from_summaries(&quiet.assert_ok().json()),
        "{}",
        quiet.stdout
    );
    assert!(
        !quiet.stderr.contains("opening the main index"),
        "{}",
        quiet.stderr
    );
    // --full opens it; closing it again stamps it, so the next plan still need not.
    sb.mvc(&["plan", "p.toml", "--full"]).assert_ok();
    let quiet = sb.mvc(&["-vv", "plan", "p.toml", "--json"]);
    assert!(
        !quiet.stderr.contains("opening the main index"),
        "{}",
        quiet.stderr
    );

    // The index gone: it is opened (and made again from the run's journal), and a summary
    // made from the index it replaces is not trusted.
    std::fs::remove_dir_all(sb.cache().join("index")).unwrap();
    let opened = sb.mvc(&["-vv", "plan", "p.toml", "--json"]);
    let json = opened.assert_ok().json();
    assert!(
        opened.stderr.contains("opening the main index"),
        "{}",
        opened.stderr
    );
    assert!(
        opened.stderr.contains("had come back at an earlier state"),
        "{}",
        opened.stderr
    );
    assert!(!from_summaries(&json), "{json}");
    assert_eq!(json["stages"]["objects"]["cached"], 2, "{json}");
    assert_eq!(json["stages"]["all"]["cached"], 1, "{json}");
}

/// The side index holds only what can be made again: damaged, it is set aside and the plan
/// is the full one.
#[test]
fn a_damaged_side_index_costs_only_the_full_plan() {
    let sb = sandbox();
    run(&sb);
    assert!(from_summaries(&plan(&sb, &[])));
    let side = sb.cache().join("side");
    for entry in std::fs::read_dir(&side).unwrap().flatten() {
        if entry.file_type().unwrap().is_file() {
            std::fs::write(entry.path(), vec![0xa5u8; 8192]).unwrap();
        }
    }
    let p = sb.mvc(&["plan", "p.toml", "--json"]);
    let json = p.assert_ok().json();
    assert!(!from_summaries(&json), "{json}");
    assert_eq!(json["stages"]["objects"]["cached"], 2, "{json}");
    assert_eq!(json["stages"]["all"]["cached"], 1, "{json}");
    assert!(
        p.stderr.contains("the side index") && p.stderr.contains("started afresh"),
        "{}",
        p.stderr
    );
    // The next run records them again.
    run(&sb);
    assert!(from_summaries(&plan(&sb, &[])));
}
