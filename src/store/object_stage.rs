//! One record per object and stage: the layout of views in the index (issue 30, step 1 of
//! BENCHMARKS.md's "Objaverse-XL on 1,000 GPUs").
//!
//! Any other task costs three index entries (its key record, its result, its item's latest
//! key), about 500 bytes of keys and values and 2.4 KB of sled's log, and sled spends 10 to
//! 50 µs on each insert. The views of one object in one stage (`<object>@<view>`, 36 of them
//! in the study) share almost everything: the kind, the stage's parameters, the host, the
//! names of their inputs and outputs, and a render's input (the object). So they can be one
//! record, in which each view keeps only what is its own:
//!
//! - its **column**: the view's name and its own parameters (the camera), which are the same
//!   for every object of the stage, so they are kept once per stage in [`Columns`];
//! - the digests of the inputs that differ from view to view (an embedding's render);
//! - its outputs: an inline output keeps only its bytes (its digest is theirs), a blob its
//!   digest and size;
//! - when it started (after the record's first view) and how long it took;
//! - where it ran, its logs, its kind and stage parameters, only when they are not those of
//!   the record's first view.
//!
//! An item that is not a view (an object's own task: its download, its caption) is the view
//! named "" of a record of its own ([`place`]), unless it has parameters of its own (they
//! would make a column per item): one insert instead of three.
//!
//! The key record and the result of every view are made again from these, exactly: a view's
//! key is the digest of its rebuilt key record, and `tests` check that both round-trip. A task
//! that does not fit (other names of inputs or outputs than its object's other views) is a
//! [`Misfit`]: it stays an entry of its own.
//!
//! `store/views.rs` keeps them in the index's `objects` tree; `benches/xl_store.rs` measures
//! them in sled against three entries per task, up to 100M tasks' worth.

use super::records::{Output, TaskResult, manifest_digest};
use crate::task::{Digest, KeyRecord, ParamSlice};
use serde::{Deserialize, Serialize};

/// The columns of a stage: each view's name and own parameters, numbered in the order they
/// were first seen. Kept once per stage, not once per object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Columns {
    columns: Vec<(String, ParamSlice)>,
}

impl Columns {
    /// The number of `view` with `params`, added when it is new.
    pub fn number(&mut self, view: &str, params: &ParamSlice) -> u32 {
        match self
            .columns
            .iter()
            .position(|(v, p)| v == view && p == params)
        {
            Some(i) => i as u32,
            None => {
                self.columns.push((view.to_string(), params.clone()));
                (self.columns.len() - 1) as u32
            }
        }
    }

    pub fn get(&self, column: u32) -> Option<&(String, ParamSlice)> {
        self.columns.get(column as usize)
    }

    pub fn len(&self) -> usize {
        self.columns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("columns always encode")
    }

    pub fn decode(bytes: &[u8]) -> Result<Columns, String> {
        postcard::from_bytes(bytes).map_err(|e| format!("a stage's view columns are damaged: {e}"))
    }
}

/// An object's tasks of one stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectStage {
    stage: String,
    object: String,
    schema: u32,
    kind: String,
    kind_version: u32,
    shared: Digest,
    host: String,
    /// The inputs every view reads, by name, with the digest when every view reads the same
    /// (a render's object); `None` when each view has its own (an embedding's render).
    inputs: Vec<(String, Option<Digest>)>,
    /// The outputs' names, with the view's name in them as [`VIEW_MARK`] (a render names
    /// its image after its view).
    output_names: Vec<String>,
    /// When the first view started; the others count from it.
    first_ms: u64,
    /// In column order.
    views: Vec<View>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct View {
    column: u32,
    /// The digests of the inputs whose digest is `None` in [`ObjectStage::inputs`], in order.
    own_inputs: Vec<Digest>,
    outputs: Vec<Kept>,
    after_first_ms: u64,
    duration_ms: u64,
    /// The key this view had before its latest (`mvc why` shows what changed).
    previous: Option<Digest>,
    /// Where it ran, when not where the record's first view ran (a unit on another worker).
    host: Option<String>,
    /// Its logs (stdout, stderr), when it kept any.
    logs: Option<(Option<Digest>, Option<Digest>)>,
    /// Its kind (schema, kind, version) and stage parameters, when not the record's: while
    /// a stage's parameters change or its kind is upgraded, old and new views share it.
    own_kind: Option<(u32, String, u32, Digest)>,
}

