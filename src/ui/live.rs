//! The page's view of a run: what the engine feeds every [`RunView`] (counts per stage,
//! failures as they happen, notes, the report at the end), kept in one place that the pages
//! and the event stream read. [`UiView`] wraps the terminal's display, so a run with `--ui`
//! shows the same numbers in both; nothing here is a second model of a run.
//!
//! Readers never slow the run: the engine's side only copies counts under a short lock and
//! bumps a version; the JSON a reader gets is built at most once per version, and a reader
//! that falls behind simply gets the latest one (a `watch` channel keeps no backlog).

use crate::exec::plan::PlanReport;
use crate::exec::resolve::Counts;
use crate::exec::summary::{FailureLine, RunReport};
use crate::exec::view::RunView;
use crate::exec::workflow::Workflow;
use crate::store::records::{RunOutcome, now_ms};
use indexmap::IndexMap;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Failures kept for the page (their count is always exact): a run where every one of a
/// million items fails must not keep a million lines for a page that shows groups.
pub const FAILURES_KEPT: usize = 10_000;
/// Notes kept (the newest).
const NOTES_KEPT: usize = 20;
/// Failure groups sent with each snapshot; the failures page pages through the rest.
pub const GROUPS_SENT: usize = 50;

/// One stage as the page shows it.
#[derive(Clone, Debug)]
pub struct StageLive {
    pub name: String,
    pub kind: String,
    pub inputs: Vec<String>,
    pub total: u64,
    pub counts: Counts,
    /// Why its items are not known yet.
    pub deferred: Option<String>,
    /// When its first task finished here, and how many had then: its rate counts from there.
    first_done: Option<(Instant, u64)>,
}

/// Where the run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Nothing runs: the page shows a cache (`mvc ui`).
    Idle,
    Running,
    Ok,
    Failed,
    Interrupted,
}

/// Everything the page knows of the run.
#[derive(Debug)]
pub struct LiveState {
    pub version: u64,
    pub pipeline: String,
    pub pipeline_path: String,
    pub stages: Vec<StageLive>,
    pub phase: Phase,
    started: Instant,
    pub started_ms: u64,
    /// Set when the run is over.
    elapsed: Option<Duration>,
    pub failures: Vec<FailureLine>,
    pub failures_total: u64,
    /// The plan's reasons by stage (cause → tasks), as `mvc plan` prints them; empty until
    /// the plan behind the page is done.
    pub reasons: IndexMap<String, IndexMap<String, u64>>,
    pub notes: VecDeque<String>,
    /// What train and evaluate stages left out, and why (from the report at the end).
    pub left_out: IndexMap<String, String>,
    /// Set when the page serves a cache: where the running run's page is, or that none runs.
    pub about: Option<String>,
}

/// The shared state and its change signal.
pub struct Live {
    state: Mutex<LiveState>,
    changed: watch::Sender<u64>,
    /// The snapshot JSON of the last version asked for.
    cached: Mutex<(u64, Arc<str>)>,
}

impl Live {
    /// The page of a run of `workflow` that is about to start (`phase` Running), or of a
    /// cache (`Idle`).
    pub fn new(workflow: &Workflow, phase: Phase) -> Arc<Live> {
        Arc::new(Live {
            state: Mutex::new(state_of(workflow, phase)),
            changed: watch::Sender::new(1),
            cached: Mutex::new((0, Arc::from(""))),
        })
    }

    /// Changes the state and tells every reader.
    pub fn change(&self, f: impl FnOnce(&mut LiveState)) {
        self.change_if(|s| {
            f(s);
            true
        });
    }

    /// Lets `f` change the state, and tells the readers only when it says it did.
    pub fn change_if(&self, f: impl FnOnce(&mut LiveState) -> bool) {
        let version = {
            let mut state = self.state.lock().expect("the page's state lock");
            if !f(&mut state) {
                return;
            }
            state.version += 1;
            state.version
        };
        self.changed.send_replace(version);
    }

    /// A new run of `workflow` on the same page (`mvc serve` runs again after its file
    /// changed): its stages, counts and failures start afresh.
    pub fn restart(&self, workflow: &Workflow) {
        let fresh = state_of(workflow, Phase::Running);
        self.change(|s| {
            let version = s.version;
            *s = fresh;
            s.version = version;
        });
    }

