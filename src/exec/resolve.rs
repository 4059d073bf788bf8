//! Resolution: computing each task's key once its inputs are known, and looking it up.
//!
//! Shared by `plan` (which treats every task to run as resolved, its dependents "pending")
//! and `run` (which resolves a task to run only when it has run). Keys depend on the output
//! digests of upstream tasks, never on whether they ran: that is early cutoff.

use super::graph::{MISSING, Sources, TaskGraph};
use super::ids::{StageId, TaskId};
use super::learnt::Learnt;
use super::workdir::LeftOut;
use crate::exec::kind::{Binding, StageOutputs};
use crate::store::Store;
use crate::store::memo::{MemoValue, StageMemo};
use crate::task::{Digest, TaskKey};
use anyhow::Result;
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Some input is not resolved yet.
    Waiting,
    /// Its result is in the cache.
    Cached,
    /// Its key is known and not in the cache: it must run.
    ToRun,
    Running,
    /// It ran and its result is recorded.
    Done,
    /// It ran and failed (recorded in the negative cache).
    Failed,
    /// A failure recorded by an earlier run, not retried.
    KnownFailure,
    /// Cannot run: an upstream item failed or is missing.
    Blocked,
    /// (plan) Its key depends on upstream tasks that will run first.
    Pending,
}

impl State {
    pub fn is_success(self) -> bool {
        matches!(self, State::Cached | State::Done)
    }
    pub fn is_failure(self) -> bool {
        matches!(self, State::Failed | State::KnownFailure | State::Blocked)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Plan,
    Run,
}

/// Per-stage tallies, kept as tasks change state (progress reads them without a scan).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub cached: u64,
    /// Ran and succeeded.
    pub ran: u64,
    /// Ran and failed.
    pub failed: u64,
    /// Failed in an earlier run (negative cache), not retried.
    pub known_failed: u64,
    /// Blocked by a failed or missing upstream item.
    pub blocked: u64,
    /// Keyed and not cached: to run, or running.
    pub to_run: u64,
    /// (plan) Waiting on upstream tasks that will run.
    pub pending: u64,
    /// Of `to_run`: dispatched and not finished (what the live page shows as running).
    pub running: u64,
}

impl Counts {
    pub fn resolved(&self) -> u64 {
        self.cached + self.ran + self.failed + self.known_failed + self.blocked
    }
    pub fn all_failed(&self) -> u64 {
        self.failed + self.known_failed + self.blocked
    }
}

/// What a whole upstream stage contributes to the key of a task that reads all of it.
#[derive(Clone, Debug)]
pub(super) enum Aggregate {
    Digest(Digest),
    Pending(String),
    Failed(String),
}

/// The outcome of resolving one task.
#[derive(Debug)]
pub(super) enum Resolution {
    Cached {
        key: TaskKey,
        manifest: Digest,
        /// Set when the hit came from the index rather than the memo.
        memo_value: Option<MemoValue>,
    },
    KnownFailure {
        key: TaskKey,
        error: String,
    },
    ToRun {
        key: TaskKey,
        blobs_missing: bool,
    },
    Blocked(String),
    Pending(String),
}

/// Why a record could not be built yet.
#[derive(Clone)]
pub enum NotKeyed {
    Blocked(String),
    Pending(String),
}

impl From<NotKeyed> for Resolution {
    fn from(why: NotKeyed) -> Resolution {
        match why {
            NotKeyed::Blocked(why) => Resolution::Blocked(why),
            NotKeyed::Pending(why) => Resolution::Pending(why),
        }
    }
}

/// What earlier rounds of the same run did. A run whose graph grows (a stage expanding from
/// outputs that did not exist when it started) builds its graph again; tasks that ran in an
/// earlier round count as run, not cached, and tasks that failed are not run twice.
#[derive(Debug, Default)]
pub struct Carry {
    pub ran: HashSet<TaskKey>,
    pub failed: HashMap<TaskKey, String>,
}