/// An output as kept: an inline one by its bytes (its digest is theirs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Kept {
    Inline(Vec<u8>),
    Blob { digest: Digest, size: u64 },
}

/// Why a task cannot join its object's record; it is then kept as an entry of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Misfit(pub String);

/// Stands for the view's name in an output's name: a path cannot hold a NUL.
const VIEW_MARK: char = '\0';

/// The outputs' names of a view's result, with the view's name marked.
fn output_names(result: &TaskResult) -> Vec<String> {
    let view = place(&result.item).map(|(_, v)| v).unwrap_or_default();
    result
        .outputs
        .iter()
        .map(|o| match view.is_empty() {
            true => o.name.clone(),
            false => o.name.replace(view, &VIEW_MARK.to_string()),
        })
        .collect()
}

/// `<object>@<view>`, split at the last `@`: the items of a view stage. An item without one
/// is not a view.
pub fn split_view(item: &str) -> Option<(&str, &str)> {
    item.rsplit_once('@')
        .filter(|(object, view)| !object.is_empty() && !view.is_empty())
}

/// Where an item's task is kept: in its object's record under its view's name, or, for an
/// item that is not a view (an object's own task: its download, its caption), in a record of
/// its own as the view named "" (an object's record may then also hold its views of the same
/// stage). Those were three index entries each, and recorded at 30,000 to 50,000 tasks a
/// second against 200,000 and more for views (issue 30). `None` for the empty item, whose
/// record key would be the stage's columns'.
pub fn place(item: &str) -> Option<(&str, &str)> {
    match item.is_empty() {
        true => None,
        false => Some(split_view(item).unwrap_or((item, ""))),
    }
}

/// The item kept in `object`'s record as `view` ([`place`] the other way).
fn item_at(object: &str, view: &str) -> String {
    match view.is_empty() {
        true => object.to_string(),
        false => view_item(object, view),
    }
}

/// The item of `view` of `object`: `<object>@<view>` ([`split_view`] the other way).
pub fn view_item(object: &str, view: &str) -> String {
    format!("{object}@{view}")
}

impl ObjectStage {
    /// The record of `stage` and `object` that the task of `record` and `result` starts.
    pub fn first(
        columns: &mut Columns,
        record: &KeyRecord,
        result: &TaskResult,
    ) -> Result<ObjectStage, Misfit> {
        let mut made = ObjectStage::empty_for(record, result)?;
        made.add(columns, record, result, None)?;
        Ok(made)
    }

    /// A record with no views yet, of the stage, object, kind and host of this task.
    pub fn empty_for(record: &KeyRecord, result: &TaskResult) -> Result<ObjectStage, Misfit> {
        let (object, _) = place(&result.item)
            .ok_or_else(|| Misfit(format!("`{}` is not an item", result.item)))?;
        let made = ObjectStage {
            stage: result.stage.clone(),
            object: object.to_string(),
            schema: record.schema,
            kind: record.kind.clone(),
            kind_version: record.kind_version,
            shared: record.shared,
            host: result.host.clone(),
            inputs: record
                .inputs
                .iter()
                .map(|(name, digest)| (name.clone(), Some(*digest)))
                .collect(),
            output_names: output_names(result),
            first_ms: result.started_ms,
            views: Vec::new(),
        };
        Ok(made)
    }

