//! Planning against Snakemake: the study's DAG shape (N objects x 36 views: render -> embed
//! per view, one gather) as a Snakefile of empty rules and as an mvc pipeline of `command`
//! stages; `snakemake -n` against `mvc plan` on a warm, fully cached state.
//!
//!     cargo bench --bench plan_snakemake                       # N = 100 and 1,000
//!     MVC_BENCH_N=100,1000,10000 cargo bench --bench plan_snakemake
//!     MVC_BENCH_SNAKEMAKE=none cargo bench --bench plan_snakemake   # mvc alone
//!
//! Snakemake is installed by this benchmark into a virtual environment
//! (`target/bench-venv`, from PyPI, version `SNAKEMAKE`) the first time; nothing else needs
//! it. When that fails (no `python3`, no network), the benchmark says so and times mvc alone.
//!
//! "Fully cached" for Snakemake: every output exists and is newer than its inputs, so
//! `snakemake -n` finds nothing to do (the benchmark checks that it says so). For mvc: the
//! pipeline ran once, and `mvc plan --json` reports nothing to run (checked too). Each tool
//! is timed as a fresh process, as a user runs it; the best of `MVC_BENCH_REPEATS` (default 3).

#[path = "common/timed.rs"]
mod timed;
#[path = "common/venv.rs"]
mod venv;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use timed::{Timed, group, timed};

/// The Snakemake release this comparison was measured with.
const SNAKEMAKE: &str = "9.27.1";
const VIEWS: usize = 36;

fn main() {
    let sizes: Vec<usize> = std::env::var("MVC_BENCH_N")
        .unwrap_or_else(|_| "100,1000".into())
        .split(',')
        .map(|n| {
            n.trim()
                .replace('_', "")
                .parse()
                .expect("MVC_BENCH_N: numbers")
        })
        .collect();
    let repeats: usize = std::env::var("MVC_BENCH_REPEATS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let snakemake = match std::env::var("MVC_BENCH_SNAKEMAKE").as_deref() {
        Ok("none") => None,
        _ => install_snakemake(),
    };
    let mvc = env!("CARGO_BIN_EXE_mvc");
    println!("plan_snakemake: N objects x {VIEWS} views, render -> embed per view, one gather");
    for n in sizes {
        let dir = tempfile::tempdir().expect("temp dir");
        let jobs = 2 * n * VIEWS + 1;
        println!("N = {} ({} jobs):", group(n as u64), group(jobs as u64));
        let ids = view_ids(n);

        let mvc_plan = mvc_side(mvc, dir.path(), &ids, repeats);
        println!(
            "  mvc plan:      best of {repeats} {:.3} s, peak RSS {} MB",
            mvc_plan.wall.as_secs_f64(),
            mvc_plan.peak_rss_kb / 1024
        );
        if let Some(snakemake) = &snakemake {
            let dry = snakemake_side(snakemake, &dir.path().join("snakemake"), n, &ids, repeats);
            println!(
                "  snakemake -n:  best of {repeats} {:.3} s, peak RSS {} MB",
                dry.wall.as_secs_f64(),
                dry.peak_rss_kb / 1024
            );
            println!(
                "  ratio: mvc plan is {:.1}x faster than snakemake -n (goal at N = 1,000: 50x)",
                dry.wall.as_secs_f64() / mvc_plan.wall.as_secs_f64()
            );
        }
    }
}

/// `o000000.v00` … : one id per (object, view), as the render stage's items.
fn view_ids(n: usize) -> Vec<String> {
    (0..n)
        .flat_map(|o| (0..VIEWS).map(move |v| format!("o{o:06}.v{v:02}")))
        .collect()
}

