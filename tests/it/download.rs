//! Stage kind `download` against a local mirror of the Objaverse dataset on 127.0.0.1:
//! selection by category and by uid, faults survived or reported, what reruns after a
//! change, and the bad inputs of the issue.

use crate::common::Sandbox;
use crate::common::mirror::{Fault, Mirror, Object, uid};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// Five food objects (one whose GLB is gone), three others, over four shards.
fn dataset() -> Vec<Object> {
    vec![
        Object::new(1, 0, &["food-drink"], "Banana", 3_000),
        Object::new(2, 3, &["food-drink", "art-abstract"], "Cup of tea", 9_000),
        Object::new(3, 159, &["food-drink"], "Pizza", 40_000),
        Object::new(4, 3, &["food-drink"], "Burger", 12_000),
        Object::new(5, 77, &["food-drink"], "Ghost donut", 4_000),
        Object::new(6, 0, &["animals-pets"], "Cat", 3_000),
        Object::new(7, 3, &["architecture"], "House", 3_000),
        Object::new(8, 77, &[], "Uncategorised", 3_000),
    ]
}

/// A stage that reads each downloaded GLB (its size).
const SIZES_STAGE: &str = r#"
[stage.sizes]
kind = "command"
inputs = ["objects"]
cmd = 'wc -c < "$MVC_IN_OBJECTS/$MVC_ITEM.glb" > "$MVC_OUT/size"'
"#;

fn download_stage(extra: &str) -> String {
    format!("[stage.objects]\nkind = \"download\"\nbackoff = 0.05\n{extra}\n")
}

fn run(sb: &Sandbox, mirror: &Mirror) -> crate::common::Ran {
    sb.mvc_env(
        &["run", "p.toml", "--json"],
        &[("HF_ENDPOINT", &mirror.endpoint)],
    )
}

