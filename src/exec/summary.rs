//! What a run reports: counts per stage, failures, what was left out, and the summary
//! printed at the end (as text and JSON).

use super::ids::{StageId, TaskId};
use super::resolve::{Engine, State};
use super::workflow::Workflow;
use crate::store::records::*;
use anyhow::{Context, Result};
use indexmap::IndexMap;
use serde::Serialize;
use std::time::Duration;

/// One failed task, for the summary.
#[derive(Clone, Debug, Serialize)]
pub struct FailureLine {
    pub stage: String,
    pub item: String,
    pub error: String,
    /// `true` when the failure was recorded by an earlier run (not retried).
    pub earlier: bool,
    /// `true` when the task did not run because an upstream item failed.
    pub blocked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// The task's key (none for a blocked task, which may have none): what the page links.
    #[serde(skip)]
    pub key: Option<crate::task::TaskKey>,
    /// The digest of its kept stderr, which the page serves.
    #[serde(skip)]
    pub stderr: Option<crate::task::Digest>,
}

#[derive(Clone, Debug)]
pub struct RunReport {
    pub stages: IndexMap<String, StageCounts>,
    /// Tasks left unrun per stage (only after an interruption or a stop on failure).
    pub not_run: IndexMap<String, u64>,
    /// Stages whose items never became known (their source failed or did not run): why.
    pub deferred: IndexMap<String, String>,
    pub outcome: RunOutcome,
    /// Stages that make one result from what they read (train, evaluate, report) and have
    /// none, because they failed in this run or an earlier one: the run has no results.
    pub no_results: Vec<String>,
    /// Whether a stage that publishes results (a report) has them all the same: it left
    /// the failed stages out (a failed variant of a sweep).
    pub published: bool,
    pub failures: Vec<FailureLine>,
    /// What stages said about their results, by stage (a train stage: the objects it left
    /// out, and why).
    pub notes: IndexMap<String, String>,
    pub elapsed: Duration,
}

impl RunReport {
    pub fn ok(&self) -> bool {
        self.outcome == RunOutcome::Ok
    }

