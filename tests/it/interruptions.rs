//! Acceptance 4: `mvc run` killed with SIGKILL at different moments; every following run
//! completes, never reruns a task that had completed (was recorded in the index), and the
//! index and blobs verify clean. Also Ctrl-C: it lets running tasks finish and loses nothing.

use crate::common::{Sandbox, signal};
use libc::{SIGINT, SIGKILL};
use mvc::store::Store;
use mvc::store::index::Tree;
use mvc::store::records::{TaskResult, decode};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const ITEMS: usize = 240;

fn pipeline(log: &str) -> String {
    format!(
        r#"[executor]
cpu = 4

[stage.gen]
kind = "command"
items_file = "items.txt"
params = {{ log = "{log}" }}
cmd = 'echo "gen:$MVC_ITEM" >> "$MVC_PARAM_LOG"; sleep 0.05; echo "$MVC_ITEM" > "$MVC_OUT/v.txt"'

[stage.sq]
kind = "command"
inputs = ["gen"]
params = {{ log = "{log}" }}
cmd = 'echo "sq:$MVC_ITEM" >> "$MVC_PARAM_LOG"; cat "$MVC_IN_GEN/v.txt" "$MVC_IN_GEN/v.txt" > "$MVC_OUT/w.txt"'

[stage.all]
kind = "command"
inputs = ["sq"]
per_item = false
params = {{ log = "{log}" }}
cmd = 'echo "all:all" >> "$MVC_PARAM_LOG"; cat "$MVC_IN_SQ"/*/w.txt | wc -l > "$MVC_OUT/n.txt"'
"#
    )
}

/// `stage:item` of every result recorded in the index (read with the library, as the next
/// run will see it).
fn committed(sb: &Sandbox) -> BTreeSet<String> {
    if !sb.cache().exists() {
        return BTreeSet::new();
    }
    let store = Store::open(&sb.cache()).expect("the cache opens after a kill");
    // Results of their own, and those kept in records (an item's task is one).
    let mut committed: BTreeSet<String> = store
        .index()
        .scan(Tree::Tasks, b"")
        .map(|e| {
            let (_, v) = e.unwrap();
            let r: TaskResult = decode(&v, "task result").unwrap();
            format!("{}:{}", r.stage, r.item)
        })
        .collect();
    store
        .each_view(|_, v| {
            committed.insert(format!("{}:{}", v.result.stage, v.result.item));
            true
        })
        .unwrap();
    committed
}

fn ran_counts(sb: &Sandbox) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in std::fs::read_to_string(sb.path().join("ran.log"))
        .unwrap_or_default()
        .lines()
    {
        *counts.entry(line.to_string()).or_default() += 1;
    }
    counts
}