/// Runs the mvc pipeline once (every task a real `sh`), then times `mvc plan` on the cached
/// state and returns the best run.
fn mvc_side(mvc: &str, dir: &Path, ids: &[String], repeats: usize) -> Timed {
    let mut items = std::io::BufWriter::new(std::fs::File::create(dir.join("views.txt")).unwrap());
    for id in ids {
        writeln!(items, "{id}").unwrap();
    }
    items.flush().unwrap();
    std::fs::write(
        dir.join("p.toml"),
        r#"[pipeline]
name = "shape"

[stage.render]
kind = "command"
items_file = "views.txt"
cmd = 'echo "$MVC_ITEM" > "$MVC_OUT/r"'

[stage.embed]
kind = "command"
inputs = ["render"]
cmd = 'cp "$MVC_IN_RENDER/r" "$MVC_OUT/e"'

[stage.gather]
kind = "command"
inputs = ["embed"]
per_item = false
cmd = 'ls "$MVC_IN_EMBED" | wc -l > "$MVC_OUT/n"'
"#,
    )
    .unwrap();
    let first = timed(mvc, dir, &["run", "p.toml", "-q"]);
    assert_eq!(first.code, Some(0), "mvc run failed:\n{}", first.stderr);
    println!(
        "  (mvc's first run, every task a process: {:.1} s)",
        first.wall.as_secs_f64()
    );
    best_of(repeats, || {
        let plan = timed(mvc, dir, &["plan", "p.toml", "--json"]);
        assert_eq!(plan.code, Some(0), "mvc plan failed:\n{}", plan.stderr);
        let json: serde_json::Value = serde_json::from_str(plan.stdout.trim()).unwrap();
        for stage in ["render", "embed", "gather"] {
            assert_eq!(
                json["stages"][stage]["to_run"], 0,
                "not fully cached: {json}"
            );
        }
        plan
    })
}

/// Writes the Snakefile and every output (render, then embed, then gather, so that each
/// is newer than its input), then times `snakemake -n` and returns the best run.
fn snakemake_side(snakemake: &Path, dir: &Path, n: usize, ids: &[String], repeats: usize) -> Timed {
    std::fs::create_dir_all(dir.join("render")).unwrap();
    std::fs::create_dir_all(dir.join("embed")).unwrap();
    std::fs::write(
        dir.join("Snakefile"),
        format!(
            r#"IDS = [f"o{{o:06}}.v{{v:02}}" for o in range({n}) for v in range({VIEWS})]

rule all:
    input: "gather.txt"

rule gather:
    input: expand("embed/{{id}}", id=IDS)
    output: "gather.txt"
    shell: "true"

rule embed:
    input: "render/{{id}}"
    output: "embed/{{id}}"
    shell: "true"

rule render:
    output: "render/{{id}}"
    shell: "true"
"#
        ),
    )
    .unwrap();
    for stage in ["render", "embed"] {
        for id in ids {
            std::fs::write(dir.join(stage).join(id), id).unwrap();
        }
    }
    std::fs::write(dir.join("gather.txt"), ids.len().to_string()).unwrap();
    best_of(repeats, || {
        let dry = timed(snakemake, dir, &["-n", "-c1", "--quiet", "all"]);
        let said = format!("{}{}", dry.stdout, dry.stderr);
        assert_eq!(dry.code, Some(0), "snakemake -n failed:\n{said}");
        assert!(
            said.contains("Nothing to be done"),
            "snakemake found work to do (the state is not fully cached):\n{said}"
        );
        dry
    })
}

fn best_of(repeats: usize, mut run: impl FnMut() -> Timed) -> Timed {
    (0..repeats.max(1))
        .map(|_| run())
        .min_by_key(|t| t.wall)
        .expect("at least one run")
}

/// Snakemake in `target/bench-venv`, installed from PyPI the first time; `None` (with the
/// reason printed) when that cannot be done here.
fn install_snakemake() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-venv");
    let bin = venv.join("bin/snakemake");
    let installed = Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == SNAKEMAKE);
    if installed {
        return Some(bin);
    }
    println!(
        "installing snakemake {SNAKEMAKE} into {} (from PyPI)",
        venv.display()
    );
    let result = venv::install(&venv, &[&format!("snakemake=={SNAKEMAKE}")]);
    match result {
        Ok(()) => Some(bin),
        Err(e) => {
            println!("snakemake could not be installed, so mvc is timed alone: {e}");
            None
        }
    }
}
