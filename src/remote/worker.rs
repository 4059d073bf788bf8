//! `mvc worker --connect URL`: registers with a coordinator, leases units that fit its free
//! slots, fetches their inputs into its own blob cache, runs them with the same stage code as
//! the local executor, uploads the outputs and reports.
//!
//! The pipeline of a unit is fetched once and kept parsed, and with it the stage kinds'
//! state: a render stage's Blender processes and an embed stage's loaded CLIP model stay warm
//! from one unit to the next.

use super::Say;
use super::auth::Token;
use super::client::{Backoff, CallError, Client};
use super::lease_loop::{LeaseLoop, Next, Seen};
use super::protocol::{Complete, Fail, Heartbeat, LeaseRequest, Register, Unit};
use crate::exec::launcher::Launcher;
use crate::pipeline::Pipeline;
use crate::resources::Resources;
use crate::stages::{ByteMeter, ExecCtx, TaskOutcome, UnitTask};
use crate::store::Store;
use crate::task::Digest;
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct WorkerOptions {
    pub url: String,
    pub token: Option<Token>,
    /// The coordinator's certificate, for one that is self-signed.
    pub fingerprint: Option<super::tls::Fingerprint>,
    pub slots: Resources,
    pub labels: Vec<String>,
    /// Exit after this long with nothing to run (and when the coordinator says the run is
    /// over, or cannot be reached for this long).
    pub exit_when_idle: Option<Duration>,
    /// The worker's own blob cache; a temporary directory (removed at exit) when `None`.
    pub cache: Option<PathBuf>,
    /// After Ctrl-C or SIGTERM, how long stopped units may take to report before it exits.
    pub grace: Duration,
    /// Where its lines for people go.
    pub say: Say,
}

/// How often a worker that cannot reach its coordinator says so (the first time at once).
const UNREACHABLE_EVERY: Duration = Duration::from_secs(30);

/// Says that the coordinator cannot be reached: at once the first time, then at most every
/// [`UNREACHABLE_EVERY`], with what was tried, what answered and what to check.
#[derive(Default)]
struct Unreachable {
    tries: u32,
    last_said: Option<Instant>,
}

impl Unreachable {
    async fn failed(&mut self, doing: &str, url: &str, error: &CallError, say: &Say) {
        self.tries += 1;
        if self
            .last_said
            .is_some_and(|t| t.elapsed() < UNREACHABLE_EVERY)
        {
            tracing::info!("{doing}: {error}");
            return;
        }
        self.last_said = Some(Instant::now());
        let hint = match error {
            CallError::Network(_) => super::reach::explain(url).await,
            _ => None,
        };
        let tries = match self.tries {
            1 => String::new(),
            n => format!(" ({n} tries so far)"),
        };
        say.line(&format!(
            "mvc worker: cannot {doing} {url}{tries}: {error}{}; trying again every few \
             seconds (Ctrl-C stops)",
            hint.map(|h| format!("; {h}")).unwrap_or_default()
        ));
    }

    fn reached(&mut self) {
        *self = Unreachable::default();
    }
}

/// How a worker ended (its `--json` line).
#[derive(Debug, serde::Serialize)]
pub struct WorkerSummary {
    pub units: u64,
    /// `interrupted`, `terminated`, or why it stopped asking for work.
    pub why: String,
}

/// The slots a worker offers by default: this machine's cores and GPUs, and one Blender
/// process when Blender is installed.
pub fn default_slots() -> Resources {
    let mut slots = Resources::machine_defaults();
    slots.blender = u32::from(crate::render::blender::find_blender(None).is_some());
    slots
}