pub struct Engine {
    pub graph: TaskGraph,
    pub(super) carry: Carry,
    pub store: Arc<Store>,
    pub mode: Mode,
    pub(super) retry_failed: bool,
    pub(super) memos: Vec<StageMemo>,
    pub state: Vec<State>,
    pub counts: Vec<Counts>,
    left: Vec<u32>,
    pub keys: Vec<TaskKey>,
    pub manifests: Vec<Digest>,
    stage_left: Vec<u32>,
    pub(super) stage_completed: Vec<bool>,
    /// Failed (or blocked) items of each completed stage.
    pub(super) stage_failed: Vec<usize>,
    pub(super) aggregates: Vec<Option<Aggregate>>,
    /// Per completed stage that a [failure-reading](crate::exec::kind::StageKind::reads_failures)
    /// kind reads whole: its items without a result, each with the failure that stopped it,
    /// and the digest of that list (which goes into the reader's key).
    pub(super) left_out: Vec<Option<(Arc<Vec<LeftOut>>, Digest)>>,
    /// What each task's plan memo does not say: index hits, results and failures recorded
    /// in this run ([`Engine::learnt`]).
    learnt: Learnt,
    /// Per task: why it is blocked, pending, failed, or to run.
    pub notes: HashMap<TaskId, String>,
    /// Tasks whose cached outputs were missing (they run again).
    pub(super) blobs_missing: HashSet<TaskId>,
    /// Producers re-opened because a blob of theirs failed verification.
    reopened: HashSet<TaskId>,
    /// Tasks waiting on a re-opened producer, by producer.
    reopened_waiters: HashMap<TaskId, Vec<TaskId>>,
    /// Tasks waiting for a re-opened stage to complete again, by stage.
    stage_waiters: HashMap<StageId, Vec<TaskId>>,
    ready: Vec<TaskId>,
}

/// Tasks resolved at once (in parallel) before their resolutions are applied.
const RESOLVE_CHUNK: usize = 1 << 16;

impl Engine {
    pub fn new(
        graph: TaskGraph,
        store: Arc<Store>,
        mode: Mode,
        retry_failed: bool,
        carry: Carry,
    ) -> Result<Engine> {
        let n = graph.len();
        let memos = graph
            .stages
            .iter()
            .map(|s| store.plan_memo(&s.name))
            .collect::<Result<Vec<_>>>()?;
        let left: Vec<u32> = TaskId::range(TaskId(0), n as u32)
            .map(|t| graph.dep_count(t))
            .collect();
        let stage_left: Vec<u32> = graph.stages.iter().map(|s| s.len()).collect();
        let n_stages = graph.stages.len();
        let mut engine = Engine {
            state: vec![State::Waiting; n],
            counts: vec![Counts::default(); n_stages],
            keys: vec![Digest::default(); n],
            manifests: vec![Digest::default(); n],
            stage_completed: vec![false; n_stages],
            stage_failed: vec![0; n_stages],
            aggregates: vec![None; n_stages],
            left_out: vec![None; n_stages],
            stage_left,
            left,
            memos,
            graph,
            carry,
            store,
            mode,
            retry_failed,
            learnt: Learnt::new(n),
            notes: HashMap::new(),
            blobs_missing: HashSet::new(),
            reopened: HashSet::new(),
            reopened_waiters: HashMap::new(),
            stage_waiters: HashMap::new(),
            ready: Vec::new(),
        };
        // Tasks with nothing to wait for (their items may still be blocked by a missing
        // upstream item: resolution says so).
        engine.ready = TaskId::range(TaskId(0), n as u32)
            .filter(|&t| engine.left[t] == 0)
            .collect();
        for s in (0..n_stages).map(|s| StageId(s as u32)) {
            if engine.stage_left[s] == 0 {
                engine.complete_stage(s);
            }
        }
        Ok(engine)
    }