fn manifest(sb: &Sandbox, mirror: &Mirror) -> serde_json::Value {
    let out = sb.path().join("export-select");
    let _ = std::fs::remove_dir_all(&out);
    sb.mvc_env(
        &["export", "p.toml", "objects.select", out.to_str().unwrap()],
        &[("HF_ENDPOINT", &mirror.endpoint)],
    )
    .assert_ok();
    let text = std::fs::read_to_string(out.join("selection/manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The manifest's entry of object `n`.
fn selected(manifest: &serde_json::Value, n: u32) -> serde_json::Value {
    manifest["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["uid"] == uid(n).as_str())
        .unwrap_or_else(|| panic!("{} is not in the manifest", uid(n)))
        .clone()
}

/// The GLB stored for object `n`, exported from the cache.
fn stored_glb(sb: &Sandbox, mirror: &Mirror, n: u32) -> Vec<u8> {
    let out = sb.path().join("out");
    let _ = std::fs::remove_dir_all(&out);
    sb.mvc_env(
        &["export", "p.toml", "objects", out.to_str().unwrap()],
        &[("HF_ENDPOINT", &mirror.endpoint)],
    )
    .assert_ok();
    std::fs::read(out.join(uid(n)).join(format!("{}.glb", uid(n)))).unwrap()
}

fn object_uids(manifest: &serde_json::Value) -> Vec<String> {
    manifest["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["uid"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn selects_food_objects_survives_faults_and_downloads_nothing_twice() {
    let objects = dataset();
    let mirror = Mirror::start(&objects);
    mirror.remove(&objects[4].path());
    mirror.fault("metadata/000-003.json.gz", &[Fault::Truncate]);
    mirror.fault(
        &objects[3].path(),
        &[Fault::Status(500), Fault::Status(500)],
    );
    mirror.fault(&objects[2].path(), &[Fault::DropHalf]);
    mirror.fault(&objects[0].path(), &[Fault::RetryAfter(429, 1)]);
    let sb = Sandbox::new();
    sb.write("p.toml", &download_stage(""));

    let first = run(&sb, &mirror);
    // The missing GLB is a new item failure: the run says so.
    assert_eq!(first.code, Some(1), "{}", first.stderr);
    assert_eq!(first.count("objects.paths", "ran"), 1);
    assert_eq!(first.count("objects.metadata", "ran"), 160);
    assert_eq!(first.count("objects.select", "ran"), 1);
    assert_eq!(first.count("objects", "total"), 5);
    assert_eq!(first.count("objects", "ran"), 4);
    assert_eq!(first.count("objects", "failed"), 1);
    // Progress is in bytes: those that arrived, of the GLB sizes the metadata gives.
    let progress = first
        .stderr
        .lines()
        .find(|l| l.starts_with("objects: 5/5 tasks"))
        .unwrap_or_else(|| panic!("{}", first.stderr));
    let size = |o: &[Object]| o.iter().map(|o| o.glb.len() as u64).sum::<u64>();
    let expected = format!(
        "· {} of {}",
        mvc::text::human_bytes(size(&objects[..4])),
        mvc::text::human_bytes(size(&objects[..5]))
    );
    assert!(progress.contains(&expected), "{progress} lacks {expected}");
    let failures = first.json()["failures"].as_array().unwrap().clone();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["item"], uid(5).as_str());
    assert!(
        failures[0]["error"].as_str().unwrap().contains("404"),
        "{failures:?}"
    );

    // Exactly the food objects were selected, captioned with their names.
    let m = manifest(&sb, &mirror);
    let food: Vec<String> = (1..=5).map(uid).collect();
    let mut sorted = food.clone();
    sorted.sort();
    assert_eq!(object_uids(&m), sorted);
    for o in m["objects"].as_array().unwrap() {
        let src = objects.iter().find(|x| x.uid == o["uid"]).unwrap();
        assert_eq!(o["caption"], src.name.as_str());
        assert_eq!(o["size"], src.glb.len());
    }
    // Nothing of the other categories was fetched.
    for other in &objects[5..] {
        assert!(mirror.requests(&other.path()).is_empty());
    }
    // 500 twice, then the file.
    assert_eq!(mirror.requests(&objects[3].path()).len(), 3);
    // 429 with Retry-After: 1 was honoured.
    let banana = mirror.requests(&objects[0].path());
    assert_eq!(banana.len(), 2);
    assert!(banana[1].at - banana[0].at >= Duration::from_millis(900));
    // The dropped connection was resumed where it broke off.
    let pizza = mirror.requests(&objects[2].path());
    assert_eq!(pizza.len(), 2, "{pizza:?}");
    assert_eq!(pizza[0].range, None);
    let half = objects[2].glb.len() / 2;
    assert_eq!(pizza[1].range.as_deref(), Some(&*format!("bytes={half}-")));
    // The truncated shard was fetched again, not trusted.
    assert_eq!(mirror.requests("metadata/000-003.json.gz").len(), 2);

    // What is cached is byte for byte what the mirror serves.
    let out = sb.path().join("export-objects");
    sb.mvc_env(
        &["export", "p.toml", "objects", out.to_str().unwrap()],
        &[("HF_ENDPOINT", &mirror.endpoint)],
    )
    .assert_ok();
    for o in &objects[..4] {
        let got = std::fs::read(out.join(&o.uid).join(format!("{}.glb", o.uid))).unwrap();
        assert!(got == *o.glb, "{} differs from the mirror's file", o.uid);
    }

    // A second run downloads nothing; the 404 stays a reported, remembered failure.
    mirror.clear_log();
    let second = run(&sb, &mirror);
    second.assert_ok();
    assert!(mirror.log().is_empty(), "{:?}", mirror.log());
    assert_eq!(second.count("objects", "cached"), 4);
    assert_eq!(second.count("objects", "ran"), 0);
    assert_eq!(second.count("objects", "failed"), 1);
    assert_eq!(second.json()["failures"][0]["earlier"], true);
}

#[test]
fn adding_a_uid_downloads_one_glb_and_a_new_caption_rule_downloads_none() {
    let objects = dataset();
    let mirror = Mirror::start(&objects);
    let sb = Sandbox::new();
    let with = |uids: &[u32], extra: &str| {
        let list: Vec<String> = uids.iter().map(|&n| format!("\"{}\"", uid(n))).collect();
        download_stage(&format!("uids = [{}]\n{extra}", list.join(", ")))
    };
    sb.write("p.toml", &with(&[1, 2], ""));
    let first = sb.mvc_env(
        &["run", "p.toml", "--json"],
        &[("HF_ENDPOINT", &mirror.endpoint), ("HF_TOKEN", "hf_secret")],
    );
    first.assert_ok();
    assert_eq!(first.count("objects", "ran"), 2);
    // Only the shards of the listed objects were fetched, and the token went with every
    // request.
    let shards: BTreeSet<String> = mirror
        .requests("metadata/")
        .into_iter()
        .map(|l| l.path)
        .collect();
    assert_eq!(
        shards,
        BTreeSet::from([
            "metadata/000-000.json.gz".to_string(),
            "metadata/000-003.json.gz".to_string()
        ])
    );
    assert!(
        mirror
            .log()
            .iter()
            .all(|l| l.authorization.as_deref() == Some("Bearer hf_secret"))
    );

    // One more uid: exactly one more GLB.
    mirror.clear_log();
    sb.write("p.toml", &with(&[1, 2, 4], ""));
    let second = run(&sb, &mirror);
    second.assert_ok();
    assert_eq!(second.count("objects", "ran"), 1);
    assert_eq!(second.count("objects", "cached"), 2);
    let glbs: Vec<String> = mirror
        .requests("glbs/")
        .into_iter()
        .map(|l| l.path)
        .collect();
    assert_eq!(glbs, vec![objects[3].path()]);

    // Captions from tags instead of names: the selection reruns, no GLB is fetched.
    mirror.clear_log();
    sb.write("p.toml", &with(&[1, 2, 4], "caption = \"tags\""));
    let plan = sb.mvc_env(&["plan", "p.toml", "--json"], &[]);
    plan.assert_ok();
    assert_eq!(plan.count("objects.select", "to_run"), 1);
    let third = run(&sb, &mirror);
    third.assert_ok();
    assert_eq!(third.count("objects.select", "ran"), 1);
    assert_eq!(third.count("objects", "ran"), 0);
    assert_eq!(third.count("objects", "cached"), 3);
    assert!(mirror.requests("glbs/").is_empty());
    let m = manifest(&sb, &mirror);
    assert_eq!(m["objects"][0]["caption_source"], "tags");
    let first_uid = m["objects"][0]["uid"].as_str().unwrap();
    let n = (1..=8).find(|&n| uid(n) == first_uid).unwrap();
    assert_eq!(m["objects"][0]["caption"], format!("tag{n}, model"));

    // A uid the dataset lacks is an item failure that names it.
    sb.write("p.toml", &with(&[1, 2, 4, 99], ""));
    let fourth = run(&sb, &mirror);
    assert_eq!(fourth.code, Some(1));
    let failures = fourth.json()["failures"].as_array().unwrap().clone();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0]["item"], uid(99).as_str());
    let error = failures[0]["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("uid `{}` is not in object-paths.json.gz", uid(99))),
        "{error}"
    );
}

#[test]
fn two_hundred_objects_download_several_at_a_time() {
    let objects: Vec<Object> = (0..200)
        .map(|n| {
            Object::new(
                1000 + n,
                (n % 160) as usize,
                &["food-drink"],
                "Snack",
                1 << 20,
            )
        })
        .collect();
    let mirror = Mirror::start(&objects);
    // Each GLB answer waits a little, so that requests in flight overlap visibly.
    mirror.set_glb_latency(Duration::from_millis(20));
    let sb = Sandbox::new();
    sb.write("p.toml", &download_stage(""));
    let ran = run(&sb, &mirror);
    ran.assert_ok();
    assert_eq!(ran.count("objects", "ran"), 200);
    assert!(
        mirror.max_in_flight() >= 4,
        "at most {} downloads ran at once",
        mirror.max_in_flight()
    );
}

fn plan_error(extra: &str) -> String {
    let sb = Sandbox::new();
    sb.write("p.toml", &download_stage(extra));
    let ran = sb.mvc(&["plan", "p.toml"]);
    assert_eq!(
        ran.code,
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        ran.stdout,
        ran.stderr
    );
    ran.stderr
}

#[test]
fn bad_settings_are_errors_that_point_at_the_value() {
    let e = plan_error("categories = [\"food-drinks\"]");
    assert!(e.contains("p.toml:4:"), "{e}");
    assert!(e.contains("unknown category `food-drinks`"), "{e}");
    assert!(
        e.contains("animals-pets") && e.contains("weapons-military"),
        "{e}"
    );
    assert!(e.contains("did you mean `food-drink`?"), "{e}");

    let e = plan_error("limit = 0");
    assert!(e.contains("p.toml:4:"), "{e}");
    assert!(e.contains("`limit` must be at least 1"), "{e}");

    let e = plan_error("uids = [\"not-a-uid\"]");
    assert!(e.contains("`not-a-uid` is not an Objaverse uid"), "{e}");

    let e = plan_error("uids = 5");
    assert!(e.contains("a list of uids, or the path of a file"), "{e}");

    let e = plan_error("uids = \"no-such-file.txt\"");
    assert!(
        e.contains("cannot read the uids file `no-such-file.txt`"),
        "{e}"
    );

    let e = plan_error("caption = \"cap3d\"");
    assert!(e.contains("needs `cap3d_csv`"), "{e}");

    let e = plan_error("caption = \"title\"");
    assert!(e.contains("unknown caption source `title`"), "{e}");
    assert!(e.contains("name+description"), "{e}");

    let e = plan_error("licenses = [\"gpl\"]");
    assert!(e.contains("unknown license `gpl`"), "{e}");
}

#[test]
fn an_unreachable_endpoint_is_one_clear_error() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sb = Sandbox::new();
    sb.write("p.toml", &download_stage("retries = 1"));
    let ran = sb.mvc_env(
        &["run", "p.toml", "--json"],
        &[("HF_ENDPOINT", &format!("http://127.0.0.1:{port}"))],
    );
    assert_eq!(ran.code, Some(1));
    let json = ran.json();
    let failures = json["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let error = failures[0]["error"].as_str().unwrap();
    assert!(
        error.contains("cannot reach HF_ENDPOINT http://127.0.0.1:"),
        "{error}"
    );
    assert!(
        json["not_expanded"]["objects"]
            .as_str()
            .unwrap()
            .contains("objects.paths"),
        "{json}"
    );
    // The next run tries again (a network failure is not remembered as the item's).
    let again = sb.mvc_env(
        &["run", "p.toml", "--json"],
        &[("HF_ENDPOINT", &format!("http://127.0.0.1:{port}"))],
    );
    assert_eq!(again.json()["failures"][0]["earlier"], false);
}

#[test]
fn a_web_page_instead_of_a_mirror_is_named() {
    let mirror = Mirror::start(&dataset());
    mirror.set_html_everywhere(true);
    let sb = Sandbox::new();
    sb.write("p.toml", &download_stage(""));
    let ran = run(&sb, &mirror);
    assert_eq!(ran.code, Some(1));
    let failures = ran.json()["failures"].as_array().unwrap().clone();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let error = failures[0]["error"].as_str().unwrap();
    assert!(
        error.contains("object-paths.json.gz from http://127.0.0.1"),
        "{error}"
    );
    assert!(error.contains("an HTML page"), "{error}");
}

#[test]
fn cap3d_captions_and_an_invalid_cap3d_file() {
    let objects = dataset();
    let mirror = Mirror::start(&objects);
    let sb = Sandbox::new();
    sb.write(
        "cap3d.csv",
        &format!(
            "{},\"A yellow, curved banana.\"\n{},A steaming cup of tea.\n",
            uid(1),
            uid(2)
        ),
    );
    sb.write(
        "p.toml",
        &download_stage("caption = \"cap3d\"\ncap3d_csv = \"cap3d.csv\""),
    );
    run(&sb, &mirror);
    let m = manifest(&sb, &mirror);
    let banana = selected(&m, 1);
    assert_eq!(banana["caption"], "A yellow, curved banana.");
    assert_eq!(banana["caption_source"], "cap3d");
    // Objects Cap3D lacks keep their names.
    let pizza = selected(&m, 3);
    assert_eq!(pizza["caption"], "Pizza");

    sb.write("cap3d.csv", &format!("{},fine\nnot a uid,broken\n", uid(1)));
    let ran = run(&sb, &mirror);
    assert_eq!(ran.code, Some(1));
    let failures = ran.json()["failures"].as_array().unwrap().clone();
    assert_eq!(failures[0]["item"], "selection");
    let error = failures[0]["error"].as_str().unwrap();
    assert!(
        error.contains("cap3d.csv:2: `not a uid` is not an Objaverse uid"),
        "{error}"
    );
}

/// A Cap3D CSV that arrives as an HTML page (a proxy's or a login wall's) is a damaged
/// arrival, not the selection's failure: it is said, not recorded, and the next run (with
/// no --retry-failed) fetches it again and selects.
#[test]
fn a_cap3d_url_answering_html_fails_this_run_only() {
    let objects = dataset();
    let mirror = Mirror::start(&objects);
    mirror.put(
        "/cap3d.csv",
        b"<!DOCTYPE html><html><body>Sign in to continue</body></html>".to_vec(),
    );
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        &download_stage(&format!(
            "caption = \"cap3d\"\ncap3d_csv = \"{}/cap3d.csv\"",
            mirror.endpoint
        )),
    );
    let first = run(&sb, &mirror);
    assert_eq!(first.code, Some(1), "{}", first.stderr);
    assert!(
        first
            .stderr
            .contains("answered with an HTML page, not Cap3D's CSV"),
        "{}",
        first.stderr
    );
    assert!(
        first.stderr.contains("nothing was recorded as failed"),
        "{}",
        first.stderr
    );
    mirror.put(
        "/cap3d.csv",
        format!("{},\"A yellow, curved banana.\"\n", uid(1)).into_bytes(),
    );
    let second = run(&sb, &mirror);
    second.assert_ok();
    let m = manifest(&sb, &mirror);
    let banana = selected(&m, 1);
    assert_eq!(banana["caption"], "A yellow, curved banana.");
}

#[test]
fn the_study_pipelines_begin_with_the_download_stage() {
    // 40 food objects and a few others: quick takes the first 32 food objects by uid.
    let mut objects: Vec<Object> = (0..40)
        .map(|n| Object::new(200 + n, (n % 9) as usize, &["food-drink"], "Snack", 2_000))
        .collect();
    objects.extend((0..5).map(|n| Object::new(300 + n, 4, &["music"], "Drum", 2_000)));
    let mirror = Mirror::start(&objects);
    let sb = Sandbox::new();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in ["full", "quick"] {
        std::fs::create_dir_all(sb.path().join("pipelines")).unwrap();
        // The files as they are up to their first stage after the download (rendering
        // 36 views of every object is for the render tests, not for this one).
        let text = std::fs::read_to_string(repo.join(format!("pipelines/{name}.toml"))).unwrap();
        let first_stage = text.find("[stage.objects]").unwrap();
        let cut = text[first_stage + 1..]
            .find("\n[stage.")
            .map(|i| {
                // Back to the comment block above the next stage.
                let next = first_stage + 1 + i;
                text[..next].rfind("\n\n").unwrap_or(next)
            })
            .unwrap_or(text.len());
        std::fs::write(
            sb.path().join(format!("pipelines/{name}.toml")),
            &text[..cut],
        )
        .unwrap();
    }
    let quick = sb.mvc_env(
        &["run", "pipelines/quick.toml", "--json"],
        &[("HF_ENDPOINT", &mirror.endpoint)],
    );
    quick.assert_ok();
    assert_eq!(quick.count("objects.metadata", "total"), 160);
    assert_eq!(quick.count("objects", "ran"), 32);
    let mut food: Vec<String> = objects[..40].iter().map(|o| o.uid.clone()).collect();
    food.sort();
    let downloaded: BTreeSet<String> = mirror
        .requests("glbs/")
        .into_iter()
        .map(|l| {
            l.path
                .rsplit('/')
                .next()
                .unwrap()
                .trim_end_matches(".glb")
                .to_string()
        })
        .collect();
    assert_eq!(downloaded, food[..32].iter().cloned().collect());

    // The full pipeline shares the cache: only the 8 objects quick did not take run.
    let full = sb.mvc_env(
        &["run", "pipelines/full.toml", "--json"],
        &[("HF_ENDPOINT", &mirror.endpoint)],
    );
    full.assert_ok();
    assert_eq!(full.count("objects", "cached"), 32);
    assert_eq!(full.count("objects", "ran"), 8);
    assert_eq!(full.count("objects.metadata", "cached"), 160);
}

#[test]
fn an_endpoint_lost_after_the_catalog_is_cached_is_one_error_too() {
    let objects = dataset();
    let mirror = Mirror::start(&objects);
    let sb = Sandbox::new();
    let with = |uids: &[u32]| {
        let list: Vec<String> = uids.iter().map(|&n| format!("\"{}\"", uid(n))).collect();
        download_stage(&format!("retries = 1\nuids = [{}]", list.join(", ")))
    };
    sb.write("p.toml", &with(&[1, 2]));
    run(&sb, &mirror).assert_ok();
    // Three more objects from the shards already fetched, and the mirror is gone.
    sb.write("p.toml", &with(&[1, 2, 4, 6, 7]));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ran = sb.mvc_env(
        &["run", "p.toml"],
        &[("HF_ENDPOINT", &format!("http://127.0.0.1:{port}"))],
    );
    assert_eq!(ran.code, Some(1));
    // The three failures are one line of the summary, and one line of the log.
    let summary: Vec<&str> = ran
        .stdout
        .lines()
        .filter(|l| l.contains("cannot reach HF_ENDPOINT"))
        .collect();
    assert_eq!(summary.len(), 1, "{}", ran.stdout);
    assert!(summary[0].contains("objects: 3 items"), "{}", summary[0]);
    assert_eq!(
        ran.stderr.matches("cannot reach HF_ENDPOINT").count(),
        1,
        "{}",
        ran.stderr
    );
}

#[test]
fn a_download_cut_off_in_one_run_resumes_in_the_next() {
    let objects = dataset();
    let mirror = Mirror::start(&objects);
    let sb = Sandbox::new();
    // No retries: the broken transfer fails the run, keeping what arrived.
    sb.write(
        "p.toml",
        &download_stage(&format!("retries = 0\nuids = [\"{}\"]", uid(3))),
    );
    mirror.fault(&objects[2].path(), &[Fault::DropHalf]);
    let first = run(&sb, &mirror);
    assert_eq!(first.code, Some(1));
    let error = first.json()["failures"][0]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(error.contains("broke off after"), "{error}");
    // Not remembered as the object's failure: the next run resumes the transfer.
    let second = run(&sb, &mirror);
    second.assert_ok();
    let pizza = mirror.requests(&objects[2].path());
    assert_eq!(pizza.len(), 2);
    let half = objects[2].glb.len() / 2;
    assert_eq!(pizza[1].range.as_deref(), Some(&*format!("bytes={half}-")));
    let got = stored_glb(&sb, &mirror, 3);
    assert!(got == *objects[2].glb);
}

/// `main` moves between two runs while a GLB is half downloaded: the resumed request sends
/// the first response's ETag as `If-Range`, the mirror answers with the whole new file, and
/// the object is the new file, not the old half joined to the new one's tail.
#[test]
fn a_resumed_download_of_a_file_that_changed_is_not_joined() {
    let objects = dataset();
    let mirror = Mirror::start(&objects);
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        &download_stage(&format!("retries = 0\nuids = [\"{}\"]", uid(3))),
    );
    let newer = crate::common::mirror::make_glb(99, objects[2].glb.len());
    assert_ne!(newer, *objects[2].glb);
    mirror.fault(
        &objects[2].path(),
        &[Fault::DropHalfThenChange(newer.clone())],
    );
    let first = run(&sb, &mirror);
    assert_eq!(first.code, Some(1), "{}", first.stderr);
    let second = run(&sb, &mirror);
    second.assert_ok();
    let asked = mirror.requests(&objects[2].path());
    assert_eq!(asked.len(), 2, "{asked:?}");
    let half = objects[2].glb.len() / 2;
    assert_eq!(asked[1].range.as_deref(), Some(&*format!("bytes={half}-")));
    let got = stored_glb(&sb, &mirror, 3);
    assert!(got == newer, "the stored GLB is not the new file whole");
    // Nothing is left beside the partial files.
    let left: Vec<_> = std::fs::read_dir(sb.cache().join("partial"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

/// A GLB damaged on the way without changing its length (which the GLB check cannot see)
/// is caught by the SHA-256 the hub gives LFS files, and fetched again.
#[test]
fn a_glb_damaged_on_the_way_is_caught_by_its_sha256() {
    let objects = dataset();
    let mirror = Mirror::start(&objects);
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        &download_stage(&format!("retries = 1\nuids = [\"{}\"]", uid(3))),
    );
    mirror.fault(&objects[2].path(), &[Fault::FlipByte]);
    let ran = run(&sb, &mirror);
    ran.assert_ok();
    assert_eq!(mirror.requests(&objects[2].path()).len(), 2);
    let got = stored_glb(&sb, &mirror, 3);
    assert!(got == *objects[2].glb, "the damaged bytes were kept");
}

#[test]
fn ctrl_c_twice_during_downloads_keeps_the_cache_whole() {
    let objects: Vec<Object> = (0..12)
        .map(|n| Object::new(400 + n, n as usize, &["food-drink"], "Snack", 200_000))
        .collect();
    let mirror = Mirror::start(&objects);
    mirror.set_glb_latency(Duration::from_millis(1500));
    let sb = Sandbox::new();
    sb.write("p.toml", &download_stage("[executor]\nnet = 4"));
    let child = sb
        .command(&["run", "p.toml", "--json"])
        .env("HF_ENDPOINT", &mirror.endpoint)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while mirror.requests("glbs/").is_empty() {
        assert!(std::time::Instant::now() < deadline, "no GLB was requested");
        std::thread::sleep(Duration::from_millis(20));
    }
    crate::common::signal(&child, libc::SIGINT);
    std::thread::sleep(Duration::from_millis(100));
    crate::common::signal(&child, libc::SIGINT);
    let out: crate::common::Ran = child.wait_with_output().unwrap().into();
    assert_eq!(out.code, Some(130), "{}", out.stderr);
    assert_eq!(out.json()["interrupted"], true);
    assert!(out.count("objects", "ran") < 12);

    mirror.set_glb_latency(Duration::ZERO);
    let again = run(&sb, &mirror);
    again.assert_ok();
    assert_eq!(
        again.count("objects", "ran") + again.count("objects", "cached"),
        12
    );
    sb.mvc(&["status", "p.toml", "--verify"]).assert_ok();
}

#[test]
fn a_damaged_shard_in_the_cache_is_fetched_again() {
    // Long, varied descriptions make shard 5 large enough to be a blob, not inline.
    let mut objects = dataset();
    for n in 0..8u32 {
        let mut o = Object::new(500 + n, 5, &["food-drink"], "Soup", 2_000);
        o.description = (0..120)
            .map(|k| format!("{:08x}", (n * 1000 + k).wrapping_mul(2_654_435_761)))
            .collect();
        objects.push(o);
    }
    let mirror = Mirror::start(&objects);
    let sb = Sandbox::new();
    sb.write("p.toml", &download_stage(""));
    run(&sb, &mirror).assert_ok();

    // Damage the one gzip blob in the cache: the shard.
    let shard_blob = walk_files(&sb.cache().join("blobs"))
        .into_iter()
        .find(|p| std::fs::read(p).unwrap().starts_with(&[0x1f, 0x8b]))
        .expect("shard 5 is stored as a blob");
    let mut perms = std::fs::metadata(&shard_blob).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&shard_blob, perms).unwrap();
    let mut bytes = std::fs::read(&shard_blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&shard_blob, bytes).unwrap();

    // A new caption rule makes the selection read every shard again.
    mirror.clear_log();
    sb.write("p.toml", &download_stage("caption = \"name+description\""));
    let ran = run(&sb, &mirror);
    ran.assert_ok();
    assert_eq!(mirror.requests("metadata/000-005.json.gz").len(), 1);
    assert!(mirror.requests("glbs/").is_empty());
    assert!(
        ran.stderr.contains("treated as a cache miss"),
        "{}",
        ran.stderr
    );
    let m = manifest(&sb, &mirror);
    assert_eq!(m["objects"].as_array().unwrap().len(), 13);
    sb.mvc(&["status", "--verify"]).assert_ok();
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn files_that_stay_broken_are_reported_by_name() {
    let objects = dataset();
    let mirror = Mirror::start(&objects);
    // A shard that always arrives cut short, and a GLB the server refuses.
    mirror.fault(
        "metadata/000-077.json.gz",
        &[Fault::Truncate, Fault::Truncate, Fault::Truncate],
    );
    mirror.fault(&objects[3].path(), &[Fault::Status(403)]);
    let sb = Sandbox::new();
    sb.write("p.toml", &download_stage(""));
    let first = run(&sb, &mirror);
    assert_eq!(first.code, Some(1));
    let failures = first.json()["failures"].as_array().unwrap().clone();
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert_eq!(failures[0]["stage"], "objects.metadata");
    // Without all its shards the selection does not run (it would lose their objects).
    assert_eq!(failures[1]["stage"], "objects.select");
    assert_eq!(failures[1]["blocked"], true);
    let error = failures[0]["error"].as_str().unwrap();
    assert!(
        error.contains("metadata/000-077.json.gz from http://127.0.0.1"),
        "{error}"
    );
    assert!(error.contains("not valid gzip"), "{error}");
    assert_eq!(mirror.requests("metadata/000-077.json.gz").len(), 3);
    assert!(first.json()["not_expanded"]["objects"].is_string());

    // The mirror is fixed: the shard comes, then the 403 is a recorded item failure.
    let second = run(&sb, &mirror);
    assert_eq!(second.code, Some(1));
    let failures = second.json()["failures"].as_array().unwrap().clone();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let refused = &failures[0];
    assert_eq!(refused["item"], uid(4).as_str());
    assert!(
        refused["error"].as_str().unwrap().contains("HTTP 403"),
        "{refused}"
    );
    assert!(
        refused["error"].as_str().unwrap().contains("HF_TOKEN"),
        "{refused}"
    );
    // A third run does not ask again for the refused file.
    mirror.clear_log();
    let third = run(&sb, &mirror);
    third.assert_ok();
    assert!(mirror.log().is_empty());
}

#[test]
fn later_stages_read_the_glbs_and_the_captions() {
    let objects = dataset();
    let mirror = Mirror::start(&objects);
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        &format!(
            "{}{SIZES_STAGE}{}",
            download_stage("limit = 2"),
            r#"
[stage.captions]
kind = "command"
inputs = ["objects.select"]
per_item = false
cmd = 'grep -c "\"caption\"" "$MVC_IN_OBJECTS_SELECT/selection/manifest.json" > "$MVC_OUT/n"'
"#
        ),
    );
    let ran = run(&sb, &mirror);
    ran.assert_ok();
    assert_eq!(ran.count("sizes", "ran"), 2);
    assert_eq!(ran.count("captions", "ran"), 1);
    let out = sb.path().join("out");
    sb.mvc(&["export", "p.toml", "captions", out.to_str().unwrap()])
        .assert_ok();
    assert_eq!(
        std::fs::read_to_string(out.join("all/n")).unwrap().trim(),
        "2"
    );
    sb.mvc(&["export", "p.toml", "sizes", out.to_str().unwrap()])
        .assert_ok();
    let first = object_uids(&manifest(&sb, &mirror))[0].clone();
    let o = objects.iter().find(|o| o.uid == first).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join(&first).join("size"))
            .unwrap()
            .trim(),
        o.glb.len().to_string()
    );
}

