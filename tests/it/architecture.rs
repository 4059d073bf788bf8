//! Keeps the layers of `src/` (ARCHITECTURE.md, "Code map"): every top-level module imports
//! only modules on floors below its own, so no two modules import each other and the engine
//! knows no stage kind. A failure names the file, the line and the import.
//!
//! Imports are read as text: `crate::NAME` (and `mvc::NAME` in `main.rs`) wherever it is
//! written, in `use` lines and in paths alike; comments are skipped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The floors, bottom first. A module may import the modules of lower floors only.
const FLOORS: &[&[&str]] = &[
    // Leaves: keys, text, diagnostics, slots, meters.
    &[
        "text",
        "diag",
        "meter",
        "resources",
        "numpy_random",
        "signals",
    ],
    &["task", "hf", "disk", "memory"],
    // Leaves that compute: rendering, CLIP, heads, metrics and tables.
    &["render", "clip"],
    &["heads"],
    &["report"],
    // The only module that touches sled and the blob files.
    &["store"],
    // Hugging Face models fetched into the store.
    &["models"],
    // The engine: graph, resolve, plan, run, slots, launcher; it names no kind.
    &["exec"],
    // The kinds, one file or folder each, and their registry.
    &["stages"],
    // The pipeline file.
    &["pipeline"],
    // Coordinator, workers, Slurm.
    &["remote"],
    // The page: a view of runs above the engine; the commands serve it, and a coordinator
    // is handed its routes.
    &["ui"],
    // One file per subcommand, and the output layer.
    &["commands"],
    // The binary: parses arguments and calls one command.
    &["main"],
];

/// Modules `main.rs` may name beyond `commands` (none: everything goes through a command).
const MAIN_ALSO: &[&str] = &[];

