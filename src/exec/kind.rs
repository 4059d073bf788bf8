//! The stage kinds' API: what the engine asks of a kind ([`StageKind`]) and what it hands a
//! kind while planning and executing. The engine names no kind; each kind implements this
//! trait in its own file under `stages/`.

use crate::exec::launcher::Launcher;
use crate::resources::Resources;
use crate::store::Store;
use crate::store::records::Output;
use crate::store::records::TaskResult;
use crate::task::{Digest, ParamSlice, TaskKey};
use anyhow::Result;
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub use crate::diag::NotYetAvailable;
pub use crate::meter::ByteMeter;

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

/// What a task reads from one input stage.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct InputData {
    pub stage: String,
    pub binding: Binding,
    /// For [`Binding::Item`] exactly one entry (for [`Binding::ItemIfPresent`] one or none);
    /// for [`Binding::All`] every successful item
    /// of the upstream stage, in item order.
    pub items: Vec<(String, TaskResult)>,
    /// For [`Binding::All`] and a kind that [reads failures](crate::exec::kind::StageKind::reads_failures):
    /// the upstream items without a result, in item order, each with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<LeftOut>,
}

/// An item of an upstream stage that has no result, and the failure that stopped it (its
/// own, or the one upstream that blocked it), as `stage: error`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LeftOut {
    pub item: String,
    pub reason: String,
}

/// An item of a stage: its stable id and the parameters that belong to it alone.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedItem {
    pub id: Arc<str>,
    /// Shared where items have the same parameters (a render stage's views of different
    /// objects share their camera's slice): a slice per item was most of a plan's memory.
    pub params: Arc<ParamSlice>,
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
            params: Arc::default(),
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

/// How a stage's items are made of view columns: what lets a plan after a new ring of views
/// key only the new views' tasks, without making any (`exec/columns.rs`; ARCHITECTURE.md,
/// "Stage summaries").
#[derive(Clone, Debug, Default)]
pub enum Columns {
    /// Not made of columns: planned task by task when anything changed.
    #[default]
    None,
    /// One item `<input item>@<column>` ([`Columns::item`]) for every item of its one input
    /// (bound [`Binding::Item`]) and every column, with the column's parameters as the item's
    /// own, in this order: a render stage's views.
    Own(Vec<(String, Arc<ParamSlice>)>),
    /// One item for every item of its one input, with the same id (bound
    /// [`Binding::Item`]) and these parameters as its own: when that input is made of
    /// columns, so is this stage (an embed stage of a render stage's views).
    Follow(Arc<ParamSlice>),
}

impl Columns {
    /// The item of `column` made from the input's item `input`: `<input>@<column>`, a view
    /// as the store keeps views.
    pub fn item(input: &str, column: &str) -> String {
        crate::store::object_stage::view_item(input, column)
    }
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
    /// Failed because the file system it wrote to is full (what [`unless_disk_full`] says):
    /// not recorded, and no new work starts where it ran.
    DiskFull(String),
}

/// `outcome`, unless it is a failure on a full file system: then [`TaskOutcome::DiskFull`]
/// naming the file system holding `work` and its free space. Kinds call it before removing
/// their work directory, whose partial output is what shows the disk full.
pub fn unless_disk_full(work: &Path, outcome: TaskOutcome) -> TaskOutcome {
    let error = match &outcome {
        TaskOutcome::Failed { error, .. } => error,
        // Not recorded either way; said as a full disk when its words say so.
        TaskOutcome::Aborted(error) if crate::disk::says_full(error) => error,
        _ => return outcome,
    };
    match crate::disk::full_disk(work, error) {
        Some(full) => TaskOutcome::DiskFull(full),
        None => outcome,
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
    /// The stage's items and how its inputs bind. It may read only its context, its own
    /// table, and the files [`StageKind::expansion_files`] names.
    fn expand(&self, ctx: &ExpandCtx) -> Result<Expansion>;
    /// Every file [`StageKind::expand`] reads (an items file). The stage summary's key
    /// holds their digests, so that editing one makes the next plan key every task again
    /// (ARCHITECTURE.md, "Stage summaries"). A file read by `expand` and missing here would
    /// let a plan call stale items cached.
    fn expansion_files(&self) -> Vec<std::path::PathBuf> {
        Vec::new()
    }
    /// How the items are made of view columns ([`Columns`]). A kind that says so must
    /// expand exactly as it says: a plan keys a new column's tasks from this alone.
    fn columns(&self) -> Columns {
        Columns::None
    }
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
    /// Whether a task reading a whole upstream stage still runs when every item of it failed,
    /// told why through [`InputData::left_out`] (the report: a failed variant is a row it
    /// leaves out, not a reason to write no table), as long as another stage it reads has
    /// results (a report of failures alone is blocked). Only with
    /// [`StageKind::reads_failures`].
    fn reads_failed_stages(&self) -> bool {
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
    /// Whether the stage is fanned out over items (objects, views), so that one failed item
    /// is one broken object among many. A stage that makes one result from what it reads
    /// (a split, a trained head, an evaluation, the report) is not: when its task has failed,
    /// in this run or an earlier one, the run has no results and exits non-zero.
    fn fans_out(&self) -> bool {
        true
    }
    /// Whether a run copies this stage's outputs into the pipeline's results folder
    /// (`runs/<name>/`; a report stage's `results.md` and figures).
    fn publishes_results(&self) -> bool {
        false
    }
    /// Tasks whose group is the same `Some` run together in one unit (one Blender process
    /// for all missing views of an object); `None` runs the task alone.
    fn unit_group<'a>(&self, _item: &'a str) -> Option<&'a str> {
        None
    }
    /// The most tasks one unit takes (an embed stage: a few batches, so progress and
    /// Ctrl-C are not held up by one huge unit).
    fn max_unit_tasks(&self) -> usize {
        usize::MAX
    }
    /// The fewest tasks a unit is cut to when workers share out a stage's last tasks (an
    /// embed stage: one batch, below which a GPU waits on its own overhead). Units take
    /// fewer only when fewer are queued.
    fn min_unit_tasks(&self) -> usize {
        1
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