#[test]
fn uids_can_come_from_a_file() {
    let objects = dataset();
    let mirror = Mirror::start(&objects);
    let sb = Sandbox::new();
    sb.write(
        "uids.txt",
        &format!("# two objects\n{}\n\n{}\n", uid(6), uid(3)),
    );
    sb.write("p.toml", &download_stage("uids = \"uids.txt\""));
    let ran = run(&sb, &mirror);
    ran.assert_ok();
    let mut want = vec![uid(3), uid(6)];
    want.sort();
    assert_eq!(object_uids(&manifest(&sb, &mirror)), want);

    sb.write("uids.txt", &format!("{}\nnot-a-uid\n", uid(6)));
    let bad = sb.mvc(&["plan", "p.toml"]);
    assert_eq!(bad.code, Some(1));
    assert!(
        bad.stderr
            .contains("uids file `uids.txt` line 2: `not-a-uid` is not an Objaverse uid"),
        "{}",
        bad.stderr
    );
}

#[test]
fn a_whole_file_left_before_it_was_stored_is_not_fetched_again() {
    let objects = dataset();
    let mirror = Mirror::start(&objects);
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        &download_stage(&format!("uids = [\"{}\"]", uid(3))),
    );
    // As if a run had been killed after the download and before storing it.
    let pizza = &objects[2];
    let url = format!(
        "{}/datasets/allenai/objaverse/resolve/main/{}",
        mirror.endpoint,
        pizza.path()
    );
    let partial = sb.cache().join("partial");
    std::fs::create_dir_all(&partial).unwrap();
    let part = partial.join(format!("{}.part", blake3::hash(url.as_bytes()).to_hex()));
    std::fs::write(&part, &*pizza.glb).unwrap();
    // And beside it, what the download began against (its ETag and the hub's SHA-256).
    let sha256 = mvc::text::hex(&<sha2::Sha256 as sha2::Digest>::digest(&*pizza.glb));
    std::fs::write(
        part.with_extension("part.validator"),
        serde_json::json!({ "etag": format!("\"{sha256}\""), "sha256": sha256 }).to_string(),
    )
    .unwrap();
    run(&sb, &mirror).assert_ok();
    let asked = mirror.requests(&pizza.path());
    assert_eq!(asked.len(), 1);
    assert_eq!(
        asked[0].range.as_deref(),
        Some(&*format!("bytes={}-", pizza.glb.len()))
    );
    let out = sb.path().join("out");
    sb.mvc(&["export", "p.toml", "objects", out.to_str().unwrap()])
        .assert_ok();
    let got = std::fs::read(out.join(uid(3)).join(format!("{}.glb", uid(3)))).unwrap();
    assert!(got == *pizza.glb);
    // The partial file became the blob.
    assert_eq!(std::fs::read_dir(&partial).unwrap().count(), 0);
}

