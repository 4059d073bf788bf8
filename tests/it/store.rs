//! The cache's own parts: the stat cache, input files in keys, gc, export, status.

use crate::common::Sandbox;
use mvc::store::Store;
use mvc::store::stat_cache::Hashed;
use std::time::{Duration, SystemTime};

fn age(path: &std::path::Path, secs: u64) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(secs))
        .unwrap();
}

#[test]
fn stat_cache_hashes_a_file_once_until_it_changes() {
    let sb = Sandbox::new();
    let data = sb.write("data.bin", &"x".repeat(1 << 20));
    age(&data, 60);
    // ctime moves with every metadata change; let it fall out of the "racy" window.
    std::thread::sleep(Duration::from_millis(1100));
    let store = Store::open(&sb.cache()).unwrap();
    let (d1, how) = store.file_digest(&data).unwrap();
    assert_eq!(how, Hashed::Read);
    let (d2, how) = store.file_digest(&data).unwrap();
    assert_eq!(how, Hashed::Cached, "an unchanged file is not read again");
    assert_eq!(d1, d2);
    assert_eq!(
        d1.0,
        *blake3::hash(&std::fs::read(&data).unwrap()).as_bytes()
    );

    // Same size, same mtime, different bytes: ctime still gives it away.
    let mtime = std::fs::metadata(&data).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[10] = b'y';
    std::fs::write(&data, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&data)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(std::fs::metadata(&data).unwrap().modified().unwrap(), mtime);
    assert_eq!(std::fs::metadata(&data).unwrap().len(), 1 << 20);
    let (d3, how) = store.file_digest(&data).unwrap();
    assert_eq!(how, Hashed::Read);
    assert_ne!(d3, d1);
    // Just modified: not trusted from the cache yet (it might change again within the
    // file system's timestamp granularity).
    let (_, how) = store.file_digest(&data).unwrap();
    assert_eq!(how, Hashed::Read);
}

#[test]
fn input_files_are_in_the_key() {
    let sb = Sandbox::new();
    sb.write("labels.csv", "a,1\nb,2\n");
    sb.write(
        "p.toml",
        "[stage.use]\nkind = \"command\"\nitems = [\"a\", \"b\"]\nfiles = { labels = \"labels.csv\" }\n\
         cmd = 'grep \"^$MVC_ITEM,\" \"$MVC_FILE_LABELS\" > \"$MVC_OUT/row\"'\n",
    );
    let r = sb.mvc(&["run", "p.toml", "--json"]);
    r.assert_ok();
    assert_eq!(r.count("use", "ran"), 2);
    assert_eq!(sb.mvc(&["run", "p.toml", "--json"]).count("use", "ran"), 0);
    sb.write("labels.csv", "a,1\nb,3\n");
    let plan = sb.mvc(&["plan", "p.toml", "--json"]);
    assert_eq!(
        plan.json()["stages"]["use"]["reasons"],
        serde_json::json!({"input file changed: labels": 2})
    );
    let r = sb.mvc(&["run", "p.toml", "--json"]);
    assert_eq!(r.count("use", "ran"), 2);
    sb.mvc(&["export", "p.toml", "use", "out"]).assert_ok();
    assert_eq!(sb.read("out/b/row"), "b,3\n");

    sb.write(
        "p.toml",
        &sb.read("p.toml").replace("labels.csv", "missing.csv"),
    );
    let r = sb.mvc(&["plan", "p.toml"]);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr
            .contains("stage `use`: file `labels` (missing.csv)"),
        "{}",
        r.stderr
    );
}

#[test]
fn items_file_with_a_bad_line_is_named() {
    let sb = Sandbox::new();
    sb.write("ids.txt", "# objects\nabc\n\nde/f\n");
    sb.write(
        "p.toml",
        "[stage.s]\nkind = \"command\"\nitems_file = \"ids.txt\"\ncmd = 'echo > $MVC_OUT/o'\n",
    );
    let r = sb.mvc(&["plan", "p.toml"]);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains("ids.txt:4: item id `de/f` contains '/'"),
        "{}",
        r.stderr
    );
    sb.write("ids.txt", "abc\nxyz\nabc\n");
    let r = sb.mvc(&["plan", "p.toml"]);
    assert!(
        r.stderr.contains("ids.txt:3: item `abc` is listed twice"),
        "{}",
        r.stderr
    );
}

