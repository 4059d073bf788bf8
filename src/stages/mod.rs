//! Stage kinds: what a stage of each `kind` reads, fans out over, and does.
//!
//! The engine knows stages only through [`StageKind`]: items and how they bind to inputs,
//! the parameter slices that go into keys, the resources a task holds, how tasks group into
//! execution units, and how a unit executes.

pub mod command;
pub mod download;
pub mod embed;
pub mod evaluate;
pub mod gather;
mod item_decl;
pub mod render;
pub mod report;
pub mod split;
pub mod train;

use crate::exec::launcher::Launcher;
use crate::exec::slots::Resources;
use crate::exec::workdir::InputData;
use crate::store::Store;
use crate::store::records::Output;
use crate::task::{Digest, ParamSlice, TaskKey};
use anyhow::{Context, Result};
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub use crate::task::validate_item_id;
pub use item_decl::ItemDecl;

/// The kinds this build of mvc can run.
pub const KINDS: &[&str] = &[
    "command", "download", "render", "embed", "split", "train", "evaluate", "report",
];

/// How a task reads one of its inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Binding {
    /// The upstream task with the same item id.
    Item,
    /// The upstream task with the same item id when the upstream stage has that item; an
    /// item it lacks reads nothing from it and is not blocked (an embed stage's caption
    /// tasks have no render view to read).
    ItemIfPresent,
    /// Every (successful) task of the upstream stage at once.
    All,
    /// Read only to find the stage's items (with [`StageKind::expands_from_outputs`]): the
    /// tasks neither wait for it nor get it, and their keys do not depend on it (each
    /// item's own parameters carry what it takes from there).
    Expansion,
}

/// An item of a stage: its stable id and the parameters that belong to it alone.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedItem {
    pub id: Arc<str>,
    pub params: ParamSlice,
    /// Bytes the task is expected to transfer, when known: progress shows bytes done of
    /// the bytes of the tasks that run. Not part of the key.
    pub bytes: Option<u64>,
    /// The upstream item its per-item inputs read, when that is not the item's own id (a
    /// render view `<uid>@<view>` reads the object `<uid>`).
    pub source: Option<Arc<str>>,
}

impl PlannedItem {
    /// An item with no parameters of its own.
    pub fn new(id: impl Into<Arc<str>>) -> PlannedItem {
        PlannedItem {
            id: id.into(),
            params: ParamSlice::new(),
            bytes: None,
            source: None,
        }
    }
}

/// What a stage fans out over, and how each of its inputs binds.
#[derive(Debug)]
pub struct Expansion {
    pub items: Vec<PlannedItem>,
    /// One per input, in the order of `inputs`.
    pub bindings: Vec<Binding>,
}

/// The results of an upstream stage whose tasks have all been resolved: what a kind that
/// expands from its inputs' outputs reads.
#[derive(Debug, Default)]
pub struct StageOutputs {
    /// Successful tasks, sorted by item.
    pub items: Vec<(Arc<str>, Vec<Output>)>,
    /// Items that failed (or were blocked).
    pub failed: Vec<Arc<str>>,
}

impl StageOutputs {
    pub fn get(&self, item: &str) -> Option<&[Output]> {
        self.items
            .binary_search_by(|(i, _)| (**i).cmp(item))
            .ok()
            .map(|k| self.items[k].1.as_slice())
    }
}

/// What a kind may consult while expanding: its upstream stages' item ids and, for kinds
/// that [expand from outputs](StageKind::expands_from_outputs), their results.
pub struct ExpandCtx<'a> {
    pub stage: &'a str,
    pub inputs: Vec<(&'a str, &'a [Arc<str>])>,
    /// One per input, set only for the inputs a kind expands from.
    pub outputs: Vec<Option<&'a StageOutputs>>,
    pub store: &'a Store,
}

/// An error of [`StageKind::shared_params`] saying that the stage cannot be keyed *yet* (its
/// model could not be downloaded: the network is down): the stage stays unexpanded with this
/// reason, the rest of the pipeline plans and runs, and the next run tries again.
#[derive(Debug)]
pub struct NotYetAvailable(pub String);

impl std::fmt::Display for NotYetAvailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotYetAvailable {}

/// What a kind may consult while computing its shared parameters (file digests go through
/// the stat cache).
pub struct ParamCtx<'a> {
    pub store: &'a Store,
}

impl ParamCtx<'_> {
    pub fn file_digest(&self, path: &Path) -> Result<Digest> {
        Ok(self.store.file_digest(path)?.0)
    }
}

