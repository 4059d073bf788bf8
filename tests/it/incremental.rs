//! Acceptance 2 and 3: a thousand items, a per-item and an all-at-once stage downstream;
//! what runs after no change, after one item's parameter changes, and when a rerun
//! reproduces the same bytes (early cutoff). Counts are read from `--json`.

use crate::common::Sandbox;
use std::fmt::Write as _;

const N: usize = 1000;

/// `changed`: item index → extra TOML for that item's `params` table.
fn pipeline(changed: &[(usize, &str)]) -> String {
    let mut items = String::new();
    for i in 0..N {
        let extra = changed
            .iter()
            .find(|(j, _)| *j == i)
            .map(|(_, e)| *e)
            .unwrap_or("");
        let v = if extra.contains("v =") {
            String::new()
        } else {
            format!("v = {i}")
        };
        let sep = if !v.is_empty() && !extra.is_empty() {
            ", "
        } else {
            ""
        };
        let _ = writeln!(
            items,
            "  {{ id = \"i{i:04}\", params = {{ {v}{sep}{extra} }} }},"
        );
    }
    format!(
        r#"[pipeline]
name = "thousand"

[executor]
cpu = 4

[stage.gen]
kind = "command"
items = [
{items}]
cmd = 'echo "$MVC_ITEM $MVC_PARAM_V" > "$MVC_OUT/v.txt"'

[stage.double]
kind = "command"
inputs = ["gen"]
cmd = 'read id v < "$MVC_IN_GEN/v.txt"; echo "$id $((v * 2))" > "$MVC_OUT/d.txt"'

[stage.total]
kind = "command"
inputs = ["double"]
per_item = false
cmd = 'cat "$MVC_IN_DOUBLE"/*/d.txt | awk "{{ s += \$2 }} END {{ print s }}" > "$MVC_OUT/sum.txt"'
"#
    )
}

fn ran(r: &crate::common::Ran) -> (u64, u64, u64) {
    (
        r.count("gen", "ran"),
        r.count("double", "ran"),
        r.count("total", "ran"),
    )
}

