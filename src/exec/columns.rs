//! View columns (issue 30): a plan after a new ring of views that keys only the new views'
//! tasks, and makes none (ARCHITECTURE.md, "Stage summaries").
//!
//! A render stage's items are its input's objects times its views, and an embed stage of its
//! images follows them one to one ([`Columns`]). The tasks of one view, a **column**, are a
//! function of exactly: the stage's kind and version, its shared parameters, the files its
//! expansion reads, the view's own parameters (its camera), and what it reads (the whole
//! objects stage's results, or, for an embedding, the same column of the renders). At the
//! end of a run every column whose tasks all settled gets a summary of its own under the
//! digest of those (its column key), beside its stage's (`exec/stage_summaries.rs`).
//!
//! A stage summary holds the pipeline's whole text, so a new ring misses it. Then this plan:
//!
//! 1. plans the stages before the views (the objects: one task in 73) task by task, as the
//!    full plan does, and stops unless all of them are settled;
//! 2. for each column of each view stage, upstream first: when the recorded column summary
//!    has its key, takes its counts;
//! 3. for a column without one (a new view), keys each of its tasks from its object's
//!    result, without making it, and asks the presence filter whether the index ever held
//!    its key or its item. Never: the task is to run, "new item", as the full plan would
//!    find it. Maybe: this plan steps aside. An embedding of a new view is to run once its
//!    render has run, "new item" when the filter never saw its item.
//!
//! Nothing is kept per task to run beyond a byte, so a ring of 17% more views of 100M tasks
//! is planned in the memory of its objects and the filter. Whatever this plan cannot decide
//! (a stage after the views that is not one, a column whose key changed while its input's
//! did not, a view the index has seen before, failures to retry, a filter that does not
//! speak for the index) is left to the full plan, which says why.

use super::graph::{StageNode, expansion_file_digests};
use super::ids::{StageId, TaskId};
use super::keying::task_key;
use super::kind::{Columns, ParamCtx};
use super::plan::{PlanReport, StagePlan};
use super::resolve::{Engine, State};
use super::stage_results::{StageResults, stage_results};
use super::workflow::{Stage, Workflow};
use crate::store::Store;
use crate::store::object_stage::split_view;
use crate::store::summaries::{BlobList, StageSummary, column_name};
use crate::task::{Digest, KEY_SCHEMA, ParamSlice, slice_digest, validate_item_id};
use anyhow::Result;
use indexmap::IndexMap;
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

/// The results digest of each column of a stage whose tasks all settled, by view.
pub(super) type ColumnResults = HashMap<String, Digest>;

