//! `mvc run`: the local executor. Resolves tasks as their inputs become known, runs the
//! ones not cached in units on tokio within the resource slots, and records every result
//! as soon as it exists, so that an interrupted run loses only what was running.

use super::graph::{MISSING, Sources, TaskGraph};
use super::launcher::Launcher;
use super::progress::{PLAIN_INTERVAL, Progress};
use super::remote_units::{Effects, RemoteUnits};
use super::resolve::{Carry, Counts, Engine, Mode, State};
use super::slots::Resources;
use super::workdir::{InputData, LeftOut};
use crate::pipeline::Pipeline;
use crate::remote::coordinator::{Coordinator, SchedMsg};
use crate::stages::{Binding, ByteMeter, ExecCtx, TaskOutcome, UnitTask};
use crate::store::Store;
use crate::store::index::Tree;
use crate::store::memo::MemoValue;
use crate::store::records::{
    Failure, RunOutcome, RunRecord, StageCounts, TaskResult, encode, manifest_digest, now_ms,
};
use crate::task::{Digest, KeyRecord, TaskKey};
use anyhow::{Context, Result, bail};
use indexmap::IndexMap;
use serde::Serialize;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub slots: Resources,
    /// Keep dispatching after an item fails (the default); off, the first failure stops
    /// new work and lets running work finish.
    pub keep_going: bool,
    pub retry_failed: bool,
    /// How long running tasks may finish after Ctrl-C before they are killed.
    pub grace: Duration,
    /// No progress bars or lines.
    pub quiet: bool,
}

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
}

#[derive(Clone, Debug)]
pub struct RunReport {
    pub stages: IndexMap<String, StageCounts>,
    /// Tasks left unrun per stage (only after an interruption or a stop on failure).
    pub not_run: IndexMap<String, u64>,
    /// Stages whose items never became known (their source failed or did not run): why.
    pub deferred: IndexMap<String, String>,
    pub outcome: RunOutcome,
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
            failures: &'a [FailureLine],
            #[serde(skip_serializing_if = "IndexMap::is_empty")]
            notes: &'a IndexMap<String, String>,
        }
        serde_json::to_string(&Json {
            stages: &self.stages,
            not_expanded: &self.deferred,
            ok: self.ok(),
            interrupted: self.outcome == RunOutcome::Interrupted,
            failures: &self.failures,
            notes: &self.notes,
        })
        .expect("reports always serialise")
    }

    /// Writes `run.json` and `run.md` into the pipeline's results folder.
    pub fn write_results(&self, pipeline: &Pipeline, record: &RunRecord) -> Result<()> {
        let dir = &pipeline.results_dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut json: serde_json::Value = serde_json::from_str(&self.to_json())?;
        json["pipeline"] = pipeline.name.clone().into();
        json["pipeline_file"] = pipeline.path.display().to_string().into();
        json["started"] = crate::store::records::format_time(record.started_ms).into();
        json["ended"] = crate::store::records::format_time(record.ended_ms).into();
        std::fs::write(dir.join("run.json"), serde_json::to_vec_pretty(&json)?)?;
        let md = format!(
            "# Run of `{}`\n\n{} to {} ({})\n\n```\n{}```\n",
            pipeline.name,
            crate::store::records::format_time(record.started_ms),
            crate::store::records::format_time(record.ended_ms),
            pipeline.path.display(),
            self.to_text()
        );
        std::fs::write(dir.join("run.md"), md)?;
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
        let verdict = match self.outcome {
            RunOutcome::Ok => "ok",
            RunOutcome::Failed => "failed",
            RunOutcome::Interrupted => "interrupted",
        };
        let _ = writeln!(out, "\n{verdict} in {:.1}s", self.elapsed.as_secs_f64());
        out
    }
}

/// What a finished unit reports back to the scheduler.
struct UnitDone {
    slots: Resources,
    outcomes: Vec<(u32, Reported)>,
}

pub(super) enum Reported {
    Success(Digest, MemoValue),
    Failed(String),
    InputCorrupt {
        stage: String,
        item: String,
        error: String,
    },
    Cancelled,
    Aborted(String),
}