#[test]
fn uids_from_a_hostile_mirror_name_nothing() {
    // A mirror whose metadata lists "uids" that are paths, or not uids at all, among good
    // food objects: they are left out with the reason before they name a file or folder.
    let mut objects = dataset();
    let hostile = [
        "../../escaped",
        "/tmp/mvc-escaped",
        "NOT-A-UID-ÄÖÜ-but-32-bytes-long",
    ];
    for (k, bad) in hostile.iter().enumerate() {
        let mut o = Object::new(100 + k as u32, 3, &["food-drink"], "Bad", 3_000);
        o.uid = bad.to_string();
        objects.push(o);
    }
    let mirror = Mirror::start(&objects);
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        &format!(
            "{}{SIZES_STAGE}{}",
            download_stage(""),
            r#"
[stage.everything]
kind = "command"
inputs = ["objects"]
per_item = false
cmd = 'ls "$MVC_IN_OBJECTS" | wc -l > "$MVC_OUT/n"'
"#
        ),
    );
    let ran = run(&sb, &mirror);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    let failures = ran.json()["failures"].as_array().unwrap().clone();
    for bad in hostile {
        let f = failures
            .iter()
            .find(|f| f["stage"] == "objects" && f["item"] == bad)
            .unwrap_or_else(|| panic!("{bad} is not reported: {failures:?}"));
        let error = f["error"].as_str().unwrap();
        assert!(
            error.contains("is not an Objaverse uid (32 lower-case hexadecimal digits)")
                || error.contains("ids name directories"),
            "{bad}: {error}"
        );
    }
    // The five good food objects went on.
    assert_eq!(ran.count("sizes", "ran"), 5, "{}", ran.stderr);
    assert_eq!(ran.count("everything", "ran"), 1);
    let out = sb.path().join("out");
    sb.mvc(&["export", "p.toml", "everything", out.to_str().unwrap()])
        .assert_ok();
    assert_eq!(
        std::fs::read_to_string(out.join("all/n")).unwrap().trim(),
        "5"
    );
    // Nothing was written outside the sandbox's cache and export folders.
    assert!(!Path::new("/tmp/mvc-escaped").exists());
    assert!(!Path::new("/tmp/mvc-escaped.glb").exists());
    let top: BTreeSet<String> = std::fs::read_dir(sb.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        top,
        ["cache", "out", "p.toml", "runs"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        "files appeared beside the cache"
    );
    assert!(!sb.path().parent().unwrap().join("escaped.glb").exists());
    // An export of the objects writes only under its target, one folder per good object.
    let glbs = sb.path().join("glbs");
    sb.mvc(&["export", "p.toml", "objects", glbs.to_str().unwrap()])
        .assert_ok();
    for entry in walk(&glbs) {
        assert!(entry.starts_with(&glbs), "{}", entry.display());
    }
    let exported: usize = std::fs::read_dir(&glbs)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_dir())
        .count();
    assert_eq!(exported, 5);
}

