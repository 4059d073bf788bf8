//! The engine's side of remote workers: what the coordinator (`crate::remote`, the HTTP
//! layer above) and the scheduler share. The scheduler leases units and records results
//! through [`WorkerHub`]; the coordinator relays workers' requests as [`SchedMsg`]s. The
//! messages a worker sends that the scheduler reads are defined here and travel as JSON.

use super::kind::TaskOutcome;
use super::workdir::InputData;
use crate::resources::Resources;
use crate::store::Store;
use crate::task::{Digest, ParamSlice, TaskKey};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// What the scheduler needs of the coordinator that serves its workers.
pub trait WorkerHub: Send + Sync {
    /// The cache the run records into.
    fn store(&self) -> &Arc<Store>;
    /// A worker silent this long loses its units.
    fn lease_timeout(&self) -> Duration;
    /// How often workers send heartbeats.
    fn heartbeat(&self) -> Duration;
    /// Leases of one task before it counts as failed in this run.
    fn max_attempts(&self) -> u32;
    /// The digest of the pipeline text workers fetch.
    fn pipeline_digest(&self) -> Digest;
    /// The registry of workers, shared with the HTTP handlers.
    fn shared(&self) -> &Mutex<Shared>;
    /// Whether the run is over (lease requests are then answered with `finished`).
    /// A run starting clears the halt of the one before (`mvc serve` runs again).
    fn set_finished(&self, finished: bool) {
        let mut shared = self.shared().lock().unwrap();
        shared.finished = finished;
        if !finished {
            shared.halt = None;
        }
    }
}

/// Why the scheduler refuses a worker's report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The unit is not (or no longer) this worker's.
    Conflict,
    /// The report does not match the unit.
    BadRequest,
}

/// The scheduler's answer to a worker's report: a note for the worker, or a refusal.
pub type Reply = Result<String, (Refused, String)>;

/// What the HTTP handlers ask of the scheduler.
pub enum SchedMsg {
    Lease {
        worker: u64,
        free: Resources,
        deadline: Instant,
        reply: oneshot::Sender<Option<Unit>>,
    },
    Complete {
        unit: u64,
        body: Complete,
        /// The blake3 of the sender's session secret: only the session a unit was leased to
        /// may report it.
        session: Digest,
        reply: oneshot::Sender<Reply>,
    },
    Fail {
        unit: u64,
        body: Fail,
        session: Digest,
        reply: oneshot::Sender<Reply>,
    },
}

/// A registered worker, as the coordinator sees it.
#[derive(Debug)]
pub struct WorkerEntry {
    pub register: Register,
    /// The blake3 of the secret the worker process chose and sends with every request.
    /// Names are self-chosen and ids are listed by `/v1/status`: neither proves who asks.
    pub session: Digest,
    pub last_seen: Instant,
    /// When the worker's last heartbeat came, and the units it listed.
    pub heartbeat: Option<(Instant, Vec<u64>)>,
    /// Unit id → label (`stage/item`, and how many tasks) of what it holds.
    pub holding: IndexMap<u64, String>,
    pub units_done: u64,
}

/// State shared by the handlers and the scheduler.
#[derive(Default)]
pub struct Shared {
    pub workers: IndexMap<u64, WorkerEntry>,
    /// The last worker number handed out.
    pub next_worker: u64,
    /// Unit id → the worker that holds it.
    pub leased: HashMap<u64, u64>,
    /// Units the previous coordinator process leased, held for their workers' reports: unit
    /// id → the session it was leased to. A worker still running one is not told to stop.
    pub earlier: HashMap<u64, crate::task::Digest>,
    /// Tasks waiting in the scheduler's queues (for `mvc status`), and per stage (for the
    /// Slurm launcher, which sizes its job arrays by them).
    pub queued: u64,
    pub queued_by_stage: IndexMap<String, u64>,
    /// The run is over: lease requests are answered with `finished`.
    pub finished: bool,
    /// (count, bytes) of blobs sent to workers and received from them.
    pub blobs_sent: (u64, u64),
    pub blobs_received: (u64, u64),
    /// The Slurm jobs (`ARRAY_TASK`, or the job id) whose worker registered, ever.
    pub slurm_jobs_registered: std::collections::HashSet<String>,
    /// Workers cannot start (their jobs die before registering): the run stops, and what
    /// is queued fails for this run with this message.
    pub halt: Option<String>,
}

/// `POST /v1/workers`: a worker introduces itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Register {
    /// Stable for the worker process's life (`host:pid`): a worker that registers again
    /// after a coordinator restart is recognised by it.
    pub name: String,
    pub host: String,
    pub slots: Resources,
    #[serde(default)]
    pub labels: Vec<String>,
    /// Whether the worker has Blender (its `blender` slots are then usable).
    #[serde(default)]
    pub blender: Option<String>,
    /// The Slurm job it runs in (`ARRAY_TASK` of an array, else the job id), when it does:
    /// the launcher tells jobs that started a worker from jobs that died before.
    #[serde(default)]
    pub slurm_job: Option<String>,
}

/// An execution unit leased to a worker: one or more tasks of one stage.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Unit {
    /// Unique across coordinator restarts (random), so a result for a unit of an earlier
    /// coordinator process is never taken for another.
    pub id: u64,
    pub stage: String,
    pub resources: Resources,
    /// The pipeline file's digest: the worker fetches its text once (`GET /v1/pipelines/D`).
    pub pipeline: Digest,
    /// The digest of the stage's shared parameters as the coordinator keyed them (the
    /// Blender version, the model files' digests, …): a worker whose own differ would make
    /// other outputs than the keys say, so it refuses the unit.
    pub shared: Digest,
    pub tasks: Vec<UnitTaskWire>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UnitTaskWire {
    pub key: TaskKey,
    pub item: String,
    pub item_params: ParamSlice,
    pub inputs: Vec<InputData>,
}

/// `POST /v1/units/ID/complete`: the outcome of every task of a unit, in order. Output blobs
/// are uploaded first.
#[derive(Debug, Serialize, Deserialize)]
pub struct Complete {
    pub worker: u64,
    pub worker_name: String,
    pub keys: Vec<TaskKey>,
    pub outcomes: Vec<TaskOutcome>,
}

/// `POST /v1/units/ID/fail`: the worker could not run the unit at all (not an item's fault):
/// the unit goes back to the queue, counting one attempt.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fail {
    pub worker: u64,
    pub error: String,
}