pub async fn run(pipeline: &Pipeline, store: Arc<Store>, opts: RunOptions) -> Result<RunReport> {
    run_with(pipeline, store, opts, None).await
}

/// A run whose queue also serves remote workers through a coordinator (`mvc run --listen`).
pub async fn run_with(
    pipeline: &Pipeline,
    store: Arc<Store>,
    opts: RunOptions,
    listener: Option<&mut Listener>,
) -> Result<RunReport> {
    let Some(listener) = listener else {
        return run_inner(pipeline, store, opts, None).await.map(|(r, _)| r);
    };
    let rx = listener
        .rx
        .take()
        .context("internal: the coordinator already serves a run")?;
    listener.coordinator.set_finished(false);
    let remote = RemoteUnits::new(listener.coordinator.clone(), rx)?;
    let (report, rx) = run_inner(pipeline, store, opts, Some(remote)).await?;
    listener.rx = rx;
    listener.coordinator.set_finished(true);
    Ok(report)
}

/// A coordinator and the receiving end of its messages, kept between runs (`mvc serve`).
pub struct Listener {
    pub coordinator: Arc<Coordinator>,
    rx: Option<mpsc::UnboundedReceiver<SchedMsg>>,
}

impl Listener {
    pub fn new(coordinator: Arc<Coordinator>, rx: mpsc::UnboundedReceiver<SchedMsg>) -> Listener {
        Listener {
            coordinator,
            rx: Some(rx),
        }
    }
}

async fn run_inner(
    pipeline: &Pipeline,
    store: Arc<Store>,
    opts: RunOptions,
    remote: Option<RemoteUnits>,
) -> Result<(RunReport, Option<mpsc::UnboundedReceiver<SchedMsg>>)> {
    let started_ms = now_ms();
    let order = pipeline.order.clone();
    let shown: Vec<(String, u64)> = order
        .iter()
        .map(|&s| (pipeline.stages[s].name.clone(), 0))
        .collect();
    let (tx, rx) = mpsc::unbounded_channel::<UnitDone>();
    let kill = CancellationToken::new();
    let mut sched = Scheduler {
        progress: Progress::new(&shown, opts.quiet),
        meters: (0..pipeline.stages.len())
            .map(|_| Arc::new(ByteMeter::default()))
            .collect(),
        shared: UnitShared {
            store: store.clone(),
            kill: kill.clone(),
            launcher: Arc::new(Launcher::start()),
            done: tx,
        },
        rx,
        kill,
        sigint: signal(SignalKind::interrupt()).context("installing the Ctrl-C handler")?,
        sigterm: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        stopping: false,
        interrupted: false,
        shared_saved: HashSet::new(),
        last_abort: None,
        opts: opts.clone(),
        order: order.clone(),
        remote,
    };

    // Rounds: a stage whose items come from upstream results (a download's objects from its
    // selection) is expanded once those results exist, so the graph is built again after a
    // round that made them. Tasks resolved in an earlier round are cache hits in the next.
    let mut sources = Sources::new();
    let mut carry = Carry::default();
    let engine = loop {
        let graph = TaskGraph::build(pipeline, &store, &sources)?;
        if sched.remote.is_none() {
            check_slots(&graph, &opts)?;
        }
        let mut engine = Engine::new(graph, store.clone(), Mode::Run, opts.retry_failed, carry)?;
        let totals: Vec<u64> = order
            .iter()
            .map(|&s| engine.graph.stages[s].len() as u64)
            .collect();
        let deferred: Vec<Option<String>> = order
            .iter()
            .map(|&s| engine.graph.stages[s].deferred.clone())
            .collect();
        sched.progress.set_stages(&totals, &deferred);
        sched.round(&mut engine).await?;
        engine.save_memos()?;
        if sched.stopping || !engine.graph.has_deferred() {
            break engine;
        }
        let more = engine.sources(&sources)?;
        if more.len() == sources.len() {
            break engine;
        }
        sources = more;
        carry = engine.carry_forward();
    };
    let elapsed = sched.progress.elapsed();
    sched.progress.close();

    let report = summarize(&engine, &order, sched.interrupted, elapsed);
    let reach = store
        .blobs()
        .put_bytes(&encode(&engine.reached_keys()))
        .context("recording what this run reached")?;
    let record = RunRecord {
        pipeline: pipeline.name.clone(),
        pipeline_path: pipeline.path.display().to_string(),
        started_ms,
        ended_ms: now_ms(),
        outcome: report.outcome,
        stages: report.stages.clone(),
        reach,
    };
    let mut run_id = started_ms.to_be_bytes().to_vec();
    run_id.extend_from_slice(&std::process::id().to_be_bytes());
    store.index().put(Tree::Runs, &run_id, &encode(&record))?;
    store.flush()?;
    if let Err(e) = report.write_results(pipeline, &record) {
        tracing::warn!(
            "could not write the run summary to {}: {e:#}",
            pipeline.results_dir.display()
        );
    }
    if let Err(e) = publish_reports(&engine, pipeline) {
        tracing::warn!(
            "could not copy the results to {}: {e:#}",
            pipeline.results_dir.display()
        );
    }
    Ok((report, sched.remote.map(RemoteUnits::into_receiver)))
}