const TWO_STAGES: &str = r#"
[stage.gen]
kind = "command"
items = ["a", "b"]
cmd = 'head -c 6000 /dev/zero | tr "\0" "$MVC_ITEM" > "$MVC_OUT/big"; echo VERSION > "$MVC_OUT/v"'

[stage.all]
kind = "command"
inputs = ["gen"]
per_item = false
cmd = 'cat "$MVC_IN_GEN"/*/v > "$MVC_OUT/vs"'
"#;

#[test]
fn gc_keeps_what_the_last_run_reached() {
    let sb = Sandbox::new();
    sb.write("p.toml", &TWO_STAGES.replace("VERSION", "one"));
    sb.mvc(&["run", "p.toml"]).assert_ok();
    sb.write("p.toml", &TWO_STAGES.replace("VERSION", "two"));
    sb.mvc(&["run", "p.toml"]).assert_ok();

    let blobs = |sb: &Sandbox| {
        walk(&sb.cache().join("blobs"))
            .into_iter()
            .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with(".tmp"))
            .count()
    };
    let before = blobs(&sb);
    // A download an interrupted run left for resuming.
    std::fs::create_dir_all(sb.cache().join("partial")).unwrap();
    let partial = sb.cache().join("partial/0123abcd.part");
    std::fs::write(&partial, vec![7u8; 3000]).unwrap();
    let dry = sb.mvc(&["gc", "--dry-run", "--keep-runs", "1"]);
    dry.assert_ok();
    assert!(
        dry.stdout.contains("dry run: nothing was deleted"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout
            .contains("partial downloads: 1 file(s) (2.9 KiB) would be deleted"),
        "{}",
        dry.stdout
    );
    assert_eq!(blobs(&sb), before);
    assert!(partial.exists());

    let gc = sb.mvc(&["gc"]);
    gc.assert_ok();
    assert!(gc.stdout.contains("1 run(s) kept"), "{}", gc.stdout);
    assert!(!partial.exists(), "gc cleans partial downloads");
    // The first version's gen outputs (6000-byte blobs) and its gather are gone.
    let gen_line = gc
        .stdout
        .lines()
        .find(|l| l.starts_with("gen"))
        .unwrap()
        .to_string();
    let fields: Vec<&str> = gen_line.split_whitespace().collect();
    assert_eq!(fields[4], "2", "2 gen results deleted: {gen_line}");
    assert!(blobs(&sb) < before);

    let plan = sb.mvc(&["plan", "p.toml", "--json"]);
    assert_eq!(
        plan.count("gen", "cached"),
        2,
        "what the last run reached is kept"
    );
    assert_eq!(plan.count("all", "cached"), 1);
    sb.mvc(&["status", "--verify"]).assert_ok();

    // Going back to the first version recomputes it.
    sb.write("p.toml", &TWO_STAGES.replace("VERSION", "one"));
    let r = sb.mvc(&["run", "p.toml", "--json"]);
    assert_eq!(r.count("gen", "ran"), 2);
    // Keeping two runs keeps both versions.
    sb.mvc(&["gc", "--keep-runs", "2"]).assert_ok();
    sb.write("p.toml", &TWO_STAGES.replace("VERSION", "two"));
    assert_eq!(sb.mvc(&["run", "p.toml", "--json"]).count("gen", "ran"), 0);
}

#[test]
fn gc_after_a_failed_run_keeps_the_last_complete_one() {
    let sb = Sandbox::new();
    sb.write("p.toml", &TWO_STAGES.replace("VERSION", "one"));
    sb.mvc(&["run", "p.toml"]).assert_ok();
    // A broken version: every gen item fails, so this run reaches nothing of the first.
    let broken = TWO_STAGES.replace("VERSION", "two; exit 3");
    sb.write("p.toml", &broken);
    assert_eq!(sb.mvc(&["run", "p.toml"]).code, Some(1));

    let gc = sb.mvc(&["gc"]);
    gc.assert_ok();
    assert!(gc.stdout.contains("2 run(s) kept"), "{}", gc.stdout);
    sb.write("p.toml", &TWO_STAGES.replace("VERSION", "one"));
    let plan = sb.mvc(&["plan", "p.toml", "--json"]);
    assert_eq!(plan.count("gen", "cached"), 2, "{}", plan.stdout);
    assert_eq!(plan.count("all", "cached"), 1);
}

