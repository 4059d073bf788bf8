//! The presence filter (issue 30): a plan or a run asks the index only about what it may
//! hold. A "no" must be exact: a result the index holds (from another pipeline, from a run
//! that was killed, from before the filter existed) is never planned to run again.

use crate::common::{Sandbox, signal};
use serde_json::Value;
use std::time::{Duration, Instant};

/// `greeting` is a parameter of every object's key; the item `slow` waits, after saying it
/// started, long enough to be killed.
fn pipeline(sb: &Sandbox, greeting: &str) -> String {
    let mark = sb.path().join("slow-started");
    format!(
        r#"[pipeline]
name = "presence"
cache = "cache"

[stage.objects]
kind = "command"
items_file = "ids.txt"
params = {{ greeting = "{greeting}", mark = "{mark}" }}
cmd = 'if [ "$MVC_ITEM" = slow ]; then touch "$MVC_PARAM_MARK"; sleep 60; fi; echo "$MVC_PARAM_GREETING $MVC_ITEM" > "$MVC_OUT/model.glb"'
outputs = ["model.glb"]

[stage.copy]
kind = "command"
inputs = ["objects"]
cmd = 'cp "$MVC_IN_OBJECTS/model.glb" "$MVC_OUT/copy.glb"'
outputs = ["copy.glb"]
"#,
        mark = mark.display()
    )
}

fn plan(sb: &Sandbox, file: &str) -> (Value, String) {
    let p = sb.mvc(&["-vv", "plan", file, "--full", "--json"]);
    (p.assert_ok().json(), p.stderr.clone())
}

fn count(plan: &Value, stage: &str, field: &str) -> u64 {
    plan["stages"][stage][field]
        .as_u64()
        .unwrap_or_else(|| panic!("{stage}.{field} in {plan}"))
}

/// How many lookups the filter answered without the index, as `-vv` says.
fn answered(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.contains("the presence filter answered"))
        .unwrap_or_else(|| panic!("no count of lookups answered:\n{stderr}"));
    line.split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}

#[test]
fn new_items_are_planned_without_asking_the_index_and_old_results_are_still_found() {
    let sb = Sandbox::new();
    sb.write("p.toml", &pipeline(&sb, "hello"));
    sb.write("p2.toml", &pipeline(&sb, "hi"));
    sb.write("ids.txt", "a\nb\nc\n");
    sb.mvc(&["run", "p.toml", "-q"]).assert_ok();
    assert!(
        std::fs::read_dir(sb.cache().join("presence"))
            .unwrap()
            .count()
            == 1,
        "a run leaves one presence filter"
    );

    // Two new objects: their two stages' lookups (result and failure of each object, the
    // latest entry of each new task for its reason) are answered by the filter.
    sb.write("ids.txt", "a\nb\nc\nd\ne\n");
    let (json, stderr) = plan(&sb, "p.toml");
    assert!(stderr.contains("the presence filter holds"), "{stderr}");
    assert_eq!(count(&json, "objects", "cached"), 3, "{json}");
    assert_eq!(count(&json, "objects", "to_run"), 2, "{json}");
    assert_eq!(json["stages"]["copy"]["reasons"]["new item"], 2, "{json}");
    assert!(answered(&stderr) >= 8, "{stderr}");
    // The memos answered for a, b and c, the filter for d and e: the index was not opened.
    assert!(!stderr.contains("opening the main index"), "{stderr}");

    // Another pipeline's results, then this one's again: the index still holds them (the
    // plan memos now hold the other's), and the filter must not hide them.
    sb.mvc(&["run", "p2.toml", "-q"]).assert_ok();
    let (json, stderr) = plan(&sb, "p.toml");
    assert!(stderr.contains("the presence filter holds"), "{stderr}");
    // Those results are not in the memos: the filter says "maybe", and the index answers.
    assert!(stderr.contains("opening the main index"), "{stderr}");
    assert_eq!(count(&json, "objects", "cached"), 3, "{json}");
    assert_eq!(count(&json, "objects", "to_run"), 2, "{json}");
    assert_eq!(count(&json, "copy", "cached"), 3, "{json}");
    let run = sb.mvc(&["run", "p.toml", "--json"]);
    assert_eq!(run.count("objects", "cached"), 3, "{}", run.stdout);
    assert_eq!(run.count("objects", "ran"), 2, "{}", run.stdout);
}

