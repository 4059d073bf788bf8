//! Bad input at run time: failing commands, missing outputs, unusable caches, corrupt blobs.

use crate::common::Sandbox;
use std::time::{Duration, Instant};

const FAILING: &str = r#"
[stage.gen]
kind = "command"
items = ["a", "b", "c"]
cmd = '''
if [ "$MVC_ITEM" = b ]; then echo "cannot make b: no such mesh" >&2; exit 3; fi
echo "$MVC_ITEM" > "$MVC_OUT/x.txt"
'''

[stage.down]
kind = "command"
inputs = ["gen"]
cmd = 'cp "$MVC_IN_GEN/x.txt" "$MVC_OUT/y.txt"'

[stage.all]
kind = "command"
inputs = ["down"]
per_item = false
cmd = 'ls "$MVC_IN_DOWN" > "$MVC_OUT/items.txt"'
"#;

#[test]
fn failing_command_fails_its_item_others_continue_and_summary_lists_it() {
    let sb = Sandbox::new();
    sb.write("p.toml", FAILING);
    let r = sb.mvc(&["run", "p.toml", "--json"]);
    assert_eq!(r.code, Some(1), "a run with a failure exits non-zero");
    assert_eq!(r.count("gen", "ran"), 2);
    assert_eq!(r.count("gen", "failed"), 1);
    assert_eq!(r.count("down", "ran"), 2);
    assert_eq!(r.count("down", "failed"), 1, "down/b is blocked by gen/b");
    assert_eq!(
        r.count("all", "ran"),
        1,
        "the gather runs over the items that succeeded"
    );
    let json = r.json();
    assert_eq!(json["ok"], false);
    let failures = json["failures"].as_array().unwrap();
    let gen_b = failures
        .iter()
        .find(|f| f["stage"] == "gen" && f["item"] == "b")
        .expect("gen/b in the failures");
    let error = gen_b["error"].as_str().unwrap();
    assert!(error.contains("exit status 3"), "{error}");
    assert!(error.contains("cannot make b: no such mesh"), "{error}");
    // The whole stderr is kept as a log blob.
    let log = gen_b["log"].as_str().expect("a log path");
    assert!(
        std::fs::read_to_string(log)
            .unwrap()
            .contains("no such mesh")
    );
    // The human summary (stderr with --json) lists it too.
    assert!(r.stderr.contains("failed:"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("gen/b: command failed with exit status 3"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("down/b: upstream gen/b failed"),
        "{}",
        r.stderr
    );
    sb.mvc(&["export", "p.toml", "all", "out"]).assert_ok();
    assert_eq!(sb.read("out/all/items.txt"), "a\nc\n");

    // The failure is remembered (negative cache): not retried, reported, not an error.
    let plan = sb.mvc(&["plan", "p.toml", "--json"]);
    assert_eq!(plan.count("gen", "failed_skipped"), 1);
    assert_eq!(plan.count("gen", "to_run"), 0);
    let again = sb.mvc(&["run", "p.toml", "--json"]);
    again.assert_ok();
    assert_eq!(again.count("gen", "ran"), 0);
    assert_eq!(again.count("gen", "failed"), 1);
    assert!(
        again.stderr.contains("recorded by an earlier run"),
        "{}",
        again.stderr
    );

    // --retry-failed runs it again (and it fails again).
    let retry = sb.mvc(&["run", "p.toml", "--json", "--retry-failed"]);
    assert_eq!(retry.code, Some(1));
    assert_eq!(retry.count("gen", "failed"), 1);
    assert_eq!(retry.count("gen", "cached"), 2);

    // Fixing the command changes the key: the item runs and everything downstream follows.
    sb.write("p.toml", &FAILING.replace("exit 3", "true"));
    let fixed = sb.mvc(&["run", "p.toml", "--json"]);
    fixed.assert_ok();
    assert_eq!(fixed.count("gen", "failed"), 0);
}

#[test]
fn fail_fast_stops_starting_new_tasks() {
    let sb = Sandbox::new();
    let items: Vec<String> = (0..20).map(|i| format!("\"i{i:02}\"")).collect();
    sb.write(
        "p.toml",
        &format!(
            "[executor]\ncpu = 1\n[stage.gen]\nkind = \"command\"\nitems = [{}]\n\
             cmd = '[ \"$MVC_ITEM\" != i01 ] || exit 1; echo > $MVC_OUT/x'\n",
            items.join(", ")
        ),
    );
    let r = sb.mvc(&["run", "p.toml", "--json", "--fail-fast"]);
    assert_eq!(r.code, Some(1));
    assert_eq!(r.count("gen", "failed"), 1);
    assert!(r.count("gen", "ran") < 19, "it stopped early: {}", r.stdout);
    assert!(r.stderr.contains("not run"), "{}", r.stderr);
}

#[test]
fn command_that_writes_no_outputs() {
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        "[stage.quiet]\nkind = \"command\"\nitems = [\"a\"]\ncmd = 'echo done'\n",
    );
    let r = sb.mvc(&["run", "p.toml", "--json"]);
    assert_eq!(r.code, Some(1));
    let error = r.json()["failures"][0]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(error.contains("wrote nothing into $MVC_OUT"), "{error}");
    assert!(error.contains("`outputs = []`"), "{error}");

    // Declared outputs: a missing one is named.
    sb.write(
        "p.toml",
        "[stage.quiet]\nkind = \"command\"\nitems = [\"a\"]\noutputs = [\"model.bin\"]\n\
         cmd = 'echo > $MVC_OUT/other.bin'\n",
    );
    let r = sb.mvc(&["run", "p.toml", "--json"]);
    let error = r.json()["failures"][0]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains("did not write the declared output(s) `model.bin`"),
        "{error}"
    );

    // Saying there are none makes it a success.
    sb.write(
        "p.toml",
        "[stage.quiet]\nkind = \"command\"\nitems = [\"a\"]\noutputs = []\ncmd = 'echo done'\n",
    );
    sb.mvc(&["run", "p.toml", "--json"]).assert_ok();
}