    /// Resolves everything that can be resolved now. Returns the tasks that must run (in
    /// `Run` mode they stay unresolved until [`Engine::finish`] is called for them).
    pub fn resolve_ready(&mut self) -> Result<Vec<TaskId>> {
        let mut to_run = Vec::new();
        while !self.ready.is_empty() {
            let mut batch = std::mem::take(&mut self.ready);
            batch.sort_unstable();
            // In chunks: the tasks of a batch do not read one another (each is ready because
            // its inputs are resolved), and a resolution is about 140 bytes, so a stage of 5M
            // views resolved at once held 700 MB of them.
            for chunk in batch.chunks(RESOLVE_CHUNK) {
                let this = &*self;
                let resolutions: Vec<Result<Resolution>> = if chunk.len() >= 256 {
                    chunk.par_iter().map(|&t| this.resolve_one(t)).collect()
                } else {
                    chunk.iter().map(|&t| this.resolve_one(t)).collect()
                };
                for (&t, resolution) in chunk.iter().zip(resolutions) {
                    self.apply(t, resolution?, &mut to_run);
                }
            }
        }
        Ok(to_run)
    }

    fn apply(&mut self, t: TaskId, resolution: Resolution, to_run: &mut Vec<TaskId>) {
        let i = t.index();
        match resolution {
            Resolution::Cached {
                key,
                manifest,
                memo_value,
            } => {
                self.keys[i] = key;
                self.manifests[i] = manifest;
                if self.carry.ran.contains(&key) {
                    self.state[i] = State::Done;
                    self.stage_counts(t).ran += 1;
                } else {
                    self.state[i] = State::Cached;
                    self.stage_counts(t).cached += 1;
                }
                if let Some(v) = memo_value {
                    self.learnt.set(t, v);
                }
                self.resolved(t);
            }
            Resolution::KnownFailure { key, error } if self.carry.failed.contains_key(&key) => {
                self.keys[i] = key;
                self.state[i] = State::Failed;
                self.stage_counts(t).failed += 1;
                self.notes.insert(t, error);
                self.resolved(t);
            }
            Resolution::ToRun { key, .. } if self.carry.failed.contains_key(&key) => {
                // Failed in an earlier round of this run (perhaps without being recorded):
                // not tried twice.
                self.keys[i] = key;
                self.state[i] = State::Failed;
                self.stage_counts(t).failed += 1;
                self.notes.insert(t, self.carry.failed[&key].clone());
                self.resolved(t);
            }
            Resolution::KnownFailure { key, error } => {
                self.keys[i] = key;
                self.state[i] = State::KnownFailure;
                self.stage_counts(t).known_failed += 1;
                self.notes.insert(t, error);
                self.learnt.set(t, MemoValue::Failed);
                self.resolved(t);
            }
            Resolution::ToRun { key, blobs_missing } => {
                self.keys[i] = key;
                self.state[i] = State::ToRun;
                self.stage_counts(t).to_run += 1;
                if blobs_missing {
                    self.blobs_missing.insert(t);
                }
                to_run.push(t);
                if self.mode == Mode::Plan {
                    self.resolved(t);
                }
            }
            Resolution::Blocked(why) => {
                self.state[i] = State::Blocked;
                self.stage_counts(t).blocked += 1;
                self.notes.insert(t, why);
                self.resolved(t);
            }
            Resolution::Pending(why) => {
                self.state[i] = State::Pending;
                self.stage_counts(t).pending += 1;
                self.notes.insert(t, why);
                self.resolved(t);
            }
        }
    }

    /// What this run learnt of task `t` that its plan memo may not hold (an index hit, a
    /// result or a failure it recorded); `None` when nothing.
    pub fn learnt(&self, t: TaskId) -> Option<MemoValue> {
        self.learnt.get(t, self.manifests[t])
    }

    /// Whether this run recorded task `t`'s failure against its item.
    pub fn learnt_failed(&self, t: TaskId) -> bool {
        self.learnt.failed(t)
    }

    /// Records that a task to run has run: `Some(manifest)` on success, `None` on failure.
    pub fn finish(&mut self, t: TaskId, outcome: Result<(Digest, MemoValue), String>) {
        let i = t.index();
        self.leave_running(t);
        self.stage_counts(t).to_run -= 1;
        match outcome {
            Ok((manifest, value)) => {
                self.state[i] = State::Done;
                self.stage_counts(t).ran += 1;
                self.manifests[i] = manifest;
                self.learnt.set(t, value);
            }
            Err(error) => {
                self.state[i] = State::Failed;
                self.stage_counts(t).failed += 1;
                self.notes.insert(t, error);
                self.learnt.set(t, MemoValue::Failed);
            }
        }
        self.resolved(t);
    }