fn floor_of(module: &str) -> Option<usize> {
    FLOORS.iter().position(|f| f.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`lib` for `lib.rs`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The code of a line without its `//` comment (string literals holding `//` are rare in
/// import lines; a false cut only hides an import after it on the same line).
fn code_of(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

/// The modules a line names after `prefix::` (`crate::a::b` names `a`; `crate::{a, b}` both).
fn named_modules(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let pat = format!("{prefix}::");
    let mut rest = code;
    while let Some(i) = rest.find(&pat) {
        let before = rest[..i].chars().last();
        rest = &rest[i + pat.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

/// Every import of `src/` that breaks the floors, as `file:line: message`.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut problems = Vec::new();
    let mut edges: BTreeSet<(String, String)> = BTreeSet::new();
    let root = src.parent().unwrap_or(src);
    for file in &files {
        let module = module_of(src, file);
        // Named from the repository root (`src/exec/run.rs:12`).
        let shown = file.strip_prefix(root).unwrap_or(file).display();
        if module == "lib" {
            continue;
        }
        let Some(floor) = floor_of(&module) else {
            problems.push(format!(
                "{shown}: module `{module}` has no floor; add it to FLOORS in tests/it/architecture.rs \
                 and to the floors of ARCHITECTURE.md"
            ));
            continue;
        };
        let prefix = if module == "main" { "mvc" } else { "crate" };
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = code_of(line);
            if code.trim_start().starts_with("//") {
                continue;
            }
            if module != "store" && (code.contains("Tree::") || code.contains("store::index::")) {
                problems.push(format!(
                    "{shown}:{}: the index's trees are the store's own; add a method to `Store` \
                     that says what it is for",
                    n + 1
                ));
            }
            for named in named_modules(code, prefix) {
                if named == module || named == "self" || named == "super" {
                    continue;
                }
                let at = format!("{shown}:{}", n + 1);
                let Some(other) = floor_of(&named) else {
                    problems.push(format!(
                        "{at}: `{module}` imports `{named}`, which has no floor"
                    ));
                    continue;
                };
                edges.insert((module.clone(), named.clone()));
                if module == "main" && named != "commands" && !MAIN_ALSO.contains(&named.as_str()) {
                    problems.push(format!(
                        "{at}: main.rs names `{named}`; main.rs only parses arguments and calls \
                         one command (put the work in commands/)"
                    ));
                } else if other >= floor {
                    problems.push(format!(
                        "{at}: `{module}` imports `{named}`, which is {} it (floors, bottom first: \
                         {}); move the shared part down, or pass it in",
                        if other == floor {
                            "on the same floor as"
                        } else {
                            "above"
                        },
                        FLOORS
                            .iter()
                            .map(|f| f.join(" "))
                            .collect::<Vec<_>>()
                            .join(" < ")
                    ));
                }
            }
        }
    }
    for (a, b) in &edges {
        if a < b && edges.contains(&(b.clone(), a.clone())) {
            problems.push(format!("`{a}` and `{b}` import each other"));
        }
    }
    problems
}

#[test]
fn modules_import_only_downwards() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let problems = violations(&src);
    assert!(
        problems.is_empty(),
        "{} import(s) break the layers:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The checker itself catches an upward import, a same-floor import, a grouped import, a
/// raw index tree outside the store and a pair that import each other, naming file and line.
#[test]
fn the_checker_sees_upward_imports() {
    let dir = std::env::temp_dir().join(format!("mvc-architecture-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("store")).unwrap();
    std::fs::create_dir_all(dir.join("exec")).unwrap();
    std::fs::write(
        dir.join("store/mod.rs"),
        "use crate::task::Digest;\n// use crate::exec::x; (a comment)\nuse crate::exec::run;\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("exec/mod.rs"),
        "use crate::{store, stages::StageKind};\nfn f() { crate::store::x(); }\n",
    )
    .unwrap();
    std::fs::write(dir.join("clip.rs"), "use crate::render::camera;\n").unwrap();
    std::fs::write(
        dir.join("commands.rs"),
        "fn f(s: &Store) { s.index().len(Tree::Runs); }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("main.rs"),
        "use mvc::exec::run;\nuse mvc::commands;\n",
    )
    .unwrap();
    let problems = violations(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    let text = problems.join("\n");
    let has = |needle: &str| problems.iter().any(|p| p.contains(needle));
    assert!(
        has("store/mod.rs:3: `store` imports `exec`, which is above it"),
        "{text}"
    );
    assert!(!has("store/mod.rs:2"), "a comment is not an import: {text}");
    assert!(!has("store/mod.rs:1"), "store may import task: {text}");
    assert!(
        has("exec/mod.rs:1: `exec` imports `stages`, which is above it"),
        "{text}"
    );
    assert!(
        has("clip.rs:1: `clip` imports `render`, which is on the same floor as it"),
        "{text}"
    );
    assert!(has("main.rs:1: main.rs names `exec`"), "{text}");
    assert!(
        has("commands.rs:1: the index's trees are the store's own"),
        "{text}"
    );
    assert!(!has("main.rs:2"), "{text}");
    assert!(has("`exec` and `store` import each other"), "{text}");
    assert_eq!(problems.len(), 6, "{text}");
}

/// Files of `src/` that may write to stdout: the output layer, and the process launcher's
/// helper (a child process whose stdout is its protocol with mvc).
const STDOUT_WRITERS: &[&str] = &["commands/output.rs", "exec/launcher.rs"];

/// Every write to stdout outside [`STDOUT_WRITERS`], and every `eprintln!` under `remote/`
/// (its lines for people go through `remote::Say`, which the command makes), as
/// `file:line: message`. Comments are skipped.
fn stray_prints(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut problems = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(file).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = code_of(line);
            let to_stdout = writes_stdout(code);
            if to_stdout && !STDOUT_WRITERS.contains(&rel.as_str()) {
                problems.push(format!(
                    "src/{rel}:{}: writes to stdout; results go through commands::output",
                    i + 1
                ));
            }
            if rel.starts_with("remote/") && code.contains("eprintln!(") {
                problems.push(format!(
                    "src/{rel}:{}: prints to stderr; say it through remote::Say",
                    i + 1
                ));
            }
        }
    }
    problems
}

/// Whether a line of code prints to stdout: `print!`/`println!` (not `eprint!`), or takes
/// stdout for anything but asking whether it is a terminal.
fn writes_stdout(code: &str) -> bool {
    let macro_at = |name: &str| {
        code.match_indices(name).any(|(i, _)| {
            !code[..i]
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
        })
    };
    let takes_stdout = code
        .match_indices("stdout()")
        .any(|(i, m)| !code[i + m.len()..].starts_with(".is_terminal()"));
    macro_at("println!(") || macro_at("print!(") || takes_stdout
}

#[test]
fn only_the_output_layer_writes_to_stdout() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let problems = stray_prints(&src);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_print_checker_sees_a_stray_print() {
    let dir = std::env::temp_dir().join(format!("mvc-prints-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("remote")).unwrap();
    std::fs::create_dir_all(dir.join("commands")).unwrap();
    std::fs::write(
        dir.join("store.rs"),
        "// println!(\"a comment\")\nfn f() { println!(\"x\"); }\nfn g() { eprintln!(\"y\"); }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("remote/slurm.rs"),
        "fn f() { eprintln!(\"x\"); }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("commands/output.rs"),
        "fn f() { println!(\"x\"); }\n",
    )
    .unwrap();
    let problems = stray_prints(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].contains("remote/slurm.rs:1: prints to stderr"),
        "{problems:?}"
    );
    assert!(
        problems[1].contains("store.rs:2: writes to stdout"),
        "{problems:?}"
    );
}