struct WorkerState {
    client: Client,
    store: Arc<Store>,
    launcher: Arc<Launcher>,
    name: String,
    worker: AtomicU64,
    reregister: AtomicBool,
    /// Set as soon as the worker is told to stop (Ctrl-C, SIGTERM from scancel): what its
    /// units report after that is not the items' doing.
    stopping: AtomicBool,
    pipelines: Mutex<HashMap<Digest, Arc<Pipeline>>>,
    /// (pipeline, stage) → whether this worker's shared parameters for the stage are the
    /// coordinator's.
    checked: Mutex<HashMap<(Digest, String), Check>>,
    /// Units running (or reporting) → their stop switch.
    running: Mutex<HashMap<u64, CancellationToken>>,
    free: Mutex<Resources>,
    changed: Notify,
    units_done: AtomicU64,
    last_busy: Mutex<Instant>,
}

pub async fn run_worker(opts: WorkerOptions) -> Result<WorkerSummary> {
    let (state, register, _temp) = open_worker(&opts)?;
    let (stop, stopped_by) = stop_on_signals(&state)?;
    let mut conversation = Conversation {
        opts: &opts,
        state: &state,
        register,
        unreachable: Unreachable::default(),
        backoff: Backoff::default(),
        heartbeat: None,
    };
    let why = match conversation.lease_until_done(&stop).await? {
        Some(why) => why,
        None => stopped_by.lock().unwrap().to_string(),
    };
    // Units still running are stopped; each reports what it has.
    state.stopping.store(true, Ordering::SeqCst);
    for kill in state.running.lock().unwrap().values() {
        kill.cancel();
    }
    let deadline = Instant::now() + opts.grace;
    while !state.running.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(h) = conversation.heartbeat {
        h.abort();
    }
    Ok(WorkerSummary {
        units: state.units_done.load(Ordering::Relaxed),
        why,
    })
}

/// The worker's state, what it registers with, and its temporary cache (removed when the
/// returned guard is dropped, at exit) when it was given none.
fn open_worker(
    opts: &WorkerOptions,
) -> Result<(Arc<WorkerState>, Register, Option<tempfile::TempDir>)> {
    let client = Client::with_options(
        &opts.url,
        opts.token.as_ref(),
        &super::client::ClientOptions {
            fingerprint: opts.fingerprint,
            ..Default::default()
        },
    )?;
    let temp = match &opts.cache {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("mvc-worker-")
                .tempdir()
                .context("creating the worker's cache directory")?,
        ),
    };
    let cache_dir = opts
        .cache
        .clone()
        .unwrap_or_else(|| temp.as_ref().expect("made above").path().to_path_buf());
    let store = Arc::new(Store::open(&cache_dir)?);
    let host = crate::resources::hostname();
    let name = format!("{host}:{}", std::process::id());
    let register = Register {
        name: name.clone(),
        host,
        slots: opts.slots,
        labels: opts.labels.clone(),
        blender: crate::render::blender::find_blender(None).map(|p| p.display().to_string()),
        slurm_job: slurm_job(),
    };
    let state = Arc::new(WorkerState {
        client,
        store,
        launcher: Arc::new(Launcher::start()),
        name,
        worker: AtomicU64::new(0),
        reregister: AtomicBool::new(true),
        stopping: AtomicBool::new(false),
        pipelines: Mutex::default(),
        checked: Mutex::default(),
        running: Mutex::default(),
        free: Mutex::new(opts.slots),
        changed: Notify::new(),
        units_done: AtomicU64::new(0),
        last_busy: Mutex::new(Instant::now()),
    });
    Ok((state, register, temp))
}

/// Ctrl-C and SIGTERM stop the worker whatever it is waiting for: the coordinator's answer,
/// a backoff, a unit. The token is fired by the first one; the text says which.
fn stop_on_signals(
    state: &Arc<WorkerState>,
) -> Result<(CancellationToken, Arc<Mutex<&'static str>>)> {
    let stop = CancellationToken::new();
    let stopped_by: Arc<Mutex<&'static str>> = Arc::new(Mutex::new("interrupted"));
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let (token, by, state) = (stop.clone(), stopped_by.clone(), state.clone());
    tokio::spawn(async move {
        let why = tokio::select! {
            _ = sigint.recv() => "interrupted",
            _ = sigterm.recv() => "terminated",
        };
        state.stopping.store(true, Ordering::SeqCst);
        *by.lock().unwrap() = why;
        token.cancel();
    });
    Ok((stop, stopped_by))
}