    fn stage_counts(&mut self, t: TaskId) -> &mut Counts {
        &mut self.counts[self.graph.task_stage[t]]
    }

    /// Marks a task as dispatched.
    pub fn start(&mut self, t: TaskId) {
        if self.state[t] != State::Running {
            self.stage_counts(t).running += 1;
        }
        self.state[t] = State::Running;
    }

    /// Keeps the running count true when a dispatched task changes state.
    fn leave_running(&mut self, t: TaskId) {
        if self.state[t] == State::Running {
            self.stage_counts(t).running -= 1;
        }
    }

    /// A task that could not run for reasons outside its item: failed in this run, but not
    /// remembered as failed.
    pub fn finish_unrecorded(&mut self, t: TaskId, error: String) {
        self.leave_running(t);
        self.stage_counts(t).to_run -= 1;
        self.stage_counts(t).failed += 1;
        self.state[t] = State::Failed;
        self.notes.insert(t, error);
        self.resolved(t);
    }

    /// Puts a dispatched task back (it was cancelled before it finished).
    pub fn unrun(&mut self, t: TaskId) {
        self.leave_running(t);
        self.state[t] = State::ToRun;
    }

    fn resolved(&mut self, t: TaskId) {
        let s = self.graph.task_stage[t];
        if self.reopened.remove(&t) {
            // A re-opened producer: only the tasks that waited on it again are told; its
            // other dependents were told the first time.
            let waiters = self.reopened_waiters.remove(&t).unwrap_or_default();
            self.stage_left[s] -= 1;
            if self.stage_left[s] == 0 {
                self.complete_stage(s);
            }
            for w in waiters {
                self.release(w);
            }
            return;
        }
        for k in 0..self.graph.dependents_of(t).len() {
            let d = self.graph.dependents_of(t)[k];
            self.release(d);
        }
        self.stage_left[s] -= 1;
        if self.stage_left[s] == 0 {
            self.complete_stage(s);
        }
    }

    fn release(&mut self, t: TaskId) {
        let i = t.index();
        if self.state[i] != State::Waiting {
            return;
        }
        self.left[i] -= 1;
        if self.left[i] == 0 {
            self.ready.push(t);
        }
    }

    fn complete_stage(&mut self, s: StageId) {
        let node = &self.graph.stages[s];
        let mut pending = false;
        let mut failed = 0usize;
        let mut succeeded = 0usize;
        for t in node.tasks() {
            match self.state[t] {
                State::Cached | State::Done => succeeded += 1,
                State::ToRun | State::Pending | State::Running | State::Waiting => pending = true,
                _ => failed += 1,
            }
        }
        self.aggregates[s] = Some(if pending {
            Aggregate::Pending(format!("upstream reruns: {}", node.name))
        } else if failed > 0 && succeeded == 0 {
            // Failed items are left out of what downstream reads; with none left there is
            // nothing to read.
            Aggregate::Failed(format!("every item of upstream `{}` failed", node.name))
        } else {
            let pairs = node
                .tasks()
                .filter(|&t| self.state[t].is_success())
                .map(|t| (&*node.items[node.local(t) as usize], &self.manifests[t]));
            Aggregate::Digest(super::aggregate::results_digest(pairs, succeeded))
        });
        self.stage_failed[s] = failed;
        self.left_out[s] = (failed > 0 && self.failures_are_read(s)).then(|| {
            let list: Vec<LeftOut> = self.graph.stages[s]
                .tasks()
                .filter(|&t| self.state[t].is_failure())
                .map(|t| LeftOut {
                    item: self.graph.item(t).to_string(),
                    reason: self.root_failure(t),
                })
                .collect();
            let digest = Digest::of(&postcard::to_stdvec(&list).expect("lists always encode"));
            (Arc::new(list), digest)
        });
        let first = !self.stage_completed[s];
        self.stage_completed[s] = true;
        if first {
            for k in 0..self.graph.stages[s].all_consumers.len() {
                let c = self.graph.stages[s].all_consumers[k];
                self.release(c);
            }
        }
        if let Some(waiters) = self.stage_waiters.remove(&s) {
            for w in waiters {
                self.release(w);
            }
        }
    }

