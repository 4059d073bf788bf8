//! The scheduler's side of remote work: leasing units from the run's queues to workers,
//! recording their results exactly once, and putting back what a lost worker held.
//!
//! Everything here runs on the scheduler's loop, which alone changes the engine, so a
//! lease, its result and its expiry never race each other: whichever reaches the loop first
//! wins, and the others find the lease gone.

use super::ids::{StageId, TaskId};
use super::queue::{StageQueue, guided_share};
use super::resolve::Engine;
use super::units::{
    MissingInput, PreparedTask, Reported, TaskIdentity, commit_outcome, prepare_unit, read_inputs,
};
use super::workers::{Complete, Refused, Reply, SchedMsg, Unit, UnitTaskWire, WorkerHub};
use crate::exec::kind::TaskOutcome;
use crate::resources::Resources;
use crate::store::Store;
use crate::store::records::{decode, encode};
use crate::task::{Digest, TaskKey};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// A unit a worker holds.
struct Lease {
    worker: u64,
    /// The session the unit was leased to: only it may report the unit.
    session: Digest,
    worker_name: String,
    stage: StageId,
    tasks: Vec<(TaskId, TaskIdentity)>,
    leased_at: Instant,
}

/// A lease as kept in the index (`leases` tree) while it is out: enough for a restarted
/// coordinator to record the unit's results without the worker running it again.
#[derive(Serialize, Deserialize)]
struct PersistedLease {
    worker_name: String,
    /// Absent in leases written by an mvc from before sessions: those expire.
    #[serde(default)]
    session: Option<Digest>,
    stage: String,
    tasks: Vec<TaskIdentity>,
}

struct Waiting {
    worker: u64,
    free: Resources,
    deadline: Instant,
    reply: oneshot::Sender<Option<Unit>>,
}

/// Task outcomes for the scheduler to take (tasks to put back go straight to their queue).
pub(super) type Effects = Vec<(TaskId, Reported)>;

pub(super) struct RemoteUnits {
    pub(super) coord: Arc<dyn WorkerHub>,
    rx: mpsc::UnboundedReceiver<SchedMsg>,
    leases: HashMap<u64, Lease>,
    waiting: VecDeque<Waiting>,
    /// Task → (leases lost, the last reason).
    attempts: HashMap<TaskId, (u32, String)>,
    /// Units whose result was recorded (a second completion is acknowledged, not recorded).
    done_units: HashSet<u64>,
    /// Units leased by an earlier coordinator process on this cache, by id.
    before: HashMap<u64, PersistedLease>,
    /// Their task keys, held back from dispatch so that the workers running them can report
    /// first, until their unit is reported or released (`release_earlier_units`).
    held_keys: HashSet<TaskKey>,
    /// One lease timeout after this coordinator started: units of the earlier one that no
    /// worker lists by then are released.
    held_until: Instant,
    held_tasks: Vec<TaskId>,
    /// Stages already said to need a worker (said once).
    told: HashSet<StageId>,
    /// Stages whose shared parameters are in the index (stored on first dispatch).
    saved: HashSet<StageId>,
    /// Replies to workers (leased units, "recorded"), sent once what they answer for is on
    /// disk.
    durable: mpsc::UnboundedSender<AfterFlush>,
}

/// A reply to a worker, sent once the index is flushed.
type AfterFlush = Box<dyn FnOnce() + Send>;

/// Sends replies to workers once what they answer for is on disk (group commit). One flush
/// of the index covers every reply queued while the previous one ran: a flush per reply
/// would hold the scheduler's loop for an fsync each. A unit sent before its lease is on
/// disk is run again should the coordinator be killed (its result would be refused by the
/// next); a result answered "recorded" before it is on disk is lost by such a kill, and its
/// tasks run twice (`benches/xl_coordinator.rs` saw 108 of 438,000 acknowledged twice across
/// a SIGKILL before replies waited for the flush).
fn durable_replies(store: Arc<Store>) -> mpsc::UnboundedSender<AfterFlush> {
    let (tx, mut rx) = mpsc::unbounded_channel::<AfterFlush>();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            let index = store.clone();
            match tokio::task::spawn_blocking(move || index.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("flushing the index before replying: {e:#}"),
                Err(e) => tracing::warn!("flushing the index before replying: {e}"),
            }
            for reply in batch {
                reply();
            }
        }
    });
    tx
}