/// The worker's side of its conversation with the coordinator: registering, leasing, and
/// saying when it cannot reach it. What to do next is [`LeaseLoop`]'s decision.
struct Conversation<'a> {
    opts: &'a WorkerOptions,
    state: &'a Arc<WorkerState>,
    register: Register,
    unreachable: Unreachable,
    backoff: Backoff,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

/// A lease request's answer, with the slots it had reserved.
type LeaseAnswer = (Resources, Result<super::protocol::LeaseReply, CallError>);

impl Conversation<'_> {
    /// Registers, leases and starts units until the worker leaves (`Some(why)`) or is
    /// stopped by a signal (`None`). Lease requests run concurrently, each reserving the
    /// free slots it advertised, so that slots freed while one request waits are offered by
    /// another at once; a request is never abandoned midway.
    async fn lease_until_done(&mut self, stop: &CancellationToken) -> Result<Option<String>> {
        let (polls_tx, mut polls_rx) = tokio::sync::mpsc::unbounded_channel::<LeaseAnswer>();
        let mut lease_loop = LeaseLoop::new(Instant::now(), self.opts.exit_when_idle);
        loop {
            let state = self.state;
            let seen = Seen {
                now: Instant::now(),
                running: !state.running.lock().unwrap().is_empty(),
                idle_for: state.last_busy.lock().unwrap().elapsed(),
                must_register: state.reregister.load(Ordering::Relaxed),
                free: *state.free.lock().unwrap(),
            };
            match lease_loop.next(&seen) {
                Next::Leave(why) => return Ok(Some(why)),
                Next::Register => {
                    if !self.register(stop).await? {
                        return Ok(None);
                    }
                    continue;
                }
                Next::Lease(free) => self.ask_for_units(free, &polls_tx),
                Next::Wait => {}
            }
            let wake = lease_loop
                .wake_at(seen.now)
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                Some((reserved, reply)) = polls_rx.recv() => {
                    state.free.lock().unwrap().give(&reserved);
                    if !self.answered(&mut lease_loop, reply, stop).await? {
                        return Ok(None);
                    }
                }
                // A unit finished: the slots it gave back are offered by a new request.
                _ = state.changed.notified() => {}
                _ = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => {}
                // Waking now and then re-checks the idle limit.
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.cancelled() => return Ok(None),
            }
        }
    }

    /// Sends one lease request for `free` (reserved until it is answered on `answers`).
    fn ask_for_units(
        &self,
        free: Resources,
        answers: &tokio::sync::mpsc::UnboundedSender<LeaseAnswer>,
    ) {
        self.state.free.lock().unwrap().take(&free);
        let request = LeaseRequest {
            worker: self.state.worker.load(Ordering::Relaxed),
            free,
            wait_ms: 2000,
        };
        let (client, tx) = (self.state.client.clone(), answers.clone());
        tokio::spawn(async move {
            let reply = client.lease(&request).await;
            let _ = tx.send((request.free, reply));
        });
    }

    /// Takes a lease request's answer: starts the unit it brought, or notes why none came.
    /// False when a signal stopped the worker meanwhile.
    async fn answered(
        &mut self,
        lease_loop: &mut LeaseLoop,
        reply: Result<super::protocol::LeaseReply, CallError>,
        stop: &CancellationToken,
    ) -> Result<bool> {
        let opts = self.opts;
        match reply {
            Ok(reply) => {
                self.backoff.reset();
                self.unreachable.reached();
                let finished = reply.finished;
                match reply.unit {
                    Some(unit) => {
                        lease_loop.answered(true, finished);
                        start_unit(self.state, unit);
                    }
                    None => {
                        lease_loop.answered(false, finished);
                    }
                }
            }
            Err(CallError::Unauthorized(message)) => {
                bail!(
                    "{}: the coordinator refused the token (401): {message}",
                    opts.url
                )
            }
            Err(CallError::UnknownWorker(_)) => {
                lease_loop.unknown();
                self.state.reregister.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                lease_loop.failed(Instant::now(), self.backoff.next_delay());
                if e.is_network() {
                    tokio::select! {
                        _ = self.unreachable.failed("reach", &opts.url, &e, &opts.say) => {}
                        _ = stop.cancelled() => return Ok(false),
                    }
                } else {
                    tracing::info!("leasing: {e}");
                }
            }
        }
        Ok(true)
    }

    /// One attempt to register (waiting out the backoff after a failure); starts the
    /// heartbeats once registered. False when a signal stopped the worker meanwhile.
    async fn register(&mut self, stop: &CancellationToken) -> Result<bool> {
        let (opts, state) = (self.opts, self.state);
        let attempt = tokio::select! {
            attempt = state.client.register(&self.register) => attempt,
            _ = stop.cancelled() => return Ok(false),
        };
        match attempt {
            Ok(registered) => {
                state.worker.store(registered.worker, Ordering::Relaxed);
                state.reregister.store(false, Ordering::Relaxed);
                self.backoff.reset();
                self.unreachable.reached();
                opts.say.line(&format!(
                    "mvc worker {}: registered with {} ({})",
                    state.name, opts.url, opts.slots
                ));
                if let Some(h) = self.heartbeat.take() {
                    h.abort();
                }
                self.heartbeat = Some(tokio::spawn(heartbeats(
                    state.clone(),
                    Duration::from_millis(registered.heartbeat_ms.max(50)),
                )));
            }
            Err(CallError::Unauthorized(message)) => {
                bail!(
                    "{}: the coordinator refused the token (401): {message}",
                    opts.url
                )
            }
            Err(CallError::Untrusted(message)) => {
                bail!(
                    "{}: not the coordinator this worker trusts: {message}",
                    opts.url
                )
            }
            Err(e) => {
                tokio::select! {
                    _ = self.unreachable.failed("register with", &opts.url, &e, &opts.say) => {}
                    _ = stop.cancelled() => return Ok(false),
                }
                tokio::select! {
                    _ = self.backoff.wait() => {}
                    _ = stop.cancelled() => return Ok(false),
                }
            }
        }
        Ok(true)
    }
}

