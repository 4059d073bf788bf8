//! The task graph: every stage expanded into its items, each item a task, with the edges
//! from each task to the upstream tasks it reads.
//!
//! Tasks are numbered densely (a stage's tasks are contiguous) and the graph is stored in
//! flat arrays, so a million tasks cost tens of megabytes, not hundreds.

use super::ids::{StageId, TaskId, TaskRange};
use super::workflow::{Stage, Workflow};
use crate::exec::kind::{
    Binding, ExpandCtx, Expansion, NotYetAvailable, ParamCtx, StageKind, StageOutputs,
};
use crate::store::Store;
use crate::task::{Digest, ParamSlice, slice_digest};
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::sync::Arc;

/// Marks an item input whose upstream stage has no item of that id.
pub const MISSING: TaskId = TaskId::MISSING;

/// Results of fully resolved stages (by stage index), for the stages that expand from
/// their inputs' outputs. A graph is built again when more of them become known.
pub type Sources = HashMap<StageId, Arc<StageOutputs>>;

#[derive(Clone, Copy, Debug)]
pub struct InputEdge {
    pub stage: StageId,
    pub binding: Binding,
}

/// The items' own parameters, each distinct slice stored once and each item naming its
/// slice by number: a render stage's views of a million objects share their cameras' 36
/// slices, where a slice per item (a `BTreeMap` and its strings) used to be most of a plan's
/// memory. Keys are unchanged: a task is keyed by its slice's contents.
#[derive(Debug, Default)]
pub struct ItemParams {
    slices: Vec<Arc<ParamSlice>>,
    /// Per item, its slice's place in `slices` ([`ItemParams::NONE`]: none of its own);
    /// empty while no item has any.
    of_item: Vec<u32>,
}

/// The slices an [`ItemParams`] holds, found by address (the same `Arc` given again, as a
/// kind that shares its slices does) and by contents (an equal slice made anew).
#[derive(Default)]
struct Interned {
    by_address: HashMap<usize, u32>,
    by_contents: HashMap<Arc<ParamSlice>, u32>,
}

impl ItemParams {
    const NONE: u32 = u32::MAX;

    /// Gives item `item` (of `items`) the parameters `slice`.
    fn set(&mut self, item: u32, items: usize, slice: Arc<ParamSlice>, known: &mut Interned) {
        if self.of_item.is_empty() {
            self.of_item = vec![Self::NONE; items];
        }
        // Only addresses of slices kept in `slices` are remembered: a slice dropped after
        // being found by its contents could have its address reused by another.
        let address = Arc::as_ptr(&slice) as usize;
        let k = match known.by_address.get(&address) {
            Some(&k) => k,
            None => match known.by_contents.get(&slice) {
                Some(&k) => k,
                None => {
                    let k = self.slices.len() as u32;
                    self.slices.push(slice.clone());
                    known.by_address.insert(address, k);
                    known.by_contents.insert(slice, k);
                    k
                }
            },
        };
        self.of_item[item as usize] = k;
    }

