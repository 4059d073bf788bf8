//! The user's manual stays whole: every relative link of the README, the guide (`docs/`) and
//! ARCHITECTURE.md reaches a file, every `#anchor` a heading of the page it names, the README
//! stays short, and its test command is the one `.ci/run` runs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The pages whose links are checked: the README, ARCHITECTURE.md, every page of the guide,
/// and the other markdown files they reach.
fn pages() -> Vec<PathBuf> {
    let root = Path::new(REPO);
    let mut pages = vec![
        root.join("README.md"),
        root.join("ARCHITECTURE.md"),
        root.join("BENCHMARKS.md"),
        root.join("cache/README.md"),
    ];
    let mut guide: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    guide.sort();
    pages.extend(guide);
    pages
}

/// The lines of a markdown page outside fenced code blocks, with their numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            lines.push((i + 1, line));
        }
    }
    lines
}

/// A line without its inline code spans (a link written inside backticks is not a link).
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
        } else if !in_code {
            out.push(c);
        }
    }
    out
}

/// The targets of `[text](target)` and `![alt](target)` on a line.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut targets = Vec::new();
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        let target = after[..end].split_whitespace().next().unwrap_or("");
        targets.push(target.to_string());
        rest = &after[end..];
    }
    targets
}

/// GitHub's anchor for a heading: lower case, punctuation dropped (but `-` and `_`), spaces
/// as hyphens; a repeated heading gets `-1`, `-2`, ….
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let Some(title) = line.strip_prefix('#').map(|t| t.trim_start_matches('#')) else {
            continue;
        };
        if !title.starts_with(' ') {
            continue;
        }
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut unique = slug.clone();
        let mut n = 1;
        while seen.contains(&unique) {
            unique = format!("{slug}-{n}");
            n += 1;
        }
        seen.insert(unique);
    }
    seen
}

/// What is wrong with one page's links, as `page:line: …` lines.
fn broken_links(page: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
    let shown = page
        .strip_prefix(REPO)
        .unwrap_or(page)
        .display()
        .to_string();
    let mut problems = Vec::new();
    for (number, line) in prose_lines(&text) {
        for target in link_targets(line) {
            if target.contains("://") || target.starts_with("mailto:") || target.is_empty() {
                continue;
            }
            let (file, anchor) = match target.split_once('#') {
                Some((file, anchor)) => (file, Some(anchor)),
                None => (target.as_str(), None),
            };
            let linked = if file.is_empty() {
                page.to_path_buf()
            } else {
                page.parent().unwrap().join(file)
            };
            if !linked.exists() {
                problems.push(format!(
                    "{shown}:{number}: `{target}`: no file {}",
                    linked.display()
                ));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            let headings = anchors(&std::fs::read_to_string(&linked).unwrap_or_default());
            if !headings.contains(anchor) {
                problems.push(format!(
                    "{shown}:{number}: `{target}`: no heading `#{anchor}` in {} (it has: {})",
                    linked.display(),
                    headings.into_iter().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    problems
}

#[test]
fn every_relative_link_and_anchor_of_the_manual_resolves() {
    let pages = pages();
    assert!(pages.len() > 6, "the guide has its pages: {pages:?}");
    let problems: Vec<String> = pages.iter().flat_map(|p| broken_links(p)).collect();
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_link_checker_sees_a_missing_file_and_a_missing_heading() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("other.md"),
        "# Other page\n\n## A `code` heading\n",
    )
    .unwrap();
    let page = dir.path().join("page.md");
    std::fs::write(
        &page,
        "# Page\n\n[ok](other.md#a-code-heading) [here](#page)\n\
         [gone](missing.md) [no anchor](other.md#nowhere)\n\
         ```\n[in code](also-missing.md)\n```\n`[span](missing-too.md)`\n",
    )
    .unwrap();
    let problems = broken_links(&page);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].contains(":4: `missing.md`: no file"),
        "{}",
        problems[0]
    );
    assert!(
        problems[1].contains(":4: `other.md#nowhere`: no heading `#nowhere`"),
        "{}",
        problems[1]
    );
}

#[test]
fn the_readme_is_short_and_its_test_command_is_the_one_ci_runs() {
    let readme = std::fs::read_to_string(Path::new(REPO).join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= 300,
        "README.md has {lines} lines; the rest belongs in docs/"
    );
    let ci = std::fs::read_to_string(Path::new(REPO).join(".ci/run")).unwrap();
    let ci_command = ci
        .lines()
        .rev()
        .find(|l| l.starts_with("cargo "))
        .expect(".ci/run ends with a cargo command");
    assert!(
        readme.contains(&format!("\n    {ci_command}\n")),
        "README.md does not show .ci/run's test command `{ci_command}` as a command line"
    );
}
