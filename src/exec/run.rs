//! `mvc run`: the local executor. Resolves tasks as their inputs become known, runs the
//! ones not cached in units on tokio within the resource slots, and records every result
//! as soon as it exists, so that an interrupted run loses only what was running.

use super::dispatch::{Dispatch, Interrupt};
use super::graph::{Sources, TaskGraph};
use super::ids::{StageId, TaskId};
use super::launcher::Launcher;
use super::remote_units::{Effects, RemoteUnits};
use super::resolve::{Carry, Counts, Engine, Mode};
use super::summary::summarize;
pub use super::summary::{FailureLine, RunReport};
use super::units::*;
use super::view::{NotesOnly, RunView};
use super::workdir::InputData;
use super::workers::{SchedMsg, WorkerHub};
use super::workflow::Workflow;
use crate::exec::kind::{ByteMeter, ExecCtx, TaskOutcome, UnitTask};
use crate::resources::Resources;
use crate::store::Store;
use crate::store::records::{RunRecord, encode_seq_into, now_ms};
use anyhow::{Context, Result, bail};
use std::collections::HashSet;
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
    /// No progress display: for callers that choose the [`RunView`] (`run_with_view`);
    /// `run` and `run_with` show only notes either way.
    pub quiet: bool,
}

/// What a finished unit reports back to the scheduler.
struct UnitDone {
    slots: Resources,
    outcomes: Vec<(TaskId, Reported)>,
}

pub async fn run(pipeline: &Workflow, store: Arc<Store>, opts: RunOptions) -> Result<RunReport> {
    run_with(pipeline, store, opts, None).await
}

/// A run whose queue also serves remote workers through a coordinator (`mvc run --listen`).
pub async fn run_with(
    pipeline: &Workflow,
    store: Arc<Store>,
    opts: RunOptions,
    listener: Option<&mut Listener>,
) -> Result<RunReport> {
    run_with_view(pipeline, store, opts, listener, Box::new(NotesOnly)).await
}

/// [`run_with`], shown live through `view` (the commands' progress display).
pub async fn run_with_view(
    pipeline: &Workflow,
    store: Arc<Store>,
    opts: RunOptions,
    listener: Option<&mut Listener>,
    view: Box<dyn RunView>,
) -> Result<RunReport> {
    let Some(listener) = listener else {
        return run_inner(pipeline, store, opts, None, view)
            .await
            .map(|(r, _)| r);
    };
    let rx = listener
        .rx
        .take()
        .context("internal: the coordinator already serves a run")?;
    listener.coordinator.set_finished(false);
    let remote = RemoteUnits::new(listener.coordinator.clone(), rx)?;
    let (report, rx) = run_inner(pipeline, store, opts, Some(remote), view).await?;
    listener.rx = rx;
    listener.coordinator.set_finished(true);
    Ok(report)
}

/// A coordinator and the receiving end of its messages, kept between runs (`mvc serve`).
pub struct Listener {
    pub coordinator: Arc<dyn WorkerHub>,
    rx: Option<mpsc::UnboundedReceiver<SchedMsg>>,
}

impl Listener {
    pub fn new(coordinator: Arc<dyn WorkerHub>, rx: mpsc::UnboundedReceiver<SchedMsg>) -> Listener {
        Listener {
            coordinator,
            rx: Some(rx),
        }
    }
}

async fn run_inner(
    pipeline: &Workflow,
    store: Arc<Store>,
    opts: RunOptions,
    remote: Option<RemoteUnits>,
    view: Box<dyn RunView>,
) -> Result<(RunReport, Option<mpsc::UnboundedReceiver<SchedMsg>>)> {
    let started_ms = now_ms();
    let started = std::time::Instant::now();
    let run_id = crate::store::records::run_id(started_ms);
    prepare_store(pipeline, &store, &run_id, view.as_ref())?;
    let order = pipeline.order.clone();
    let (tx, rx) = mpsc::unbounded_channel::<UnitDone>();
    let kill = CancellationToken::new();
    let mut sched = Scheduler {
        view,
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
        dispatch: Dispatch::new(&order, opts.slots, opts.keep_going),
        shared_saved: HashSet::new(),
        grace: opts.grace,
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
        sched.view.set_stages(&totals, &deferred);
        sched.round(&mut engine).await?;
        engine.save_memos()?;
        super::stage_summaries::record(pipeline, &engine)?;
        if sched.dispatch.stopping() || !engine.graph.has_deferred() {
            break engine;
        }
        let more = engine.sources(&sources)?;
        if more.len() == sources.len() {
            break engine;
        }
        sources = more;
        carry = engine.carry_forward();
    };
    let elapsed = started.elapsed();
    sched.view.close();
    let report = summarize(&engine, &order, sched.dispatch.interrupted(), elapsed);
    record_run(pipeline, &engine, &report, (&run_id, started_ms))?;
    sched.view.finished(&report);
    Ok((report, sched.remote.map(RemoteUnits::into_receiver)))
}

