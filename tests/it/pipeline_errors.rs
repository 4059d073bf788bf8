//! Bad pipeline files: each error names the file, line and column, and says what to do.

use crate::common::Sandbox;

/// Plans `text` as `p.toml` and returns the error line mvc printed.
fn plan_error(text: &str) -> String {
    let sb = Sandbox::new();
    sb.write("p.toml", text);
    let ran = sb.mvc(&["plan", "p.toml"]);
    assert_eq!(
        ran.code,
        Some(1),
        "expected a failure; stdout:\n{}",
        ran.stdout
    );
    assert!(
        !sb.cache().exists(),
        "an invalid pipeline must be rejected before the cache is touched"
    );
    ran.stderr.trim().to_string()
}

#[test]
fn malformed_toml_names_file_line_and_column() {
    let err = plan_error("[stage.a]\nkind = \"command\"\ncmd = \"echo\nitems = [\"x\"]\n");
    assert!(err.starts_with("error: p.toml:3:"), "{err}");
}

#[test]
fn unknown_field_names_the_closest_valid_one() {
    let err = plan_error("[stage.a]\nkind = \"command\"\nitems = [\"x\"]\ncmdd = \"echo\"\n");
    assert!(
        err.starts_with("error: p.toml:4:1: unknown field `cmdd`"),
        "{err}"
    );
    assert!(err.contains("the closest valid name is `cmd`"), "{err}");
}

#[test]
fn unknown_top_level_table_names_the_closest_valid_one() {
    let err = plan_error("[stages.a]\nkind = \"command\"\n");
    assert!(err.contains("unknown field `stages`"), "{err}");
    assert!(err.contains("the closest valid name is `stage`"), "{err}");
}

#[test]
fn unknown_kind_lists_the_valid_kinds() {
    let err = plan_error("[stage.a]\nkind = \"comand\"\ncmd = \"x\"\n");
    assert!(
        err.starts_with("error: p.toml:2:8: unknown stage kind `comand`"),
        "{err}"
    );
    assert!(err.contains("valid kinds: command"), "{err}");
    assert!(err.contains("did you mean `command`?"), "{err}");
}

#[test]
fn missing_kind_names_the_stage() {
    let err = plan_error("[pipeline]\nname = \"x\"\n\n[stage.gen]\ncmd = \"x\"\n");
    assert!(
        err.starts_with("error: p.toml:4:1: stage `gen` has no `kind`"),
        "{err}"
    );
    assert!(err.contains("command"), "{err}");
}

#[test]
fn input_naming_a_missing_stage() {
    let err = plan_error(
        "[stage.gen]\nkind = \"command\"\nitems = [\"a\"]\ncmd = \"x\"\n\n\
         [stage.use]\nkind = \"command\"\ninputs = [\"gne\"]\ncmd = \"x\"\n",
    );
    assert!(err.starts_with("error: p.toml:8:11:"), "{err}");
    assert!(
        err.contains("input `gne` is not a stage of this pipeline"),
        "{err}"
    );
    assert!(err.contains("did you mean `gen`?"), "{err}");
}

#[test]
fn cycle_names_its_stages_in_order() {
    let err = plan_error(
        "[stage.a]\nkind = \"command\"\ninputs = [\"c\"]\ncmd = \"x\"\n\
         [stage.b]\nkind = \"command\"\ninputs = [\"a\"]\ncmd = \"x\"\n\
         [stage.c]\nkind = \"command\"\ninputs = [\"b\"]\ncmd = \"x\"\n",
    );
    assert!(
        err.contains("the stages form a cycle: a → b → c → a"),
        "{err}"
    );
    assert!(
        err.contains("`a` at line 1, `b` at line 5, `c` at line 9"),
        "{err}"
    );
}

#[test]
fn empty_pipeline_says_what_to_add() {
    let err = plan_error("[pipeline]\nname = \"empty\"\n");
    assert!(
        err.contains("p.toml: the pipeline declares no stages"),
        "{err}"
    );
    assert!(err.contains("[stage.NAME]"), "{err}");
}

#[test]
fn wrong_type_names_line_and_column() {
    let err = plan_error(
        "[stage.a]\nkind = \"command\"\nitems = [\"x\"]\ncmd = \"x\"\ntimeout = \"soon\"\n",
    );
    assert!(err.starts_with("error: p.toml:5:11:"), "{err}");
    assert!(err.contains("expected f64"), "{err}");
}

#[test]
fn stage_without_items_or_inputs_says_what_to_give() {
    let err = plan_error("[stage.a]\nkind = \"command\"\ncmd = \"x\"\n");
    assert!(
        err.starts_with("error: p.toml:1:1: stage `a` has nothing to fan out over"),
        "{err}"
    );
}

#[test]
fn duplicate_item_is_named() {
    let err =
        plan_error("[stage.a]\nkind = \"command\"\nitems = [\"x\", \"y\", \"x\"]\ncmd = \"x\"\n");
    assert!(err.contains("item `x` is listed twice"), "{err}");
}

#[test]
fn missing_pipeline_file() {
    let sb = Sandbox::new();
    let ran = sb.mvc(&["plan", "nope.toml"]);
    assert_eq!(ran.code, Some(1));
    assert!(
        ran.stderr
            .contains("nope.toml: cannot read the pipeline file"),
        "{}",
        ran.stderr
    );
}