impl RemoteUnits {
    pub(super) fn new(
        coord: Arc<dyn WorkerHub>,
        rx: mpsc::UnboundedReceiver<SchedMsg>,
    ) -> Result<RemoteUnits> {
        let mut before = HashMap::new();
        for (id, value) in coord.store().leases()? {
            match decode::<PersistedLease>(&value, "lease") {
                Ok(lease) => {
                    before.insert(id, lease);
                }
                Err(e) => tracing::warn!("dropping an unreadable lease record: {e:#}"),
            }
        }
        let held_keys = before
            .values()
            .flat_map(|l| l.tasks.iter().map(|t| t.key))
            .collect();
        if !before.is_empty() {
            tracing::info!(
                "{} unit(s) were out with workers when the last coordinator stopped; their \
                 tasks wait {:?} for those workers to report",
                before.len(),
                coord.lease_timeout()
            );
        }
        let held_until = Instant::now() + coord.lease_timeout();
        coord.shared().lock().unwrap().earlier = before
            .iter()
            .filter_map(|(id, l)| Some((*id, l.session?)))
            .collect();
        let durable = durable_replies(coord.store().clone());
        Ok(RemoteUnits {
            coord,
            rx,
            leases: HashMap::new(),
            waiting: VecDeque::new(),
            attempts: HashMap::new(),
            done_units: HashSet::new(),
            before,
            held_keys,
            held_until,
            held_tasks: Vec::new(),
            told: HashSet::new(),
            saved: HashSet::new(),
            durable,
        })
    }

    /// Gives back the message channel for the next run (`mvc serve`); waiting lease
    /// requests are answered with nothing.
    pub(super) fn into_receiver(mut self) -> mpsc::UnboundedReceiver<SchedMsg> {
        for w in self.waiting.drain(..) {
            let _ = w.reply.send(None);
        }
        self.rx
    }

    pub(super) async fn recv(&mut self) -> Option<SchedMsg> {
        self.rx.recv().await
    }

    /// Units out with workers.
    pub(super) fn active(&self) -> usize {
        self.leases.len()
    }

    /// Tasks held back for workers of an earlier coordinator.
    pub(super) fn held(&self) -> usize {
        self.held_tasks.len()
    }

    /// Whether a task that is ready to run must wait for a worker of an earlier coordinator
    /// (it is then kept here instead of queued).
    pub(super) fn hold(&mut self, engine: &Engine, t: TaskId) -> bool {
        // Keys leave `held_keys` as their units are reported or released.
        if self.held_keys.is_empty() {
            return false;
        }
        if self.held_keys.contains(&engine.keys[t]) {
            self.held_tasks.push(t);
            return true;
        }
        false
    }

    fn store(&self) -> &Store {
        self.coord.store()
    }

    /// Whether to say (once per stage) that a stage's tasks wait for a worker, because no
    /// local slot can run them.
    pub(super) fn first_wait(&mut self, stage: StageId) -> bool {
        self.told.insert(stage)
    }

    /// Answers waiting lease requests from the queues; when `stopping`, with nothing.
    ///
    /// A worker is given the most downstream stage's work that fits it (the reverse of the
    /// local order). Objects then go through the whole pipeline one after another (depth
    /// first): what waits between stages (renders not yet embedded) stays bounded, finished
    /// objects appear from the start, and the run does not end with every worker waiting on
    /// one stage's last units. Served upstream first, 1,000 workers rendered every object
    /// before embedding any, and the embeddings, leased last in 256-task units, left most
    /// workers idle for the last 10 s (`benches/xl_coordinator.rs`).
    pub(super) fn serve(
        &mut self,
        engine: &mut Engine,
        queues: &mut [StageQueue],
        order: &[StageId],
        stopping: bool,
        effects: &mut Effects,
    ) -> Result<()> {
        let now = Instant::now();
        let workers = self.coord.shared().lock().unwrap().workers.len();
        let mut still = VecDeque::new();
        while let Some(w) = self.waiting.pop_front() {
            if w.reply.is_closed() {
                continue;
            }
            if stopping || now >= w.deadline {
                let _ = w.reply.send(None);
                continue;
            }
            let found = order.iter().rev().copied().find(|&s| {
                !queues[s].is_empty() && w.free.fits(&engine.graph.stages[s].kind.resources())
            });
            match found {
                Some(s) => {
                    let limit =
                        share_of(engine, s, queues[s].len(), self.waiting.len() + 1, workers);
                    self.lease(engine, &mut queues[s], s, limit, w, effects)?
                }
                None => still.push_back(w),
            }
        }
        self.waiting = still;
        Ok(())
    }

