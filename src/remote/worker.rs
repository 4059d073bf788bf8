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
    // Ctrl-C and SIGTERM stop the worker whatever it is waiting for: the coordinator's
    // answer, a backoff, a unit. `stop` is fired by the first one; `stopped_by` says which.
    let stop = CancellationToken::new();
    let stopped_by: Arc<Mutex<&'static str>> = Arc::new(Mutex::new("interrupted"));
    {
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let (stop, stopped_by, state) = (stop.clone(), stopped_by.clone(), state.clone());
        tokio::spawn(async move {
            let why = tokio::select! {
                _ = sigint.recv() => "interrupted",
                _ = sigterm.recv() => "terminated",
            };
            state.stopping.store(true, Ordering::SeqCst);
            *stopped_by.lock().unwrap() = why;
            stop.cancel();
        });
    }
    let stopped = || stopped_by.lock().unwrap().to_string();
    let mut unreachable = Unreachable::default();
    let mut backoff = Backoff::default();
    let mut heartbeat: Option<tokio::task::JoinHandle<()>> = None;
    let idle_limit = opts.exit_when_idle;
    // Lease requests run concurrently, each reserving the free slots it advertised, so that
    // slots freed while one request waits are offered by another at once. A request is never
    // abandoned midway: a unit the coordinator sent would be lost until its lease expired.
    let (polls_tx, mut polls_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut polls = 0usize;
    let mut pause_until = tokio::time::Instant::now();
    let mut leaving: Option<String> = None;
    let why = loop {
        let running_now = !state.running.lock().unwrap().is_empty();
        let idle_for = state.last_busy.lock().unwrap().elapsed();
        if leaving.is_none() && !running_now && idle_limit.is_some_and(|limit| idle_for >= limit) {
            leaving = Some(format!("idle for {:.0}s", idle_for.as_secs_f64()));
        }
        if let Some(why) = &leaving
            && polls == 0
            && !running_now
        {
            break why.clone();
        }
        if state.reregister.load(Ordering::Relaxed) && polls == 0 && leaving.is_none() {
            let attempt = tokio::select! {
                attempt = state.client.register(&register) => attempt,
                _ = stop.cancelled() => break stopped(),
            };
            match attempt {
                Ok(registered) => {
                    state.worker.store(registered.worker, Ordering::Relaxed);
                    state.reregister.store(false, Ordering::Relaxed);
                    backoff.reset();
                    unreachable.reached();
                    opts.say.line(&format!(
                        "mvc worker {}: registered with {} ({})",
                        state.name, opts.url, opts.slots
                    ));
                    if let Some(h) = heartbeat.take() {
                        h.abort();
                    }
                    heartbeat = Some(tokio::spawn(heartbeats(
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
                        _ = unreachable.failed("register with", &opts.url, &e, &opts.say) => {}
                        _ = stop.cancelled() => break stopped(),
                    }
                    tokio::select! {
                        _ = backoff.wait() => {}
                        _ = stop.cancelled() => break stopped(),
                    }
                }
            }
            continue;
        }
        let may_poll = leaving.is_none()
            && !state.reregister.load(Ordering::Relaxed)
            && tokio::time::Instant::now() >= pause_until;
        if may_poll {
            let free = std::mem::take(&mut *state.free.lock().unwrap());
            if !free.is_zero() {
                polls += 1;
                let request = LeaseRequest {
                    worker: state.worker.load(Ordering::Relaxed),
                    free,
                    wait_ms: 2000,
                };
                let (client, tx) = (state.client.clone(), polls_tx.clone());
                tokio::spawn(async move {
                    let reply = client.lease(&request).await;
                    let _ = tx.send((request.free, reply));
                });
            }
        }
        tokio::select! {
            Some((reserved, reply)) = polls_rx.recv() => {
                polls -= 1;
                state.free.lock().unwrap().give(&reserved);
                match reply {
                    Ok(reply) => {
                        backoff.reset();
                        unreachable.reached();
                        if let Some(unit) = reply.unit {
                            // A unit that arrives while leaving is run all the same.
                            leaving = None;
                            start_unit(&state, unit);
                        } else if reply.finished && idle_limit.is_some() {
                            leaving.get_or_insert_with(|| "the run is over".to_string());
                        }
                    }
                    Err(CallError::Unauthorized(message)) => {
                        bail!("{}: the coordinator refused the token (401): {message}", opts.url)
                    }
                    Err(CallError::UnknownWorker(_)) => {
                        state.reregister.store(true, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if e.is_network() {
                            tokio::select! {
                                _ = unreachable.failed("reach", &opts.url, &e, &opts.say) => {}
                                _ = stop.cancelled() => break stopped(),
                            }
                        } else {
                            tracing::info!("leasing: {e}");
                        }
                        pause_until = tokio::time::Instant::now() + backoff.next_delay();
                    }
                }
            }
            // A unit finished: the slots it gave back are offered by a new request.
            _ = state.changed.notified() => {}
            _ = tokio::time::sleep_until(pause_until), if !may_poll && leaving.is_none() => {}
            // Waking now and then re-checks the idle limit.
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.cancelled() => break stopped(),
        }
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
    if let Some(h) = heartbeat {
        h.abort();
    }
    Ok(WorkerSummary {
        units: state.units_done.load(Ordering::Relaxed),
        why,
    })
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