/// Copies the outputs of every successful `report` stage (results.md, CSV, JSON, figures)
/// into the pipeline's results folder: straight into it when the pipeline has one report
/// stage, into a folder per stage when it has several.
fn publish_reports(engine: &Engine, pipeline: &Pipeline) -> Result<()> {
    let g = &engine.graph;
    let reports: Vec<_> = g
        .stages
        .iter()
        .filter(|s| s.kind.kind() == "report")
        .collect();
    for node in &reports {
        let dir = match reports.len() {
            1 => pipeline.results_dir.clone(),
            _ => pipeline.results_dir.join(&node.name),
        };
        for t in node.tasks() {
            if !engine.state[t as usize].is_success() {
                continue;
            }
            let Some(result) = engine.store.result(&engine.keys[t as usize])? else {
                continue;
            };
            for output in &result.outputs {
                let rel = super::workdir::safe_relative(&output.name)
                    .with_context(|| format!("output name `{}` is unsafe", output.name))?;
                engine
                    .store
                    .materialize_output(output, &dir.join(rel))
                    .map_err(|e| anyhow::anyhow!("{}: {e}", output.name))?;
            }
        }
    }
    Ok(())
}

/// Refuses a graph with a stage whose tasks need more of a slot than the executor has.
fn check_slots(graph: &TaskGraph, opts: &RunOptions) -> Result<()> {
    for &s in &graph.order {
        let node = &graph.stages[s];
        if node.is_empty() {
            continue;
        }
        if let Some((slot, need, have)) = opts.slots.shortfall(&node.kind.resources()) {
            bail!(
                "stage `{}` needs {slot} = {need} per task but this executor has {have} {slot} \
                 slot{}; set `{slot}` in the [executor] table or pass --slots {slot}={need}",
                node.name,
                if have == 1 { "" } else { "s" }
            );
        }
    }
    Ok(())
}

/// The run-wide state of the executor, kept across rounds.
struct Scheduler {
    progress: Progress,
    /// Per stage (indexed like the pipeline's stages).
    meters: Vec<Arc<ByteMeter>>,
    shared: UnitShared,
    rx: mpsc::UnboundedReceiver<UnitDone>,
    kill: CancellationToken,
    sigint: tokio::signal::unix::Signal,
    sigterm: tokio::signal::unix::Signal,
    /// No new units are started (Ctrl-C, or a failure without --keep-going).
    stopping: bool,
    interrupted: bool,
    shared_saved: HashSet<usize>,
    /// The error of the last task that could not run (printed once, not once per task).
    last_abort: Option<String>,
    opts: RunOptions,
    order: Vec<usize>,
    /// Remote workers' side, when the run listens for them.
    remote: Option<RemoteUnits>,
}