    /// Leases the next unit of `stage` (at most `limit` tasks for a kind whose units are
    /// batches) to the waiting request `w`.
    fn lease(
        &mut self,
        engine: &mut Engine,
        queue: &mut StageQueue,
        stage: StageId,
        limit: usize,
        w: Waiting,
        effects: &mut Effects,
    ) -> Result<()> {
        let unit = queue.take_unit(engine, limit);
        let prepared: Vec<PreparedTask> = prepare_unit(engine, &unit)?;
        let node = &engine.graph.stages[stage];
        if self.saved.insert(stage) {
            self.store().put_shared_params(&node.shared)?;
        }
        let wanted = prepared.iter().map(|p| p.inputs.clone()).collect();
        let inputs = match read_inputs(self.store(), wanted) {
            Ok(inputs) => inputs,
            Err(MissingInput { stage, item, error }) => {
                for p in &prepared {
                    effects.push((
                        p.task,
                        Reported::InputCorrupt {
                            stage: stage.clone(),
                            item: item.clone(),
                            error: error.clone(),
                        },
                    ));
                }
                // The request is still open: it waits for the next unit.
                self.waiting.push_front(w);
                return Ok(());
            }
        };
        let id = loop {
            let id = fastrand::u64(1..);
            if !self.leases.contains_key(&id) && !self.before.contains_key(&id) {
                break id;
            }
        };
        let wire = Unit {
            id,
            stage: node.name.clone(),
            resources: node.kind.resources(),
            pipeline: self.coord.pipeline_digest(),
            shared: crate::task::slice_digest(&node.shared),
            tasks: prepared
                .iter()
                .zip(inputs)
                .map(|(p, inputs)| UnitTaskWire {
                    key: p.identity.key,
                    item: p.identity.item.clone(),
                    item_params: engine.graph.item_params(p.task),
                    inputs,
                })
                .collect(),
        };
        let (worker_name, session) = self.note_held(id, w.worker, &node.name, &prepared);
        let persisted = PersistedLease {
            worker_name: worker_name.clone(),
            session: Some(session),
            stage: node.name.clone(),
            tasks: prepared.iter().map(|p| p.identity.clone()).collect(),
        };
        self.store().put_lease(id, &encode(&persisted))?;
        for p in &prepared {
            engine.start(p.task);
        }
        self.leases.insert(
            id,
            Lease {
                worker: w.worker,
                session,
                worker_name,
                stage,
                tasks: prepared.into_iter().map(|p| (p.task, p.identity)).collect(),
                leased_at: Instant::now(),
            },
        );
        if w.reply.is_closed() {
            // The worker stopped asking (its request was cancelled) before the unit left:
            // the unit goes back, costing no attempt.
            let lease = self.drop_lease(id).expect("just inserted");
            for (t, _) in lease.tasks.into_iter().rev() {
                queue.push_front(engine, t);
            }
            return Ok(());
        }
        // (Should the request end while the lease is flushed, the worker's next heartbeat
        // does not list the unit, and it goes back to the queue.)
        let reply = w.reply;
        let _ = self.durable.send(Box::new(move || {
            let _ = reply.send(Some(wire));
        }));
        Ok(())
    }

    /// Notes in what the coordinator shows that worker `worker` holds unit `id` (labelled by
    /// its first task); returns the worker's name and session.
    fn note_held(
        &self,
        id: u64,
        worker: u64,
        stage: &str,
        prepared: &[PreparedTask],
    ) -> (String, Digest) {
        let mut shared = self.coord.shared().lock().unwrap();
        shared.leased.insert(id, worker);
        let first = &prepared[0].identity.item;
        let label = match prepared.len() {
            1 => format!("{stage}/{first}"),
            n => format!("{stage}/{first} (+{} more)", n - 1),
        };
        shared
            .workers
            .get_mut(&worker)
            .map(|e| {
                e.holding.insert(id, label);
                (e.register.name.clone(), e.session)
            })
            .unwrap_or_default()
    }

    /// Removes a lease everywhere it is noted.
    fn drop_lease(&mut self, id: u64) -> Option<Lease> {
        let lease = self.leases.remove(&id)?;
        let mut shared = self.coord.shared().lock().unwrap();
        shared.leased.remove(&id);
        if let Some(w) = shared.workers.get_mut(&lease.worker) {
            w.holding.shift_remove(&id);
        }
        drop(shared);
        if let Err(e) = self.store().delete_lease(id) {
            tracing::warn!("could not forget lease {id}: {e:#}");
        }
        Some(lease)
    }

