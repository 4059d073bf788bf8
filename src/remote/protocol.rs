//! The coordinator's HTTP/JSON protocol: paths and message types, shared by both ends.
//!
//! Every path starts with [`API`]; a change that old workers could misread gets a new prefix.
//! Blobs travel as raw bytes (`GET`/`HEAD`/`PUT /v1/blobs/<blake3 hex>`), everything else as
//! JSON.

use crate::resources::Resources;

/// The messages the engine's scheduler reads are its own ([`crate::exec::workers`]).
pub use crate::exec::workers::{Complete, Fail, Register, Unit, UnitTaskWire};
use serde::{Deserialize, Serialize};

/// The versioned prefix of every path.
pub const API: &str = "/v1";

/// JSON bodies larger than this are refused, by either end (a unit with its inputs' records
/// and inline outputs is far smaller; a larger one is a mistake or an attack).
pub const JSON_LIMIT: usize = 64 << 20;

/// The header in which a worker sends its session secret with every request: a random
/// value the worker process chose, known only to it and (as a hash) to the coordinator.
/// Only the session a unit was leased to may report it, heartbeat for its worker or lease
/// in its name.
pub const SESSION_HEADER: &str = "x-mvc-session";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Registered {
    pub worker: u64,
    /// How often to send a heartbeat.
    pub heartbeat_ms: u64,
    /// A worker silent for this long loses its units.
    pub lease_timeout_ms: u64,
}

/// `POST /v1/lease`: a worker with `free` slots asks for one unit, waiting up to `wait_ms`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub worker: u64,
    pub free: Resources,
    pub wait_ms: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LeaseReply {
    pub unit: Option<Unit>,
    /// The run is over: nothing more will come from this coordinator.
    #[serde(default)]
    pub finished: bool,
}

/// `GET /v1/pipelines/D`: the pipeline a unit belongs to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PipelineText {
    /// As the coordinator was given it; relative paths in it resolve against the worker's
    /// working directory, as they do against the coordinator's.
    pub path: String,
    pub text: String,
}

/// `POST /v1/heartbeat`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    pub worker: u64,
    /// Units the worker is running.
    pub running: Vec<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// Units the worker runs that are no longer its own (expired, or the run was stopped):
    /// it stops them.
    pub cancel: Vec<u64>,
}

/// `GET /v1/status`: connected workers and what they run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    pub pipeline: String,
    pub workers: Vec<WorkerStatus>,
    pub queued: u64,
    pub finished: bool,
    /// Blobs sent to workers (`GET`) and received from them (`PUT`), and their bytes.
    #[serde(default)]
    pub blobs_sent: (u64, u64),
    #[serde(default)]
    pub blobs_received: (u64, u64),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub id: u64,
    pub name: String,
    pub host: String,
    pub slots: Resources,
    pub labels: Vec<String>,
    pub blender: Option<String>,
    /// `stage/item` of each task it runs (the first of each unit, with the unit's size).
    pub running: Vec<String>,
    pub units_done: u64,
    pub last_seen_ms_ago: u64,
}

/// Error replies carry a message meant for the user.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}