/// Readies the cache for a run: before anything is planned, an index that lost records its
/// plan memos name (damage in the middle of sled's log) gets them back from the journals;
/// then the run's journal begins (one that cannot be written costs only that).
fn prepare_store(
    pipeline: &Workflow,
    store: &Store,
    run_id: &[u8],
    view: &dyn RunView,
) -> Result<()> {
    // A run changes what the stage summaries speak for; it records them again at its end.
    store.forget_stage_summaries()?;
    let stages: Vec<String> = pipeline.stages.iter().map(|s| s.name.clone()).collect();
    if let Some(lacked) = store.restore_what_memos_lack(&stages)? {
        view.note(&match &lacked.restored {
            Some(restored) => format!(
                "warning: the index had lost {} records that the last run's plan memos name \
                 (damage to {}): {}",
                lacked.missing,
                store.dir().join("index").display(),
                restored.summary()
            ),
            None => format!(
                "warning: the index had lost {} records that the last run's plan memos name, \
                 and there is no run journal to put them back from: the memos are dropped, so \
                 what the index lacks runs again",
                lacked.missing
            ),
        });
    }
    // What the index never recorded is then answered without asking it, for this run's
    // lookups and the plans after it (`store::presence`).
    let rebuilding = std::time::Instant::now();
    if store.rebuild_presence()? && rebuilding.elapsed().as_secs() >= 2 {
        view.note(&format!(
            "rebuilt the presence filter of {} in {:.0?} (once, after a crash or an older mvc \
             changed the index)",
            store.dir().join("index").display(),
            rebuilding.elapsed()
        ));
    }
    if let Err(e) = store.begin_journal(run_id) {
        view.note(&format!(
            "warning: this run keeps no journal ({e:#}): if the index is damaged later, its \
             results cannot be rebuilt"
        ));
    }
    Ok(())
}

/// Ends a run whose tasks the caller drove itself, through [`Engine::resolve_ready`] and
/// [`Engine::finish`], as [`run`] ends its own: the memos, the stage summaries, the run record, the end of the
/// journal (begun with [`Store::begin_journal`]) and the results folder. The `xl` benchmark
/// fills a cache of hundreds of millions of tasks this way, without their work.
pub fn finish_driven_run(
    pipeline: &Workflow,
    engine: &Engine,
    (run_id, started_ms): (&[u8], u64),
    elapsed: std::time::Duration,
) -> Result<RunReport> {
    engine.save_memos()?;
    super::stage_summaries::record(pipeline, engine)?;
    let report = summarize(engine, &pipeline.order, false, elapsed);
    record_run(pipeline, engine, &report, (run_id, started_ms))?;
    Ok(report)
}

/// Records a run that is over: what it reached (what gc keeps), its run record, the end
/// of its journal; then writes its summary and publishes its results.
fn record_run(
    pipeline: &Workflow,
    engine: &Engine,
    report: &RunReport,
    (run_id, started_ms): (&[u8], u64),
) -> Result<()> {
    let store = &engine.store;
    let reached = engine.reached_tasks();
    let reach = store
        .blobs()
        .put_streamed(|out| {
            let keys = reached.iter().map(|&t| engine.keys[t]);
            encode_seq_into(out, reached.len(), keys).map(drop)
        })
        .context("recording what this run reached")?;
    drop(reached);
    let record = RunRecord {
        pipeline: pipeline.name.clone(),
        pipeline_path: pipeline.path.display().to_string(),
        started_ms,
        ended_ms: now_ms(),
        outcome: report.outcome,
        stages: report.stages.clone(),
        reach,
        source: store.blobs().put_bytes(pipeline.source.as_bytes()).ok(),
        published: published_results(engine),
        command: pipeline.command.clone(),
    };
    store.put_run(run_id, &record)?;
    if let Err(e) = store.end_journal(run_id) {
        tracing::warn!(
            "could not finish this run's journal ({e:#}): if the index is damaged later, its \
             results cannot be rebuilt"
        );
    }
    store.flush_and_stamp()?;
    if let Err(e) = report.write_results(pipeline, &record) {
        tracing::warn!(
            "could not write the run summary to {}: {e:#}",
            pipeline.results_dir.display()
        );
    }
    if let Err(e) = publish_results(engine, pipeline) {
        tracing::warn!(
            "could not copy the results to {}: {e:#}",
            pipeline.results_dir.display()
        );
    }
    Ok(())
}