    /// A lease that came to nothing: its tasks go back to the front of their queue, or,
    /// after `max_attempts` lost leases, fail in this run with the last reason.
    fn lost(
        &mut self,
        engine: &Engine,
        lease: Lease,
        why: &str,
        queues: &mut [StageQueue],
        effects: &mut Effects,
    ) {
        let max = self.coord.max_attempts().max(1);
        for (t, _) in lease.tasks.into_iter().rev() {
            let entry = self.attempts.entry(t).or_insert((0, String::new()));
            entry.0 += 1;
            entry.1 = why.to_string();
            if entry.0 >= max {
                effects.push((
                    t,
                    Reported::Aborted(format!(
                        "given to workers {} times without a result; the last time: {why}",
                        entry.0
                    )),
                ));
            } else {
                queues[lease.stage].push_front(engine, t);
            }
        }
    }

    /// Expires the leases of workers that went silent, or that do not list a unit they
    /// were given; answers lease requests whose wait is over; releases tasks held for an
    /// earlier coordinator's workers once their time is up.
    pub(super) fn tick(
        &mut self,
        engine: &Engine,
        queues: &mut [StageQueue],
        effects: &mut Effects,
    ) {
        self.publish_queue(engine, queues);
        let now = Instant::now();
        let timeout = self.coord.lease_timeout();
        let beat = self.coord.heartbeat();
        let mut lost: Vec<(u64, String)> = Vec::new();
        {
            let mut shared = self.coord.shared().lock().unwrap();
            for (id, lease) in &self.leases {
                match shared.workers.get(&lease.worker) {
                    None => lost.push((*id, format!("worker {} is gone", lease.worker_name))),
                    Some(w) if now.duration_since(w.last_seen) > timeout => lost.push((
                        *id,
                        format!(
                            "worker {} stopped answering for {:.0}s",
                            lease.worker_name,
                            timeout.as_secs_f64()
                        ),
                    )),
                    Some(w) => {
                        if let Some((at, running)) = &w.heartbeat
                            && *at > lease.leased_at + beat * 2
                            && !running.contains(id)
                        {
                            lost.push((
                                *id,
                                format!("worker {} never received the unit", lease.worker_name),
                            ));
                        }
                    }
                }
            }
            // Workers silent for three lease timeouts are forgotten.
            shared
                .workers
                .retain(|_, w| now.duration_since(w.last_seen) < timeout * 3);
        }
        for (id, why) in lost {
            if let Some(lease) = self.drop_lease(id) {
                tracing::warn!(
                    "unit {id} of stage {}: {why}; it goes back to the queue",
                    engine.graph.stages[lease.stage].name
                );
                self.lost(engine, lease, &why, queues, effects);
            }
        }
        // Workers cannot start: what waits for them fails for this run, with the reason.
        let halt = self.coord.shared().lock().unwrap().halt.clone();
        if let Some(why) = halt {
            for queue in queues.iter_mut() {
                for t in queue.drain_all() {
                    effects.push((t, Reported::Aborted(why.clone())));
                }
            }
        }
        let mut still = VecDeque::new();
        while let Some(w) = self.waiting.pop_front() {
            if now >= w.deadline || w.reply.is_closed() {
                let _ = w.reply.send(None);
            } else {
                still.push_back(w);
            }
        }
        self.waiting = still;
        self.release_earlier_units(engine, queues, now);
        if now >= self.held_until && self.before.is_empty() && !self.held_tasks.is_empty() {
            self.held_keys.clear();
            for t in std::mem::take(&mut self.held_tasks) {
                let s = engine.graph.task_stage[t];
                queues[s].push_back(engine, t);
            }
        }
    }

