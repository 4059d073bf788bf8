//! Views kept one record per object and stage (issue 30, step 1): a real render pipeline is
//! run, changed and collected, and every command that reads results (plan and its reasons,
//! `why` by item and by key, export, gc, `status --verify`) finds its views there.

use crate::common::Sandbox;
use crate::common::glb::render_pipeline;
use mvc::store::Store;
use mvc::store::index::Tree;

const SIX: &str = "{ start = 0, step = 60, count = 6 }";
const VIEW: &str = "a@az060-pol050-d1.5-fov49.1343";

/// The index's layout, read with the cache closed: entries of their own (results, latest
/// entries), object records, and the item's latest key.
fn layout(sb: &Sandbox) -> (usize, usize, usize, mvc::task::Digest) {
    let store = Store::open(&sb.cache()).unwrap();
    let latest = store
        .latest("views", VIEW)
        .unwrap()
        .expect("the view is recorded");
    (
        store.index().len(Tree::Tasks),
        store.index().len(Tree::Latest),
        store.index().len(Tree::Objects),
        latest.key,
    )
}

#[test]
fn views_are_kept_one_record_per_object_and_every_command_reads_them() {
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        &render_pipeline(sb.path(), "polar = [20, 50]", SIX),
    );
    let first = sb.mvc(&["run", "p.toml", "--json"]);
    first.assert_ok();
    assert_eq!(first.count("views", "ran"), 36);
    // 3 objects: 3 records of their own; 36 views: 3 records; and each stage's columns.
    let (own, latest, records, key) = layout(&sb);
    assert_eq!((own, latest, records), (0, 0, 8));
    let status = sb.mvc(&["status", "p.toml", "--json"]);
    status.assert_ok();
    assert_eq!(status.json()["cache"]["results"], 39, "{}", status.stdout);
    // An mvc that does not know object records refuses this cache (its gc would delete
    // their blobs, and look for an object's own task in entries of its own): the index's
    // schema says 3.
    let store = Store::open(&sb.cache()).unwrap();
    let schema = store.index().get(Tree::Meta, b"schema").unwrap().unwrap();
    assert_eq!(u32::from_le_bytes(schema.try_into().unwrap()), 3);
    drop(store);

    // By key alone, as the page's task links ask.
    let why = sb.mvc(&["why", &key.to_hex()]);
    why.assert_ok();
    assert!(
        why.stdout
            .contains(&format!("cached result of views/{VIEW}")),
        "{}",
        why.stdout
    );
    let again = sb.mvc(&["run", "p.toml", "--json"]);
    again.assert_ok();
    assert_eq!(again.count("views", "cached"), 36);

    // A change of every view's parameter: the plan says which field, the run redoes them
    // all, and `why` compares each with the record it replaced.
    sb.write(
        "p.toml",
        &render_pipeline(sb.path(), "polar = [20, 50]", SIX)
            .replace("resolution = 64", "resolution = 32"),
    );
    let plan = sb.mvc(&["plan", "p.toml", "--json"]);
    plan.assert_ok();
    assert_eq!(plan.count("views", "to_run"), 36);
    assert_eq!(
        plan.json()["stages"]["views"]["reasons"],
        serde_json::json!({"parameter changed: resolution": 36}),
        "{}",
        plan.stdout
    );
    let changed = sb.mvc(&["run", "p.toml", "--json"]);
    changed.assert_ok();
    assert_eq!(changed.count("views", "ran"), 36);
    let why = sb.mvc(&["why", "p.toml", "views", VIEW]);
    why.assert_ok();
    assert!(why.stdout.contains("status: cached"), "{}", why.stdout);
    assert!(why.stdout.contains("resolution: 64 → 32"), "{}", why.stdout);
    let (own, _, records, new_key) = layout(&sb);
    assert_eq!(records, 8, "the views were replaced in their records");
    assert_eq!(own, 36, "the views they replaced are results of their own");
    assert_ne!(new_key, key);
    // So going back to the earlier parameters finds them: nothing to render.
    sb.write(
        "p.toml",
        &render_pipeline(sb.path(), "polar = [20, 50]", SIX),
    );
    let back = sb.mvc(&["plan", "p.toml", "--json"]);
    back.assert_ok();
    assert_eq!(back.count("views", "cached"), 36, "{}", back.stdout);

    // A new ring: only its views run, each object's as before.
    sb.write(
        "p.toml",
        &render_pipeline(sb.path(), "polar = [20, 50, 80]", SIX)
            .replace("resolution = 64", "resolution = 32"),
    );
    let plan = sb.mvc(&["plan", "p.toml", "--json"]);
    assert_eq!(plan.count("views", "to_run"), 18);
    assert_eq!(
        plan.json()["stages"]["views"]["reasons"],
        serde_json::json!({"new item": 18}),
        "{}",
        plan.stdout
    );
    let ring = sb.mvc(&["run", "p.toml", "--json"]);
    ring.assert_ok();
    assert_eq!(
        (ring.count("views", "ran"), ring.count("views", "cached")),
        (18, 36)
    );

    // gc keeps the last run's views and drops the records they replaced; what is kept plans
    // cached, exports whole, and verifies clean.
    let gc = sb.mvc(&["gc", "--keep-runs", "1"]);
    gc.assert_ok();
    let plan = sb.mvc(&["plan", "p.toml", "--json"]);
    assert_eq!(plan.count("views", "to_run"), 0, "{}", plan.stdout);
    assert_eq!(plan.count("views", "cached"), 54);
    let out = sb.path().join("out");
    sb.mvc(&["export", "p.toml", "views", out.to_str().unwrap()])
        .assert_ok();
    let png = image::open(out.join("a").join("az060-pol080-d1.5-fov49.1343.png")).unwrap();
    assert_eq!(png.width(), 32);
    let verify = sb.mvc(&["status", "p.toml", "--verify"]);
    verify.assert_ok();
    assert!(verify.stdout.contains("clean"), "{}", verify.stdout);
    // The record the first run's view was replaced by is gone with its run.
    let why = sb.mvc(&["why", &key.to_hex()]);
    assert_eq!(why.code, Some(1), "{}", why.stdout);
    assert!(why.stderr.contains("no key record"), "{}", why.stderr);
}