/// The digest of everything one column's tasks are made from: what their keys hold, and
/// the items they are made for (the input's results). Not the pipeline's text: a new ring
/// changes the text, and must leave the other views' columns as they were.
fn column_key(
    stage: &Stage,
    shared: &Digest,
    files: &[Digest],
    column: &str,
    params: &ParamSlice,
    input: (&str, Digest),
) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(b"mvc column summary 1\0");
    h.update(&KEY_SCHEMA.to_le_bytes());
    for text in [stage.name.as_str(), stage.kind.kind(), column, input.0] {
        h.update(&(text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    }
    h.update(&stage.kind.version().to_le_bytes());
    h.update(&shared.0);
    h.update(&(files.len() as u64).to_le_bytes());
    for file in files {
        h.update(&file.0);
    }
    h.update(&slice_digest(params).0);
    h.update(&input.1.0);
    Digest(*h.finalize().as_bytes())
}

/// The columns of one stage as a run's end sums them up: each one's key, and its tasks'
/// results as they are added.
pub(super) struct ColumnKeys {
    columns: IndexMap<String, (Digest, StageResults)>,
}

impl ColumnKeys {
    /// The keys of `stage`'s columns, when it is made of them and what it reads has
    /// results: the whole input stage's (`whole`), or the same columns of it
    /// (`by_column`). `None` otherwise.
    pub(super) fn of(
        stage: &Stage,
        node: &StageNode,
        files: &[Digest],
        whole: &[Option<Digest>],
        by_column: &[Option<ColumnResults>],
    ) -> Option<ColumnKeys> {
        let ([edge], [input_key]) = (node.inputs.as_slice(), stage.key_names()) else {
            return None;
        };
        let keyed = |column: &str, params: &ParamSlice, input: Digest| {
            let key = column_key(
                stage,
                &node.shared_digest,
                files,
                column,
                params,
                (input_key, input),
            );
            (column.to_string(), (key, StageResults::new()))
        };
        let columns = match stage.kind.columns() {
            Columns::None => return None,
            Columns::Own(columns) => {
                let input = whole[edge.stage]?;
                columns
                    .iter()
                    .map(|(column, params)| keyed(column, params, input))
                    .collect()
            }
            Columns::Follow(params) => by_column[edge.stage]
                .as_ref()?
                .iter()
                .map(|(column, input)| keyed(column, &params, *input))
                .collect(),
        };
        Some(ColumnKeys { columns })
    }

    /// The results of the column `item` belongs to, when it is one of them.
    pub(super) fn results_of(&mut self, item: &str) -> Option<&mut StageResults> {
        let (_, column) = split_view(item)?;
        self.columns.get_mut(column).map(|(_, found)| found)
    }

    /// The summary of each column whose tasks all settled (named by
    /// [`column_name`]), and their results digests.
    pub(super) fn summaries(
        self,
        stage: &str,
    ) -> (ColumnResults, Vec<(String, StageSummary, BlobList)>) {
        let mut results = ColumnResults::new();
        let mut summaries = Vec::new();
        for (column, (key, found)) in self.columns {
            if let Some((summary, blob_list)) = found.summary(key) {
                results.insert(column.clone(), summary.results);
                summaries.push((column_name(stage, &column), summary, blob_list));
            }
        }
        (results, summaries)
    }
}

/// Which stages are made of columns and read only the objects or other such stages: the
/// views. `None` when there are none, or a stage reads them without being one of them (its
/// tasks would need every view's task).
fn view_stages(pipeline: &Workflow) -> Option<Vec<Option<Columns>>> {
    let mut views: Vec<Option<Columns>> = vec![None; pipeline.stages.len()];
    for &s in &pipeline.order {
        let stage = &pipeline.stages[s];
        let inputs = pipeline.input_ids(stage);
        views[s] = match (stage.kind.columns(), inputs.as_slice()) {
            (Columns::Own(columns), [u]) if views[*u].is_none() => Some(Columns::Own(columns)),
            (Columns::Follow(params), [u]) if views[*u].is_some() => Some(Columns::Follow(params)),
            _ if inputs.iter().any(|&u| views[u].is_some()) => {
                return miss(stage, "it reads views but is not made of view columns");
            }
            _ => None,
        };
    }
    views.iter().any(Option::is_some).then_some(views)
}

/// What a plan found of one column.
enum Column {
    /// Its summary's key is the one recorded: these are its results.
    Recorded(Digest),
    /// No task of it was ever recorded: for each object (a task of the objects' stage in
    /// the head plan), whether its task is to run (else it is blocked).
    New {
        objects: StageId,
        runs: Arc<Vec<bool>>,
    },
}

/// The plan of a pipeline whose view stages changed only by new columns, when the
/// summaries of the others and the presence filter decide it; `None` when they do not
/// (then every task must be keyed and looked up).
pub fn plan(
    pipeline: &Workflow,
    store: &Arc<Store>,
    retry_failed: bool,
) -> Result<Option<PlanReport>> {
    let Some(views) = view_stages(pipeline) else {
        return Ok(None);
    };
    // Before any task is made: a column summary of every view stage that makes its own.
    for (s, columns) in views.iter().enumerate() {
        let Some(Columns::Own(columns)) = columns else {
            continue;
        };
        let stage = &pipeline.stages[s];
        let mut recorded = false;
        for (column, _) in columns {
            if store.column_summary(&stage.name, column)?.is_some() {
                recorded = true;
                break;
            }
        }
        if !recorded {
            return Ok(miss(stage, "no view column has a summary"));
        }
    }
    let head = pipeline.only(|s| views[s].is_none());
    let (engine, head_plan) = super::plan::plan(&head, store.clone(), retry_failed)?;
    if let Some((name, _)) = head_plan
        .stages
        .iter()
        .find(|(_, p)| p.to_run > 0 || p.not_expanded.is_some())
    {
        tracing::debug!("not planned by view columns: stage `{name}` has tasks to run");
        return Ok(None);
    }
    let mut planned: HashMap<String, StagePlan> = head_plan.stages.into_iter().collect();
    let mut found: Vec<IndexMap<String, Column>> =
        (0..views.len()).map(|_| IndexMap::new()).collect();
    for &s in &pipeline.order {
        let Some(columns) = &views[s] else {
            continue;
        };
        let stage = &pipeline.stages[s];
        let Ok(shared) = stage.kind.shared_params(&ParamCtx { store }) else {
            return Ok(miss(stage, "shared parameters not known"));
        };
        let shared = slice_digest(&shared);
        let Some(files) = expansion_file_digests(stage.kind.as_ref(), store) else {
            return Ok(miss(stage, "a file its items come from cannot be read"));
        };
        let input = pipeline
            .stage_index(&stage.inputs[0])
            .expect("inputs were validated");
        let input_key = stage.key_names()[0].as_str();
        let look = Look {
            store,
            stage,
            shared: &shared,
            files: &files,
            input_key,
            retry_failed,
        };
        let mut plan = StagePlan::default();
        let columns_found = match columns {
            Columns::None => unreachable!("only view stages"),
            Columns::Own(columns) => {
                let objects = head
                    .stage_index(&stage.inputs[0])
                    .expect("a view stage's input is before the views");
                look.own(&engine, objects, columns, &mut plan)?
            }
            Columns::Follow(params) => look.follow(&engine, params, &found[input], &mut plan)?,
        };
        let Some(columns_found) = columns_found else {
            return Ok(None);
        };
        found[s] = columns_found;
        planned.insert(stage.name.clone(), plan);
    }
    let stages = pipeline
        .order
        .iter()
        .map(|&s| {
            let name = &pipeline.stages[s].name;
            (
                name.clone(),
                planned.remove(name).expect("every stage planned"),
            )
        })
        .collect();
    Ok(Some(PlanReport {
        stages,
        variants: pipeline.variants.clone(),
        from_summaries: false,
        from_columns: true,
    }))
}

/// What is the same for every column of one view stage as it is planned.
struct Look<'a> {
    store: &'a Store,
    stage: &'a Stage,
    shared: &'a Digest,
    files: &'a [Digest],
    input_key: &'a str,
    retry_failed: bool,
}