/// Waits until `path` has at least `n` lines (tasks announce themselves there).
fn wait_for_lines(path: &std::path::Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .count()
        < n
    {
        assert!(
            Instant::now() < deadline,
            "fewer than {n} tasks started in 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_no_rerun(
    before: &BTreeSet<String>,
    old: &BTreeMap<String, usize>,
    new: &BTreeMap<String, usize>,
    when: &str,
) {
    for label in before {
        assert_eq!(
            old.get(label),
            new.get(label),
            "{label} had completed before the {when} run, which ran it again"
        );
    }
}

#[test]
fn sigkill_at_any_moment_loses_no_completed_task() {
    let sb = Sandbox::new();
    let log = sb.path().join("ran.log");
    sb.write("p.toml", &pipeline(&log.display().to_string()));
    let items: Vec<String> = (0..ITEMS).map(|i| format!("obj{i:03}")).collect();
    sb.write("items.txt", &(items.join("\n") + "\n"));

    // Kill at varied moments until a run gets to finish on its own.
    let delays_ms = [300u64, 800, 550, 1100, 650, 950, 1300, 450];
    let mut kills_with_progress = 0;
    for round in 0..24 {
        let delay_ms = delays_ms[round % delays_ms.len()];
        let before = committed(&sb);
        let old = ran_counts(&sb);
        let mut child = sb.spawn(&["run", "p.toml", "--json"]);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let finished = child.try_wait().unwrap().is_some();
        signal(&child, SIGKILL);
        child.wait().unwrap();
        // Children die with mvc; give the kernel a moment to reap them.
        std::thread::sleep(Duration::from_millis(100));
        assert_no_rerun(
            &before,
            &old,
            &ran_counts(&sb),
            &format!("killed (round {round})"),
        );
        let after = committed(&sb);
        assert!(after.is_superset(&before), "a kill lost recorded results");
        eprintln!(
            "round {round}: killed after {delay_ms} ms{}, {} results recorded",
            if finished { " (already finished)" } else { "" },
            after.len()
        );
        if finished {
            break;
        }
        if after.len() > before.len() {
            kills_with_progress += 1;
        }
    }
    assert!(
        kills_with_progress >= 4,
        "only {kills_with_progress} kills landed mid-run after some progress"
    );

    let before = committed(&sb);
    let old = ran_counts(&sb);
    let last = sb.mvc(&["run", "p.toml", "--json"]);
    last.assert_ok();
    assert_no_rerun(&before, &old, &ran_counts(&sb), "final");
    assert_eq!(
        last.count("gen", "ran") + before.iter().filter(|l| l.starts_with("gen:")).count() as u64,
        ITEMS as u64
    );
    assert_eq!(committed(&sb).len(), 2 * ITEMS + 1);

    sb.mvc(&["export", "p.toml", "all", "out"]).assert_ok();
    assert_eq!(sb.read("out/all/n.txt").trim(), (2 * ITEMS).to_string());
    let verify = sb.mvc(&["status", "--verify"]);
    verify.assert_ok();
    assert!(verify.stdout.contains("clean"), "{}", verify.stdout);
    let again = sb.mvc(&["run", "p.toml", "--json"]);
    assert_eq!(
        again.count("gen", "ran") + again.count("sq", "ran") + again.count("all", "ran"),
        0
    );
}

#[test]
fn ctrl_c_lets_running_tasks_finish_and_loses_nothing() {
    let sb = Sandbox::new();
    let log = sb.path().join("ran.log");
    let items: Vec<String> = (0..12).map(|i| format!("\"i{i:02}\"")).collect();
    sb.write(
        "p.toml",
        &format!(
            "[executor]\ncpu = 2\n[stage.slow]\nkind = \"command\"\nitems = [{}]\n\
             params = {{ log = \"{}\" }}\n\
             cmd = 'echo \"slow:$MVC_ITEM\" >> \"$MVC_PARAM_LOG\"; sleep 0.4; echo > \"$MVC_OUT/o\"'\n",
            items.join(", "),
            log.display()
        ),
    );
    let child = sb.spawn(&["run", "p.toml", "--json", "--grace", "20"]);
    // Two slots: the third task starts only once the first has finished and been recorded.
    wait_for_lines(&log, 3);
    signal(&child, SIGINT);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(json["interrupted"], true);
    let done_first = json["stages"]["slow"]["ran"].as_u64().unwrap();
    assert!(
        done_first > 0 && done_first < 12,
        "ran {done_first} before stopping"
    );

    let rest = sb.mvc(&["run", "p.toml", "--json"]);
    rest.assert_ok();
    assert_eq!(rest.count("slow", "ran") + done_first, 12);
    let counts = ran_counts(&sb);
    assert_eq!(counts.len(), 12);
    assert!(
        counts.values().all(|n| *n == 1),
        "every task ran exactly once: {counts:?}"
    );
    sb.mvc(&["status", "--verify"]).assert_ok();
}

#[test]
fn second_ctrl_c_stops_running_tasks_now() {
    let sb = Sandbox::new();
    let log = sb.path().join("started.log");
    sb.write(
        "p.toml",
        &format!(
            "[executor]\ncpu = 2\n[stage.slow]\nkind = \"command\"\nitems = [\"a\", \"b\", \"c\"]\n\
             cmd = 'echo $MVC_ITEM >> \"{}\"; sleep 20; echo > \"$MVC_OUT/o\"'\n",
            log.display()
        ),
    );
    let started = Instant::now();
    let child = sb.spawn(&["run", "p.toml", "--json"]);
    wait_for_lines(&log, 2);
    signal(&child, SIGINT);
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, SIGINT);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it did not wait for the tasks"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stopping running tasks now"), "{stderr}");
    let plan = sb.mvc(&["plan", "p.toml", "--json"]);
    assert_eq!(
        plan.count("slow", "to_run"),
        3,
        "killed tasks are not recorded"
    );
    assert_eq!(plan.count("slow", "failed_skipped"), 0);
    sb.mvc(&["status", "--verify"]).assert_ok();
}