/// One task of a unit, with everything needed to execute it.
pub struct UnitTask {
    pub key: TaskKey,
    pub item: String,
    pub item_params: ParamSlice,
    /// One per input read by the task (not those bound for expansion only), in the order
    /// of `inputs`.
    pub inputs: Vec<InputData>,
}

/// What executing one task gave (on this machine, or on a worker that sends it back).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum TaskOutcome {
    Success {
        outputs: Vec<Output>,
        stdout: Option<Digest>,
        stderr: Option<Digest>,
        started_ms: u64,
        duration_ms: u64,
    },
    /// A permanent item failure: recorded in the negative cache.
    Failed {
        error: String,
        stderr: Option<Digest>,
    },
    /// An input blob failed verification while being read: not this task's fault. Its
    /// producer is re-run and this task waits for it.
    InputCorrupt {
        stage: String,
        item: String,
        error: String,
    },
    /// Stopped by Ctrl-C: nothing is recorded.
    Cancelled,
    /// Could not run for reasons outside the item (the task could not be started): counted
    /// as failed in this run, not recorded, so the next run tries again.
    Aborted(String),
}

/// Bytes transferred by a stage's running tasks, for its progress bar.
#[derive(Debug, Default)]
pub struct ByteMeter {
    done: std::sync::atomic::AtomicU64,
    total: std::sync::atomic::AtomicU64,
}

impl ByteMeter {
    pub fn add_done(&self, n: u64) {
        self.done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
    pub fn add_total(&self, n: u64) {
        self.total
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
    /// (done, total)
    pub fn read(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.done.load(Relaxed), self.total.load(Relaxed))
    }
}

/// One item of a stage export: its id, own parameters and outputs.
pub struct ExportedItem<'a> {
    pub item: &'a str,
    pub params: &'a ParamSlice,
    pub outputs: &'a [Output],
}

/// What a unit runs with.
pub struct ExecCtx {
    pub store: Arc<Store>,
    /// The stage's byte counter (kinds that transfer data add to it).
    pub meter: Arc<ByteMeter>,
    /// Fired when running work must stop now (second Ctrl-C, or the grace period ended).
    pub kill: CancellationToken,
    /// Starts task processes.
    pub launcher: Arc<Launcher>,
}

#[async_trait::async_trait]
pub trait StageKind: Send + Sync + std::fmt::Debug {
    /// The `kind` string of the pipeline file.
    fn kind(&self) -> &'static str;
    /// Bumped whenever the kind's outputs change for the same inputs.
    fn version(&self) -> u32;
    /// The slots one task holds while it runs.
    fn resources(&self) -> Resources;
    /// The parameters every task of the stage reads (they go into every key).
    fn shared_params(&self, ctx: &ParamCtx) -> Result<ParamSlice>;
    /// The stage's items and how its inputs bind.
    fn expand(&self, ctx: &ExpandCtx) -> Result<Expansion>;
    /// Whether the items come from what the input stages made (a download's objects from
    /// its selection): such a stage is expanded only once every task of its inputs has
    /// been resolved, and until then its items are not known.
    fn expands_from_outputs(&self) -> bool {
        false
    }
    /// Whether the items come from what input `input` made, when the stage
    /// [expands from outputs](StageKind::expands_from_outputs). An input read only for its
    /// item ids (an embed stage's images) lets the stage be planned before that input has
    /// run: its items are the input's planned items.
    fn expands_from_outputs_of(&self, input: usize) -> bool {
        let _ = input;
        self.expands_from_outputs()
    }
    /// Whether a task reading a whole upstream stage needs every item of it: when one
    /// failed, the task is blocked instead of reading the rest (a selection over metadata
    /// shards must not silently lose a shard's objects).
    fn needs_every_item(&self) -> bool {
        false
    }
    /// Whether a task reading a whole upstream stage is told which of its items have no
    /// result and why ([`InputData::left_out`]): train and evaluate stages list the objects
    /// they leave out. The reasons then count in the task's key, so a cached result always
    /// names what its inputs lacked.
    fn reads_failures(&self) -> bool {
        false
    }
    /// Whether the run summary asks [`StageKind::result_note`] about this stage's successful
    /// tasks (reading their outputs costs a lookup each, so only kinds with something to say).
    fn has_result_notes(&self) -> bool {
        false
    }
    /// A line for the run summary about a successful task of this stage, from its outputs
    /// (a train or evaluate stage: the objects it left out).
    fn result_note(&self, _store: &Store, _outputs: &[Output]) -> Option<String> {
        None
    }
    /// Tasks whose group is the same `Some` run together in one unit (one Blender process
    /// for all missing views of an object); `None` runs the task alone.
    fn unit_group(&self, _item: &str) -> Option<String> {
        None
    }
    /// The most tasks one unit takes (an embed stage: a few batches, so progress and
    /// Ctrl-C are not held up by one huge unit).
    fn max_unit_tasks(&self) -> usize {
        usize::MAX
    }
    /// The folder under an export directory that holds an item's outputs.
    fn export_dir(&self, item: &str) -> String {
        item.to_string()
    }
    /// Writes what an export adds beyond the outputs (a render stage: `cameras.json` per
    /// object), once every exported item's files are in place.
    fn export_finish(&self, _dir: &Path, _items: &[&str]) -> Result<()> {
        Ok(())
    }
    /// Whether the kind exports the whole stage as one file ([`StageKind::export_combined`])
    /// instead of one folder per item.
    fn exports_combined(&self) -> bool {
        false
    }
    /// Writes the whole stage's export (an embed stage: one safetensors file) from every
    /// exported item's outputs and parameters. Returns the files written and their bytes.
    fn export_combined(
        &self,
        _store: &Store,
        _items: &[ExportedItem],
        _dir: &Path,
    ) -> Result<(u64, u64)> {
        anyhow::bail!("internal: {} exports per item", self.kind())
    }
    /// Runs one unit; returns one outcome per task, in order.
    async fn execute(&self, ctx: &ExecCtx, unit: Vec<UnitTask>) -> Vec<TaskOutcome>;
}