#[test]
fn cache_directory_that_is_a_file() {
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        "[stage.a]\nkind = \"command\"\nitems = [\"x\"]\ncmd = 'echo > $MVC_OUT/o'\n",
    );
    sb.write("cache", "not a directory");
    let r = sb.mvc(&["run", "p.toml"]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("cache path"), "{}", r.stderr);
    assert!(
        r.stderr.contains("is a file, not a directory"),
        "{}",
        r.stderr
    );
    assert_eq!(
        sb.read("cache"),
        "not a directory",
        "the file is left alone"
    );
}

#[test]
fn cache_held_by_another_mvc_names_its_pid() {
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        "[stage.slow]\nkind = \"command\"\nitems = [\"x\"]\ncmd = 'sleep 30; echo > $MVC_OUT/o'\n",
    );
    let mut holder = sb.spawn(&["run", "p.toml"]);
    let lock = sb.cache().join("LOCK");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&lock)
        .unwrap_or_default()
        .contains("pid")
    {
        assert!(
            Instant::now() < deadline,
            "the first mvc never took the lock"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for args in [&["run", "p.toml"][..], &["plan", "p.toml"][..]] {
        let r = sb.mvc(args);
        assert_eq!(r.code, Some(1));
        assert!(
            r.stderr.contains("is in use by another mvc process"),
            "{}",
            r.stderr
        );
        assert!(
            r.stderr.contains(&format!("pid {}", holder.id())),
            "names pid {}: {}",
            holder.id(),
            r.stderr
        );
    }
    holder.kill().unwrap();
    holder.wait().unwrap();
    // The kernel released the lock with the process: the cache is usable at once.
    sb.write(
        "p.toml",
        "[stage.slow]\nkind = \"command\"\nitems = [\"x\"]\ncmd = 'echo > $MVC_OUT/o'\n",
    );
    sb.mvc(&["run", "p.toml"]).assert_ok();
}

/// Outputs above the inline limit, so they live as blob files.
const BLOBS: &str = r#"
[stage.gen]
kind = "command"
items = ["a", "b", "c"]
cmd = 'head -c 10000 /dev/zero | tr "\0" "$MVC_ITEM" > "$MVC_OUT/big.bin"'

[stage.down]
kind = "command"
inputs = ["gen"]
cmd = 'wc -c < "$MVC_IN_GEN/big.bin" > "$MVC_OUT/size.txt"; head -c 1 "$MVC_IN_GEN/big.bin" >> "$MVC_OUT/size.txt"'
"#;

fn blob_of(sb: &Sandbox, item: &str) -> std::path::PathBuf {
    sb.mvc(&["export", "p.toml", "gen", "exported"]).assert_ok();
    let bytes = std::fs::read(sb.path().join("exported").join(item).join("big.bin")).unwrap();
    let hex = blake3::hash(&bytes).to_hex().to_string();
    sb.cache().join("blobs").join(&hex[..2]).join(&hex[2..])
}

fn set_writable(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[test]
fn corrupt_blob_is_a_miss_and_its_producer_reruns() {
    let sb = Sandbox::new();
    sb.write("p.toml", BLOBS);
    sb.mvc(&["run", "p.toml", "--json"]).assert_ok();
    let blob = blob_of(&sb, "a");
    assert!(blob.exists());

    // Same size, one byte flipped: only reading it can tell.
    set_writable(&blob);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[5000] = b'z';
    std::fs::write(&blob, &bytes).unwrap();

    // The consumer reruns (its command changed) and reads the corrupt input.
    sb.write("p.toml", &BLOBS.replace("wc -c <", "wc -c <  "));
    let r = sb.mvc(&["run", "p.toml", "--json"]);
    r.assert_ok();
    assert!(r.stderr.contains("failed verification"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("gen/a is treated as a cache miss and runs again"),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.count("gen", "ran"),
        1,
        "the producer of the corrupt blob reran"
    );
    assert_eq!(r.count("down", "ran"), 3);
    sb.mvc(&["export", "p.toml", "down", "out"]).assert_ok();
    assert_eq!(sb.read("out/a/size.txt"), "10000\na");
    let verify = sb.mvc(&["status", "--verify"]);
    verify.assert_ok();
    assert!(verify.stdout.contains("clean"), "{}", verify.stdout);
}

#[test]
fn truncated_or_missing_blob_is_planned_as_a_miss() {
    let sb = Sandbox::new();
    sb.write("p.toml", BLOBS);
    sb.mvc(&["run", "p.toml"]).assert_ok();
    let blob_b = blob_of(&sb, "b");
    let blob_c = blob_of(&sb, "c");
    set_writable(&blob_b);
    std::fs::write(&blob_b, b"short").unwrap();
    std::fs::remove_file(blob_c).unwrap();

    let verify = sb.mvc(&["status", "--verify"]);
    assert_eq!(verify.code, Some(1), "verify reports the damage");
    assert!(verify.stdout.contains("problem:"), "{}", verify.stdout);

    let plan = sb.mvc(&["plan", "p.toml", "--json"]);
    let json = plan.json();
    assert_eq!(json["stages"]["gen"]["to_run"], 2);
    assert_eq!(
        json["stages"]["gen"]["reasons"],
        serde_json::json!({"blob missing or corrupt": 2})
    );
    let r = sb.mvc(&["run", "p.toml", "--json"]);
    r.assert_ok();
    assert_eq!(r.count("gen", "ran"), 2);
    assert_eq!(r.count("down", "ran"), 0, "same bytes again: early cutoff");
    sb.mvc(&["status", "--verify"]).assert_ok();
}

#[test]
fn slots_that_cannot_run_a_stage_are_named() {
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        "[executor]\ngpu = 0\n[stage.train]\nkind = \"command\"\nitems = [\"a\"]\n\
         resources = { gpu = 1 }\ncmd = 'echo > $MVC_OUT/o'\n",
    );
    let r = sb.mvc(&["run", "p.toml"]);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr
            .contains("stage `train` needs gpu = 1 per task but this executor has 0 gpu slots"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--slots gpu=1"), "{}", r.stderr);
    // Granting the slot (there is no GPU to use: the command does not need one) runs it.
    sb.mvc(&["run", "p.toml", "--slots", "gpu=1"]).assert_ok();

    // A bad --slots is a usage error (status 2), found when the flag is parsed.
    let r = sb.mvc(&["run", "p.toml", "--slots", "gpus=1"]);
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr
            .contains("unknown slot `gpus`; slots are cpu, gpu, blender, net"),
        "{}",
        r.stderr
    );
}

/// Ten 900 KB outputs into a 6 MB cache: a full disk is the machine's state, not the items'.
/// The tasks that hit it are not recorded, the message names the file system and its free
/// space, no new work starts, and the next run, with room again, completes them by itself.
/// A task that says nothing about it (its stderr thrown away) is told by the file system's
/// own free space.
#[test]
fn a_full_disk_is_not_recorded_against_the_items() {
    let sb = Sandbox::new();
    let Some(cache) = crate::common::tmpfs::Tmpfs::mount(&sb.cache(), "6m") else {
        return;
    };
    let items = r#"items = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]"#;
    sb.write(
        "p.toml",
        &format!(
            "[stage.big]\nkind = \"command\"\n{items}\n\
             cmd = \"head -c 900000 /dev/urandom > $MVC_OUT/o.bin\"\n"
        ),
    );
    let full = sb.mvc(&["run", "p.toml", "--json"]);
    assert_eq!(full.code, Some(1), "{}", full.stderr);
    let failures = full.json()["failures"].as_array().unwrap().clone();
    assert!(!failures.is_empty(), "{}", full.stderr);
    for f in &failures {
        let error = f["error"].as_str().unwrap();
        assert!(
            error.contains("No space left on device")
                && error.contains(&format!("(tmpfs at {})", sb.cache().display()))
                && error.contains("free of 6.0 MiB")
                && error.contains("nothing is recorded against the item"),
            "{error}"
        );
    }
    assert!(
        full.stderr.contains("starting no new tasks"),
        "{}",
        full.stderr
    );
    // Nothing recorded: the plan runs every item that has no result.
    let plan = sb.mvc(&["plan", "p.toml", "--json"]);
    assert_eq!(plan.count("big", "failed_skipped"), 0, "{}", plan.stdout);
    let done = full.count("big", "ran");
    assert_eq!(plan.count("big", "to_run"), 10 - done);

    cache.resize("24m");
    let again = sb.mvc(&["run", "p.toml", "--json"]);
    again.assert_ok();
    assert_eq!(again.count("big", "ran"), 10 - done);
    assert_eq!(again.count("big", "cached"), done);
    sb.mvc(&["status", "--verify"]).assert_ok();

    // A quiet task on a disk filled again: its own words are gone, the free space tells.
    // One at a time: a task running beside it that fails and cleans up at the same moment
    // can free the room before the failed one is looked at (README, "Exit status").
    sb.write(
        "q.toml",
        &format!(
            "[stage.quiet]\nkind = \"command\"\n{items}\n\
             cmd = \"head -c 2500000 /dev/urandom > $MVC_OUT/o.bin 2>/dev/null\"\n"
        ),
    );
    let quiet = sb.mvc(&["run", "q.toml", "--json", "-j", "1"]);
    assert_eq!(quiet.code, Some(1), "{}", quiet.stderr);
    let error = quiet.json()["failures"][0]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains("is full: ") && error.contains("free of 24.0 MiB"),
        "{error}"
    );
    cache.resize("64m");
    sb.mvc(&["run", "q.toml", "--json"]).assert_ok();
}

/// The same on a worker: a worker whose own cache is full reports it, and the coordinator
/// records nothing against the items; with room, the next run completes them.
#[test]
fn a_workers_full_disk_is_not_recorded_against_the_items() {
    let sb = Sandbox::new();
    let worker_cache = sb.path().join("worker-cache");
    let Some(disk) = crate::common::tmpfs::Tmpfs::mount(&worker_cache, "4m") else {
        return;
    };
    sb.write(
        "p.toml",
        "[stage.big]\nkind = \"command\"\nitems = [\"a\", \"b\", \"c\", \"d\", \"e\", \"f\"]\n\
         cmd = \"head -c 900000 /dev/urandom > $MVC_OUT/o.bin 2>/dev/null\"\n",
    );
    let run = |code: i32| {
        let mut coord = crate::common::Background::start(
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
        let url = coord.url.clone().unwrap();
        let mut worker = crate::common::Background::start(
            &mut sb.command(&[
                "--cache",
                worker_cache.to_str().unwrap(),
                "worker",
                "--connect",
                &url,
                "--slots",
                "cpu=1",
                "--exit-when-idle",
                "2",
            ]),
            false,
        );
        let ran = coord.finish(Duration::from_secs(120));
        let _ = worker.finish(Duration::from_secs(30));
        assert_eq!(ran.code, Some(code), "{}", ran.stderr);
        ran
    };
    let full = run(1);
    assert!(
        full.stderr.contains("is full") && full.stderr.contains("tmpfs at"),
        "{}",
        full.stderr
    );
    let plan = sb.mvc(&["plan", "p.toml", "--json"]);
    assert_eq!(plan.count("big", "failed_skipped"), 0, "{}", plan.stdout);
    assert!(plan.count("big", "to_run") > 0);
    disk.resize("32m");
    let again = run(0);
    assert_eq!(
        again.count("big", "ran") + again.count("big", "cached"),
        6,
        "{}",
        again.stderr
    );
}

/// A task process killed by a signal (here by itself, as the OOM killer would) runs once
/// more in a fresh process before anything is recorded; a second death is recorded, naming
/// the signal and what to check.
#[test]
fn a_task_killed_by_a_signal_is_tried_again_before_it_is_recorded() {
    let sb = Sandbox::new();
    let marks = sb.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    sb.write(
        "p.toml",
        &format!(
            r#"
[stage.work]
kind = "command"
items = ["once", "always", "fine"]
params = {{ marks = "{}" }}
cmd = '''
mark="$MVC_PARAM_MARKS/$MVC_ITEM"
if [ "$MVC_ITEM" = always ] || [ ! -e "$mark" ]; then
  [ "$MVC_ITEM" = fine ] || {{ echo "about to die" >&2; touch "$mark"; kill -9 $$; }}
fi
echo done > "$MVC_OUT/o"
'''
"#,
            marks.display()
        ),
    );
    let ran = sb.mvc(&["run", "p.toml", "--json"]);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert_eq!(ran.count("work", "ran"), 2, "{}", ran.stderr);
    assert_eq!(ran.count("work", "failed"), 1, "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("work/once: the command was killed by SIGKILL")
            && ran.stderr.contains("running it again in a fresh process"),
        "{}",
        ran.stderr
    );
    let failures = ran.json()["failures"].as_array().unwrap().clone();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0]["item"], "always");
    let error = failures[0]["error"].as_str().unwrap();
    assert!(
        error.starts_with(
            "the command was killed by SIGKILL: out of memory? see dmesg (the kernel names the \
             OOM killer's victims there)"
        ) && error.contains("twice (each time in a fresh process): about to die"),
        "{error}"
    );
    // Recorded: the next run does not try it again.
    let again = sb.mvc(&["run", "p.toml", "--json"]);
    assert_eq!(again.count("work", "ran"), 0);
    assert_eq!(again.count("work", "failed"), 1);
}