/// Kills `mvc run` with SIGKILL while its tasks sleep, and checks that none of them lives
/// on to write its marker; then runs the pipeline to the end. `launcher`: MVC_LAUNCHER.
fn assert_tasks_die_with_mvc(launcher: &str) {
    let sb = Sandbox::new();
    let marker = sb.path().join("late.txt");
    let log = sb.path().join("started.log");
    sb.write(
        "p.toml",
        &format!(
            "[executor]\ncpu = 2\n[stage.slow]\nkind = \"command\"\nitems = [\"a\", \"b\"]\n\
             cmd = 'echo $MVC_ITEM >> \"{}\"; sleep 1; echo late > \"{}\"; echo > \"$MVC_OUT/o\"'\n",
            log.display(),
            marker.display()
        ),
    );
    let mut child = sb
        .command(&["run", "p.toml"])
        .env("MVC_LAUNCHER", launcher)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_lines(&log, 2);
    signal(&child, SIGKILL);
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!marker.exists(), "a task outlived the mvc that started it");
    let r: crate::common::Ran = sb
        .command(&["run", "p.toml", "--json"])
        .env("MVC_LAUNCHER", launcher)
        .output()
        .unwrap()
        .into();
    r.assert_ok();
    assert_eq!(r.count("slow", "ran"), 2);
}

#[test]
fn killed_run_leaves_no_orphans_writing_later() {
    assert_tasks_die_with_mvc("helper");
}

#[test]
fn tasks_die_with_mvc_when_forked_directly_too() {
    // MVC_LAUNCHER=direct forks tasks from mvc itself (what a library user gets).
    assert_tasks_die_with_mvc("direct");
}

#[test]
fn sigterm_while_a_tasks_thread_is_stuck_ends_mvc_within_its_grace() {
    // The built-in renderer's thread on an object that takes minutes (20,000 triangles
    // filling the view at 1024 samples a side) and a timeout that will not stop it: after
    // SIGTERM and the grace period the unit is abandoned, and mvc exits anyway, with what
    // finished recorded.
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        &crate::common::glb::slow_render_pipeline(sb.path(), true, 3600),
    );
    let mut run = crate::common::Background::start(
        &mut sb.command(&["-v", "run", "p.toml", "--json", "--grace", "1"]),
        false,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(run
        .stderr
        .lock()
        .unwrap()
        .contains("views of slow in one unit")
        && run
            .stderr
            .lock()
            .unwrap()
            .contains("views of good in one unit"))
    {
        assert!(Instant::now() < deadline, "the units did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The good object's view takes well under a second; the slow one minutes.
    std::thread::sleep(Duration::from_secs(3));
    let stopped = Instant::now();
    signal(run.child.as_ref().unwrap(), libc::SIGTERM);
    let ran = run.finish(Duration::from_secs(60));
    let took = stopped.elapsed();
    assert_eq!(ran.code, Some(130), "{}", ran.stderr);
    assert!(
        took < Duration::from_secs(9),
        "mvc took {took:?} to exit after SIGTERM with --grace 1"
    );
    assert!(ran.stderr.contains("abandoned"), "{}", ran.stderr);
    let plan = sb.mvc(&["plan", "p.toml", "--json"]);
    assert_eq!(
        plan.count("views", "cached"),
        1,
        "the good view is recorded"
    );
    assert_eq!(plan.count("views", "to_run"), 1, "the abandoned one is not");
    sb.mvc(&["status", "--verify"]).assert_ok();
}
