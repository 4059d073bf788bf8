//! Planning at Objaverse-XL's scale (issue 30) changed how a plan holds items' parameters
//! (one shared slice per distinct set, not one per item). Task keys must not change with it:
//! a cache made before still plans, and runs, fully cached. Stage summaries (also issue 30)
//! and the presence filter are new: such a cache has neither until its next run makes them.

use crate::common::Sandbox;
use std::path::Path;
use std::process::Command;

/// A sandbox holding the fixture `tests/data/<name>`: its `pipeline.toml`, its cache, and
/// what the pipeline reads.
fn sandbox_of_fixture(name: &str) -> Sandbox {
    let sb = Sandbox::new();
    sb.copy_from_repo("pipelines/offline/objects");
    sb.copy_from_repo("tests/data/clip-tiny");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    std::fs::copy(
        fixture.join("pipeline.toml"),
        sb.path().join("pipeline.toml"),
    )
    .unwrap();
    let untar = Command::new("tar")
        .arg("-xzf")
        .arg(fixture.join("cache.tar.gz"))
        .current_dir(sb.path())
        .status()
        .expect("running tar");
    assert!(untar.success(), "tar could not unpack the fixture cache");
    sb
}

#[test]
fn a_cache_made_before_the_xl_work_still_plans_and_runs_fully_cached() {
    let sb = sandbox_of_fixture("cache-before-xl");

    let expected: [(&str, u64); 4] = [("objects", 8), ("views", 48), ("embed", 56), ("split", 1)];
    let plan = sb.mvc(&["plan", "pipeline.toml", "--json"]);
    let json = plan.assert_ok().json();
    for (stage, total) in expected {
        let s = &json["stages"][stage];
        assert_eq!(s["total"], total, "{stage}: {json}");
        assert_eq!(s["cached"], total, "{stage} is not fully cached: {json}");
        assert_eq!(s["to_run"], 0, "{stage} would run again: {json}");
    }

    let run = sb.mvc(&["-vv", "run", "pipeline.toml", "--json", "-q"]);
    run.assert_ok();
    // Nor had it a presence filter: the run made one from its index.
    assert!(
        run.stderr.contains("the presence filter was rebuilt"),
        "{}",
        run.stderr
    );
    for (stage, total) in expected {
        assert_eq!(run.count(stage, "cached"), total, "{stage}: {}", run.stdout);
        assert_eq!(
            run.count(stage, "ran"),
            0,
            "{stage} ran again: {}",
            run.stdout
        );
    }

    // The old cache had no stage summaries; that run recorded them, and the next plan is
    // decided by them, with the same counts.
    let again = sb.mvc(&["plan", "pipeline.toml", "--json"]);
    let json = again.assert_ok().json();
    assert_eq!(json["from_summaries"], true, "{json}");
    for (stage, total) in expected {
        assert_eq!(json["stages"][stage]["cached"], total, "{stage}: {json}");
    }
    // Every task looked up through that filter: all still found.
    let full = sb.mvc(&["-vv", "plan", "pipeline.toml", "--json", "--full"]);
    let json = full.assert_ok().json();
    assert!(
        full.stderr.contains("the presence filter holds"),
        "{}",
        full.stderr
    );
    for (stage, total) in expected {
        assert_eq!(json["stages"][stage]["cached"], total, "{stage}: {json}");
    }
}

/// A cache of index schema 2 (an object's own task three entries of its own, before it was
/// kept in a record) plans and runs fully cached, with every task looked up; once its objects
/// ran again with other parameters (now records), going back finds the old entries.
#[test]
fn a_cache_from_before_objects_own_tasks_were_records_still_plans_and_runs_fully_cached() {
    let sb = sandbox_of_fixture("cache-before-schema-3");
    let expected: [(&str, u64); 4] = [("objects", 8), ("views", 48), ("embed", 56), ("split", 1)];
    let full = sb.mvc(&["plan", "pipeline.toml", "--json", "--full"]);
    let json = full.assert_ok().json();
    for (stage, total) in expected {
        assert_eq!(json["stages"][stage]["cached"], total, "{stage}: {json}");
    }
    let run = sb.mvc(&["run", "pipeline.toml", "--json", "-q"]);
    run.assert_ok();
    for (stage, total) in expected {
        assert_eq!(run.count(stage, "cached"), total, "{stage}: {}", run.stdout);
    }

    let before = sb.read("pipeline.toml");
    let changed = before.replace("printf \"a %s\"", "printf \"an %s\"");
    assert_ne!(changed, before);
    sb.write("pipeline.toml", &changed);
    let run = sb.mvc(&["run", "pipeline.toml", "--json", "-q"]);
    run.assert_ok();
    assert_eq!(run.count("objects", "ran"), 8, "{}", run.stdout);
    sb.write("pipeline.toml", &before);
    let back = sb.mvc(&["plan", "pipeline.toml", "--json", "--full"]);
    let json = back.assert_ok().json();
    for (stage, total) in expected {
        assert_eq!(json["stages"][stage]["cached"], total, "{stage}: {json}");
    }
}