    /// Releases the units an earlier coordinator leased once their report will not come:
    ///
    /// - their worker (its session) registered again with this coordinator and sent a
    ///   heartbeat that does not list them (the answer with the unit never reached it, or it
    ///   dropped the unit): at once, instead of after the lease timeout (30 s by default). A
    ///   coordinator killed while a lease's answer waited for its flush leaves such a unit;
    /// - the lease timeout has passed since this coordinator started, and no worker that
    ///   still answers lists them. A unit its worker still runs and lists stays held, its
    ///   lease extended by the heartbeats as any lease is: a unit longer than the timeout is
    ///   not stopped and run again because its coordinator restarted.
    ///
    /// Their tasks go to the queue.
    fn release_earlier_units(&mut self, engine: &Engine, queues: &mut [StageQueue], now: Instant) {
        if self.before.is_empty() {
            return;
        }
        let timeout = self.coord.lease_timeout();
        let window_over = now >= self.held_until;
        let released: Vec<(u64, &'static str)> = {
            let shared = self.coord.shared().lock().unwrap();
            self.before
                .iter()
                .filter_map(|(id, lease)| {
                    let mut beats = shared
                        .workers
                        .values()
                        .filter(|w| Some(w.session) == lease.session)
                        .filter_map(|w| Some((w.last_seen, &w.heartbeat.as_ref()?.1)));
                    let (mut listed, mut unlisted) = (false, false);
                    for (seen, running) in &mut beats {
                        match running.contains(id) {
                            true => listed |= now.duration_since(seen) <= timeout,
                            false => unlisted = true,
                        }
                    }
                    if unlisted && !listed {
                        Some((*id, "its worker no longer runs it"))
                    } else if window_over && !listed {
                        Some((*id, "its worker did not report it within the lease timeout"))
                    } else {
                        None
                    }
                })
                .collect()
        };
        for (id, why) in released {
            let lease = self.before.remove(&id).expect("listed above");
            self.coord.shared().lock().unwrap().earlier.remove(&id);
            if let Err(e) = self.store().delete_lease(id) {
                tracing::warn!("could not forget lease {id}: {e:#}");
            }
            let keys: HashSet<TaskKey> = lease.tasks.iter().map(|t| t.key).collect();
            self.held_keys.retain(|k| !keys.contains(k));
            let (released, held): (Vec<TaskId>, Vec<TaskId>) = self
                .held_tasks
                .iter()
                .partition(|&&t| keys.contains(&engine.keys[t]));
            self.held_tasks = held;
            tracing::info!(
                "unit {id} of stage {}, leased to {} before this coordinator started: {why}; \
                 its {} task(s) go back to the queue",
                lease.stage,
                lease.worker_name,
                lease.tasks.len()
            );
            for t in released {
                let s = engine.graph.task_stage[t];
                queues[s].push_back(engine, t);
            }
        }
    }

    /// Waits until every reply queued so far has been sent (after its flush): the run's last
    /// "recorded" reaches its worker before the coordinator ends.
    pub(super) async fn replies_sent(&self) {
        let (sent, done) = oneshot::channel::<()>();
        if self
            .durable
            .send(Box::new(move || {
                let _ = sent.send(());
            }))
            .is_ok()
        {
            let _ = done.await;
        }
    }

    /// What waits in the queues, for `mvc status` and the Slurm launcher. Published on the
    /// ticker, not on every turn of the scheduler's loop: a turn per finished unit would
    /// rebuild it thousands of times a second for nothing.
    pub(super) fn publish_queue(&self, engine: &Engine, queues: &[StageQueue]) {
        let mut shared = self.coord.shared().lock().unwrap();
        shared.queued =
            queues.iter().map(|q| q.len() as u64).sum::<u64>() + self.held_tasks.len() as u64;
        shared.queued_by_stage.clear();
        for (s, queue) in queues.iter().enumerate() {
            if !queue.is_empty() {
                let name = engine.graph.stages[s].name.clone();
                shared.queued_by_stage.insert(name, queue.len() as u64);
            }
        }
    }

    /// Handles one message from the HTTP side.
    pub(super) fn handle(
        &mut self,
        msg: SchedMsg,
        engine: &Engine,
        queues: &mut [StageQueue],
        effects: &mut Effects,
    ) {
        match msg {
            SchedMsg::Lease {
                worker,
                free,
                deadline,
                reply,
            } => self.waiting.push_back(Waiting {
                worker,
                free,
                deadline,
                reply,
            }),
            SchedMsg::Complete {
                unit,
                body,
                session,
                reply,
            } => {
                let answer = self.complete(unit, body, session, engine, queues, effects);
                // "recorded" only once the results are on disk.
                let _ = self.durable.send(Box::new(move || {
                    let _ = reply.send(answer);
                }));
            }
            SchedMsg::Fail {
                unit,
                body,
                session,
                reply,
            } => {
                let answer = match self.leases.get(&unit) {
                    Some(lease) if lease.session == session => {
                        let lease = self.drop_lease(unit).expect("present");
                        let why = format!("worker {}: {}", lease.worker_name, body.error);
                        self.lost(engine, lease, &why, queues, effects);
                        Ok("the unit goes back to the queue".to_string())
                    }
                    _ => Ok("the unit is not leased to this worker; nothing to do".to_string()),
                };
                let _ = reply.send(answer);
            }
        }
    }