    /// The parameters of item `item`, when it has its own.
    pub fn get(&self, item: u32) -> Option<&ParamSlice> {
        match self.of_item.get(item as usize) {
            Some(&k) if k != Self::NONE => Some(&self.slices[k as usize]),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub struct StageNode {
    pub name: String,
    pub kind: Arc<dyn StageKind>,
    /// The stage's first task.
    pub start: TaskId,
    /// Shared with the stages that fan out over the same items (no copy per stage).
    pub items: Vec<Arc<str>>,
    /// Parameters of items that have their own, each distinct slice once.
    pub item_params: ItemParams,
    /// Expected bytes of items that declare them (progress only).
    pub item_bytes: HashMap<u32, u64>,
    /// The upstream item read through per-item inputs, for items where it is not their own.
    pub item_sources: HashMap<u32, Arc<str>>,
    /// Set when the stage's items are not known yet (they come from upstream results that
    /// do not exist yet): why. Such a stage has no tasks in this graph.
    pub deferred: Option<String>,
    pub inputs: Vec<InputEdge>,
    /// The name each input counts under in task keys, by position in `inputs`
    /// ([`super::workflow::Stage::input_keys`]).
    pub input_keys: Vec<String>,
    /// The parameters an overlay or override set, with where from.
    pub set_by: Vec<(String, String)>,
    /// Positions in `inputs` of the per-item inputs.
    pub item_inputs: Vec<usize>,
    /// Offset of this stage's rows in [`TaskGraph::item_deps`].
    pub deps_base: usize,
    pub shared: ParamSlice,
    pub shared_digest: Digest,
    /// Tasks (of other stages) that read this whole stage at once.
    pub all_consumers: Vec<TaskId>,
    /// The digests of the files the expansion read ([`StageKind::expansion_files`]), taken
    /// just before it read them: what the stage summary's key holds (`None` when one could
    /// not be read).
    pub expansion_files: Option<Vec<Digest>>,
}

impl StageNode {
    pub fn len(&self) -> u32 {
        self.items.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn tasks(&self) -> TaskRange {
        TaskId::range(self.start, self.len())
    }

    /// A task's place among the stage's items.
    pub fn local(&self, task: TaskId) -> u32 {
        task.0 - self.start.0
    }
}

#[derive(Debug)]
pub struct TaskGraph {
    /// Indexed like `Pipeline::stages` (declaration order).
    pub stages: Vec<StageNode>,
    /// Topological order of stage indices.
    pub order: Vec<StageId>,
    /// Stage index of each task.
    pub task_stage: Vec<StageId>,
    /// For each task, for each of its stage's per-item inputs: the upstream task (or MISSING).
    pub item_deps: Vec<TaskId>,
    /// Per-item dependents of each task, as offsets into `dependents` (CSR layout).
    pub dependents_off: Vec<u32>,
    pub dependents: Vec<TaskId>,
}

impl StageNode {
    /// A stage's node from its expansion (numbered later: `start` and `deps_base` are 0).
    fn new(
        stage: &super::workflow::Stage,
        inputs: &[StageId],
        expansion: Expansion,
        (shared, deferred): (ParamSlice, Option<String>),
    ) -> StageNode {
        let n = expansion.items.len();
        let mut items = Vec::with_capacity(n);
        let mut item_params = ItemParams::default();
        let mut known = Interned::default();
        let mut item_bytes = HashMap::new();
        let mut item_sources = HashMap::new();
        for (i, item) in expansion.items.into_iter().enumerate() {
            if let Some(source) = item.source {
                item_sources.insert(i as u32, source);
            }
            if !item.params.is_empty() {
                item_params.set(i as u32, n, item.params, &mut known);
            }
            if let Some(bytes) = item.bytes {
                item_bytes.insert(i as u32, bytes);
            }
            items.push(item.id);
        }
        let edges: Vec<InputEdge> = inputs
            .iter()
            .zip(&expansion.bindings)
            .map(|(&stage, &binding)| InputEdge { stage, binding })
            .collect();
        let item_inputs: Vec<usize> = edges
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e.binding, Binding::Item | Binding::ItemIfPresent))
            .map(|(i, _)| i)
            .collect();
        StageNode {
            name: stage.name.clone(),
            kind: stage.kind.clone(),
            start: TaskId(0),
            deps_base: 0,
            shared_digest: slice_digest(&shared),
            shared,
            items,
            item_params,
            item_bytes,
            item_sources,
            deferred,
            input_keys: stage.key_names().to_vec(),
            set_by: stage.set_by.clone(),
            inputs: edges,
            item_inputs,
            all_consumers: Vec::new(),
            expansion_files: None,
        }
    }
}

/// Notes on each stage the tasks that read all of it.
fn note_whole_stage_consumers(stages: &mut [StageNode]) {
    let mut consumers: Vec<Vec<TaskId>> = vec![Vec::new(); stages.len()];
    for node in stages.iter() {
        for edge in &node.inputs {
            if edge.binding == Binding::All {
                consumers[edge.stage].extend(node.tasks());
            }
        }
    }
    for (node, c) in stages.iter_mut().zip(consumers) {
        node.all_consumers = c;
    }
}

impl TaskGraph {
    /// Expands every stage (upstream first) and keys its shared parameters. A stage that
    /// expands from outputs its `sources` lack, and every stage downstream of it, is left
    /// deferred (no tasks).
    pub fn build(pipeline: &Workflow, store: &Store, sources: &Sources) -> Result<TaskGraph> {
        let n = pipeline.stages.len();
        let mut stages: Vec<Option<StageNode>> = (0..n).map(|_| None).collect();
        let mut next_task: u64 = 0;
        let mut deps_len = 0usize;
        // Stages must be numbered in topological order so that a task's upstream tasks
        // always have smaller indices; assign `start` in that order.
        for &s in &pipeline.order {
            let stage = &pipeline.stages[s];
            let inputs = pipeline.input_ids(stage);
            let upstream: Vec<&StageNode> = inputs
                .iter()
                .map(|&u| stages[u].as_ref().expect("upstream expanded first"))
                .collect();
            let expansion_files = expansion_file_digests(stage.kind.as_ref(), store);
            let (shared, deferred, expansion) =
                expand_stage(stage, &inputs, &upstream, sources, store)?;
            let start = next_task;
            next_task += expansion.items.len() as u64;
            if next_task >= MISSING.0 as u64 {
                anyhow::bail!("the pipeline expands to more than {} tasks", MISSING.0 - 1);
            }
            let mut node = StageNode::new(stage, &inputs, expansion, (shared, deferred));
            node.start = TaskId(start as u32);
            node.expansion_files = expansion_files;
            node.deps_base = deps_len;
            deps_len += node.items.len() * node.item_inputs.len();
            stages[s] = Some(node);
        }
        let mut stages: Vec<StageNode> = stages.into_iter().map(|s| s.unwrap()).collect();

        let total = next_task as usize;
        let mut task_stage = vec![StageId(0); total];
        for (s, node) in stages.iter().enumerate() {
            for t in node.tasks() {
                task_stage[t] = StageId(s as u32);
            }
        }

        let item_deps = item_edges(&stages, deps_len);
        let (counts, dependents) = dependents_of(&stages, &item_deps, total);
        note_whole_stage_consumers(&mut stages);

        Ok(TaskGraph {
            stages,
            order: pipeline.order.clone(),
            task_stage,
            item_deps,
            dependents_off: counts,
            dependents,
        })
    }

    pub fn len(&self) -> usize {
        self.task_stage.len()
    }

    pub fn is_empty(&self) -> bool {
        self.task_stage.is_empty()
    }

    pub fn stage_of(&self, task: TaskId) -> &StageNode {
        &self.stages[self.task_stage[task]]
    }

    pub fn item(&self, task: TaskId) -> &str {
        let node = self.stage_of(task);
        &node.items[node.local(task) as usize]
    }

    /// The upstream item a task's per-item inputs read (its own id unless it names another).
    pub fn source_item(&self, task: TaskId) -> &str {
        let node = self.stage_of(task);
        match node.item_sources.get(&node.local(task)) {
            Some(source) => source,
            None => self.item(task),
        }
    }

    /// Expected bytes of a task (0 when its item declares none).
    pub fn item_bytes(&self, task: TaskId) -> u64 {
        let node = self.stage_of(task);
        node.item_bytes.get(&node.local(task)).copied().unwrap_or(0)
    }

    /// Whether some stage's items are not known yet.
    pub fn has_deferred(&self) -> bool {
        self.stages.iter().any(|s| s.deferred.is_some())
    }

    pub fn item_params(&self, task: TaskId) -> ParamSlice {
        let node = self.stage_of(task);
        node.item_params
            .get(node.local(task))
            .cloned()
            .unwrap_or_default()
    }

    /// The upstream task of `task` for its stage's `k`-th per-item input.
    pub fn item_dep(&self, task: TaskId, k: usize) -> TaskId {
        let node = self.stage_of(task);
        let stride = node.item_inputs.len();
        self.item_deps[node.deps_base + node.local(task) as usize * stride + k]
    }

    pub fn dependents_of(&self, task: TaskId) -> &[TaskId] {
        let a = self.dependents_off[task] as usize;
        let b = self.dependents_off[task.index() + 1] as usize;
        &self.dependents[a..b]
    }

    /// Number of upstream edges a task waits for (one per item input that exists, one per
    /// whole-stage input).
    pub fn dep_count(&self, task: TaskId) -> u32 {
        let node = self.stage_of(task);
        let items = (0..node.item_inputs.len())
            .filter(|&k| self.item_dep(task, k) != MISSING)
            .count();
        let alls = node
            .inputs
            .iter()
            .filter(|e| e.binding == Binding::All)
            .count();
        (items + alls) as u32
    }

    /// The stage called `name`, or an error that lists the stages there are.
    pub fn stage_named(&self, name: &str) -> Result<&StageNode> {
        self.stages
            .iter()
            .find(|s| s.name == name)
            .with_context(|| {
                let names: Vec<&str> = self.stages.iter().map(|s| s.name.as_str()).collect();
                format!(
                    "no stage `{name}` in this pipeline (stages: {})",
                    names.join(", ")
                )
            })
    }

    pub fn task_label(&self, task: TaskId) -> String {
        format!("{}/{}", self.stage_of(task).name, self.item(task))
    }
}

/// A stage's shared parameters, why it is deferred (if it is), and its items: nothing is
/// expanded while an upstream stage is deferred, while the outputs it expands from are not
/// known yet, or while its parameters cannot be known (its model could not be downloaded).
fn expand_stage(
    stage: &Stage,
    inputs: &[StageId],
    upstream: &[&StageNode],
    sources: &Sources,
    store: &Store,
) -> Result<(ParamSlice, Option<String>, Expansion)> {
    // Per input: whether the stage's items come from that input's outputs.
    let reads_outputs: Vec<bool> = (0..inputs.len())
        .map(|k| stage.kind.expands_from_outputs_of(k))
        .collect();
    let deferred = inputs
        .iter()
        .zip(upstream)
        .zip(&reads_outputs)
        .find_map(|((u, up), &reads)| {
            if let Some(why) = &up.deferred {
                return Some(why.clone());
            }
            if !reads {
                return None;
            }
            match sources.get(u) {
                None => Some(format!("items known once `{}` has run", up.name)),
                Some(out) if out.items.is_empty() && !up.is_empty() => {
                    Some(format!("`{}` has no successful result", up.name))
                }
                Some(_) => None,
            }
        });
    // A stage whose parameters cannot be known yet (its model could not be
    // downloaded) is left unexpanded with the reason; the rest plans and runs.
    let (shared, deferred) = match stage.kind.shared_params(&ParamCtx { store }) {
        Ok(shared) => (shared, deferred),
        Err(e) => match e.downcast_ref::<NotYetAvailable>() {
            Some(why) => (ParamSlice::new(), deferred.or_else(|| Some(why.0.clone()))),
            None => {
                return Err(e.context(format!("reading the parameters of stage `{}`", stage.name)));
            }
        },
    };
    if deferred.is_some() {
        let nothing = Expansion {
            items: Vec::new(),
            bindings: vec![Binding::Item; inputs.len()],
        };
        return Ok((shared, deferred, nothing));
    }
    let ctx = ExpandCtx {
        stage: &stage.name,
        inputs: upstream
            .iter()
            .map(|up| (up.name.as_str(), up.items.as_slice()))
            .collect(),
        outputs: inputs
            .iter()
            .zip(&reads_outputs)
            .map(|(u, &reads)| reads.then(|| sources.get(u).map(|o| &**o)).flatten())
            .collect(),
        store,
    };
    let expansion = stage
        .kind
        .expand(&ctx)
        .with_context(|| format!("expanding stage `{}`", stage.name))?;
    Ok((shared, None, expansion))
}

/// The digests of the files a kind's expansion reads, through the stat cache; `None` when
/// one cannot be read (the expansion then says why).
pub fn expansion_file_digests(kind: &dyn StageKind, store: &Store) -> Option<Vec<Digest>> {
    kind.expansion_files()
        .iter()
        .map(|path| store.file_digest(path).map(|(digest, _)| digest).ok())
        .collect()
}

/// Per-item edges: for each task, the upstream task of each per-item input (`MISSING` when
/// the upstream stage lacks the item). Joined on item id, by a direct index when the lists
/// line up (they do for `per_item` stages reading their first input).
fn item_edges(stages: &[StageNode], deps_len: usize) -> Vec<TaskId> {
    let mut item_deps = vec![MISSING; deps_len];
    let mut lookups: HashMap<StageId, HashMap<&str, TaskId>> = HashMap::new();
    for node in stages {
        for (k, &input) in node.item_inputs.iter().enumerate() {
            let up = &stages[node.inputs[input].stage];
            let stride = node.item_inputs.len();
            for (local, own) in node.items.iter().enumerate() {
                let item = node.item_sources.get(&(local as u32)).unwrap_or(own);
                let dep = if up.items.get(local) == Some(item) {
                    TaskId(up.start.0 + local as u32)
                } else {
                    let map = lookups.entry(node.inputs[input].stage).or_insert_with(|| {
                        up.items
                            .iter()
                            .enumerate()
                            .map(|(i, id)| (&**id, TaskId(up.start.0 + i as u32)))
                            .collect()
                    });
                    map.get(&**item).copied().unwrap_or(MISSING)
                };
                item_deps[node.deps_base + local * stride + k] = dep;
            }
        }
    }
    item_deps
}

/// The dependents of each task, in CSR form: (offsets, one per task and one more; the
/// dependent tasks).
fn dependents_of(
    stages: &[StageNode],
    item_deps: &[TaskId],
    total: usize,
) -> (Vec<u32>, Vec<TaskId>) {
    let mut counts = vec![0u32; total + 1];
    for &dep in item_deps {
        if dep != MISSING {
            counts[dep.index() + 1] += 1;
        }
    }
    for i in 0..total {
        counts[i + 1] += counts[i];
    }
    let mut fill = counts.clone();
    let mut dependents = vec![TaskId(0); item_deps.len()];
    for node in stages {
        let stride = node.item_inputs.len();
        for local in 0..node.items.len() {
            for k in 0..stride {
                let dep = item_deps[node.deps_base + local * stride + k];
                if dep != MISSING {
                    dependents[fill[dep] as usize] = TaskId(node.start.0 + local as u32);
                    fill[dep] += 1;
                }
            }
        }
    }
    dependents.truncate(counts[total] as usize);
    (counts, dependents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(pairs: &[(&str, &str)]) -> Arc<ParamSlice> {
        Arc::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn item_params_keep_each_distinct_slice_once() {
        let mut params = ItemParams::default();
        let mut known = Interned::default();
        let front = slice(&[("azimuth", "0")]);
        let side = slice(&[("azimuth", "90")]);
        // Six items: the same two slices given again (as render shares them), and an equal
        // slice made anew (as a kind that does not share them).
        params.set(0, 6, front.clone(), &mut known);
        params.set(1, 6, side.clone(), &mut known);
        params.set(2, 6, front.clone(), &mut known);
        params.set(3, 6, slice(&[("azimuth", "90")]), &mut known);
        params.set(5, 6, slice(&[("azimuth", "180")]), &mut known);
        assert_eq!(params.slices.len(), 3, "front, side and back, once each");
        assert_eq!(params.get(0), Some(&*front));
        assert_eq!(params.get(1), Some(&*side));
        assert_eq!(params.get(2), Some(&*front));
        assert_eq!(params.get(3), Some(&*side));
        assert_eq!(params.get(4), None, "an item without parameters of its own");
        assert_eq!(params.get(5).unwrap()["azimuth"], "180");
        assert_eq!(params.get(6), None, "past the last item");
        assert_eq!(ItemParams::default().get(0), None);
    }
}