    /// Whether some stage reads all of stage `s` and wants to know its failures.
    fn failures_are_read(&self, s: StageId) -> bool {
        self.graph.stages.iter().any(|node| {
            node.kind.reads_failures()
                && node
                    .inputs
                    .iter()
                    .any(|e| e.stage == s && e.binding == Binding::All)
        })
    }

    /// What keeps task `t` from a result, as `stage: error`: its own failure, or for a
    /// blocked task the failure upstream that blocked it (a view blocked because its object
    /// failed to download says the download's error).
    pub fn root_failure(&self, t: TaskId) -> String {
        let g = &self.graph;
        let mut t = t;
        // Each step goes one stage up, so the walk ends.
        for _ in 0..=g.stages.len() {
            if self.state[t] != State::Blocked {
                break;
            }
            let upstream = (0..g.stage_of(t).item_inputs.len())
                .map(|k| g.item_dep(t, k))
                .find(|&u| u != MISSING && self.state[u].is_failure());
            match upstream {
                Some(u) => t = u,
                None => break,
            }
        }
        format!(
            "{}: {}",
            g.stage_of(t).name,
            self.notes.get(&t).map(String::as_str).unwrap_or("failed")
        )
    }

    /// The items of stage `s` without a result and why, when a failure-reading kind reads it.
    pub fn left_out(&self, s: StageId) -> Option<Arc<Vec<LeftOut>>> {
        self.left_out[s].as_ref().map(|(list, _)| list.clone())
    }

    /// Re-opens a producer whose output blob failed verification while `consumer` read it:
    /// its result is forgotten, it runs again, and the consumer waits for it.
    pub fn reopen(
        &mut self,
        producer: TaskId,
        consumer: TaskId,
        all_binding: bool,
    ) -> Result<bool> {
        let p = producer.index();
        let c = consumer.index();
        let reopen_producer = self.state[p].is_success();
        if reopen_producer {
            let stage = self.graph.stage_of(producer).name.clone();
            let item = self.graph.item(producer).to_string();
            self.store.forget_result(&self.keys[p], &stage, &item)?;
            let was_cached = self.state[p] == State::Cached;
            let counts = self.stage_counts(producer);
            if was_cached {
                counts.cached -= 1;
            } else {
                counts.ran -= 1;
            }
            counts.to_run += 1;
            self.state[p] = State::ToRun;
            self.blobs_missing.insert(producer);
            self.reopened.insert(producer);
            let s = self.graph.task_stage[p];
            self.stage_left[s] += 1;
            self.aggregates[s] = None;
        }
        self.leave_running(consumer);
        self.stage_counts(consumer).to_run -= 1;
        self.state[c] = State::Waiting;
        self.left[c] = 1;
        if all_binding {
            let s = self.graph.task_stage[p];
            self.stage_waiters.entry(s).or_default().push(consumer);
        } else {
            self.reopened_waiters
                .entry(producer)
                .or_default()
                .push(consumer);
        }
        Ok(reopen_producer)
    }

    /// What this round did, for the next round of the same run.
    pub fn carry_forward(&mut self) -> Carry {
        let mut carry = std::mem::take(&mut self.carry);
        for (t, state) in self.state.iter().enumerate() {
            match state {
                State::Done => {
                    carry.ran.insert(self.keys[t]);
                }
                State::Failed => {
                    let note = self
                        .notes
                        .get(&TaskId(t as u32))
                        .cloned()
                        .unwrap_or_default();
                    carry.failed.insert(self.keys[t], note);
                }
                _ => {}
            }
        }
        carry
    }