    fn complete(
        &mut self,
        unit: u64,
        body: Complete,
        session: Digest,
        engine: &Engine,
        queues: &mut [StageQueue],
        effects: &mut Effects,
    ) -> Reply {
        if self.leases.contains_key(&unit) {
            return self.complete_leased(unit, body, session, engine, queues, effects);
        }
        if self.done_units.contains(&unit) {
            return Ok("already recorded".into());
        }
        let adoptable = self.before.get(&unit).is_some_and(|l| {
            l.session == Some(session)
                && l.tasks.iter().map(|t| t.key).eq(body.keys.iter().copied())
                && body.outcomes.len() == body.keys.len()
        });
        // (A unit still in `before` is not released: its tasks have not run again.)
        if adoptable {
            return self.adopt(unit, body, engine, queues, effects);
        }
        Err((
            Refused::Conflict,
            format!(
                "unit {unit} is not leased to this worker any more (its lease expired and it \
                 went back to the queue, or the run was stopped); its result is not recorded"
            ),
        ))
    }

    /// The report of a unit leased in this run: recorded if it comes from the session the
    /// unit was leased to and names its tasks.
    fn complete_leased(
        &mut self,
        unit: u64,
        body: Complete,
        session: Digest,
        engine: &Engine,
        queues: &mut [StageQueue],
        effects: &mut Effects,
    ) -> Reply {
        {
            let lease = &self.leases[&unit];
            // The session, not the worker's id or name: a worker that registered again (the
            // coordinator restarted, or its heartbeats were lost) keeps its session.
            if lease.session != session {
                return Err((
                    Refused::Conflict,
                    format!("unit {unit} is held by another worker; its result is not recorded"),
                ));
            }
            let keys: Vec<TaskKey> = lease.tasks.iter().map(|(_, p)| p.key).collect();
            if keys != body.keys || body.outcomes.len() != keys.len() {
                return Err((
                    Refused::BadRequest,
                    format!("the result does not match unit {unit}'s tasks"),
                ));
            }
        }
        let lease = self.drop_lease(unit).expect("present");
        if let Err(problem) = check_outputs(self.store(), &body.outcomes) {
            let why = format!("worker {}: {problem}", lease.worker_name);
            self.lost(engine, lease, &why, queues, effects);
            return Err((Refused::BadRequest, problem));
        }
        let worker = lease.worker;
        self.record_outcomes(lease, body.outcomes, engine, queues, effects);
        self.done_units.insert(unit);
        if let Some(w) = self.coord.shared().lock().unwrap().workers.get_mut(&worker) {
            w.units_done += 1;
        }
        Ok("recorded".into())
    }

    /// Records each outcome of a unit a worker ran. A worker that was stopped (Ctrl-C,
    /// scancel, which also kills its task launcher) or could not start a task is not the
    /// item's doing, and another worker may succeed: such tasks go back to the queue
    /// (bounded attempts).
    fn record_outcomes(
        &mut self,
        lease: Lease,
        outcomes: Vec<TaskOutcome>,
        engine: &Engine,
        queues: &mut [StageQueue],
        effects: &mut Effects,
    ) {
        let stage = engine.graph.stages[lease.stage].name.clone();
        let mut stopped = Vec::new();
        let mut why = String::new();
        for ((t, identity), outcome) in lease.tasks.iter().zip(outcomes) {
            match outcome {
                TaskOutcome::Cancelled => {
                    why = format!("worker {} was stopped while running it", lease.worker_name);
                }
                TaskOutcome::Aborted(error) | TaskOutcome::DiskFull(error) => {
                    why = format!("worker {}: {error}", lease.worker_name);
                }
                outcome => {
                    let reported =
                        commit_outcome(self.store(), &stage, identity, &lease.worker_name, outcome);
                    effects.push((*t, reported));
                    continue;
                }
            }
            stopped.push((*t, identity.clone()));
        }
        if !stopped.is_empty() {
            let partial = Lease {
                tasks: stopped,
                worker_name: lease.worker_name.clone(),
                ..lease
            };
            self.lost(engine, partial, &why, queues, effects);
        }
    }