#[test]
fn export_writes_files_and_an_index() {
    let sb = Sandbox::new();
    sb.write("p.toml", &TWO_STAGES.replace("VERSION", "one"));
    let r = sb.mvc(&["export", "p.toml", "gen", "out"]);
    assert_eq!(r.code, Some(1), "nothing to export before a run");
    assert!(
        r.stderr.contains("2 of 2 tasks are not in the cache"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("mvc run p.toml"), "{}", r.stderr);

    sb.mvc(&["run", "p.toml"]).assert_ok();
    // Every run leaves a readable summary in runs/<pipeline>/.
    let run: serde_json::Value = serde_json::from_str(&sb.read("runs/p/run.json")).unwrap();
    assert_eq!(run["pipeline"], "p");
    assert_eq!(run["stages"]["gen"]["ran"], 2);
    assert!(sb.read("runs/p/run.md").contains("gen"));
    let r = sb.mvc(&["export", "p.toml", "gen", "out"]);
    r.assert_ok();
    assert!(
        r.stdout.contains("exported 2 item(s), 4 file(s)"),
        "{}",
        r.stdout
    );
    assert_eq!(
        std::fs::read(sb.path().join("out/b/big")).unwrap(),
        vec![b'b'; 6000]
    );
    let index: serde_json::Value = serde_json::from_str(&sb.read("out/index.json")).unwrap();
    assert_eq!(index[0]["item"], "a");
    assert_eq!(index[0]["files"], serde_json::json!(["big", "v"]));

    let r = sb.mvc(&["export", "p.toml", "nope", "out"]);
    assert!(
        r.stderr
            .contains("no stage `nope` in this pipeline (stages: gen, all)"),
        "{}",
        r.stderr
    );
}

#[test]
fn status_and_why_by_key() {
    let sb = Sandbox::new();
    sb.write("p.toml", &TWO_STAGES.replace("VERSION", "one"));
    let r = sb.mvc(&["status"]);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains("there is no cache at cache yet"),
        "{}",
        r.stderr
    );

    sb.mvc(&["run", "p.toml"]).assert_ok();
    let status = sb.mvc(&["status", "p.toml"]);
    status.assert_ok();
    assert!(status.stdout.contains("3 results"), "{}", status.stdout);
    assert!(
        status.stdout.contains("gen    2/2 cached"),
        "{}",
        status.stdout
    );
    let json = sb.mvc(&["status", "p.toml", "--json"]).json();
    assert_eq!(json["cache"]["results"], 3);
    assert_eq!(json["stages"]["all"]["cached"], 1);

    let why = sb.mvc(&["why", "p.toml", "gen", "a"]);
    let key = why
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("key: "))
        .unwrap()
        .to_string();
    let by_key = sb.mvc(&["why", &key[..10]]);
    by_key.assert_ok();
    assert!(
        by_key.stdout.contains("cached result of gen/a"),
        "{}",
        by_key.stdout
    );
    assert!(by_key.stdout.contains("item   = a"), "{}", by_key.stdout);
    let r = sb.mvc(&["why", "zz"]);
    assert!(r.stderr.contains("is not a task key"), "{}", r.stderr);
    let r = sb.mvc(&["why", "p.toml", "gen", "q"]);
    assert!(
        r.stderr.contains("stage `gen` has no item `q`"),
        "{}",
        r.stderr
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// Copies a directory tree (a cache, to damage a fresh copy of it each time).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// Flips 4 KiB of a file at `percent` of its length (as a disk fault would).
fn flip_4k(path: &std::path::Path, percent: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = (bytes.len() as u64 * percent / 100 / 4096 * 4096) as usize;
    let end = (at + 4096).min(bytes.len());
    for b in &mut bytes[at..end] {
        *b ^= 0xff;
    }
    std::fs::write(path, bytes).unwrap();
}

/// 4 KiB flipped in the middle of the index's data file, at 19 places: sled either
/// cannot open it (the error names `mvc repair`, which rebuilds it from the run journal and
/// the blobs) or opens it at an earlier state without a word (the next command notices and
/// puts the records back by itself). Either way the run after it runs nothing the last run
/// had finished, and `status --verify` is clean.
#[test]
fn a_damaged_index_is_repaired_from_the_journal() {
    let sb = Sandbox::new();
    let items: Vec<String> = (0..400).map(|i| format!("\"i{i:03}\"")).collect();
    sb.write(
        "p.toml",
        &format!(
            "[stage.a]\nkind = \"command\"\nitems = [{}]\n\
             cmd = \"head -c 3000 /dev/zero | tr '\\\\\\\\0' x > $MVC_OUT/o; echo $MVC_ITEM >> $MVC_OUT/o\"\n",
            items.join(", ")
        ),
    );
    // One task at a time: the index's layout then depends little on the order tasks end
    // in (with the whole suite in one binary, other tests load the machine meanwhile).
    sb.mvc(&["run", "p.toml", "-q", "-j", "1"]).assert_ok();
    let pristine = sb.path().join("pristine");
    copy_tree(&sb.cache(), &pristine);
    let (mut repaired, mut restored) = (0, 0);
    // Every 5%: enough places that both kinds of damage are met whatever sled's layout.
    for percent in (1..20).map(|k| k * 5) {
        let _ = std::fs::remove_dir_all(sb.cache());
        copy_tree(&pristine, &sb.cache());
        flip_4k(&sb.cache().join("index/db"), percent);
        let ran = sb.mvc(&["run", "p.toml", "--json"]);
        if ran.code == Some(1) && ran.stderr.contains("is damaged") {
            assert!(
                ran.stderr.contains(&format!(
                    "run `mvc repair --cache {}`",
                    sb.cache().display()
                )),
                "{percent}%: {}",
                ran.stderr
            );
            let repair = sb.mvc(&["repair"]);
            repair.assert_ok();
            assert!(
                repair.stdout.contains("recovered: 400 results")
                    && repair.stdout.contains("lost: 0")
                    && repair.stdout.contains("index.damaged-"),
                "{percent}%: {}",
                repair.stdout
            );
            repaired += 1;
            let again = sb.mvc(&["run", "p.toml", "--json"]);
            again.assert_ok();
            assert_eq!(again.count("a", "ran"), 0, "{percent}%: {}", again.stderr);
        } else {
            ran.assert_ok();
            assert_eq!(ran.count("a", "ran"), 0, "{percent}%: {}", ran.stderr);
            // sled came back at an earlier state (the last run's record gone), or lost
            // pages in the middle (records the memos name gone): put back by itself.
            if ran.stderr.contains("had come back at an earlier state")
                || ran.stderr.contains("that the last run's plan memos name")
            {
                assert!(
                    ran.stderr.contains("400 results") && ran.stderr.contains("none lost"),
                    "{percent}%: {}",
                    ran.stderr
                );
                restored += 1;
            }
        }
        let verify = sb.mvc(&["status", "--verify"]);
        assert!(
            verify.stdout.contains("clean"),
            "{percent}%: {}",
            verify.stdout
        );
        verify.assert_ok();
    }
    // Both kinds of damage were met (sled's layout puts them at different places).
    assert!(
        repaired > 0 && restored > 0,
        "repaired {repaired}, restored {restored}"
    );

    // An index that is gone altogether is rebuilt by the next command, from the journal.
    let _ = std::fs::remove_dir_all(sb.cache().join("index"));
    let ran = sb.mvc(&["run", "p.toml", "--json"]);
    ran.assert_ok();
    assert_eq!(ran.count("a", "ran"), 0, "{}", ran.stderr);

    // An index that is fine is left alone; --force rebuilds it anyway.
    let refused = sb.mvc(&["repair"]);
    assert_eq!(refused.code, Some(1));
    assert!(
        refused.stderr.contains("nothing to repair"),
        "{}",
        refused.stderr
    );
    sb.mvc(&["repair", "--force"]).assert_ok();
    assert_eq!(sb.mvc(&["run", "p.toml", "--json"]).count("a", "ran"), 0);
}