    /// What a plan says: each stage's reasons, `failures` the cache recorded and, for a page
    /// of a cache (`counts`), each stage's totals and counts too.
    pub fn apply_plan(&self, plan: &PlanReport, failures: &[FailureLine], counts: bool) {
        self.change(|s| {
            s.reasons = plan
                .stages
                .iter()
                .map(|(name, p)| (name.clone(), p.reasons.clone()))
                .collect();
            // A run that ended first has listed every failure in its report already.
            if matches!(s.phase, Phase::Running | Phase::Idle) {
                for line in failures {
                    add_failure(s, line);
                }
            }
            if !counts {
                return;
            }
            for stage in &mut s.stages {
                if let Some(p) = plan.stages.get(&stage.name) {
                    stage.total = p.total;
                    stage.deferred = p.not_expanded.clone();
                    stage.counts = Counts {
                        cached: p.cached,
                        to_run: p.to_run,
                        known_failed: p.failed_skipped,
                        ..Counts::default()
                    };
                }
            }
        });
    }

    /// Reads the state.
    pub fn read<T>(&self, f: impl FnOnce(&LiveState) -> T) -> T {
        f(&self.state.lock().expect("the page's state lock"))
    }

    /// A receiver that wakes on every change (the event stream's).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The snapshot as JSON, built once per version whoever asks.
    pub fn snapshot_json(&self) -> Arc<str> {
        let version = *self.changed.borrow();
        let mut cached = self.cached.lock().expect("the snapshot cache lock");
        if cached.0 != version || cached.1.is_empty() {
            let json = self
                .read(|s| serde_json::to_string(&Snapshot::of(s)))
                .expect("snapshots always serialise");
            *cached = (version, Arc::from(json));
        }
        cached.1.clone()
    }
}

/// What the page knows of a run of `workflow` before the engine has said anything.
fn state_of(workflow: &Workflow, phase: Phase) -> LiveState {
    let stages = workflow
        .order
        .iter()
        .map(|&s| {
            let stage = &workflow.stages[s];
            StageLive {
                name: stage.name.clone(),
                kind: stage.kind.kind().to_string(),
                inputs: stage.inputs.clone(),
                total: 0,
                counts: Counts::default(),
                deferred: None,
                first_done: None,
            }
        })
        .collect();
    LiveState {
        version: 1,
        pipeline: workflow.name.clone(),
        pipeline_path: workflow.path.display().to_string(),
        stages,
        phase,
        started: Instant::now(),
        started_ms: now_ms(),
        elapsed: None,
        failures: Vec::new(),
        failures_total: 0,
        reasons: IndexMap::new(),
        notes: VecDeque::new(),
        left_out: IndexMap::new(),
        about: None,
    }
}

impl LiveState {
    /// Seconds since the run began, or its length once over.
    pub fn elapsed_s(&self) -> f64 {
        self.elapsed
            .unwrap_or_else(|| self.started.elapsed())
            .as_secs_f64()
    }

    /// The failures grouped as the run's summary groups them: by stage and error (blocked
    /// items by stage); the failures themselves before the items they blocked, the largest
    /// groups first.
    pub fn failure_groups(&self) -> Vec<FailureGroup<'_>> {
        let mut groups: IndexMap<(&str, &str, bool), FailureGroup> = IndexMap::new();
        for f in &self.failures {
            let error = if f.blocked {
                "blocked: an item it reads failed"
            } else {
                f.error.as_str()
            };
            let group = groups
                .entry((f.stage.as_str(), error, f.earlier))
                .or_insert_with(|| FailureGroup {
                    stage: &f.stage,
                    error,
                    earlier: f.earlier,
                    blocked: f.blocked,
                    count: 0,
                    lines: Vec::new(),
                });
            group.count += 1;
            if group.lines.len() < 5 {
                group.lines.push(f);
            }
        }
        let mut groups: Vec<FailureGroup> = groups.into_values().collect();
        groups.sort_by(|a, b| a.blocked.cmp(&b.blocked).then(b.count.cmp(&a.count)));
        groups
    }
}

/// Failures of one stage that failed alike.
#[derive(Debug)]
pub struct FailureGroup<'a> {
    pub stage: &'a str,
    pub error: &'a str,
    pub earlier: bool,
    /// Items that did not run because an item they read failed.
    pub blocked: bool,
    pub count: u64,
    /// The first few, for their items and logs.
    pub lines: Vec<&'a FailureLine>,
}

/// A stage's numbers on the page (JSON for the event stream, the same for the first load).
#[derive(Debug, Serialize)]
pub struct StageNumbers {
    pub name: String,
    pub kind: String,
    pub total: u64,
    pub cached: u64,
    pub ran: u64,
    pub running: u64,
    /// Not yet resolved and not running: queued, or waiting on upstream tasks.
    pub waiting: u64,
    /// Failed here, failed in an earlier run, or blocked by an upstream failure.
    pub failed: u64,
    /// Tasks per second since its first finished here.
    pub rate: Option<f64>,
    pub eta_s: Option<f64>,
    pub deferred: Option<String>,
}