    /// `known`, plus the results of every stage that a stage expanding from outputs reads
    /// and whose tasks are now all resolved (in a plan, a task to run is not).
    pub fn sources(&self, known: &Sources) -> Result<Sources> {
        let g = &self.graph;
        let mut sources = known.clone();
        for node in &g.stages {
            for (k, edge) in node.inputs.iter().enumerate() {
                if !node.kind.expands_from_outputs_of(k) {
                    continue;
                }
                let up = &g.stages[edge.stage];
                if sources.contains_key(&edge.stage) || up.deferred.is_some() {
                    continue;
                }
                let settled = up.tasks().all(|t| {
                    let state = self.state[t];
                    state.is_success() || state.is_failure()
                });
                if !settled {
                    continue;
                }
                let mut outputs = StageOutputs::default();
                for t in up.tasks() {
                    let item = up.items[up.local(t) as usize].clone();
                    if !self.state[t].is_success() {
                        outputs.failed.push(item);
                        continue;
                    }
                    let Some(result) = self.stored_result(t, &self.keys[t])? else {
                        anyhow::bail!("the result of {} is gone from the index", g.task_label(t));
                    };
                    outputs.items.push((item, result.outputs));
                }
                outputs.items.sort_by(|a, b| a.0.cmp(&b.0));
                sources.insert(edge.stage, Arc::new(outputs));
            }
        }
        Ok(sources)
    }

    /// Saves each stage's memo when it learnt something new this run.
    pub fn save_memos(&self) -> Result<()> {
        for (s, node) in self.graph.stages.iter().enumerate() {
            if node.deferred.is_some() {
                // Not expanded in this round: its memo stays as the last run left it.
                continue;
            }
            // The tasks with a value to keep, by key: 4 bytes a task. The values are made
            // again as the memo is written, not held (a stage of 50M tasks held 170 bytes
            // a task here, with its encoding).
            let mut learnt = false;
            let mut kept: Vec<u32> = Vec::new();
            for t in node.tasks() {
                if self.memo_value(t).is_some() {
                    learnt |= self.learnt(t).is_some();
                    kept.push(node.local(t));
                }
            }
            // A memo that already holds exactly these keys is kept as it is.
            if !learnt && kept.len() == self.memos[s].len() {
                continue;
            }
            let task = |local: &u32| TaskId(node.start.0 + *local);
            kept.par_sort_unstable_by_key(|local| self.keys[task(local)]);
            kept.dedup_by_key(|local| self.keys[task(&*local)]);
            let entries = kept.iter().map(|local| {
                let t = task(local);
                let value = self.memo_value(t).expect("kept for its value");
                (self.keys[t], value)
            });
            let (index, blobs) = (self.store.index(), self.store.blobs());
            StageMemo::save_sorted(index, blobs, &node.name, kept.len(), entries)?;
        }
        Ok(())
    }

    /// What its stage's plan memo keeps of task `t`: what this run learnt of it, or else
    /// what the memo held, for a task that ended cached, done or failed.
    fn memo_value(&self, t: TaskId) -> Option<MemoValue> {
        match self.state[t] {
            State::Cached | State::Done | State::Failed | State::KnownFailure => self
                .learnt(t)
                .or_else(|| self.memos[self.graph.task_stage[t]].get(&self.keys[t])),
            _ => None,
        }
    }

    /// The tasks whose keys this run (or plan) reached, sorted by key, each key once: what
    /// `gc` keeps. Tasks, not keys: 4 bytes a task instead of 32, and the keys are encoded
    /// as they are written ([`crate::store::records::encode_seq_into`]).
    pub fn reached_tasks(&self) -> Vec<TaskId> {
        let mut tasks: Vec<TaskId> = (0..self.state.len() as u32)
            .map(TaskId)
            .filter(|&t| {
                !matches!(
                    self.state[t],
                    State::Waiting | State::Blocked | State::Pending
                )
            })
            .collect();
        tasks.par_sort_unstable_by_key(|&t| self.keys[t]);
        tasks.dedup_by_key(|t| self.keys[*t]);
        tasks
    }
}