    /// Adds a view's task, or replaces the view's earlier one (whose key becomes the view's
    /// previous key when it differs; its key record and result are returned then, for
    /// whoever keeps them). `previous` is the key the item had before when the record did not hold it (an
    /// entry of its own, from before these records).
    pub fn add(
        &mut self,
        columns: &mut Columns,
        record: &KeyRecord,
        result: &TaskResult,
        previous: Option<Digest>,
    ) -> Result<Option<(KeyRecord, TaskResult)>, Misfit> {
        let view = self.fits(record, result)?;
        // An empty record takes its first view's inputs as everyone's.
        if self.views.is_empty() {
            self.inputs = record
                .inputs
                .iter()
                .map(|(name, digest)| (name.clone(), Some(*digest)))
                .collect();
            self.first_ms = result.started_ms;
        }
        let own_inputs = self.own_inputs_of(record);
        let outputs = result
            .outputs
            .iter()
            .map(|o| match &o.inline {
                Some(bytes) => Kept::Inline(bytes.clone()),
                None => Kept::Blob {
                    digest: o.digest,
                    size: o.size,
                },
            })
            .collect();
        let column = columns.number(view, &record.item_params);
        if result.started_ms < self.first_ms {
            let earlier = self.first_ms - result.started_ms;
            for v in &mut self.views {
                v.after_first_ms += earlier;
            }
            self.first_ms = result.started_ms;
        }
        let mut made = View {
            column,
            own_inputs,
            outputs,
            after_first_ms: result.started_ms - self.first_ms,
            duration_ms: result.duration_ms,
            previous,
            host: (result.host != self.host).then(|| result.host.clone()),
            logs: (result.stdout.is_some() || result.stderr.is_some())
                .then_some((result.stdout, result.stderr)),
            own_kind: self.own_kind_of(record),
        };
        // The view's earlier task, by name: its parameters may have changed (another
        // column of the same name).
        let earlier = self
            .views
            .iter()
            .position(|v| columns.get(v.column).is_some_and(|(name, _)| name == view));
        let replaced = match earlier {
            Some(at) => {
                let before = self.views.remove(at);
                let (before_record, before_result) = self.task(columns, &before).map_err(Misfit)?;
                let before_key = before_record.key();
                match before_key == record.key() {
                    true => {
                        made.previous = before.previous;
                        None
                    }
                    false => {
                        made.previous = Some(before_key);
                        Some((before_record, before_result))
                    }
                }
            }
            None => None,
        };
        let at = self
            .views
            .binary_search_by_key(&column, |v| v.column)
            .unwrap_or_else(|at| at);
        self.views.insert(at, made);
        self.lift_what_every_view_shares();
        Ok(replaced)
    }

    /// The digests of the inputs that are the view's own. An input that now differs between
    /// views becomes each view's own: the views kept so far get the digest they shared, after
    /// the own inputs of the inputs before it.
    fn own_inputs_of(&mut self, record: &KeyRecord) -> Vec<Digest> {
        for i in 0..self.inputs.len() {
            let (name, common) = &self.inputs[i];
            let Some(shared_digest) = *common else {
                continue;
            };
            if record.inputs[name] == shared_digest {
                continue;
            }
            let at = self.inputs[..i].iter().filter(|(_, c)| c.is_none()).count();
            self.inputs[i].1 = None;
            for v in &mut self.views {
                v.own_inputs.insert(at, shared_digest);
            }
        }
        self.inputs
            .iter()
            .filter(|(_, common)| common.is_none())
            .map(|(name, _)| record.inputs[name])
            .collect()
    }

    /// The kind and stage parameters of `record`, when they are not the record's.
    fn own_kind_of(&self, record: &KeyRecord) -> Option<(u32, String, u32, Digest)> {
        let own = (
            record.schema,
            record.kind.as_str(),
            record.kind_version,
            record.shared,
        );
        let shared = (
            self.schema,
            self.kind.as_str(),
            self.kind_version,
            self.shared,
        );
        (own != shared).then(|| {
            (
                record.schema,
                record.kind.clone(),
                record.kind_version,
                record.shared,
            )
        })
    }

    /// Once every view has the same kind and stage parameters of its own (or the same host),
    /// they become the record's: after a change of the stage's parameters has reached all
    /// views, each view keeps only what is its own again.
    fn lift_what_every_view_shares(&mut self) {
        if let Some(first) = self.views.first().and_then(|v| v.own_kind.clone())
            && self
                .views
                .iter()
                .all(|v| v.own_kind.as_ref() == Some(&first))
        {
            (self.schema, self.kind, self.kind_version, self.shared) = first;
            self.views.iter_mut().for_each(|v| v.own_kind = None);
        }
        if let Some(first) = self.views.first().and_then(|v| v.host.clone())
            && self.views.iter().all(|v| v.host.as_ref() == Some(&first))
        {
            self.host = first;
            self.views.iter_mut().for_each(|v| v.host = None);
        }
    }