/// The next message for the scheduler from the coordinator; never, without one.
async fn next_remote(remote: &mut Option<RemoteUnits>) -> Option<SchedMsg> {
    match remote {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

impl Scheduler {
    fn update_progress(&mut self, engine: &Engine) {
        let bytes = self.order.iter().map(|&s| self.meters[s].read()).collect();
        self.progress.set_bytes(bytes);
        self.progress.update(&ordered(&engine.counts, &self.order));
    }

    /// Runs everything the graph can run now; returns when nothing more can start.
    async fn round(&mut self, engine: &mut Engine) -> Result<()> {
        let n_stages = engine.graph.stages.len();
        let mut queues: Vec<VecDeque<u32>> = vec![VecDeque::new(); n_stages];
        let mut free = self.opts.slots;
        let mut running = 0usize;
        let store = self.shared.store.clone();
        let mut ticker = tokio::time::interval(PLAIN_INTERVAL.min(Duration::from_millis(250)));
        let grace = tokio::time::sleep(Duration::from_secs(u64::MAX / 4));
        tokio::pin!(grace);
        if self.interrupted {
            grace
                .as_mut()
                .reset(tokio::time::Instant::now() + self.opts.grace);
        }

        loop {
            for t in engine.resolve_ready()? {
                let s = engine.graph.task_stage[t as usize] as usize;
                self.meters[s].add_total(engine.graph.item_bytes(t));
                if let Some(r) = &mut self.remote
                    && r.hold(engine, t)
                {
                    continue;
                }
                queues[s].push_back(t);
            }
            self.update_progress(engine);

            if !self.stopping {
                for k in 0..self.order.len() {
                    let s = self.order[k];
                    let need = engine.graph.stages[s].kind.resources();
                    while !queues[s].is_empty() && free.fits(&need) {
                        let unit = take_unit(engine, &mut queues[s]);
                        if self.shared_saved.insert(s) {
                            store.put_shared_params(&engine.graph.stages[s].shared)?;
                        }
                        let prepared = prepare_unit(engine, &unit)?;
                        for &t in &unit {
                            engine.start(t);
                        }
                        free.take(&need);
                        running += 1;
                        spawn_unit(engine, s, prepared, need, &self.shared, &self.meters[s]);
                    }
                    if let Some(r) = &mut self.remote
                        && !queues[s].is_empty()
                        && !self.opts.slots.fits(&need)
                        && r.first_wait(s)
                    {
                        self.progress.println(&format!(
                            "stage `{}` needs {need} per task, more than this machine's slots: \
                             its tasks wait for a worker that has it",
                            engine.graph.stages[s].name
                        ));
                    }
                }
            }
            let mut effects = Vec::new();
            if let Some(r) = &mut self.remote {
                if self.kill.is_cancelled() {
                    r.cancel_all(&mut effects);
                }
                r.serve(
                    engine,
                    &mut queues,
                    &self.order,
                    self.stopping,
                    &mut effects,
                )?;
            }
            self.take_effects(engine, &mut queues, effects)?;

            let (remote_running, held) = self
                .remote
                .as_ref()
                .map(|r| (r.active(), r.held()))
                .unwrap_or((0, 0));
            let queued: usize = queues.iter().map(|q| q.len()).sum::<usize>() + held;
            if running == 0 && remote_running == 0 && (self.stopping || queued == 0) {
                if let Some(r) = &self.remote {
                    r.publish_queue(engine, &queues);
                }
                break;
            }

            tokio::select! {
                Some(done) = self.rx.recv() => {
                    running -= 1;
                    free.give(&done.slots);
                    for (t, reported) in done.outcomes {
                        self.take_outcome(engine, &mut queues, t, reported)?;
                    }
                }
                _ = self.sigint.recv() => {
                    on_signal(&mut self.stopping, &mut self.interrupted, &self.kill, running, &self.opts, &self.progress, grace.as_mut());
                }
                _ = self.sigterm.recv() => {
                    on_signal(&mut self.stopping, &mut self.interrupted, &self.kill, running, &self.opts, &self.progress, grace.as_mut());
                }
                _ = &mut grace, if self.stopping && self.interrupted && !self.kill.is_cancelled() => {
                    self.progress.println("grace period over: stopping running tasks");
                    self.kill.cancel();
                }
                Some(msg) = next_remote(&mut self.remote) => {
                    let mut effects = Vec::new();
                    if let Some(r) = &mut self.remote {
                        r.handle(msg, engine, &mut queues, &mut effects);
                    }
                    self.take_effects(engine, &mut queues, effects)?;
                }
                _ = ticker.tick() => {
                    let mut effects = Vec::new();
                    if let Some(r) = &mut self.remote {
                        r.tick(engine, &mut queues, &mut effects);
                    }
                    self.take_effects(engine, &mut queues, effects)?;
                }
            }
        }
        self.update_progress(engine);
        Ok(())
    }

    fn take_effects(
        &mut self,
        engine: &mut Engine,
        queues: &mut [VecDeque<u32>],
        effects: Effects,
    ) -> Result<()> {
        for (t, reported) in effects {
            self.take_outcome(engine, queues, t, reported)?;
        }
        Ok(())
    }

    fn take_outcome(
        &mut self,
        engine: &mut Engine,
        queues: &mut [VecDeque<u32>],
        t: u32,
        reported: Reported,
    ) -> Result<()> {
        match reported {
            Reported::Success(manifest, value) => engine.finish(t, Ok((manifest, value))),
            Reported::Failed(error) => {
                engine.finish(t, Err(error));
                if !self.opts.keep_going && !self.stopping {
                    self.stopping = true;
                    self.progress.println(
                        "a task failed: letting running tasks finish, starting no new ones \
                         (--keep-going continues past failures)",
                    );
                }
            }
            Reported::Cancelled => engine.unrun(t),
            Reported::Aborted(error) => {
                // Many tasks failing for one reason (an unreachable server) say it once.
                if self.last_abort.as_ref() != Some(&error) {
                    self.progress.println(&format!(
                        "error: {} could not run: {error}",
                        engine.graph.task_label(t)
                    ));
                    self.last_abort = Some(error.clone());
                }
                engine.finish_unrecorded(t, error);
            }
            Reported::InputCorrupt { stage, item, error } => {
                let again = reopen_producer(engine, t, &stage, &item)?;
                self.progress.println(&format!(
                    "warning: {error}; {stage}/{item} is treated as a cache miss and {}, then {} \
                     runs",
                    if again {
                        "runs again"
                    } else {
                        "is already running again"
                    },
                    engine.graph.task_label(t)
                ));
                if let Some(p) = again.then(|| find_item(engine, &stage, &item)).flatten() {
                    let s = engine.graph.task_stage[p as usize] as usize;
                    queues[s].push_back(p);
                }
            }
        }
        Ok(())
    }
}

fn ordered(counts: &[Counts], order: &[usize]) -> Vec<Counts> {
    order.iter().map(|&s| counts[s]).collect()
}

fn on_signal(
    stopping: &mut bool,
    interrupted: &mut bool,
    kill: &CancellationToken,
    running: usize,
    opts: &RunOptions,
    progress: &Progress,
    grace: std::pin::Pin<&mut tokio::time::Sleep>,
) {
    if *interrupted {
        progress.println("interrupted again: stopping running tasks now");
        kill.cancel();
        return;
    }
    *stopping = true;
    *interrupted = true;
    if running > 0 {
        progress.println(&format!(
            "interrupted: starting no new tasks; waiting up to {:.0}s for {running} running \
             unit{} to finish (Ctrl-C again to stop them now)",
            opts.grace.as_secs_f64(),
            if running == 1 { "" } else { "s" }
        ));
    }
    grace.reset(tokio::time::Instant::now() + opts.grace);
}

/// Takes the next unit from a stage's queue: the front task, and every queued task of the
/// same unit group when the kind groups them.
pub(super) fn take_unit(engine: &Engine, queue: &mut VecDeque<u32>) -> Vec<u32> {
    let first = queue.pop_front().expect("queue is not empty");
    let node = engine.graph.stage_of(first);
    let Some(group) = node.kind.unit_group(engine.graph.item(first)) else {
        return vec![first];
    };
    let mut unit = vec![first];
    let max = node.kind.max_unit_tasks().max(1);
    queue.retain(|&t| {
        if unit.len() < max
            && node.kind.unit_group(engine.graph.item(t)).as_deref() == Some(group.as_str())
        {
            unit.push(t);
            false
        } else {
            true
        }
    });
    unit
}

/// What a task reads from one input: the upstream stage, how it binds, the (item, key)
/// of each upstream task it reads, and (for a kind that reads failures) the upstream items
/// without a result.
pub(super) type InputKeys = (
    String,
    Binding,
    Vec<(String, TaskKey)>,
    Option<Arc<Vec<LeftOut>>>,
);

/// A task of a unit with what the scheduler knows of it; the upstream results themselves
/// are read from the index inside the unit's own task, off the scheduler.
pub(super) struct PreparedTask {
    pub(super) task: u32,
    pub(super) identity: TaskIdentity,
    pub(super) inputs: Vec<InputKeys>,
}

/// What recording a task's outcome needs: its key, key record and item.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct TaskIdentity {
    pub(super) key: TaskKey,
    pub(super) record: KeyRecord,
    pub(super) item: String,
}

pub(super) fn prepare_unit(engine: &Engine, unit: &[u32]) -> Result<Vec<PreparedTask>> {
    let g = &engine.graph;
    unit.iter()
        .map(|&t| {
            let node = g.stage_of(t);
            let record = engine.record_of(t).map_err(|_| {
                anyhow::anyhow!("internal: {} dispatched before its inputs", g.task_label(t))
            })?;
            let mut inputs = Vec::with_capacity(node.inputs.len());
            let mut item_k = 0;
            for edge in &node.inputs {
                let up = &g.stages[edge.stage];
                if edge.binding == Binding::Expansion {
                    continue;
                }
                let items: Vec<(String, TaskKey)> = match edge.binding {
                    Binding::Item | Binding::ItemIfPresent => {
                        let u = g.item_dep(t, item_k);
                        item_k += 1;
                        if u == MISSING {
                            // Only an ItemIfPresent input can lack the item: it reads nothing.
                            debug_assert_eq!(edge.binding, Binding::ItemIfPresent);
                            Vec::new()
                        } else {
                            vec![(g.item(u).to_string(), engine.keys[u as usize])]
                        }
                    }
                    Binding::Expansion => unreachable!("skipped above"),
                    Binding::All => {
                        let mut items: Vec<(String, TaskKey)> = up
                            .tasks()
                            .filter(|&u| engine.state[u as usize].is_success())
                            .map(|u| (g.item(u).to_string(), engine.keys[u as usize]))
                            .collect();
                        items.sort_by(|a, b| a.0.cmp(&b.0));
                        items
                    }
                };
                let left_out = (edge.binding == Binding::All && node.kind.reads_failures())
                    .then(|| engine.left_out(edge.stage))
                    .flatten();
                inputs.push((up.name.clone(), edge.binding, items, left_out));
            }
            Ok(PreparedTask {
                task: t,
                identity: TaskIdentity {
                    key: engine.keys[t as usize],
                    record,
                    item: g.item(t).to_string(),
                },
                inputs,
            })
        })
        .collect()
}

/// What every unit runs with, whatever its stage.
struct UnitShared {
    store: Arc<Store>,
    kill: CancellationToken,
    launcher: Arc<Launcher>,
    done: mpsc::UnboundedSender<UnitDone>,
}

fn spawn_unit(
    engine: &Engine,
    stage: usize,
    prepared: Vec<PreparedTask>,
    slots: Resources,
    shared: &UnitShared,
    meter: &Arc<ByteMeter>,
) {
    let meter = meter.clone();
    let store = shared.store.clone();
    let kill = shared.kill.clone();
    let launcher = shared.launcher.clone();
    let tx = shared.done.clone();
    let node = &engine.graph.stages[stage];
    let kind = node.kind.clone();
    let stage_name = node.name.clone();
    let item_params: Vec<_> = prepared
        .iter()
        .map(|p| engine.graph.item_params(p.task))
        .collect();
    tokio::spawn(async move {
        let ctx = ExecCtx {
            store: store.clone(),
            meter,
            kill,
            launcher,
        };
        let n = prepared.len();
        let work = async {
            match load_inputs(&store, &prepared).await {
                Ok(inputs) => {
                    let unit: Vec<UnitTask> = prepared
                        .iter()
                        .zip(inputs)
                        .zip(item_params)
                        .map(|((p, inputs), item_params)| UnitTask {
                            key: p.identity.key,
                            item: p.identity.item.clone(),
                            item_params,
                            inputs,
                        })
                        .collect();
                    kind.execute(&ctx, unit).await
                }
                Err((stage, item, error)) => prepared
                    .iter()
                    .map(|_| TaskOutcome::InputCorrupt {
                        stage: stage.clone(),
                        item: item.clone(),
                        error: error.clone(),
                    })
                    .collect(),
            }
        };
        let outcomes = match super::unless_abandoned(&ctx.kill, work).await {
            Some(outcomes) => outcomes,
            None => {
                tracing::warn!(
                    "stage `{stage_name}`: a unit did not stop within {}s of being told to; \
                     abandoned (its tasks are not recorded)",
                    super::ABANDON_AFTER_KILL.as_secs()
                );
                (0..n).map(|_| TaskOutcome::Cancelled).collect()
            }
        };
        // A few index writes per task: cheaper here than a hop to the blocking pool.
        let outcomes: Vec<(u32, Reported)> = prepared
            .iter()
            .zip(outcomes)
            .map(|(p, outcome)| {
                let reported = commit_outcome(&store, &stage_name, &p.identity, "local", outcome);
                (p.task, reported)
            })
            .collect();
        let _ = tx.send(UnitDone { slots, outcomes });
    });
}

pub(super) type MissingInput = (String, String, String);

/// Reads the upstream results a unit's tasks need from the index.
async fn load_inputs(
    store: &Arc<Store>,
    prepared: &[PreparedTask],
) -> Result<Vec<Vec<InputData>>, MissingInput> {
    let wanted: Vec<Vec<InputKeys>> = prepared.iter().map(|p| p.inputs.clone()).collect();
    let store = store.clone();
    let lookups: usize = wanted
        .iter()
        .flatten()
        .map(|(_, _, items, _)| items.len())
        .sum();
    super::blocking_if(lookups > 64, move || read_inputs(&store, wanted)).await
}

/// Reads the upstream results of each task's inputs, in order.
pub(super) fn read_inputs(
    store: &Store,
    wanted: Vec<Vec<InputKeys>>,
) -> Result<Vec<Vec<InputData>>, MissingInput> {
    wanted
        .into_iter()
        .map(|inputs| {
            inputs
                .into_iter()
                .map(|(stage, binding, items, left_out)| {
                    let mut loaded = Vec::with_capacity(items.len());
                    for (item, key) in items {
                        match store.result(&key) {
                            Ok(Some(result)) => loaded.push((item, result)),
                            Ok(None) => {
                                return Err((
                                    stage.clone(),
                                    item.clone(),
                                    format!("the result of {stage}/{item} is gone from the index"),
                                ));
                            }
                            Err(e) => {
                                return Err((stage.clone(), item.clone(), format!("{e:#}")));
                            }
                        }
                    }
                    Ok(InputData {
                        stage,
                        binding,
                        items: loaded,
                        left_out: left_out.map(|l| l.to_vec()).unwrap_or_default(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .collect()
}

/// Records an outcome in the index (the commit point of a task) and says what happened.
/// `host` is where it ran: `local` or a worker's name.
pub(super) fn commit_outcome(
    store: &Store,
    stage: &str,
    p: &TaskIdentity,
    host: &str,
    outcome: TaskOutcome,
) -> Reported {
    match outcome {
        TaskOutcome::Success {
            outputs,
            stdout,
            stderr,
            started_ms,
            duration_ms,
        } => {
            let manifest = manifest_digest(&outputs);
            let result = TaskResult {
                stage: stage.to_string(),
                item: p.item.clone(),
                manifest,
                stdout,
                stderr,
                started_ms,
                duration_ms,
                host: host.to_string(),
                outputs,
            };
            match store.commit_success(&p.key, &p.record, &result) {
                Ok(()) => Reported::Success(
                    manifest,
                    MemoValue::Done {
                        manifest,
                        blobs: result.blob_outputs().collect(),
                    },
                ),
                Err(e) => Reported::Failed(format!("recording the result failed: {e:#}")),
            }
        }
        TaskOutcome::Failed { error, stderr } => {
            let failure = Failure {
                stage: stage.to_string(),
                item: p.item.clone(),
                error: error.clone(),
                stderr,
                when_ms: now_ms(),
            };
            if let Err(e) = store.commit_failure(&p.key, &p.record, &failure) {
                tracing::warn!("could not record the failure of {stage}/{}: {e:#}", p.item);
            }
            Reported::Failed(error)
        }
        TaskOutcome::InputCorrupt { stage, item, error } => {
            Reported::InputCorrupt { stage, item, error }
        }
        TaskOutcome::Cancelled => Reported::Cancelled,
        TaskOutcome::Aborted(error) => Reported::Aborted(error),
    }
}

fn find_item(engine: &Engine, stage: &str, item: &str) -> Option<u32> {
    let node = engine.graph.stages.iter().find(|s| s.name == stage)?;
    node.tasks().find(|&t| engine.graph.item(t) == item)
}

/// A consumer found an input blob corrupt: its producer runs again and the consumer waits.
/// Returns whether the producer was re-opened now (false when it already was).
fn reopen_producer(engine: &mut Engine, consumer: u32, stage: &str, item: &str) -> Result<bool> {
    let Some(producer) = find_item(engine, stage, item) else {
        bail!(
            "internal: input {stage}/{item} of {} is not a task",
            engine.graph.task_label(consumer)
        );
    };
    let node = engine.graph.stage_of(consumer);
    let all = node
        .inputs
        .iter()
        .any(|e| engine.graph.stages[e.stage].name == stage && e.binding == Binding::All);
    // False when another consumer re-opened it already: the consumer just waits for it.
    engine.reopen(producer, consumer, all)
}

fn summarize(engine: &Engine, order: &[usize], interrupted: bool, elapsed: Duration) -> RunReport {
    let g = &engine.graph;
    let mut stages = IndexMap::new();
    let mut not_run = IndexMap::new();
    let mut deferred = IndexMap::new();
    let mut failures = Vec::new();
    let mut notes = IndexMap::new();
    let mut new_failures = false;
    for &s in order {
        let node = &g.stages[s];
        if node.kind.has_result_notes() {
            for t in node.tasks() {
                if !engine.state[t as usize].is_success() {
                    continue;
                }
                if let Ok(Some(result)) = engine.store.result(&engine.keys[t as usize])
                    && let Some(note) = node.kind.result_note(&engine.store, &result.outputs)
                {
                    notes.insert(node.name.clone(), note);
                }
            }
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
        for t in node.tasks() {
            let state = engine.state[t as usize];
            if !state.is_failure() {
                continue;
            }
            let log = (state != State::Blocked)
                .then(|| {
                    engine
                        .store
                        .failure(&engine.keys[t as usize])
                        .ok()
                        .flatten()
                })
                .flatten()
                .and_then(|f| f.stderr)
                .map(|d| engine.store.blobs().path(&d).display().to_string());
            failures.push(FailureLine {
                stage: node.name.clone(),
                item: g.item(t).to_string(),
                error: engine.notes.get(&t).cloned().unwrap_or_default(),
                earlier: state == State::KnownFailure,
                blocked: state == State::Blocked,
                log,
            });
        }
    }
    let outcome = if interrupted {
        RunOutcome::Interrupted
    } else if new_failures || not_run.values().any(|n| *n > 0) || !deferred.is_empty() {
        RunOutcome::Failed
    } else {
        RunOutcome::Ok
    };
    RunReport {
        stages,
        not_run,
        deferred,
        outcome,
        failures,
        notes,
        elapsed,
    }
}