/// The Slurm job this process runs in, as the launcher names it: `ARRAY_TASK` in a job
/// array, else the job id.
fn slurm_job() -> Option<String> {
    let var = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (var("SLURM_ARRAY_JOB_ID"), var("SLURM_ARRAY_TASK_ID")) {
        (Some(array), Some(task)) => Some(format!("{array}_{task}")),
        _ => var("SLURM_JOB_ID"),
    }
}

/// Tells the coordinator every few seconds that the worker lives and what it runs; stops
/// the units the coordinator no longer counts as this worker's.
async fn heartbeats(state: Arc<WorkerState>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let running: Vec<u64> = state.running.lock().unwrap().keys().copied().collect();
        let beat = Heartbeat {
            worker: state.worker.load(Ordering::Relaxed),
            running,
        };
        match state.client.heartbeat(&beat).await {
            Ok(reply) => {
                let running = state.running.lock().unwrap();
                for unit in reply.cancel {
                    if let Some(kill) = running.get(&unit) {
                        tracing::warn!("unit {unit} is no longer this worker's: stopping it");
                        kill.cancel();
                    }
                }
            }
            Err(CallError::UnknownWorker(_)) => state.reregister.store(true, Ordering::Relaxed),
            Err(e) => tracing::info!("heartbeat: {e}"),
        }
    }
}