impl Look<'_> {
    /// The columns of a stage that makes its own from the objects' stage (`objects`, in the
    /// head plan `engine`), counted into `plan`; `None` when they cannot be decided so.
    fn own(
        &self,
        engine: &Engine,
        objects: StageId,
        columns: &[(String, Arc<ParamSlice>)],
        plan: &mut StagePlan,
    ) -> Result<Option<IndexMap<String, Column>>> {
        let Some(objects_results) = stage_results(engine, objects)? else {
            return Ok(miss(self.stage, "its input has unsettled tasks"));
        };
        let mut found = IndexMap::new();
        for (column, params) in columns {
            if let Some(summary) = self.recorded(column, params, objects_results)? {
                add_recorded(plan, &summary);
                found.insert(column.clone(), Column::Recorded(summary.results));
                continue;
            }
            let Some(runs) = self.new_own(engine, objects, column, params) else {
                return Ok(miss(
                    self.stage,
                    &format!("view {column} may be in the cache"),
                ));
            };
            add_new(plan, column, &runs);
            let runs = Arc::new(runs);
            found.insert(column.clone(), Column::New { objects, runs });
        }
        Ok(Some(found))
    }

    /// The columns of a stage that follows its input's (`upstream`, as planned), counted
    /// into `plan`; `None` when they cannot be decided so.
    fn follow(
        &self,
        engine: &Engine,
        params: &ParamSlice,
        upstream: &IndexMap<String, Column>,
        plan: &mut StagePlan,
    ) -> Result<Option<IndexMap<String, Column>>> {
        let mut found = IndexMap::new();
        for (column, upstream) in upstream {
            let this = match upstream {
                Column::Recorded(results) => {
                    let Some(summary) = self.recorded(column, params, *results)? else {
                        let why = format!("view {column} changed, and not its input's");
                        return Ok(miss(self.stage, &why));
                    };
                    add_recorded(plan, &summary);
                    Column::Recorded(summary.results)
                }
                Column::New { objects, runs } => {
                    if !self.new_follow(engine, *objects, column, runs) {
                        let why = format!("view {column} was seen before");
                        return Ok(miss(self.stage, &why));
                    }
                    add_new(plan, column, runs);
                    Column::New {
                        objects: *objects,
                        runs: runs.clone(),
                    }
                }
            };
            found.insert(column.clone(), this);
        }
        Ok(Some(found))
    }

    /// The summary of `column` when the one recorded has the key its parameters and input
    /// make now, and speaks for the cache: its output blobs present, no failures to retry.
    fn recorded(
        &self,
        column: &str,
        params: &ParamSlice,
        input: Digest,
    ) -> Result<Option<StageSummary>> {
        let key = column_key(
            self.stage,
            self.shared,
            self.files,
            column,
            params,
            (self.input_key, input),
        );
        let Some(summary) = self.store.column_summary(&self.stage.name, column)? else {
            return Ok(None);
        };
        let speaks = summary.key == key
            && !(self.retry_failed && summary.failed > 0)
            && self.store.summary_blobs_present(&summary);
        Ok(speaks.then_some(summary))
    }

    /// A new column of a stage that makes its own: for each object, whether its task is to
    /// run (its object has a result, and its item is a valid id) or blocked. Each task to
    /// run is keyed as the engine keys it, and must be one the index never held, under its
    /// key or its item; `None` when one may have been.
    fn new_own(
        &self,
        engine: &Engine,
        objects: StageId,
        column: &str,
        params: &ParamSlice,
    ) -> Option<Vec<bool>> {
        let node = &engine.graph.stages[objects];
        (0..node.len())
            .into_par_iter()
            .map(|i| {
                let t = TaskId(node.start.0 + i);
                if !matches!(engine.state[t], State::Cached | State::Done) {
                    return Some(false);
                }
                let item = Columns::item(engine.graph.item(t), column);
                if validate_item_id(&item).is_err() {
                    return Some(false);
                }
                let inputs = [(self.input_key, engine.manifests[t])];
                let key = task_key(
                    self.stage.kind.as_ref(),
                    self.shared,
                    &item,
                    params,
                    &inputs,
                );
                self.store
                    .never_held(&self.stage.name, &item, Some(&key))
                    .then_some(true)
            })
            .collect()
    }

    /// Whether no task of a new column of a stage that follows one (an embedding of a new
    /// view, to run once its render has) was ever recorded under its item.
    fn new_follow(&self, engine: &Engine, objects: StageId, column: &str, runs: &[bool]) -> bool {
        let node = &engine.graph.stages[objects];
        (0..node.len()).into_par_iter().all(|i| {
            !runs[i as usize] || {
                let item = Columns::item(engine.graph.item(TaskId(node.start.0 + i)), column);
                self.store.never_held(&self.stage.name, &item, None)
            }
        })
    }
}