fn exported_sum(sb: &Sandbox, name: &str) -> u64 {
    sb.mvc(&["export", "p.toml", "total", name]).assert_ok();
    sb.read(&format!("{name}/all/sum.txt"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn thousand_items_rerun_exactly_what_changed() {
    let sb = Sandbox::new();
    sb.write("p.toml", &pipeline(&[]));

    // Before anything ran: every task is new, downstream ones too (they wait for their
    // upstream, but run whatever it makes).
    let plan = sb.mvc(&["plan", "p.toml", "--json"]);
    plan.assert_ok();
    let json = plan.json();
    for (stage, n) in [("gen", 1000), ("double", 1000), ("total", 1)] {
        assert_eq!(json["stages"][stage]["to_run"], n, "{stage}");
        assert_eq!(
            json["stages"][stage]["reasons"],
            serde_json::json!({"new item": n}),
            "{stage}"
        );
    }

    // First run: everything runs.
    let first = sb.mvc(&["run", "p.toml", "--json"]);
    first.assert_ok();
    assert_eq!(ran(&first), (1000, 1000, 1));
    assert_eq!(first.count("gen", "total"), 1000);
    assert_eq!(first.count("total", "cached"), 0);
    assert_eq!(first.json()["ok"], true);
    let base: u64 = (0..N as u64).map(|v| 2 * v).sum();
    assert_eq!(exported_sum(&sb, "out1"), base);

    // Second run: nothing runs.
    let second = sb.mvc(&["run", "p.toml", "--json"]);
    second.assert_ok();
    assert_eq!(ran(&second), (0, 0, 0));
    assert_eq!(second.count("gen", "cached"), 1000);
    assert_eq!(second.count("double", "cached"), 1000);
    assert_eq!(second.count("total", "cached"), 1);

    // One item's parameter changes: the plan says what will run and why.
    sb.write("p.toml", &pipeline(&[(42, "v = 1042")]));
    let plan = sb.mvc(&["plan", "p.toml", "--json"]);
    plan.assert_ok();
    let json = plan.json();
    assert_eq!(json["stages"]["gen"]["to_run"], 1);
    assert_eq!(json["stages"]["gen"]["cached"], 999);
    assert_eq!(
        json["stages"]["gen"]["reasons"],
        serde_json::json!({"parameter changed: params.v": 1})
    );
    assert_eq!(json["stages"]["double"]["to_run"], 1);
    assert_eq!(json["stages"]["double"]["cached"], 999);
    assert_eq!(
        json["stages"]["double"]["reasons"],
        serde_json::json!({"upstream reruns: gen": 1})
    );
    assert_eq!(json["stages"]["total"]["to_run"], 1);
    assert_eq!(json["stages"]["total"]["failed_skipped"], 0);

    let why = sb.mvc(&["why", "p.toml", "gen", "i0042"]);
    why.assert_ok();
    assert!(
        why.stdout
            .contains("status: to run (parameter changed: params.v)"),
        "{}",
        why.stdout
    );
    assert!(why.stdout.contains("params.v: 42 → 1042"), "{}", why.stdout);
    let why_other = sb.mvc(&["why", "p.toml", "gen", "i0041"]);
    assert!(
        why_other.stdout.contains("status: cached"),
        "{}",
        why_other.stdout
    );

    let third = sb.mvc(&["run", "p.toml", "--json"]);
    third.assert_ok();
    assert_eq!(ran(&third), (1, 1, 1));
    assert_eq!(third.count("gen", "cached"), 999);
    assert_eq!(third.count("double", "cached"), 999);
    assert_eq!(exported_sum(&sb, "out3"), base + 2 * 1000);

    // After the run, `why` shows the change as what replaced the earlier result.
    let why = sb.mvc(&["why", "p.toml", "gen", "i0042"]);
    assert!(why.stdout.contains("status: cached"), "{}", why.stdout);
    assert!(why.stdout.contains("params.v: 42 → 1042"), "{}", why.stdout);

    // Early cutoff: a parameter the command ignores changes the key of one item, which
    // reruns and writes the same bytes; nothing downstream is invalidated.
    sb.write(
        "p.toml",
        &pipeline(&[(42, "v = 1042"), (7, "note = \"ignored\"")]),
    );
    let plan = sb.mvc(&["plan", "p.toml", "--json"]);
    assert_eq!(plan.count("gen", "to_run"), 1);
    let fourth = sb.mvc(&["run", "p.toml", "--json"]);
    fourth.assert_ok();
    assert_eq!(ran(&fourth), (1, 0, 0));
    assert_eq!(fourth.count("double", "cached"), 1000);
    assert_eq!(fourth.count("total", "cached"), 1);

    // And then nothing at all.
    let fifth = sb.mvc(&["run", "p.toml", "--json"]);
    assert_eq!(ran(&fifth), (0, 0, 0));
    let plan = sb.mvc(&["plan", "p.toml", "--json"]);
    for stage in ["gen", "double", "total"] {
        assert_eq!(plan.count(stage, "to_run"), 0);
    }

    let verify = sb.mvc(&["status", "p.toml", "--verify"]);
    verify.assert_ok();
    assert!(verify.stdout.contains("clean"), "{}", verify.stdout);
}

#[test]
fn reordering_items_keeps_every_result() {
    let sb = Sandbox::new();
    let stage = |items: &str| {
        format!(
            "[stage.gen]\nkind = \"command\"\nitems = [{items}]\ncmd = 'echo $MVC_ITEM > $MVC_OUT/x'\n\
             [stage.all]\nkind = \"command\"\ninputs = [\"gen\"]\nper_item = false\n\
             cmd = 'ls $MVC_IN_GEN > $MVC_OUT/list'\n"
        )
    };
    sb.write("p.toml", &stage("\"a\", \"b\", \"c\""));
    sb.mvc(&["run", "p.toml", "--json"]).assert_ok();
    sb.write("p.toml", &stage("\"c\", \"a\", \"b\", \"d\""));
    let r = sb.mvc(&["run", "p.toml", "--json"]);
    r.assert_ok();
    assert_eq!(r.count("gen", "ran"), 1, "only the new item runs");
    assert_eq!(r.count("gen", "cached"), 3);
    assert_eq!(r.count("all", "ran"), 1);
    sb.write("p.toml", &stage("\"d\", \"c\", \"b\", \"a\""));
    let r = sb.mvc(&["run", "p.toml", "--json"]);
    assert_eq!(r.count("gen", "ran"), 0);
    assert_eq!(
        r.count("all", "ran"),
        0,
        "order of items does not change the gather's key"
    );
}