    /// The final JSON line of `mvc run --json`.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Json<'a> {
            stages: &'a IndexMap<String, StageCounts>,
            #[serde(skip_serializing_if = "IndexMap::is_empty")]
            not_expanded: &'a IndexMap<String, String>,
            ok: bool,
            interrupted: bool,
            #[serde(skip_serializing_if = "<[String]>::is_empty")]
            no_results: &'a [String],
            failures: &'a [FailureLine],
            #[serde(skip_serializing_if = "IndexMap::is_empty")]
            notes: &'a IndexMap<String, String>,
        }
        serde_json::to_string(&Json {
            stages: &self.stages,
            not_expanded: &self.deferred,
            ok: self.ok(),
            interrupted: self.outcome == RunOutcome::Interrupted,
            no_results: &self.no_results,
            failures: &self.failures,
            notes: &self.notes,
        })
        .expect("reports always serialise")
    }

    /// Writes `run.json` and `run.md` into the pipeline's results folder.
    pub fn write_results(&self, pipeline: &Workflow, record: &RunRecord) -> Result<()> {
        let dir = &pipeline.results_dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut json: serde_json::Value = serde_json::from_str(&self.to_json())?;
        json["pipeline"] = pipeline.name.clone().into();
        json["pipeline_file"] = pipeline.path.display().to_string().into();
        json["started"] = crate::store::records::format_time(record.started_ms).into();
        json["ended"] = crate::store::records::format_time(record.ended_ms).into();
        json["command"] = record.command.clone().into();
        std::fs::write(dir.join("run.json"), serde_json::to_vec_pretty(&json)?)?;
        let md = format!(
            "# Run of `{}`\n\n{} to {} ({}; the pipeline as it ran is pipeline.toml)\n\n    {}\n\n```\n{}```\n",
            pipeline.name,
            crate::store::records::format_time(record.started_ms),
            crate::store::records::format_time(record.ended_ms),
            pipeline.path.display(),
            crate::text::shell_line(&record.command),
            self.to_text()
        );
        std::fs::write(dir.join("run.md"), md)?;
        // The pipeline as it ran: the file, or with the run's --with and --set merged over it
        // (the file itself is never rewritten).
        std::fs::write(dir.join("pipeline.toml"), &pipeline.source)?;
        Ok(())
    }

    pub fn to_text(&self) -> String {
        use crate::text::group_digits as g;
        use std::fmt::Write as _;
        let mut out = String::new();
        let width = crate::text::name_width(self.stages.keys());
        let _ = writeln!(
            out,
            "{:<width$}  {:>9}  {:>9}  {:>9}  {:>9}",
            "stage", "total", "cached", "ran", "failed"
        );
        for (name, c) in &self.stages {
            let _ = write!(
                out,
                "{:<width$}  {:>9}  {:>9}  {:>9}  {:>9}",
                name,
                g(c.total),
                g(c.cached),
                g(c.ran),
                g(c.failed)
            );
            match (self.not_run.get(name), self.deferred.get(name)) {
                (_, Some(why)) => {
                    let _ = writeln!(out, "  (not expanded: {why})");
                }
                (Some(n), _) if *n > 0 => {
                    let _ = writeln!(out, "  ({} not run)", g(*n));
                }
                _ => out.push('\n'),
            }
        }
        self.failure_lines(&mut out);
        self.note_lines(&mut out);
        let elapsed = self.elapsed.as_secs_f64();
        let failed_list = || {
            self.no_results
                .iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = match self.outcome {
            RunOutcome::Failed if !self.no_results.is_empty() && self.published => writeln!(
                out,
                "\nresults without {} in {elapsed:.1}s: they failed (above) and the report \
                 leaves them out; fix what it says and run again (--retry-failed reruns a \
                 failure an earlier run recorded)",
                failed_list()
            ),
            RunOutcome::Failed if !self.no_results.is_empty() => writeln!(
                out,
                "\nno results in {elapsed:.1}s: {} failed (above); fix what it says and run \
                 again (--retry-failed reruns a failure an earlier run recorded)",
                failed_list()
            ),
            RunOutcome::Ok => writeln!(out, "\nok in {elapsed:.1}s"),
            RunOutcome::Failed => writeln!(out, "\nfailed in {elapsed:.1}s"),
            RunOutcome::Interrupted => writeln!(out, "\ninterrupted in {elapsed:.1}s"),
        };
        out
    }

    /// The failures, one line for the items of a stage that failed alike, at most 20 lines.
    fn failure_lines(&self, out: &mut String) {
        use crate::text::group_digits as g;
        use std::fmt::Write as _;
        if !self.failures.is_empty() {
            let _ = writeln!(out, "\nfailed:");
            const SHOWN: usize = 20;
            // Items of a stage failing with the same error are one line.
            let mut groups: IndexMap<(&str, &str, bool), Vec<&FailureLine>> = IndexMap::new();
            for f in &self.failures {
                // Items blocked by failures upstream (every view of an object whose download
                // failed) are one line per stage: their causes are listed above them. A
                // single one keeps its own line, which names its upstream.
                let error = if f.blocked {
                    "blocked: an item it reads failed (above)"
                } else {
                    f.error.as_str()
                };
                groups
                    .entry((f.stage.as_str(), error, f.earlier))
                    .or_default()
                    .push(f);
            }
            for ((stage, error, earlier), lines) in groups.iter().take(SHOWN) {
                let when = if *earlier {
                    " (recorded by an earlier run; --retry-failed to retry)"
                } else {
                    ""
                };
                let f = lines[0];
                match lines.len() {
                    // A group of one says its own error (a blocked item: which upstream).
                    1 => {
                        let _ = writeln!(out, "  {stage}/{}: {}{when}", f.item, f.error);
                    }
                    n => {
                        let _ = writeln!(
                            out,
                            "  {stage}: {} items ({}, …): {error}{when}",
                            g(n as u64),
                            f.item
                        );
                    }
                }
                if let Some(log) = &f.log {
                    let _ = writeln!(out, "      stderr: {log}");
                }
            }
            if groups.len() > SHOWN {
                let rest: usize = groups.values().skip(SHOWN).map(Vec::len).sum();
                let _ = writeln!(out, "  … and {} more", g(rest as u64));
            }
        }
    }

    /// The objects train and evaluate stages left out (one line for stages that say the
    /// same).
    fn note_lines(&self, out: &mut String) {
        use std::fmt::Write as _;
        if !self.notes.is_empty() {
            let _ = writeln!(
                out,
                "\nleft out (objects without every embedding; results.md lists every one):"
            );
            // Stages that say the same (every head of one split) are one line.
            let mut same: IndexMap<&str, Vec<&str>> = IndexMap::new();
            for (stage, note) in &self.notes {
                same.entry(note.as_str()).or_default().push(stage.as_str());
            }
            for (note, stages) in same {
                let note = note.replace('\n', "\n  ");
                let _ = writeln!(out, "  {}: {note}", stages.join(", "));
            }
        }
    }
}