impl StageNumbers {
    pub fn of(s: &StageLive) -> StageNumbers {
        let c = &s.counts;
        let failed = c.all_failed();
        let done = c.cached + c.ran + failed;
        let rate = s.first_done.and_then(|(at, before)| {
            let secs = at.elapsed().as_secs_f64();
            let since = (c.ran + c.failed).saturating_sub(before);
            (secs > 0.5 && since > 0).then(|| since as f64 / secs)
        });
        let left = s.total.saturating_sub(done);
        StageNumbers {
            name: s.name.clone(),
            kind: s.kind.clone(),
            total: s.total,
            cached: c.cached,
            ran: c.ran,
            running: c.running,
            waiting: left.saturating_sub(c.running),
            failed,
            eta_s: rate.filter(|_| left > 0).map(|r| left as f64 / r),
            rate,
            deferred: s.deferred.clone(),
        }
    }
}

/// What the event stream sends, and `/state.json` answers: totals, never every task.
#[derive(Debug, Serialize)]
pub struct Snapshot<'a> {
    pub version: u64,
    pub pipeline: &'a str,
    pub phase: Phase,
    pub elapsed_s: f64,
    pub stages: Vec<StageNumbers>,
    pub failures_total: u64,
    pub failure_groups: Vec<GroupJson<'a>>,
    pub notes: &'a VecDeque<String>,
}

#[derive(Debug, Serialize)]
pub struct GroupJson<'a> {
    pub stage: &'a str,
    pub error: &'a str,
    pub earlier: bool,
    pub count: u64,
    pub items: Vec<ItemJson<'a>>,
}

#[derive(Debug, Serialize)]
pub struct ItemJson<'a> {
    pub item: &'a str,
    /// The task's key (hex): its page is `/task/KEY`.
    pub key: Option<String>,
    /// Its log's digest: `/log/DIGEST`.
    pub log: Option<String>,
}