fn add_recorded(plan: &mut StagePlan, summary: &StageSummary) {
    plan.total += summary.tasks;
    plan.cached += summary.cached;
    plan.failed_skipped += summary.failed;
}

fn add_new(plan: &mut StagePlan, column: &str, runs: &[bool]) {
    let to_run = runs.iter().filter(|&&r| r).count() as u64;
    plan.total += runs.len() as u64;
    plan.to_run += to_run;
    plan.failed_skipped += runs.len() as u64 - to_run;
    if to_run > 0 {
        *plan.reasons.entry("new item".into()).or_default() += to_run;
        // Sorted, as the full plan names them.
        let at = plan.new_views.partition_point(|v| v.as_str() < column);
        plan.new_views.insert(at, column.to_string());
    }
}

/// Says (at `-vv`) why the view columns did not decide the plan.
fn miss<T>(stage: &Stage, why: &str) -> Option<T> {
    tracing::debug!("not planned by view columns: stage `{}`: {why}", stage.name);
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::kind::{ExecCtx, ExpandCtx, Expansion, TaskOutcome, UnitTask};
    use crate::resources::Resources;

    #[derive(Debug)]
    struct Versioned(u32);

    #[async_trait::async_trait]
    impl crate::exec::kind::StageKind for Versioned {
        fn kind(&self) -> &'static str {
            "versioned"
        }
        fn version(&self) -> u32 {
            self.0
        }
        fn resources(&self) -> Resources {
            Resources::ONE_CPU
        }
        fn shared_params(&self, _: &ParamCtx) -> Result<ParamSlice> {
            Ok(ParamSlice::new())
        }
        fn expand(&self, _: &ExpandCtx) -> Result<Expansion> {
            unreachable!("only keyed")
        }
        async fn execute(&self, _: &ExecCtx, _: Vec<UnitTask>) -> Vec<TaskOutcome> {
            unreachable!("only keyed")
        }
    }

    fn stage(name: &str, version: u32) -> Stage {
        Stage {
            name: name.into(),
            line: 1,
            inputs: vec!["objects".into()],
            input_keys: Vec::new(),
            set_by: Vec::new(),
            kind: Arc::new(Versioned(version)),
        }
    }

    /// Everything a column key is made from, as one value to vary.
    #[derive(Clone)]
    struct Ingredients {
        stage: (&'static str, u32),
        shared: Digest,
        files: Vec<Digest>,
        column: &'static str,
        azimuth: &'static str,
        input: (&'static str, Digest),
    }

    impl Ingredients {
        fn key(&self) -> Digest {
            let camera = ParamSlice::from([("azimuth".to_string(), self.azimuth.to_string())]);
            column_key(
                &stage(self.stage.0, self.stage.1),
                &self.shared,
                &self.files,
                self.column,
                &camera,
                self.input,
            )
        }
    }

    #[test]
    fn a_column_key_changes_with_everything_its_tasks_are_made_from_and_nothing_else() {
        let base = Ingredients {
            stage: ("views", 1),
            shared: Digest::of(b"shared"),
            files: vec![Digest::of(b"file")],
            column: "az030",
            azimuth: "30",
            input: ("objects", Digest::of(b"in")),
        };
        // The same ingredients, the same key: a stage built again from the same file.
        assert_eq!(base.key(), base.clone().key());
        let changes: [fn(&mut Ingredients); 9] = [
            |i| i.stage.0 = "views2",
            |i| i.stage.1 = 2,
            |i| i.shared = Digest::of(b"other"),
            |i| i.files.clear(),
            |i| i.files.push(Digest::of(b"file")),
            |i| i.column = "az031",
            |i| i.azimuth = "31",
            |i| i.input.0 = "things",
            |i| i.input.1 = Digest::of(b"out"),
        ];
        for (n, change) in changes.iter().enumerate() {
            let mut changed = base.clone();
            change(&mut changed);
            assert_ne!(
                base.key(),
                changed.key(),
                "change {n} left the key as it was"
            );
        }
    }
}