/// What the kind says of a stage's successful tasks (the objects a head left out), when it
/// has something to say: the last such note.
fn result_note(engine: &Engine, node: &super::graph::StageNode) -> Option<String> {
    if !node.kind.has_result_notes() {
        return None;
    }
    let mut note = None;
    for t in node.tasks() {
        if !engine.state[t].is_success() {
            continue;
        }
        if let Ok(Some(result)) = engine.stored_result(t, &engine.keys[t])
            && let Some(said) = node.kind.result_note(&engine.store, &result.outputs)
        {
            note = Some(said);
        }
    }
    note
}

/// A line for each failed (or blocked) task of a stage, with its stderr's path when kept.
fn failure_lines(engine: &Engine, node: &super::graph::StageNode) -> Vec<FailureLine> {
    node.tasks()
        .filter(|&t| engine.state[t].is_failure())
        .map(|t| failure_line(engine, t))
        .collect()
}

/// The failures a planned engine knows of: recorded by earlier runs, and the items they
/// block (what the page of a cache lists).
pub fn known_failures(engine: &Engine) -> Vec<FailureLine> {
    let g = &engine.graph;
    g.order
        .iter()
        .flat_map(|&s| failure_lines(engine, &g.stages[s]))
        .collect()
}

/// The line of one failed (or blocked) task: its error, and its log when one was kept.
pub(super) fn failure_line(engine: &Engine, t: TaskId) -> FailureLine {
    let state = engine.state[t];
    let stderr = (state != State::Blocked)
        .then(|| engine.store.failure(&engine.keys[t]).ok().flatten())
        .flatten()
        .and_then(|f| f.stderr);
    FailureLine {
        stage: engine.graph.stages[engine.graph.task_stage[t]].name.clone(),
        item: engine.graph.item(t).to_string(),
        error: engine.notes.get(&t).cloned().unwrap_or_default(),
        earlier: state == State::KnownFailure,
        blocked: state == State::Blocked,
        log: stderr.map(|d| engine.store.blobs().path(&d).display().to_string()),
        key: (state != State::Blocked).then(|| engine.keys[t]),
        stderr,
    }
}

pub(super) fn summarize(
    engine: &Engine,
    order: &[StageId],
    interrupted: bool,
    elapsed: Duration,
) -> RunReport {
    let g = &engine.graph;
    let mut stages = IndexMap::new();
    let mut not_run = IndexMap::new();
    let mut deferred = IndexMap::new();
    let mut failures = Vec::new();
    let mut notes = IndexMap::new();
    let mut new_failures = false;
    let mut no_results = Vec::new();
    for &s in order {
        let node = &g.stages[s];
        if let Some(note) = result_note(engine, node) {
            notes.insert(node.name.clone(), note);
        }
        let c = &engine.counts[s];
        stages.insert(
            node.name.clone(),
            StageCounts {
                total: node.len() as u64,
                cached: c.cached,
                ran: c.ran,
                failed: c.all_failed(),
            },
        );
        not_run.insert(node.name.clone(), node.len() as u64 - c.resolved());
        if let Some(why) = &node.deferred {
            deferred.insert(node.name.clone(), why.clone());
        }
        // Blocked tasks trace back to a failure: a new one counts there; one recorded by an
        // earlier run (a permanently broken item) does not fail every later run.
        if c.failed > 0 {
            new_failures = true;
        }
        if c.all_failed() == 0 {
            continue;
        }
        // A recorded failure of a broken object does not fail later runs; a stage with one
        // result (a head, an evaluation, the report) that has none does, every time.
        if !node.kind.fans_out() {
            no_results.push(node.name.clone());
        }
        failures.extend(failure_lines(engine, node));
    }
    let outcome = if interrupted {
        RunOutcome::Interrupted
    } else if new_failures
        || !no_results.is_empty()
        || not_run.values().any(|n| *n > 0)
        || !deferred.is_empty()
    {
        RunOutcome::Failed
    } else {
        RunOutcome::Ok
    };
    let published = g
        .stages
        .iter()
        .any(|n| n.kind.publishes_results() && n.tasks().any(|t| engine.state[t].is_success()));
    RunReport {
        stages,
        not_run,
        deferred,
        outcome,
        no_results,
        published,
        failures,
        notes,
        elapsed,
    }
}