fn start_unit(state: &Arc<WorkerState>, unit: Unit) {
    let kill = CancellationToken::new();
    state.running.lock().unwrap().insert(unit.id, kill.clone());
    state.free.lock().unwrap().take(&unit.resources);
    *state.last_busy.lock().unwrap() = Instant::now();
    let state = state.clone();
    tokio::spawn(async move {
        let id = unit.id;
        let resources = unit.resources;
        let label = format!(
            "{}/{}{}",
            unit.stage,
            unit.tasks.first().map(|t| t.item.as_str()).unwrap_or(""),
            match unit.tasks.len() {
                0 | 1 => String::new(),
                n => format!(" (+{} more)", n - 1),
            }
        );
        let keys: Vec<Digest> = unit.tasks.iter().map(|t| t.key).collect();
        let result = match execute(&state, unit, &kill).await {
            Ok(outcomes) => upload_outputs(&state, &outcomes).await.map(|()| outcomes),
            Err(e) => Err(e),
        };
        let report = match result {
            Ok(mut outcomes) => {
                // A stop signal reaches the whole job at once (Slurm's scancel signals every
                // process of it): a task killed by it, or a launcher that died of it, has not
                // failed, so the coordinator hears "cancelled" and runs it elsewhere.
                if state.stopping.load(Ordering::SeqCst) {
                    for o in &mut outcomes {
                        if !matches!(o, TaskOutcome::Success { .. }) {
                            *o = TaskOutcome::Cancelled;
                        }
                    }
                }
                let body = Complete {
                    worker: state.worker.load(Ordering::Relaxed),
                    worker_name: state.name.clone(),
                    keys,
                    outcomes,
                };
                send_until_answered(|| state.client.complete(id, &body)).await
            }
            Err(error) => {
                tracing::warn!("unit {id} ({label}) could not run here: {error}");
                let body = Fail {
                    worker: state.worker.load(Ordering::Relaxed),
                    error,
                };
                send_until_answered(|| state.client.fail(id, &body)).await
            }
        };
        match report {
            Ok(()) => {
                state.units_done.fetch_add(1, Ordering::Relaxed);
                tracing::info!("unit {id} ({label}) reported");
            }
            Err(e) => tracing::warn!("unit {id} ({label}): its report was refused: {e}"),
        }
        state.running.lock().unwrap().remove(&id);
        state.free.lock().unwrap().give(&resources);
        *state.last_busy.lock().unwrap() = Instant::now();
        state.changed.notify_one();
    });
}

/// Sends a report until the coordinator answers (it may be restarting): network errors are
/// retried for up to ten minutes, answers are final.
async fn send_until_answered<F, Fut>(send: F) -> Result<(), CallError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), CallError>>,
{
    let mut backoff = Backoff::default();
    let give_up = Instant::now() + Duration::from_secs(600);
    loop {
        match send().await {
            Err(e) if e.is_network() && Instant::now() < give_up => backoff.wait().await,
            other => return other,
        }
    }
}

/// The parsed pipeline of a unit (fetched and parsed once per worker).
async fn pipeline(state: &WorkerState, digest: &Digest) -> Result<Arc<Pipeline>, String> {
    if let Some(p) = state.pipelines.lock().unwrap().get(digest) {
        return Ok(p.clone());
    }
    let text = state
        .client
        .pipeline(digest)
        .await
        .map_err(|e| format!("fetching the pipeline: {e}"))?;
    let parsed = Pipeline::parse(std::path::Path::new(&text.path), &text.text)
        .map_err(|e| format!("the pipeline does not load on this worker: {e}"))?;
    let parsed = Arc::new(parsed);
    state
        .pipelines
        .lock()
        .unwrap()
        .insert(*digest, parsed.clone());
    Ok(parsed)
}