/// The `device` of a stage table: `auto` (default), `cpu` or `cuda`; an error at its position.
pub fn device_param(
    stage: &str,
    device: &Option<toml::Spanned<String>>,
) -> Result<crate::clip::DeviceChoice> {
    match device {
        None => Ok(crate::clip::DeviceChoice::Auto),
        Some(d) => d.get_ref().parse().map_err(|e: String| {
            crate::pipeline::AtSpan {
                span: d.span(),
                message: format!("stage `{stage}`: {e}"),
            }
            .into()
        }),
    }
}

/// The slots a task on `device` holds: a `gpu` slot for CUDA; on the CPU one `cpu` slot (the
/// model or head uses every core by itself; two tasks in flight overlap their preparation).
pub fn device_resources(device: crate::clip::DeviceChoice) -> Resources {
    match device {
        crate::clip::DeviceChoice::Cuda => Resources {
            cpu: 0,
            gpu: 1,
            blender: 0,
            net: 0,
        },
        crate::clip::DeviceChoice::Auto | crate::clip::DeviceChoice::Cpu => Resources::ONE_CPU,
    }
}

/// The outcome of a task that made `result`: its outputs, or its error as the item's failure
/// (`Cancelled` instead when the run is being stopped: a killed task has not failed).
pub fn outcome(
    stage: &str,
    started_ms: u64,
    kill: &CancellationToken,
    result: Result<Vec<Output>>,
) -> TaskOutcome {
    match result {
        Ok(outputs) => TaskOutcome::Success {
            outputs,
            stdout: None,
            stderr: None,
            started_ms,
            duration_ms: crate::store::records::now_ms().saturating_sub(started_ms),
        },
        Err(_) if kill.is_cancelled() => TaskOutcome::Cancelled,
        Err(e) => TaskOutcome::Failed {
            error: format!("{stage}: {e:#}"),
            stderr: None,
        },
    }
}

/// Runs each task of a unit on the blocking pool, one after another: `work` makes a task's
/// outputs (for kinds whose tasks are long computations: training, evaluation).
pub async fn each_task_blocking<F>(
    stage: &str,
    ctx: &ExecCtx,
    unit: Vec<UnitTask>,
    work: F,
) -> Vec<TaskOutcome>
where
    F: Fn(&Store, UnitTask, &CancellationToken) -> Result<Vec<Output>> + Clone + Send + 'static,
{
    let mut outcomes = Vec::with_capacity(unit.len());
    for task in unit {
        let started_ms = crate::store::records::now_ms();
        let (store, kill, work) = (ctx.store.clone(), ctx.kill.clone(), work.clone());
        let result = crate::exec::blocking_if(true, move || work(&store, task, &kill)).await;
        outcomes.push(outcome(stage, started_ms, &ctx.kill, result));
    }
    outcomes
}

/// An upstream output's bytes by name.
pub fn read_named(store: &Store, outputs: &[Output], name: &str, what: &str) -> Result<Vec<u8>> {
    let output = outputs
        .iter()
        .find(|o| o.name == name)
        .with_context(|| format!("{what} has no {name}"))?;
    store
        .read_output(output)
        .with_context(|| format!("reading {what}/{name}; run the pipeline again"))
}

/// Upper-cases a name for an environment variable: letters and digits kept, others `_`.
pub fn env_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}