    /// Removes the view named `view`; whether the record held it.
    pub fn remove(&mut self, columns: &Columns, view: &str) -> bool {
        let before = self.views.len();
        self.views
            .retain(|v| columns.get(v.column).is_none_or(|(name, _)| name != view));
        self.views.len() != before
    }

    /// Keeps only the views `keep` says yes to (given each view's key record and result);
    /// how many it removed.
    pub fn retain(
        &mut self,
        columns: &Columns,
        mut keep: impl FnMut(&KeyRecord, &TaskResult) -> bool,
    ) -> Result<usize, String> {
        let before = self.views.len();
        let mut kept = Vec::with_capacity(before);
        for v in std::mem::take(&mut self.views) {
            let (record, result) = self.task(columns, &v)?;
            if keep(&record, &result) {
                kept.push(v);
            }
        }
        let removed = before - kept.len();
        self.views = kept;
        Ok(removed)
    }

    /// The view's name when the task fits this record, or why it does not.
    fn fits<'a>(&self, record: &KeyRecord, result: &'a TaskResult) -> Result<&'a str, Misfit> {
        let misfit = |what: &str| {
            Err(Misfit(format!(
                "{}/{}: {what} from the other views of {}",
                result.stage, result.item, self.object
            )))
        };
        let Some((object, view)) = place(&result.item) else {
            return Err(Misfit(format!("`{}` is not an item", result.item)));
        };
        // A view's own parameters (its camera) are its column's, the same for every object;
        // an item's own parameters are its alone, and would make a column per item.
        if view.is_empty() && !record.item_params.is_empty() {
            return Err(Misfit(format!(
                "{}/{}: an item with parameters of its own",
                result.stage, result.item
            )));
        }
        if record.item != result.item {
            return Err(Misfit(format!(
                "{}/{}: its key record is of another item ({})",
                result.stage, result.item, record.item
            )));
        }
        if result.stage != self.stage || object != self.object {
            return misfit("the stage or object differs");
        }
        if !record
            .inputs
            .keys()
            .eq(self.inputs.iter().map(|(name, _)| name))
        {
            return misfit("the names of the inputs differ");
        }
        if result.outputs.iter().any(|o| o.name.contains(VIEW_MARK)) {
            return Err(Misfit(format!(
                "{}/{}: an output's name holds a NUL",
                result.stage, result.item
            )));
        }
        if output_names(result) != self.output_names {
            return misfit("the names of the outputs differ");
        }
        if result.manifest != manifest_digest(&result.outputs) {
            return Err(Misfit(format!(
                "{}/{}: its manifest is not its outputs' digest",
                result.stage, result.item
            )));
        }
        if let Some(o) = result
            .outputs
            .iter()
            .find(|o| o.inline.as_ref().is_some_and(|b| Digest::of(b) != o.digest))
        {
            return Err(Misfit(format!(
                "{}/{}: its inline output {} is not its digest's bytes",
                result.stage, result.item, o.name
            )));
        }
        Ok(view)
    }

    pub fn stage(&self) -> &str {
        &self.stage
    }

    pub fn object(&self) -> &str {
        &self.object
    }

    pub fn len(&self) -> usize {
        self.views.len()
    }

    pub fn is_empty(&self) -> bool {
        self.views.is_empty()
    }

    /// The key record and result of every view, in column order.
    pub fn tasks<'a>(
        &'a self,
        columns: &'a Columns,
    ) -> impl Iterator<Item = Result<(KeyRecord, TaskResult), String>> + 'a {
        self.views.iter().map(|v| self.task(columns, v))
    }

    /// The key record and result of the view named `view`.
    pub fn view(
        &self,
        columns: &Columns,
        view: &str,
    ) -> Result<Option<(KeyRecord, TaskResult)>, String> {
        match self
            .views
            .iter()
            .find(|v| columns.get(v.column).is_some_and(|(name, _)| name == view))
        {
            Some(v) => self.task(columns, v).map(Some),
            None => Ok(None),
        }
    }

    /// The items of the views, `<object>@<view>` (or `<object>` for the view named "": an
    /// item that is not a view; a view whose column is unknown is left out: its record is
    /// damaged, which reading it says).
    pub fn items<'a>(&'a self, columns: &'a Columns) -> impl Iterator<Item = String> + 'a {
        self.views.iter().filter_map(move |v| {
            columns
                .get(v.column)
                .map(|(view, _)| item_at(&self.object, view))
        })
    }

    /// The key the view named `view` had before its latest, when it changed.
    pub fn previous(&self, columns: &Columns, view: &str) -> Option<Digest> {
        self.views
            .iter()
            .find(|v| columns.get(v.column).is_some_and(|(name, _)| name == view))
            .and_then(|v| v.previous)
    }

    fn task(&self, columns: &Columns, v: &View) -> Result<(KeyRecord, TaskResult), String> {
        let (view, item_params) = columns.get(v.column).ok_or_else(|| {
            format!(
                "the record of {}/{} names view column {}, which the stage's columns lack",
                self.stage, self.object, v.column
            )
        })?;
        let item = item_at(&self.object, view);
        let mut own = v.own_inputs.iter();
        let mut inputs = std::collections::BTreeMap::new();
        for (name, common) in &self.inputs {
            let digest = match common {
                Some(d) => *d,
                None => *own
                    .next()
                    .ok_or_else(|| format!("the record of {}/{} is damaged", self.stage, item))?,
            };
            inputs.insert(name.clone(), digest);
        }
        let outputs: Vec<Output> = self
            .output_names
            .iter()
            .map(|name| name.replace(VIEW_MARK, view))
            .zip(&v.outputs)
            .map(|(name, kept)| match kept {
                Kept::Inline(bytes) => Output {
                    name: name.clone(),
                    digest: Digest::of(bytes),
                    size: bytes.len() as u64,
                    inline: Some(bytes.clone()),
                },
                Kept::Blob { digest, size } => Output {
                    name: name.clone(),
                    digest: *digest,
                    size: *size,
                    inline: None,
                },
            })
            .collect();
        let (schema, kind, kind_version, shared) = match &v.own_kind {
            Some((schema, kind, version, shared)) => (*schema, kind.clone(), *version, *shared),
            None => (
                self.schema,
                self.kind.clone(),
                self.kind_version,
                self.shared,
            ),
        };
        let record = KeyRecord {
            schema,
            kind,
            kind_version,
            item: item.clone(),
            shared,
            item_params: item_params.clone(),
            inputs,
        };
        let result = TaskResult {
            stage: self.stage.clone(),
            item,
            manifest: manifest_digest(&outputs),
            outputs,
            stdout: v.logs.and_then(|(out, _)| out),
            stderr: v.logs.and_then(|(_, err)| err),
            started_ms: self.first_ms + v.after_first_ms,
            duration_ms: v.duration_ms,
            host: v.host.clone().unwrap_or_else(|| self.host.clone()),
        };
        Ok((record, result))
    }

    pub fn encode(&self) -> Vec<u8> {
        // Sized for the usual record, so that encoding does not grow the buffer byte by byte.
        let room = 160 + 64 * self.views.len();
        postcard::to_extend(self, Vec::with_capacity(room)).expect("object records always encode")
    }

    pub fn decode(bytes: &[u8]) -> Result<ObjectStage, String> {
        postcard::from_bytes(bytes)
            .map_err(|e| format!("the record of an object's views is damaged: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::KEY_SCHEMA;

    const OBJECT: &str = "6416abeeabf14220b60e9e4ec1f21c64";

    fn view_name(v: u32) -> String {
        format!(
            "az{:03}-pol{:03}-d1.5-fov49.1343",
            (v % 6) * 60,
            10 + (v / 6) * 15
        )
    }

    /// A render view's task as `benches/xl.rs` records it: the camera is the view's own
    /// parameters, the object its one input, 8 inline bytes its output.
    fn render(v: u32, object_digest: Digest) -> (KeyRecord, TaskResult) {
        let item = format!("{OBJECT}@{}", view_name(v));
        let camera: ParamSlice = [
            ("azimuth", ((v % 6) * 60).to_string()),
            ("distance", "1.5".to_string()),
            ("fov", "49.13434264120263".to_string()),
            ("polar", (10 + (v / 6) * 15).to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        task("views", "render", &item, camera, "objects", object_digest)
    }

    /// An embedding of a view: its render is its own input.
    fn embed(v: u32) -> (KeyRecord, TaskResult) {
        let item = format!("{OBJECT}@{}", view_name(v));
        let params: ParamSlice = [("background".to_string(), "#ffffff".to_string())].into();
        let rendered = Digest::of(format!("render {v}").as_bytes());
        task("embed", "embed", &item, params, "views", rendered)
    }

    fn task(
        stage: &str,
        kind: &str,
        item: &str,
        item_params: ParamSlice,
        input: &str,
        input_digest: Digest,
    ) -> (KeyRecord, TaskResult) {
        let record = KeyRecord {
            schema: KEY_SCHEMA,
            kind: kind.to_string(),
            kind_version: 3,
            item: item.to_string(),
            shared: Digest::of(stage.as_bytes()),
            item_params,
            inputs: [(input.to_string(), input_digest)].into(),
        };
        let bytes = Digest::of(item.as_bytes()).0[..8].to_vec();
        let outputs = vec![Output {
            name: "o".to_string(),
            digest: Digest::of(&bytes),
            size: 8,
            inline: Some(bytes),
        }];
        let result = TaskResult {
            stage: stage.to_string(),
            item: item.to_string(),
            manifest: manifest_digest(&outputs),
            outputs,
            stdout: None,
            stderr: None,
            started_ms: 1_765_000_000_000 + item.len() as u64 * 7 % 1000,
            duration_ms: 12,
            host: "local".to_string(),
        };
        (record, result)
    }

    fn record_of(tasks: &[(KeyRecord, TaskResult)], columns: &mut Columns) -> ObjectStage {
        let mut made = ObjectStage::first(columns, &tasks[0].0, &tasks[0].1).unwrap();
        for (record, result) in &tasks[1..] {
            made.add(columns, record, result, None).unwrap();
        }
        made
    }

    #[test]
    fn every_view_comes_back_with_its_key_record_result_and_key() {
        let object_digest = Digest::of(b"object");
        for tasks in [
            (0..36)
                .map(|v| render(v, object_digest))
                .collect::<Vec<_>>(),
            (0..36).map(embed).collect(),
        ] {
            let mut columns = Columns::default();
            // Out of column order: a record keeps its views in column order whatever came first.
            let mut shuffled = tasks.clone();
            shuffled.reverse();
            let made = record_of(&shuffled, &mut columns);
            let decoded = ObjectStage::decode(&made.encode()).unwrap();
            let columns = Columns::decode(&columns.encode()).unwrap();
            assert_eq!(decoded.len(), 36);
            let mut back: Vec<_> = decoded.tasks(&columns).map(Result::unwrap).collect();
            back.sort_by(|a, b| a.0.item.cmp(&b.0.item));
            let mut expected = tasks.clone();
            expected.sort_by(|a, b| a.0.item.cmp(&b.0.item));
            assert_eq!(back, expected);
            for ((record, _), (original, _)) in back.iter().zip(&expected) {
                assert_eq!(record.key(), original.key());
            }
            let (record, result) = decoded.view(&columns, &view_name(17)).unwrap().unwrap();
            assert_eq!((record, result), tasks[17]);
            assert!(decoded.view(&columns, "az999").unwrap().is_none());
        }
    }

    /// The figure step 1 is for: at most 100 bytes a task, against about 500 bytes of keys
    /// and values in today's three entries.
    #[test]
    fn a_view_costs_well_under_a_hundred_bytes() {
        let object_digest = Digest::of(b"object");
        let mut columns = Columns::default();
        let renders: Vec<_> = (0..36).map(|v| render(v, object_digest)).collect();
        let rendered = record_of(&renders, &mut columns).encode().len();
        let mut columns = Columns::default();
        let embeds: Vec<_> = (0..36).map(embed).collect();
        let embedded = record_of(&embeds, &mut columns).encode().len();
        assert!(rendered / 36 <= 25, "{rendered} bytes for 36 renders");
        assert!(embedded / 36 <= 60, "{embedded} bytes for 36 embeddings");
        let today: usize = renders
            .iter()
            .chain(&embeds)
            .map(|(r, t)| r.encode().len() + postcard::to_stdvec(t).unwrap().len())
            .sum();
        assert!(
            today / 72 > 250,
            "today's entries are {} bytes a task",
            today / 72
        );
    }

    #[test]
    fn a_task_that_does_not_fit_says_why() {
        let object_digest = Digest::of(b"object");
        let mut columns = Columns::default();
        let (r0, t0) = render(0, object_digest);
        let mut made = ObjectStage::first(&mut columns, &r0, &t0).unwrap();
        let misfit = |change: &dyn Fn(&mut KeyRecord, &mut TaskResult)| {
            let (mut record, mut result) = render(1, object_digest);
            change(&mut record, &mut result);
            made.clone()
                .add(&mut columns.clone(), &record, &result, None)
                .unwrap_err()
                .0
        };
        type Change<'a> = &'a dyn Fn(&mut KeyRecord, &mut TaskResult);
        let cases: [(Change, &str); 3] = [
            (
                &|_, t| t.outputs[0].name = "p".into(),
                "the names of the outputs differ",
            ),
            (
                &|r, t| {
                    r.item = format!("other@{}", view_name(1));
                    t.item = r.item.clone();
                },
                "the stage or object differs",
            ),
            (
                &|r, t| {
                    r.item = "plain".into();
                    t.item = "plain".into();
                },
                "an item with parameters of its own",
            ),
        ];
        for (change, says) in cases {
            let message = misfit(change);
            assert!(message.contains(says), "{message}");
        }
        let (mut record, mut result) = render(1, object_digest);
        result.outputs[0].inline = Some(b"not these".to_vec());
        record.item = result.item.clone();
        let message = made
            .clone()
            .add(&mut columns, &record, &result, None)
            .unwrap_err()
            .0;
        assert!(
            message.contains("manifest") || message.contains("inline"),
            "{message}"
        );
        // A view that fits is taken.
        let (record, result) = render(1, object_digest);
        made.add(&mut columns, &record, &result, None).unwrap();
        assert_eq!(made.len(), 2);
    }

    /// What a render's view keeps (its image named after the view, a blob, a log, another
    /// worker) and the key a view replaced all come back.
    #[test]
    fn names_after_the_view_logs_hosts_and_replaced_keys_come_back() {
        let object_digest = Digest::of(b"object");
        let mut columns = Columns::default();
        let mut tasks: Vec<_> = (0..6).map(|v| render(v, object_digest)).collect();
        for (v, (_, result)) in tasks.iter_mut().enumerate() {
            let view = view_name(v as u32);
            let blob = Output {
                name: format!("{view}.png"),
                digest: Digest::of(view.as_bytes()),
                size: 5_000,
                inline: None,
            };
            result.outputs.insert(0, blob);
            result.manifest = manifest_digest(&result.outputs);
        }
        tasks[2].1.stdout = Some(Digest::of(b"out"));
        tasks[3].1.host = "gpu-7".into();
        // A stage's parameters changed, and its kind upgraded, for some views only so far.
        tasks[1].0.shared = Digest::of(b"resolution = 32");
        tasks[5].0.kind_version = 4;
        let made = record_of(&tasks, &mut columns);
        let back: Vec<_> = made.tasks(&columns).map(Result::unwrap).collect();
        assert_eq!(back, tasks);
        // The same view again, with another key: the old key is its previous one, and its
        // record is handed back.
        let (mut record, result) = tasks[4].clone();
        record
            .inputs
            .insert("objects".into(), Digest::of(b"another object"));
        let mut changed = made.clone();
        let replaced = changed.add(&mut columns, &record, &result, None).unwrap();
        assert_eq!(replaced, Some(tasks[4].clone()));
        assert_eq!(
            changed.previous(&columns, &view_name(4)),
            Some(tasks[4].0.key())
        );
        assert_eq!(changed.len(), 6);
        // The object's digest is now each view's own: the others keep theirs.
        let back: Vec<_> = changed.tasks(&columns).map(Result::unwrap).collect();
        assert_eq!(back[4].0, record);
        assert_eq!(back[5], tasks[5]);
        // Once every view has the new stage parameters, the record holds them once.
        let mut all_new = made.clone();
        let mut renewed = Vec::new();
        for (record, result) in &tasks {
            let mut record = record.clone();
            record.shared = Digest::of(b"resolution = 16");
            record.kind_version = 4;
            all_new.add(&mut columns, &record, result, None).unwrap();
            renewed.push((record, result.clone()));
        }
        let back: Vec<_> = all_new.tasks(&columns).map(Result::unwrap).collect();
        assert_eq!(back, renewed);
        assert!(all_new.views.iter().all(|v| v.own_kind.is_none()));
        assert_eq!(all_new.shared, Digest::of(b"resolution = 16"));
        assert!(changed.remove(&columns, &view_name(4)));
        assert!(!changed.remove(&columns, &view_name(4)));
        assert_eq!(changed.len(), 5);
    }

    #[test]
    fn damaged_bytes_are_refused_with_a_message() {
        let mut columns = Columns::default();
        let (record, result) = embed(0);
        let bytes = ObjectStage::first(&mut columns, &record, &result)
            .unwrap()
            .encode();
        let message = ObjectStage::decode(&bytes[..bytes.len() / 2]).unwrap_err();
        assert!(message.contains("damaged"), "{message}");
        let decoded = ObjectStage::decode(&bytes).unwrap();
        let message = decoded
            .tasks(&Columns::default())
            .next()
            .unwrap()
            .unwrap_err();
        assert!(message.contains("lack"), "{message}");
        assert!(Columns::decode(&[0xff]).unwrap_err().contains("damaged"));
    }

    #[test]
    fn views_are_the_part_after_the_last_at() {
        assert_eq!(split_view("a@b@az030"), Some(("a@b", "az030")));
        assert_eq!(split_view("plain"), None);
        assert_eq!(split_view("@az030"), None);
        assert_eq!(split_view("obj@"), None);
        // Any other item is the view named "" of a record of its own.
        assert_eq!(place("a@b@az030"), Some(("a@b", "az030")));
        assert_eq!(place("plain"), Some(("plain", "")));
        assert_eq!(place("obj@"), Some(("obj@", "")));
        assert_eq!(place(""), None);
        for item in ["a@b@az030", "plain", "obj@", "@az030"] {
            let (object, view) = place(item).unwrap();
            assert_eq!(item_at(object, view), item);
        }
    }

    /// An object's own task (its download) is a record of its own, or shares its object's
    /// record with its views of the same stage; either way it comes back exactly, in far
    /// fewer bytes than its three entries.
    #[test]
    fn an_item_that_is_not_a_view_is_a_record_of_its_own() {
        let (record, result) = task(
            "objects",
            "command",
            OBJECT,
            ParamSlice::new(),
            "items",
            Digest::of(b"objects.txt"),
        );
        let mut columns = Columns::default();
        let made = ObjectStage::first(&mut columns, &record, &result).unwrap();
        let bytes = made.encode();
        // One insert instead of three, and fewer bytes than two of them.
        let three_entries = record.encode().len() + postcard::to_stdvec(&result).unwrap().len();
        assert!(
            bytes.len() < three_entries,
            "{} bytes against {three_entries}",
            bytes.len()
        );
        let decoded = ObjectStage::decode(&bytes).unwrap();
        let back: Vec<_> = decoded.tasks(&columns).map(Result::unwrap).collect();
        assert_eq!(back, vec![(record.clone(), result.clone())]);
        assert_eq!(back[0].0.key(), record.key());
        assert_eq!(
            decoded.items(&columns).collect::<Vec<_>>(),
            vec![OBJECT.to_string()]
        );
        // Its object's view of the same stage joins it.
        let (mut vrecord, mut vresult) = (record.clone(), result.clone());
        vrecord.item = format!("{OBJECT}@{}", view_name(3));
        vresult.item = vrecord.item.clone();
        vrecord.item_params = [("azimuth".to_string(), "90".to_string())].into();
        let mut both = decoded.clone();
        both.add(&mut columns, &vrecord, &vresult, None).unwrap();
        assert_eq!(both.view(&columns, "").unwrap(), Some((record, result)));
        assert_eq!(
            both.view(&columns, &view_name(3)).unwrap(),
            Some((vrecord, vresult))
        );
        // An item's own parameters would make a column per item: it stays three entries.
        let (record, result) = task(
            "objects",
            "command",
            "other",
            [("path".to_string(), "/data/other.glb".to_string())].into(),
            "items",
            Digest::of(b"objects.txt"),
        );
        let message = ObjectStage::first(&mut Columns::default(), &record, &result)
            .unwrap_err()
            .0;
        assert!(message.contains("parameters of its own"), "{message}");
    }
}