/// Fetches a unit's input blobs that this worker lacks, then runs it.
async fn execute(
    state: &Arc<WorkerState>,
    unit: Unit,
    kill: &CancellationToken,
) -> Result<Vec<TaskOutcome>, String> {
    let pipeline = pipeline(state, &unit.pipeline).await?;
    let stage = pipeline
        .workflow
        .stages
        .iter()
        .find(|s| s.name == unit.stage)
        .ok_or_else(|| format!("the pipeline has no stage `{}`", unit.stage))?;
    check_shared(state, &unit, &stage.kind).await?;
    match fetch_inputs(state, &unit.tasks).await {
        Ok(()) => {}
        Err(FetchFailed::Other(error)) => return Err(error),
        // The coordinator has no good copy of an input: the tasks that read it say so, and
        // the coordinator runs its producer again; the others go back to the queue.
        Err(FetchFailed::Gone { stage, item, error }) => {
            tracing::warn!("{error}");
            let reads = |t: &super::protocol::UnitTaskWire| {
                t.inputs
                    .iter()
                    .any(|i| i.stage == stage && i.items.iter().any(|(it, _)| *it == item))
            };
            return Ok(unit
                .tasks
                .iter()
                .map(|t| match reads(t) {
                    true => TaskOutcome::InputCorrupt {
                        stage: stage.clone(),
                        item: item.clone(),
                        error: error.clone(),
                    },
                    false => TaskOutcome::Cancelled,
                })
                .collect());
        }
    }
    let tasks: Vec<UnitTask> = unit
        .tasks
        .into_iter()
        .map(|t| UnitTask {
            key: t.key,
            item: t.item,
            item_params: t.item_params,
            inputs: t.inputs,
        })
        .collect();
    let ctx = ExecCtx {
        store: state.store.clone(),
        meter: Arc::new(ByteMeter::default()),
        kill: kill.clone(),
        launcher: state.launcher.clone(),
    };
    let n = tasks.len();
    // A unit that does not stop after the kill is abandoned, so the worker can leave on time.
    Ok(
        crate::exec::unless_abandoned(kill, stage.kind.execute(&ctx, tasks))
            .await
            .unwrap_or_else(|| (0..n).map(|_| TaskOutcome::Cancelled).collect()),
    )
}

/// Why a unit's inputs could not be fetched.
enum FetchFailed {
    /// The coordinator has no good copy of the output of `stage/item`.
    Gone {
        stage: String,
        item: String,
        error: String,
    },
    /// Anything else (the network): the unit cannot run here now.
    Other(String),
}

/// Tries per blob: a network error or a damaged arrival is tried again (a coordinator that
/// finds its own copy damaged breaks the transfer off, and answers 404 the next time).
const FETCH_TRIES: u32 = 3;