    /// The report of a unit the previous coordinator leased (this one restarted): recorded,
    /// and handed to the task of this run that waits for it.
    fn adopt(
        &mut self,
        unit: u64,
        body: Complete,
        engine: &Engine,
        queues: &mut [StageQueue],
        effects: &mut Effects,
    ) -> Reply {
        if let Err(problem) = check_outputs(self.store(), &body.outcomes) {
            return Err((Refused::BadRequest, problem));
        }
        let lease = self.before.remove(&unit).expect("present");
        self.coord.shared().lock().unwrap().earlier.remove(&unit);
        let _ = self.store().delete_lease(unit);
        for (identity, outcome) in lease.tasks.iter().zip(body.outcomes) {
            let held = self
                .held_tasks
                .iter()
                .position(|&t| engine.keys[t] == identity.key)
                .map(|k| self.held_tasks.swap_remove(k));
            self.held_keys.remove(&identity.key);
            // A task the worker did not run to an outcome (it was stopped, or could not
            // start it) is not the item's doing: it runs again, here or on another worker.
            if matches!(
                outcome,
                TaskOutcome::Cancelled | TaskOutcome::Aborted(_) | TaskOutcome::DiskFull(_)
            ) {
                if let Some(t) = held {
                    let s = engine.graph.task_stage[t];
                    queues[s].push_back(engine, t);
                }
                continue;
            }
            let reported = commit_outcome(
                self.store(),
                &lease.stage,
                identity,
                &body.worker_name,
                outcome,
            );
            // A task of this run already waiting for it finishes now; one not reached yet
            // will find the result in the cache.
            if let Some(t) = held {
                effects.push((t, reported));
            }
        }
        self.done_units.insert(unit);
        Ok("recorded (leased by the previous coordinator)".into())
    }

    /// The run is being killed: every unit out with a worker is abandoned (the workers hear
    /// it with their next heartbeat) and its tasks stay unrun.
    pub(super) fn cancel_all(&mut self, effects: &mut Effects) {
        let ids: Vec<u64> = self.leases.keys().copied().collect();
        for id in ids {
            if let Some(lease) = self.drop_lease(id) {
                for (t, _) in lease.tasks {
                    effects.push((t, Reported::Cancelled));
                }
            }
        }
        for w in self.waiting.drain(..) {
            let _ = w.reply.send(None);
        }
    }
}

/// The most tasks of stage `s` one unit may take when its kind batches them
/// ([`guided_share`]), with `queued` tasks queued and `waiting` requests waiting together.
fn share_of(engine: &Engine, s: StageId, queued: usize, waiting: usize, workers: usize) -> usize {
    let counts = &engine.counts[s];
    let stage_tasks = engine.graph.stages[s].len() as u64;
    let left = stage_tasks.saturating_sub(counts.resolved() + counts.running) as usize;
    guided_share(queued, waiting, left, workers)
}

/// Every output a worker reports must be here: blobs uploaded with their size, inline bytes
/// matching their digest, logs uploaded.
fn check_outputs(store: &Store, outcomes: &[TaskOutcome]) -> Result<(), String> {
    for outcome in outcomes {
        let (outputs, logs): (&[crate::store::records::Output], Vec<Digest>) = match outcome {
            TaskOutcome::Success {
                outputs,
                stdout,
                stderr,
                ..
            } => (outputs, stdout.iter().chain(stderr).copied().collect()),
            TaskOutcome::Failed { stderr, .. } => (&[], stderr.iter().copied().collect()),
            _ => (&[], Vec::new()),
        };
        for o in outputs {
            match &o.inline {
                Some(bytes) if Digest::of(bytes) != o.digest || bytes.len() as u64 != o.size => {
                    return Err(format!(
                        "output `{}`: its inline bytes do not match its digest",
                        o.name
                    ));
                }
                Some(_) => {}
                None if store.blobs().size(&o.digest) != Some(o.size) => {
                    return Err(format!(
                        "output `{}`: blob {} ({} bytes) was not uploaded",
                        o.name, o.digest, o.size
                    ));
                }
                None => {}
            }
        }
        for d in logs {
            if store.blobs().size(&d).is_none() {
                return Err(format!("log blob {d} was not uploaded"));
            }
        }
    }
    Ok(())
}