/// Every path under `dir`, canonicalised (a `..` that escaped would show).
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path().canonicalize().unwrap();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// Gzip of a JSON object whose one string expands to `expanded` bytes: a few hundred KB on
/// the wire. Made of concatenated gzip members (one member of a MiB of `0`, repeated), which
/// gzip readers take as one stream.
fn gzip_bomb(expanded: u64) -> Vec<u8> {
    use crate::common::mirror::gzip;
    let block = gzip(&vec![b'0'; 1 << 20]);
    let mut bomb = gzip(br#"{"a":""#);
    for _ in 0..expanded.div_ceil(1 << 20) {
        bomb.extend_from_slice(&block);
    }
    bomb.extend_from_slice(&gzip(br#""}"#));
    bomb
}

/// A metadata shard that a hostile mirror makes into a gzip bomb (valid gzip of valid JSON,
/// a few MB sent, far more once expanded) is refused by name once it expands past the
/// limit, instead of being read whole into memory.
#[test]
fn a_gzip_bomb_is_refused_by_name() {
    use mvc::stages::download::objaverse::MAX_EXPANDED;
    let objects = dataset();
    let mirror = Mirror::start(&objects);
    let bomb = gzip_bomb(MAX_EXPANDED + (64 << 20));
    assert!(bomb.len() < 8 << 20, "the bomb is small on the wire");
    mirror.put("metadata/000-077.json.gz", bomb);
    let sb = Sandbox::new();
    sb.write("p.toml", &download_stage(""));
    let ran = run(&sb, &mirror);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    let failures = ran.json()["failures"].as_array().unwrap().clone();
    assert_eq!(failures[0]["stage"], "objects.metadata", "{failures:?}");
    let error = failures[0]["error"].as_str().unwrap();
    assert!(error.contains("metadata/000-077.json.gz"), "{error}");
    assert!(
        error.contains("expands to more than 512.0 MiB when decompressed"),
        "{error}"
    );
    assert!(error.contains("HF_ENDPOINT"), "{error}");
}

/// A file this machine cannot write (here the name of its partial download is taken by a
/// folder, which no permission lets a file replace) is not recorded as the object's
/// failure: the item fails for this run with a message that says whose problem it is, and
/// the next run fetches it.
#[test]
fn a_local_write_error_is_not_the_objects_failure() {
    let objects = dataset();
    let mirror = Mirror::start(&objects);
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        &download_stage(&format!("uids = [\"{}\"]", uid(1))),
    );
    let url = format!(
        "{}/datasets/allenai/objaverse/resolve/main/{}",
        mirror.endpoint,
        objects[0].path()
    );
    let blocker = sb
        .cache()
        .join("partial")
        .join(format!("{}.part", blake3::hash(url.as_bytes()).to_hex()));
    std::fs::create_dir_all(&blocker).unwrap();
    let first = run(&sb, &mirror);
    assert_eq!(first.code, Some(1), "{}", first.stderr);
    let failures = first.json()["failures"].as_array().unwrap().clone();
    let failure = failures
        .iter()
        .find(|f| f["item"] == uid(1).as_str())
        .unwrap_or_else(|| panic!("{failures:?}"));
    let error = failure["error"].as_str().unwrap();
    assert!(error.contains("this machine's problem"), "{error}");
    assert!(error.contains("free disk space"), "{error}");

    std::fs::remove_dir_all(&blocker).unwrap();
    let second = run(&sb, &mirror);
    second.assert_ok();
    assert_eq!(second.count("objects", "ran"), 1, "{}", second.stderr);
}

/// An endpoint found unreachable is remembered for a while (one message, not one retry
/// loop per object), then tried again: a worker that lived through an outage downloads
/// again once the network is back, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_tried_again_after_a_while() {
    use mvc::hf::{FetchError, HubClient, RetryPolicy};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let policy = RetryPolicy {
        retries: 0,
        remember_unreachable: Duration::from_millis(500),
        ..RetryPolicy::default()
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let client = HubClient::new(&endpoint, "datasets/a/b", "main", None, policy).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f");
    let meter = mvc::meter::ByteMeter::default();
    let kill = tokio_util::sync::CancellationToken::new();
    let url = client.url("f");
    let fetch = || client.fetch_url_to_file(&url, &dest, &meter, &kill);
    match fetch().await {
        Err(FetchError::Transient(why)) => assert!(why.contains("cannot reach"), "{why}"),
        other => panic!("{other:?}"),
    }
    // The network comes back.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = conn.read(&mut request).await;
            let _ = conn
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
                )
                .await;
        }
    });
    // Within the memory: the same message at once, no request.
    match fetch().await {
        Err(FetchError::Transient(why)) => assert!(why.contains("cannot reach"), "{why}"),
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(fetch().await.unwrap(), 5);
    assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
}