/// Fetches the input blobs of a unit's tasks that this worker lacks.
async fn fetch_inputs(
    state: &WorkerState,
    tasks: &[super::protocol::UnitTaskWire],
) -> Result<(), FetchFailed> {
    let blobs = state.store.blobs();
    for task in tasks {
        for input in &task.inputs {
            for (item, result) in &input.items {
                for (digest, size) in result.blob_outputs() {
                    if blobs.size(&digest) == Some(size) {
                        continue;
                    }
                    let mut backoff = Backoff::default();
                    let mut tries = 1;
                    let fetched = loop {
                        match state.client.get_blob(&digest, blobs).await {
                            Err(e @ (CallError::Network(_) | CallError::BlobCorrupt(_)))
                                if tries < FETCH_TRIES =>
                            {
                                tracing::info!("fetching blob {digest} (try {tries}): {e}");
                                tries += 1;
                                backoff.wait().await;
                            }
                            other => break other,
                        }
                    };
                    match fetched {
                        Ok(_) => {}
                        Err(e @ (CallError::BlobMissing(_) | CallError::BlobCorrupt(_))) => {
                            return Err(FetchFailed::Gone {
                                stage: input.stage.clone(),
                                item: item.clone(),
                                error: format!("input {}/{item}: blob {digest}: {e}", input.stage),
                            });
                        }
                        Err(e) => {
                            return Err(FetchFailed::Other(format!(
                                "fetching input blob {digest}: {e}"
                            )));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// What a worker knows of its shared parameters for one stage.
#[derive(Clone)]
enum Check {
    /// Known for the worker's life: they match, or they differ (another Blender, other
    /// model files): the same answer every time.
    Settled(Result<(), String>),
    /// Could not be computed (a model download failed, a script is not there yet): the
    /// same error until `retry_at`, then checked again, waiting twice as long after each
    /// failure (up to a minute), so that one outage does not refuse a stage for ever.
    Failed {
        error: String,
        retry_at: Instant,
        wait: Duration,
    },
}

/// The first wait after a failed check.
const CHECK_RETRY: Duration = Duration::from_secs(1);

/// Refuses a unit whose stage this worker would run with other shared parameters than the
/// coordinator keyed (another Blender, other model files, `backend = "auto"` resolving to
/// another renderer): its outputs would not be what the task keys say.
async fn check_shared(
    state: &Arc<WorkerState>,
    unit: &Unit,
    kind: &Arc<dyn crate::stages::StageKind>,
) -> Result<(), String> {
    let id = (unit.pipeline, unit.stage.clone());
    let last_wait = match state.checked.lock().unwrap().get(&id) {
        Some(Check::Settled(verdict)) => return verdict.clone(),
        Some(Check::Failed {
            error, retry_at, ..
        }) if Instant::now() < *retry_at => return Err(error.clone()),
        Some(Check::Failed { wait, .. }) => Some(*wait),
        None => None,
    };
    let (store, kind) = (state.store.clone(), kind.clone());
    let ours = crate::exec::blocking_if(true, move || {
        kind.shared_params(&crate::stages::ParamCtx { store: &store })
            .map(|slice| crate::task::slice_digest(&slice))
            .map_err(|e| format!("{e:#}"))
    })
    .await;
    let check = match ours {
        Ok(d) if d == unit.shared => Check::Settled(Ok(())),
        Ok(d) => Check::Settled(Err(format!(
            "stage `{}` would run differently on this worker: its parameters here (digest {}) \
             are not the coordinator's ({}); check that the worker has the same Blender, model \
             files and scripts at the same paths",
            unit.stage,
            d.short(),
            unit.shared.short()
        ))),
        Err(e) => {
            let wait = last_wait.map_or(CHECK_RETRY, |w| (w * 2).min(Duration::from_secs(60)));
            Check::Failed {
                error: format!(
                    "stage `{}` cannot run here now: {e} (checked again in {:.0}s)",
                    unit.stage,
                    wait.as_secs_f64()
                ),
                retry_at: Instant::now() + wait,
                wait,
            }
        }
    };
    let verdict = match &check {
        Check::Settled(verdict) => verdict.clone(),
        Check::Failed { error, .. } => Err(error.clone()),
    };
    state.checked.lock().unwrap().insert(id, check);
    verdict
}

/// Uploads the blobs the outcomes name that the coordinator does not have yet.
async fn upload_outputs(state: &WorkerState, outcomes: &[TaskOutcome]) -> Result<(), String> {
    for outcome in outcomes {
        let digests: Vec<Digest> = match outcome {
            TaskOutcome::Success {
                outputs,
                stdout,
                stderr,
                ..
            } => outputs
                .iter()
                .filter(|o| o.inline.is_none())
                .map(|o| o.digest)
                .chain(*stdout)
                .chain(*stderr)
                .collect(),
            TaskOutcome::Failed { stderr, .. } => stderr.iter().copied().collect(),
            _ => Vec::new(),
        };
        for digest in digests {
            let send = || async {
                if state.client.has_blob(&digest).await? {
                    return Ok(());
                }
                state
                    .client
                    .put_blob(&digest, &state.store.blobs().path(&digest))
                    .await
            };
            send_until_answered(send)
                .await
                .map_err(|e| format!("uploading blob {digest}: {e}"))?;
        }
    }
    Ok(())
}