/// Command lines with a bad flag value, the flag, and what the error says of its value.
const BAD_FLAGS: &[(&[&str], &str, &str)] = &[
    (
        &["run", "p.toml", "--grace", "inf"],
        "--grace",
        "not a finite number",
    ),
    (
        &["run", "p.toml", "--grace", "-5"],
        "--grace",
        "at least 0 seconds",
    ),
    (
        &["run", "p.toml", "--grace", "1e9"],
        "--grace",
        "more than a week",
    ),
    (
        &["run", "p.toml", "--grace", "soon"],
        "--grace",
        "not a number of seconds",
    ),
    (
        &[
            "run",
            "p.toml",
            "--listen",
            "127.0.0.1:0",
            "--lease-timeout",
            "nan",
        ],
        "--lease-timeout",
        "not a finite number",
    ),
    (
        &[
            "run",
            "p.toml",
            "--listen",
            "127.0.0.1:0",
            "--lease-timeout",
            "0",
        ],
        "--lease-timeout",
        "more than 0 seconds",
    ),
    (
        &["run", "p.toml", "--slots", "cpu=two"],
        "--slots",
        "not a whole number",
    ),
    (
        &["run", "p.toml", "--slots", "tpu=1"],
        "--slots",
        "unknown slot `tpu`",
    ),
    (
        &["run", "p.toml", "--jobs", "0"],
        "--jobs",
        "0 is not in 1..=",
    ),
    (
        &[
            "serve",
            "p.toml",
            "--listen",
            "127.0.0.1:0",
            "--slots",
            "cpu=99999999",
        ],
        "--slots",
        "more than any machine has",
    ),
    (
        &[
            "serve",
            "p.toml",
            "--listen",
            "127.0.0.1:0",
            "--lease-timeout",
            "-inf",
        ],
        "--lease-timeout",
        "not a finite number",
    ),
    (
        &["gc", "--keep-runs", "0"],
        "--keep-runs",
        "0 is not in 1..=",
    ),
    (
        &[
            "embed",
            "--model",
            "m",
            "--out",
            "o.safetensors",
            "--batch",
            "0",
        ],
        "--batch",
        "0 is not in 1..=",
    ),
    (
        &[
            "embed",
            "--model",
            "m",
            "--out",
            "o.safetensors",
            "--background",
            "pink",
        ],
        "--background",
        "is not a colour",
    ),
];

/// Every flag that takes seconds or slots is checked when it is parsed: `inf`, `nan`,
/// negative and absurd values are usage errors (status 2) that name the flag, before the
/// pipeline or the cache is touched (they used to panic, or be accepted).
#[test]
fn bad_flag_values_name_the_flag() {
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        "[stage.a]\nkind = \"command\"\nitems = [\"x\"]\ncmd = \"echo > $MVC_OUT/o\"\n",
    );
    for (args, flag, says) in BAD_FLAGS {
        let ran = sb.mvc(args);
        assert_eq!(ran.code, Some(2), "{args:?}: {}", ran.stderr);
        assert!(
            ran.stderr.contains(&format!("for '{flag} ")) && ran.stderr.contains(says),
            "{args:?}: {}",
            ran.stderr
        );
        assert!(!ran.stderr.contains("panicked"), "{}", ran.stderr);
    }
    assert!(!sb.cache().exists(), "a bad flag must not touch the cache");
}

/// With `--json`, an error is one line of JSON on stdout (beside `error: …` on stderr): a
/// pipeline file's error with its file, line and column; one without a position; a command
/// line clap refuses (exit status 2, `usage`). Help stays help.
#[test]
fn json_errors_are_one_line_of_json() {
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        "[stage.a]\nkind = \"command\"\nitems = [\"x\"]\ncmdd = \"echo\"\n",
    );

    let ran = sb.mvc(&["plan", "p.toml", "--json"]);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    let error = &ran.json_error();
    assert_eq!(error["file"], "p.toml", "{error}");
    assert_eq!(error["line"], 4, "{error}");
    assert_eq!(error["column"], 1, "{error}");
    assert_eq!(error["usage"], false, "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("unknown field `cmdd`"), "{message}");
    assert!(
        ran.stderr
            .starts_with("error: p.toml:4:1: unknown field `cmdd`"),
        "{}",
        ran.stderr
    );

    let ran = sb.mvc(&["run", "nope.toml", "--json"]);
    assert_eq!(ran.code, Some(1));
    let error = &ran.json_error();
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("nope.toml: cannot read the pipeline file"),
        "{error}"
    );
    assert!(error.get("line").is_none(), "{error}");
    assert!(!error["causes"].as_array().unwrap().is_empty(), "{error}");

    let ran = sb.mvc(&["status", "--cache", "c", "--jobs", "2", "--json"]);
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    let error = &ran.json_error();
    assert_eq!(error["usage"], true, "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("--jobs"),
        "{error}"
    );

    let ran = sb.mvc(&["run", "p.toml", "--grace", "inf", "--json"]);
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    let error = &ran.json_error();
    assert!(
        error["message"].as_str().unwrap().contains("--grace"),
        "{error}"
    );

    let ran = sb.mvc(&["--help", "--json"]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(ran.stdout.contains("Usage:"), "{}", ran.stdout);
}