impl<'a> Snapshot<'a> {
    pub fn of(s: &'a LiveState) -> Snapshot<'a> {
        Snapshot {
            version: s.version,
            pipeline: &s.pipeline,
            phase: s.phase,
            elapsed_s: s.elapsed_s(),
            stages: s.stages.iter().map(StageNumbers::of).collect(),
            failures_total: s.failures_total,
            failure_groups: s
                .failure_groups()
                .into_iter()
                .take(GROUPS_SENT)
                .map(|g| GroupJson {
                    stage: g.stage,
                    error: g.error,
                    earlier: g.earlier,
                    count: g.count,
                    items: g
                        .lines
                        .iter()
                        .map(|l| ItemJson {
                            item: &l.item,
                            key: l.key.map(|k| k.to_hex()),
                            log: l.stderr.map(|d| d.to_hex()),
                        })
                        .collect(),
                })
                .collect(),
            notes: &s.notes,
        }
    }
}

/// Keeps a failure (up to [`FAILURES_KEPT`]) and counts it.
pub fn add_failure(state: &mut LiveState, line: &FailureLine) {
    state.failures_total += 1;
    if state.failures.len() < FAILURES_KEPT {
        state.failures.push(line.clone());
    }
}

/// The terminal's display and the page, fed together by the engine.
pub struct UiView {
    inner: Box<dyn RunView>,
    live: Arc<Live>,
}

impl UiView {
    pub fn new(inner: Box<dyn RunView>, live: Arc<Live>) -> UiView {
        UiView { inner, live }
    }
}

impl RunView for UiView {
    fn set_stages(&mut self, totals: &[u64], deferred: &[Option<String>]) {
        self.inner.set_stages(totals, deferred);
        self.live.change(|s| {
            for (i, stage) in s.stages.iter_mut().enumerate() {
                stage.total = totals.get(i).copied().unwrap_or(0);
                stage.deferred = deferred.get(i).cloned().flatten();
            }
        });
    }
    fn set_bytes(&mut self, bytes: Vec<(u64, u64)>) {
        self.inner.set_bytes(bytes);
    }
    fn update(&mut self, counts: &[Counts]) {
        self.inner.update(counts);
        // Most updates change nothing (a tick with no task finished): readers are not woken
        // for those.
        self.live.change_if(|s| {
            let mut changed = false;
            for (stage, c) in s.stages.iter_mut().zip(counts) {
                if stage.counts == *c {
                    continue;
                }
                if stage.first_done.is_none() && c.ran + c.failed > 0 {
                    stage.first_done = Some((Instant::now(), c.ran + c.failed));
                }
                stage.counts = *c;
                changed = true;
            }
            changed
        });
    }
    fn note(&self, line: &str) {
        self.inner.note(line);
        self.live.change(|s| {
            if s.notes.len() == NOTES_KEPT {
                s.notes.pop_front();
            }
            s.notes.push_back(line.to_string());
        });
    }
    fn failed(&mut self, line: &FailureLine) {
        self.inner.failed(line);
        self.live.change(|s| add_failure(s, line));
    }
    fn close(&mut self) {
        self.inner.close();
    }
    fn finished(&mut self, report: &RunReport) {
        self.inner.finished(report);
        self.live.change(|s| finish(s, report));
    }
}

/// The run is over: its outcome, its length, and the report's full list of failures (with
/// those recorded by earlier runs and the items they blocked) and what was left out.
pub fn finish(state: &mut LiveState, report: &RunReport) {
    state.phase = match report.outcome {
        RunOutcome::Ok => Phase::Ok,
        RunOutcome::Failed => Phase::Failed,
        RunOutcome::Interrupted => Phase::Interrupted,
    };
    state.elapsed = Some(report.elapsed);
    state.failures.clear();
    state.failures_total = 0;
    for line in &report.failures {
        add_failure(state, line);
    }
    state.left_out = report.notes.clone();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(stage: &str, item: &str, error: &str, blocked: bool) -> FailureLine {
        FailureLine {
            stage: stage.into(),
            item: item.into(),
            error: error.into(),
            earlier: false,
            blocked,
            log: None,
            key: None,
            stderr: None,
        }
    }

    fn workflow() -> crate::exec::workflow::Workflow {
        crate::exec::workflow::Workflow {
            path: "p.toml".into(),
            name: "p".into(),
            cache_dir: "cache".into(),
            results_dir: "runs".into(),
            stages: Vec::new(),
            order: Vec::new(),
            source: String::new(),
            variants: Vec::new(),
            command: Vec::new(),
        }
    }

    fn state() -> LiveState {
        state_of(&workflow(), Phase::Running)
    }

    /// The failures come before what they blocked, however many items they blocked.
    #[test]
    fn failures_group_by_reason_with_causes_before_what_they_blocked() {
        let mut s = state();
        add_failure(&mut s, &line("objects", "broken", "exit 3", false));
        for i in 0..40 {
            add_failure(&mut s, &line("views", &format!("broken@{i}"), "x", true));
        }
        add_failure(&mut s, &line("objects", "other", "exit 3", false));
        add_failure(&mut s, &line("objects", "third", "not found", false));
        let groups = s.failure_groups();
        let shape: Vec<(&str, &str, u64)> =
            groups.iter().map(|g| (g.stage, g.error, g.count)).collect();
        assert_eq!(
            shape,
            [
                ("objects", "exit 3", 2),
                ("objects", "not found", 1),
                ("views", "blocked: an item it reads failed", 40)
            ]
        );
        assert_eq!(
            groups[2].lines.len(),
            5,
            "a group keeps its first few items"
        );
    }

    /// A run where a million items fail keeps a bounded list and sends a bounded snapshot;
    /// its count stays exact.
    #[test]
    fn a_million_failures_keep_the_page_small() {
        let mut s = state();
        for i in 0..1_000_000u32 {
            add_failure(
                &mut s,
                &line(
                    "views",
                    &format!("o{}@v", i % 50_000),
                    &format!("error {}", i % 977),
                    false,
                ),
            );
        }
        assert_eq!(s.failures_total, 1_000_000);
        assert_eq!(s.failures.len(), FAILURES_KEPT);
        let json = serde_json::to_string(&Snapshot::of(&s)).unwrap();
        assert!(json.len() < 64 * 1024, "{} bytes", json.len());
        assert!(json.contains("\"failures_total\":1000000"));
    }

    /// Readers are woken only when something changed.
    #[test]
    fn readers_wake_only_on_change() {
        let live = Live::new(&workflow(), Phase::Running);
        let rx = live.subscribe();
        let mut view = UiView::new(Box::new(crate::exec::view::NotesOnly), live.clone());
        view.update(&[]);
        assert!(!rx.has_changed().unwrap(), "nothing changed");
        view.failed(&line("s", "i", "e", false));
        assert!(rx.has_changed().unwrap());
        assert_eq!(live.read(|s| s.failures_total), 1);
        let first = live.snapshot_json();
        assert!(
            Arc::ptr_eq(&first, &live.snapshot_json()),
            "built once per version"
        );
    }
}