#[test]
fn a_filter_saved_before_a_killed_run_is_not_trusted_and_the_next_run_makes_it_again() {
    let sb = Sandbox::new();
    sb.write("p.toml", &pipeline(&sb, "hello"));
    sb.write("ids.txt", "z\n");
    sb.mvc(&["run", "p.toml", "-q"]).assert_ok();

    // The filter saved now lacks a and b. A run records them, then is killed while `slow`
    // waits: it saves no filter, and the one on disk must not answer for a and b.
    sb.write("ids.txt", "z\na\nb\nslow\n");
    let mut child = sb.spawn(&["run", "p.toml", "-q"]);
    let started = Instant::now();
    while !sb.path().join("slow-started").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "`slow` never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // a and b ran beside it, or before it; give their copies time to be recorded too.
    std::thread::sleep(Duration::from_millis(1500));
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();

    let (json, stderr) = plan(&sb, "p.toml");
    assert_eq!(count(&json, "objects", "cached"), 3, "{json}\n{stderr}");
    assert_eq!(count(&json, "objects", "to_run"), 1, "{json}");
    assert_eq!(count(&json, "copy", "cached"), 3, "{json}\n{stderr}");
    assert!(
        !stderr.contains("the presence filter holds"),
        "a filter from before the kill was used:\n{stderr}"
    );
    assert_eq!(answered(&stderr), 0, "{stderr}");

    // The next run makes it again from the index: then it is used, and says the same.
    sb.write("ids.txt", "z\na\nb\n");
    let run = sb.mvc(&["-vv", "run", "p.toml", "--json"]);
    assert_eq!(run.count("objects", "ran"), 0, "{}", run.stdout);
    assert!(
        run.stderr.contains("the presence filter was rebuilt"),
        "{}",
        run.stderr
    );
    sb.write("ids.txt", "z\na\nb\nc\n");
    let (json, stderr) = plan(&sb, "p.toml");
    assert!(stderr.contains("the presence filter holds"), "{stderr}");
    assert_eq!(count(&json, "objects", "cached"), 3, "{json}");
    assert_eq!(count(&json, "copy", "to_run"), 1, "{json}");
    assert!(answered(&stderr) >= 4, "{stderr}");
}

#[test]
fn a_damaged_or_missing_presence_filter_is_named_and_costs_only_lookups() {
    let sb = Sandbox::new();
    sb.write("p.toml", &pipeline(&sb, "hello"));
    sb.write("ids.txt", "a\nb\n");
    sb.mvc(&["run", "p.toml", "-q"]).assert_ok();
    let dir = sb.cache().join("presence");
    let only_file = || {
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        files[0].clone()
    };

    // A new item: its lookups are the filter's to answer (the memos answer the others).
    sb.write("ids.txt", "a\nb\nc\n");

    // Gone.
    let file = only_file();
    std::fs::remove_file(&file).unwrap();
    let (json, stderr) = plan(&sb, "p.toml");
    assert!(
        stderr.contains(&format!("the presence filter {}", file.display()))
            && stderr.contains("cannot be read")
            && stderr.contains("the next run makes it again"),
        "{stderr}"
    );
    assert_eq!(count(&json, "objects", "cached"), 2, "{json}");
    assert_eq!(count(&json, "copy", "cached"), 2, "{json}");
    assert_eq!(answered(&stderr), 0, "{stderr}");

    // The next run makes it again (and runs c; d is the next new item).
    sb.mvc(&["run", "p.toml", "-q"]).assert_ok();
    sb.write("ids.txt", "a\nb\nc\nd\n");
    let (_, stderr) = plan(&sb, "p.toml");
    assert!(stderr.contains("the presence filter holds"), "{stderr}");

    // Flipped bits would turn "maybe" into "no": a file whose bytes changed is not used.
    let file = only_file();
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let (json, stderr) = plan(&sb, "p.toml");
    assert!(
        stderr.contains(&format!("the presence filter {}", file.display()))
            && stderr.contains("is damaged"),
        "{stderr}"
    );
    assert_eq!(count(&json, "objects", "cached"), 3, "{json}");
    assert_eq!(count(&json, "copy", "cached"), 3, "{json}");

    sb.mvc(&["run", "p.toml", "-q"]).assert_ok();
    sb.write("ids.txt", "a\nb\nc\nd\ne\n");
    let (_, stderr) = plan(&sb, "p.toml");
    assert!(stderr.contains("the presence filter holds"), "{stderr}");
}

#[test]
fn gc_makes_the_filter_again_from_what_it_kept() {
    let sb = Sandbox::new();
    sb.write("p.toml", &pipeline(&sb, "hello"));
    sb.write("p2.toml", &pipeline(&sb, "hi"));
    sb.write("ids.txt", "a\nb\nc\n");
    sb.mvc(&["run", "p.toml", "-q"]).assert_ok();
    sb.mvc(&["run", "p2.toml", "-q"]).assert_ok();
    // The last run's results (3 objects, 3 copies) stay, in records of their own: each
    // one's key and latest entry (12), the 6 records and the 2 stages' columns (8). The
    // first run's 6 results, kept as entries of their own when the second run's took their
    // place in the records, go.
    let gc = sb.mvc(&["-vv", "gc", "--keep-runs", "1"]);
    gc.assert_ok();
    assert!(
        gc.stderr
            .contains("the presence filter was rebuilt: 20 entries"),
        "{}",
        gc.stderr
    );
    // The first pipeline's results are gone, and the filter says so without the index: its
    // result and failure lookups are answered (only the reasons read the latest entries).
    let (json, stderr) = plan(&sb, "p.toml");
    assert_eq!(count(&json, "objects", "to_run"), 3, "{json}");
    assert!(answered(&stderr) >= 6, "{stderr}");
}
