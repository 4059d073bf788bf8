//! View columns (issue 30): after a new ring of views, a plan keys only the new views' tasks
//! and takes the others' counts from their columns' summaries. It must say what the full plan
//! says, and step aside for it whenever it cannot be sure.

use crate::common::glb::box_glb;
use crate::common::{Sandbox, fixture};
use serde_json::Value;

/// Two objects and one that fails for good, rendered from `polar` rings of two azimuths,
/// and every view embedded. `more` is appended (another stage).
fn pipeline(sb: &Sandbox, polar: &str, more: &str) -> String {
    for (name, half) in [("a", [0.5, 0.2, 0.3]), ("b", [0.3, 0.3, 0.3])] {
        std::fs::write(
            sb.path().join(format!("{name}.glb")),
            box_glb(half, [0.0; 3], 1.0),
        )
        .unwrap();
    }
    format!(
        r#"[pipeline]
name = "columns"
cache = "cache"

[stage.objects]
kind = "command"
items = ["a", "b", "broken"]
files = {{ a = "a.glb", b = "b.glb" }}
cmd = 'if [ "$MVC_ITEM" = broken ]; then echo "no mesh" >&2; exit 1; fi; eval cp "\$MVC_FILE_$(echo "$MVC_ITEM" | tr a-z A-Z)" "$MVC_OUT/model.glb"'

[stage.views]
kind = "render"
inputs = ["objects"]
backend = "builtin"
azimuths = [0, 180]
polar = [{polar}]
resolution = 64

[stage.embed]
kind = "embed"
inputs = ["views"]
model = "{}"
device = "cpu"
{more}"#,
        fixture::dir().display()
    )
}

fn plan(sb: &Sandbox, file: &str, more: &[&str]) -> Value {
    let mut args = vec!["plan", file, "--json"];
    args.extend_from_slice(more);
    sb.mvc(&args).assert_ok().json()
}

fn flag(plan: &Value, name: &str) -> bool {
    plan[name] == Value::Bool(true)
}

/// The plan of `file` by columns, checked against the full plan of the same, as JSON and as
/// text.
fn by_columns(sb: &Sandbox, file: &str) -> Value {
    let quick = plan(sb, file, &[]);
    assert!(flag(&quick, "from_columns"), "{quick}");
    let mut full = plan(sb, file, &["--full"]);
    assert!(!flag(&full, "from_columns"), "{full}");
    full.as_object_mut()
        .unwrap()
        .insert("from_columns".into(), Value::Bool(true));
    assert_eq!(quick, full);
    let text = |more: &[&str]| {
        let mut args = vec!["plan", file];
        args.extend_from_slice(more);
        sb.mvc(&args).assert_ok().stdout.clone()
    };
    assert_eq!(text(&[]), text(&["--full"]));
    quick
}

/// A run to its end: `broken` fails (the first time) and everything else is done.
fn run(sb: &Sandbox, file: &str) {
    sb.run_with_one_failed(file, "objects");
}

fn counts(plan: &Value, stage: &str) -> [u64; 4] {
    ["total", "cached", "to_run", "failed_skipped"]
        .map(|f| plan["stages"][stage][f].as_u64().unwrap_or(u64::MAX))
}

#[test]
fn a_new_ring_is_planned_by_its_columns_and_says_what_the_full_plan_says() {
    let sb = Sandbox::new();
    sb.write("p.toml", &pipeline(&sb, "60", ""));
    sb.write("ring.toml", &pipeline(&sb, "30, 60", ""));
    // Nothing recorded: no column summary to decide by.
    assert!(!flag(&plan(&sb, "ring.toml", &[]), "from_columns"));
    run(&sb, "p.toml");
    assert!(flag(&plan(&sb, "p.toml", &[]), "from_summaries"));

    // Two new views of two objects; the broken object's are blocked.
    let ring = by_columns(&sb, "ring.toml");
    for stage in ["views", "embed"] {
        assert_eq!(counts(&ring, stage), [12, 4, 4, 4], "{stage}: {ring}");
        assert_eq!(ring["stages"][stage]["reasons"]["new item"], 4, "{ring}");
        // Which views: the new ring's two cameras.
        let new: Vec<&str> = ring["stages"][stage]["new_views"]
            .as_array()
            .unwrap_or_else(|| panic!("{ring}"))
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(new.len(), 2, "{ring}");
        assert!(new[0].starts_with("az000-pol030"), "{ring}");
        assert!(new[1].starts_with("az180-pol030"), "{ring}");
    }
    let text = sb.mvc(&["plan", "ring.toml"]).assert_ok().stdout.clone();
    assert!(
        text.contains("views: 4 new item (new views: az000-pol030"),
        "{text}"
    );
    assert_eq!(counts(&ring, "objects"), [3, 2, 0, 1], "{ring}");

    // Run, and go back: the file's text differs from the last run's, the columns do not.
    run(&sb, "ring.toml");
    assert!(flag(&plan(&sb, "ring.toml", &[]), "from_summaries"));
    let back = by_columns(&sb, "p.toml");
    assert_eq!(counts(&back, "views"), [6, 4, 0, 2], "{back}");
    assert_eq!(counts(&back, "embed"), [6, 4, 0, 2], "{back}");

    // A view the index has seen before, without a column summary now (the last run did
    // not have it): the full plan finds its tasks cached.
    run(&sb, "p.toml");
    let seen = plan(&sb, "ring.toml", &[]);
    assert!(!flag(&seen, "from_columns"), "{seen}");
    assert_eq!(counts(&seen, "views"), [12, 8, 0, 4], "{seen}");
}

#[test]
fn what_view_columns_cannot_decide_is_left_to_the_full_plan() {
    let sb = Sandbox::new();
    sb.write("p.toml", &pipeline(&sb, "60", ""));
    run(&sb, "p.toml");
    let full_only = |file: &str, more: &[&str], stage: &str, expected: [u64; 4]| {
        let p = plan(&sb, file, more);
        assert!(!flag(&p, "from_columns"), "{file} {more:?}: {p}");
        assert!(!flag(&p, "from_summaries"), "{file} {more:?}: {p}");
        assert_eq!(counts(&p, stage), expected, "{file} {more:?}: {p}");
    };

    // The embeddings' own parameter changes while the renders stay: every embedding runs.
    sb.write(
        "background.toml",
        &pipeline(&sb, "60", "background = \"black\"\n"),
    );
    full_only("background.toml", &[], "embed", [6, 0, 4, 2]);

    // Failures to retry: the broken object runs again, and so would its views.
    sb.write("ring.toml", &pipeline(&sb, "30, 60", ""));
    full_only("ring.toml", &["--retry-failed"], "objects", [3, 2, 1, 0]);

    // A stage that reads every view at once is not made of columns.
    let all = "\n[stage.count]\nkind = \"command\"\ninputs = [\"embed\"]\nper_item = false\n\
               cmd = 'ls -R \"$MVC_IN_EMBED\" | wc -l > \"$MVC_OUT/n\"'\noutputs = [\"n\"]\n";
    sb.write("count.toml", &pipeline(&sb, "30, 60", all));
    full_only("count.toml", &[], "views", [12, 4, 4, 4]);

    // Without the presence filter nothing says a new view was never recorded.
    by_columns(&sb, "ring.toml");
    std::fs::remove_dir_all(sb.cache().join("presence")).unwrap();
    full_only("ring.toml", &[], "views", [12, 4, 4, 4]);
}