/// The key of each successful result of a stage that publishes results (a report).
fn published_results(engine: &Engine) -> Vec<(String, crate::task::TaskKey)> {
    let g = &engine.graph;
    g.order
        .iter()
        .filter(|&&s| g.stages[s].kind.publishes_results())
        .flat_map(|&s| g.stages[s].tasks())
        .filter(|&t| engine.state[t].is_success())
        .map(|t| (g.stages[g.task_stage[t]].name.clone(), engine.keys[t]))
        .collect()
}

/// Copies the outputs of every successful stage whose kind
/// [publishes results](crate::exec::kind::StageKind::publishes_results) (a report stage's
/// results.md, CSV, JSON, figures) into the pipeline's results folder: straight into it when
/// the pipeline has one such stage, into a folder per stage when it has several.
fn publish_results(engine: &Engine, pipeline: &Workflow) -> Result<()> {
    let g = &engine.graph;
    let reports: Vec<_> = g
        .stages
        .iter()
        .filter(|s| s.kind.publishes_results())
        .collect();
    for node in &reports {
        let dir = match reports.len() {
            1 => pipeline.results_dir.clone(),
            _ => pipeline.results_dir.join(&node.name),
        };
        for t in node.tasks() {
            if !engine.state[t].is_success() {
                continue;
            }
            let Some(result) = engine.stored_result(t, &engine.keys[t])? else {
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
    /// What whoever watches sees.
    view: Box<dyn RunView>,
    /// Per stage (indexed like the pipeline's stages).
    meters: Vec<Arc<ByteMeter>>,
    shared: UnitShared,
    rx: mpsc::UnboundedReceiver<UnitDone>,
    kill: CancellationToken,
    sigint: tokio::signal::unix::Signal,
    sigterm: tokio::signal::unix::Signal,
    /// Queues, slots and whether the run stops: the state the events below change.
    dispatch: Dispatch,
    /// Stages whose shared parameters are in the index already.
    shared_saved: HashSet<StageId>,
    /// How long running units may finish after Ctrl-C.
    grace: Duration,
    order: Vec<StageId>,
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
        self.view.set_bytes(bytes);
        self.view.update(&ordered(&engine.counts, &self.order));
    }

    /// Runs everything the graph can run now; returns when nothing more can start.
    async fn round(&mut self, engine: &mut Engine) -> Result<()> {
        self.dispatch.begin_round(engine.graph.stages.len());
        let mut ticker = tokio::time::interval(Duration::from_millis(250));
        let grace = tokio::time::sleep(Duration::from_secs(u64::MAX / 4));
        tokio::pin!(grace);
        loop {
            self.queue_ready(engine)?;
            self.update_progress(engine);
            self.start_units(engine)?;
            let mut effects = Vec::new();
            if let Some(r) = &mut self.remote {
                if self.kill.is_cancelled() {
                    r.cancel_all(&mut effects);
                }
                let stopping = self.dispatch.stopping();
                let queues = &mut self.dispatch.queues;
                r.serve(engine, queues, &self.order, stopping, &mut effects)?;
            }
            self.take_effects(engine, effects)?;
            let (remote_running, held) = self
                .remote
                .as_ref()
                .map(|r| (r.active(), r.held()))
                .unwrap_or((0, 0));
            if self.dispatch.is_over(remote_running, held) {
                if let Some(r) = &self.remote {
                    r.publish_queue(engine, &self.dispatch.queues);
                    r.replies_sent().await;
                }
                break;
            }
            let stopping = self.dispatch.stopping() && self.dispatch.interrupted();
            tokio::select! {
                Some(done) = self.rx.recv() => {
                    self.dispatch.unit_done(&done.slots);
                    self.take_effects(engine, done.outcomes)?;
                }
                _ = self.sigint.recv() => self.on_signal(grace.as_mut()),
                _ = self.sigterm.recv() => self.on_signal(grace.as_mut()),
                _ = &mut grace, if stopping && !self.kill.is_cancelled() => {
                    self.view.note("grace period over: stopping running tasks");
                    self.kill.cancel();
                }
                Some(msg) = next_remote(&mut self.remote) => {
                    let mut effects = Vec::new();
                    if let Some(r) = &mut self.remote {
                        r.handle(msg, engine, &mut self.dispatch.queues, &mut effects);
                    }
                    self.take_effects(engine, effects)?;
                }
                _ = ticker.tick() => {
                    // Views recorded before a lull are written, not held until the next.
                    engine.store.write_views_if_due()?;
                    let mut effects = Vec::new();
                    if let Some(r) = &mut self.remote {
                        r.tick(engine, &mut self.dispatch.queues, &mut effects);
                    }
                    self.take_effects(engine, effects)?;
                }
            }
        }
        self.update_progress(engine);
        Ok(())
    }

    /// Queues the tasks that have become ready (a coordinator may hold some for workers).
    fn queue_ready(&mut self, engine: &mut Engine) -> Result<()> {
        for t in engine.resolve_ready()? {
            let s = engine.graph.task_stage[t];
            self.meters[s].add_total(engine.graph.item_bytes(t));
            if let Some(r) = &mut self.remote
                && r.hold(engine, t)
            {
                continue;
            }
            self.dispatch.enqueue(engine, t);
        }
        Ok(())
    }

    /// Starts every unit the free slots allow, stage by stage in order; says once when a
    /// stage's tasks need more than this machine has and wait for a worker.
    fn start_units(&mut self, engine: &mut Engine) -> Result<()> {
        if self.dispatch.stopping() {
            return Ok(());
        }
        for unit in self.dispatch.units_to_start(engine) {
            let s = unit.stage;
            if self.shared_saved.insert(s) {
                let store = &self.shared.store;
                store.put_shared_params(&engine.graph.stages[s].shared)?;
            }
            let prepared = prepare_unit(engine, &unit.tasks)?;
            spawn_unit(
                engine,
                s,
                prepared,
                unit.slots,
                &self.shared,
                &self.meters[s],
            );
        }
        for &s in &self.order {
            let need = engine.graph.stages[s].kind.resources();
            if let Some(r) = &mut self.remote
                && !self.dispatch.queues[s].is_empty()
                && !self.dispatch.fits_machine(&need)
                && r.first_wait(s)
            {
                self.view.note(&format!(
                    "stage `{}` needs {need} per task, more than this machine's slots: \
                     its tasks wait for a worker that has it",
                    engine.graph.stages[s].name
                ));
            }
        }
        Ok(())
    }

    /// Ctrl-C or SIGTERM: the first stops new work and starts the grace period, the second
    /// kills running units now.
    fn on_signal(&mut self, grace: std::pin::Pin<&mut tokio::time::Sleep>) {
        match self.dispatch.interrupt() {
            Interrupt::KillNow => {
                self.view
                    .note("interrupted again: stopping running tasks now");
                self.kill.cancel();
            }
            Interrupt::Stop { running } => {
                if running > 0 {
                    self.view.note(&format!(
                        "interrupted: starting no new tasks; waiting up to {:.0}s for {running} \
                         running unit{} to finish (Ctrl-C again to stop them now)",
                        self.grace.as_secs_f64(),
                        if running == 1 { "" } else { "s" }
                    ));
                }
                grace.reset(tokio::time::Instant::now() + self.grace);
            }
        }
    }

    /// Hands each reported outcome to the dispatch and shows what it says.
    fn take_effects(&mut self, engine: &mut Engine, effects: Effects) -> Result<()> {
        for (t, reported) in effects {
            if let Some(note) = self.dispatch.take_outcome(engine, t, reported)? {
                self.view.note(&note);
            }
            if engine.state[t] == super::resolve::State::Failed {
                self.view.failed(&super::summary::failure_line(engine, t));
            }
        }
        Ok(())
    }
}

fn ordered(counts: &[Counts], order: &[StageId]) -> Vec<Counts> {
    order.iter().map(|&s| counts[s]).collect()
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
    stage: StageId,
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
                Err(MissingInput { stage, item, error }) => prepared
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
        let outcomes: Vec<(TaskId, Reported)> = prepared
            .iter()
            .zip(outcomes)
            .map(|(p, outcome)| {
                let reported = commit_outcome(&store, &stage_name, &p.identity, LOCAL, outcome);
                (p.task, reported)
            })
            .collect();
        let _ = tx.send(UnitDone { slots, outcomes });
    });
}

/// Reads the upstream results a unit's tasks need from the index.
async fn load_inputs(
    store: &Arc<Store>,
    prepared: &[PreparedTask],
) -> Result<Vec<Vec<InputData>>, MissingInput> {
    let wanted: Vec<Vec<InputKeys>> = prepared.iter().map(|p| p.inputs.clone()).collect();
    let store = store.clone();
    let lookups: usize = wanted.iter().flatten().map(|input| input.items.len()).sum();
    super::blocking_if(lookups > 64, move || read_inputs(&store, wanted)).await
}
