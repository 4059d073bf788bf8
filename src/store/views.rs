//! The views of objects in the index: one record per object and stage
//! ([`super::object_stage`]) in the `objects` tree, instead of three entries per task. An
//! item that is not a view (an object's own task) and has no parameters of its own is kept
//! the same way, as the view named "" of its own record ([`super::object_stage::place`]).
//! A task a record no longer holds (another key of its item, or a failure, took its place)
//! becomes entries of its own, so that going back to earlier parameters finds it by key.
//!
//! A view's result is recorded by adding it to its object's record, held here until it is
//! written: when [`WRITE_AT`] views wait, once [`WRITE_EVERY`] has passed since the first of
//! them (checked as results come and on the run's 250 ms tick,
//! [`Store::write_views_if_due`]), and always before the index is flushed ([`Store::flush`]),
//! so that what a flush makes durable includes them (a coordinator answers "recorded" only
//! after a flush). A kill loses the views not yet written, about a third of a second of
//! them, as it loses what sled had not yet written out: their tasks run again.
//!
//! Lookups that know the task's stage and item ([`Store::result_of`], [`Store::record_of`],
//! [`Store::latest`]) read the object's record. A lookup by key alone (`mvc why KEY`, the
//! page's task links) reads the entries of their own first, then searches the records: a scan
//! of the `objects` tree, which at Objaverse-XL's size takes minutes (ARCHITECTURE.md, "The
//! cache").

use super::Store;
use super::index::Tree;
use super::object_stage::{Columns, ObjectStage, place};
use super::records::{Latest, TaskResult, latest_key};
use crate::task::{Digest, KeyRecord, TaskKey};
use anyhow::Result;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Views waiting at most this long to be written (sled writes its buffers out as often).
pub const WRITE_EVERY: Duration = Duration::from_millis(100);
/// Views waiting at most this many.
pub const WRITE_AT: usize = 8192;

/// The index's layout once it holds object records: an mvc that does not know them must not
/// open it (its gc would delete their blobs). 3: items that are not views are in records too
/// (an mvc of schema 2 would look for them in entries of their own, and run them again).
pub const SCHEMA_WITH_OBJECTS: u32 = 3;

/// Object records being added to, and each stage's view columns.
#[derive(Default)]
pub struct Pending {
    /// `stage \0 object` → its record, as it will be written; `None` once its last view was
    /// removed (the record is deleted).
    records: HashMap<Vec<u8>, Option<ObjectStage>>,
    /// Stage → its columns, and whether they changed since they were written. Shared, so
    /// that a lookup reads the index without holding the lock.
    columns: HashMap<String, (Arc<Columns>, bool)>,
    views: usize,
    since: Option<Instant>,
    schema_written: bool,
    /// Task key → (stage, item) of every view, made on the first lookup by key alone
    /// ([`Store::result`]) and added to as views are recorded; an entry that no longer
    /// holds is found out when its view is read.
    owners: Option<HashMap<TaskKey, (String, String)>>,
    /// The stages that had records in the index, found on the first lookup that needs them
    /// ([`Store::view_in_another_stage`]); a stage with records since has its columns loaded.
    stages: Option<Vec<String>>,
}

/// Object records decoded for one reader, by record key (`None`: no record).
type DecodedRecords = HashMap<Vec<u8>, Option<Arc<ObjectStage>>>;

/// Records a [`ResultReader`] keeps decoded at most (it forgets them all past that: its
/// reads come an object at a time, and a whole stage's records would not fit in memory).
const DECODED_AT_MOST: usize = 64;

/// Reads results by key, stage and item ([`Store::result_reader`]). Its decoded records are
/// its own: it sees what was written before it read each record, so it is meant for one
/// pass (a unit's inputs), not to be kept.
pub struct ResultReader<'s> {
    store: &'s Store,
    decoded: DecodedRecords,
}

impl ResultReader<'_> {
    /// As [`Store::result_of`].
    pub fn result_of(
        &mut self,
        key: &TaskKey,
        stage: &str,
        item: &str,
    ) -> Result<Option<TaskResult>> {
        self.store
            .result_with(key, stage, item, Some(&mut self.decoded))
    }
}

/// The key of an object's record: `stage \0 object`.
fn record_key(stage: &str, object: &str) -> Vec<u8> {
    latest_key(stage, object)
}

/// The key of a stage's columns: `stage \0` (no object is empty).
fn columns_key(stage: &str) -> Vec<u8> {
    latest_key(stage, "")
}

/// A view as recorded: its key record, result and previous key.
pub struct ViewTask {
    pub record: KeyRecord,
    pub result: TaskResult,
    pub previous: Option<Digest>,
}

impl ViewTask {
    pub fn latest(&self) -> Latest {
        Latest {
            key: self.record.key(),
            previous: self.previous,
            when_ms: self.result.started_ms + self.result.duration_ms,
        }
    }
}

/// What became of a result offered to its object's record.
pub(super) enum Joined {
    Yes,
    /// Not a view, or one that does not fit its object's record: it is recorded as an entry
    /// of its own. `earlier` is the key the record held for the view, which it no longer
    /// does (the item's previous key).
    No {
        earlier: Option<TaskKey>,
    },
}

impl Store {
    /// Adds a view's result to its object's record.
    pub(super) fn commit_view(
        &self,
        key: &TaskKey,
        record: &KeyRecord,
        result: &TaskResult,
    ) -> Result<Joined> {
        let Some((object, view)) = place(&result.item) else {
            return Ok(Joined::No { earlier: None });
        };
        let mut pending = self.pending.lock().unwrap();
        self.load_columns(&mut pending, &result.stage)?;
        let rkey = record_key(&result.stage, object);
        let loaded_now = !pending.records.contains_key(&rkey);
        if loaded_now {
            let stored = self.stored_record(&result.stage, object)?;
            pending.records.insert(rkey.clone(), stored);
        }
        let Pending {
            records, columns, ..
        } = &mut *pending;
        let (columns, columns_changed) = columns.get_mut(&result.stage).expect("loaded above");
        let columns = Arc::make_mut(columns);
        let slot = records.get_mut(&rkey).expect("inserted above");
        let holds_view = slot
            .as_ref()
            .is_some_and(|r| r.view(columns, view).ok().flatten().is_some());
        // The key the item had before, when the record did not hold it: its entry of its own.
        let previous = match holds_view {
            true => None,
            false => self
                .own_latest(&result.stage, &result.item)?
                .map(|l| {
                    if l.key == *key {
                        l.previous
                    } else {
                        Some(l.key)
                    }
                })
                .unwrap_or_default(),
        };
        let columns_before = columns.len();
        let added = match slot {
            Some(r) => r.add(columns, record, result, previous),
            None => ObjectStage::empty_for(record, result).and_then(|mut r| {
                let replaced = r.add(columns, record, result, previous)?;
                *slot = Some(r);
                Ok(replaced)
            }),
        };
        *columns_changed |= columns.len() != columns_before;
        let replaced = match added {
            Ok(replaced) => replaced,
            Err(misfit) => {
                tracing::debug!("kept as an entry of its own: {}", misfit.0);
                let mut earlier = None;
                if let Some(r) = slot
                    && let Ok(Some((old, old_result))) = r.view(columns, view)
                {
                    r.remove(columns, view);
                    if r.is_empty() {
                        *slot = None;
                    }
                    earlier = Some(old.key());
                    self.keep_as_entries(&old, &old_result)?;
                }
                // No record, before or now (an item with parameters of its own): nothing to
                // write or delete.
                if loaded_now && slot.is_none() {
                    records.remove(&rkey);
                }
                return Ok(Joined::No { earlier });
            }
        };
        if let Some((old, old_result)) = replaced {
            self.keep_as_entries(&old, &old_result)?;
        }
        // As if the view had a latest entry of its own (`presence`): the filter says "no" to
        // a view no record holds without reading one. An item that is not a view, as if it
        // had a result of its own too: a key no stage recorded is then not looked for under
        // other stages' names (`view_in_another_stage`). Not views' keys: noting them cost a
        // sixth of views' recording (the filter's additions outgrow the caches).
        self.presence
            .note(Tree::Latest, &latest_key(&result.stage, &result.item));
        if view.is_empty() {
            self.presence.note(Tree::Tasks, &key.0);
        }
        if let Some(owners) = pending.owners.as_mut() {
            owners.insert(*key, (result.stage.clone(), result.item.clone()));
        }
        pending.views += 1;
        let since = *pending.since.get_or_insert_with(Instant::now);
        if pending.views >= WRITE_AT || since.elapsed() >= WRITE_EVERY {
            self.write_views(&mut pending)?;
        }
        Ok(Joined::Yes)
    }

    /// Removes a view from its object's record (its item failed since: the failure is an
    /// entry of its own, and the record must not still name the old success as latest).
    /// Returns the key it had, whose key record stays an entry of its own.
    pub(super) fn drop_view(&self, stage: &str, item: &str) -> Result<Option<TaskKey>> {
        let Some((object, view)) = place(item) else {
            return Ok(None);
        };
        let mut pending = self.pending.lock().unwrap();
        self.load_columns(&mut pending, stage)?;
        let rkey = record_key(stage, object);
        if !pending.records.contains_key(&rkey) {
            let stored = self.stored_record(stage, object)?;
            if stored.is_none() {
                return Ok(None);
            }
            pending.records.insert(rkey.clone(), stored);
        }
        let Pending {
            records, columns, ..
        } = &mut *pending;
        let columns = columns[stage].0.clone();
        let mut earlier = None;
        if let Some(slot) = records.get_mut(&rkey)
            && let Some(r) = slot
            && let Ok(Some((old, old_result))) = r.view(&columns, view)
        {
            r.remove(&columns, view);
            if r.is_empty() {
                *slot = None;
            }
            earlier = Some(old.key());
            self.keep_as_entries(&old, &old_result)?;
        }
        self.write_views(&mut pending)?;
        Ok(earlier)
    }

    /// A task its record no longer holds (another key of its item took its place, or a
    /// failure did) stays as entries of its own, as every task was before records: going
    /// back to the earlier parameters finds its result by key, `mvc why` compares with its
    /// key record, and gc removes both with the runs that reached them.
    fn keep_as_entries(&self, record: &KeyRecord, result: &TaskResult) -> Result<()> {
        let key = record.key();
        self.put_kept(Tree::Records, &key.0, &record.encode())?;
        self.put_kept(Tree::Tasks, &key.0, &super::records::encode(result))
    }

    /// Writes the records waiting when the first of their views has waited
    /// [`WRITE_EVERY`]: the run calls it on its tick, so that views recorded before a lull
    /// do not wait for the next result to be written.
    pub fn write_views_if_due(&self) -> Result<()> {
        let mut pending = self.pending.lock().unwrap();
        match pending.since {
            Some(since) if since.elapsed() >= WRITE_EVERY => self.write_views(&mut pending),
            _ => Ok(()),
        }
    }

    /// Forgets what was read from the index about records (each stage's columns, the stages,
    /// the views' keys) after the index was put back from the journals under it: read from
    /// the damaged index, a stage's columns would name its views wrongly.
    pub(super) fn forget_what_views_read(&self) -> Result<()> {
        let mut pending = self.pending.lock().unwrap();
        self.write_views(&mut pending)?;
        pending.columns.clear();
        pending.stages = None;
        pending.owners = None;
        Ok(())
    }

    /// Writes every record waiting (columns first: a record names its columns by number).
    pub(super) fn write_pending_views(&self) -> Result<()> {
        let mut pending = self.pending.lock().unwrap();
        self.write_views(&mut pending)
    }

    fn write_views(&self, pending: &mut Pending) -> Result<()> {
        if pending.records.is_empty() {
            return Ok(());
        }
        if !pending.schema_written {
            self.index()
                .put(Tree::Meta, b"schema", &SCHEMA_WITH_OBJECTS.to_le_bytes())?;
            pending.schema_written = true;
        }
        for (stage, (columns, changed)) in pending.columns.iter_mut() {
            if *changed {
                self.put_kept(Tree::Objects, &columns_key(stage), &columns.encode())?;
                *changed = false;
            }
        }
        // In key order: consecutive inserts land in the same or the next of sled's leaves.
        let mut records: Vec<_> = pending.records.drain().collect();
        records.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.write_sorted_kept(Tree::Objects, &records, ObjectStage::encode)?;
        pending.views = 0;
        pending.since = None;
        Ok(())
    }

    /// The stage's columns into `pending`, from the index when they are not there yet.
    fn load_columns(&self, pending: &mut Pending, stage: &str) -> Result<Arc<Columns>> {
        if !pending.columns.contains_key(stage) {
            let columns = match self.get_present(Tree::Objects, &columns_key(stage))? {
                Some(bytes) => Columns::decode(&bytes).map_err(|e| self.damaged_views(stage, e))?,
                None => Columns::default(),
            };
            pending
                .columns
                .insert(stage.to_string(), (Arc::new(columns), false));
        }
        Ok(pending.columns[stage].0.clone())
    }

    fn stored_record(&self, stage: &str, object: &str) -> Result<Option<ObjectStage>> {
        self.get_present(Tree::Objects, &record_key(stage, object))?
            .map(|bytes| ObjectStage::decode(&bytes).map_err(|e| self.damaged_views(stage, e)))
            .transpose()
    }

    fn damaged_views(&self, stage: &str, error: String) -> anyhow::Error {
        anyhow::anyhow!(
            "{error} (stage {stage}, in the index of {}); run `mvc repair --cache {}` to \
             rebuild the index from the run journal",
            self.dir.display(),
            self.dir.display()
        )
    }

    /// The view `item` of `stage` as its object's record holds it.
    pub fn view_task(&self, stage: &str, item: &str) -> Result<Option<ViewTask>> {
        self.view_task_with(stage, item, None)
    }

    /// [`Store::view_task`]; a record written already is decoded only if `decoded` (a
    /// [`ResultReader`]'s records) lacks it, and kept there. Records still waiting are read
    /// where they wait.
    fn view_task_with(
        &self,
        stage: &str,
        item: &str,
        decoded: Option<&mut DecodedRecords>,
    ) -> Result<Option<ViewTask>> {
        let Some((object, view)) = place(item) else {
            return Ok(None);
        };
        let rkey = record_key(stage, object);
        let columns = {
            let mut pending = self.pending.lock().unwrap();
            // A record still waiting is read where it waits, not copied out.
            if pending.records.contains_key(&rkey) {
                let columns = self.load_columns(&mut pending, stage)?;
                return self.view_of(stage, pending.records[&rkey].as_ref(), &columns, view);
            }
            if !(self.may_hold(Tree::Objects, &rkey)
                && self.may_hold(Tree::Latest, &latest_key(stage, item)))
            {
                return Ok(None);
            }
            self.load_columns(&mut pending, stage)?
        };
        let Some(decoded) = decoded else {
            let record = self.stored_record(stage, object)?;
            return self.view_of(stage, record.as_ref(), &columns, view);
        };
        let record = match decoded.get(&rkey) {
            Some(record) => record.clone(),
            None => {
                let record = self.stored_record(stage, object)?.map(Arc::new);
                if decoded.len() >= DECODED_AT_MOST {
                    decoded.clear();
                }
                decoded.insert(rkey, record.clone());
                record
            }
        };
        self.view_of(stage, record.as_deref(), &columns, view)
    }

    /// A reader of many results that decodes each object's record once, not once per view:
    /// an embedding unit reads the renders of a few objects, 36 views each.
    pub fn result_reader(&self) -> ResultReader<'_> {
        ResultReader {
            store: self,
            decoded: HashMap::new(),
        }
    }

    fn view_of(
        &self,
        stage: &str,
        record: Option<&ObjectStage>,
        columns: &Columns,
        view: &str,
    ) -> Result<Option<ViewTask>> {
        let Some(record) = record else {
            return Ok(None);
        };
        let previous = record.previous(columns, view);
        Ok(record
            .view(columns, view)
            .map_err(|e| self.damaged_views(stage, e))?
            .map(|(record, result)| ViewTask {
                record,
                result,
                previous,
            }))
    }

    /// The result of `key`, the task of `item` in `stage`: from its object's record when it
    /// is a view recorded there, else from its entry of its own.
    pub fn result_of(&self, key: &TaskKey, stage: &str, item: &str) -> Result<Option<TaskResult>> {
        self.result_with(key, stage, item, None)
    }

    /// [`Store::result_of`], with a [`ResultReader`]'s decoded records when there is one.
    fn result_with(
        &self,
        key: &TaskKey,
        stage: &str,
        item: &str,
        decoded: Option<&mut DecodedRecords>,
    ) -> Result<Option<TaskResult>> {
        let in_record = self.view_task_with(stage, item, decoded)?;
        let own = |key: &TaskKey| self.own_result(key);
        self.found((key, stage, item), in_record, own, |v| v.result)
    }

    /// The key record of `key`, the task of `item` in `stage` (as [`Store::result_of`]).
    pub fn record_of(&self, key: &TaskKey, stage: &str, item: &str) -> Result<Option<KeyRecord>> {
        let in_record = self.view_task(stage, item)?;
        let own = |key: &TaskKey| self.own_record(key);
        self.found((key, stage, item), in_record, own, |v| v.record)
    }

    /// What `part` takes of the task `key` of `item` in `stage`: from its record's view
    /// (`in_record`) when that has this key, else from its entry of its own (`own`), else
    /// from another stage's record ([`Store::view_in_another_stage`]).
    fn found<T>(
        &self,
        (key, stage, item): (&TaskKey, &str, &str),
        in_record: Option<ViewTask>,
        own: impl FnOnce(&TaskKey) -> Result<Option<T>>,
        part: impl Fn(ViewTask) -> T,
    ) -> Result<Option<T>> {
        if let Some(v) = in_record
            && v.record.key() == *key
        {
            return Ok(Some(part(v)));
        }
        if let Some(own) = own(key)? {
            return Ok(Some(own));
        }
        Ok(self.view_in_another_stage(key, stage, item)?.map(part))
    }

    /// The task `key` of `item` (not a view) kept in the record of another stage than
    /// `stage`. A task's key does not name its stage, so a stage renamed (a sweep that gains
    /// a value names its variant stages after their values) still finds what it recorded
    /// under its old name, as it did when every task was an entry of its own found by key.
    /// Views are not looked for so (their keys are not in the presence filter, and every
    /// changed view would read another stage's record of its object): a render stage
    /// renamed renders again, as it did since views were kept in records.
    fn view_in_another_stage(
        &self,
        key: &TaskKey,
        stage: &str,
        item: &str,
    ) -> Result<Option<ViewTask>> {
        if place(item).is_none_or(|(_, view)| !view.is_empty()) {
            return Ok(None);
        }
        // A new task's key: no stage recorded it (answered without opening the index).
        if !self.may_hold(Tree::Tasks, &key.0) {
            return Ok(None);
        }
        for other in self.stages_with_records()? {
            if other != stage
                && let Some(v) = self.view_task(&other, item)?
                && v.record.key() == *key
            {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// The stages with records in the index (one seek a stage, the first time: each stage's
    /// keys begin with its columns'), and those whose columns are loaded (every stage that
    /// recorded a view since is among them).
    fn stages_with_records(&self) -> Result<Vec<String>> {
        let mut pending = self.pending.lock().unwrap();
        if pending.stages.is_none() {
            let mut stages = Vec::new();
            let mut from = Vec::new();
            while let Some(entry) = self.index().scan_from(Tree::Objects, b"", &from).next() {
                let (key, _) = entry?;
                let stage = match key.iter().position(|&b| b == 0) {
                    Some(split) => &key[..split],
                    None => &key[..],
                };
                stages.push(String::from_utf8_lossy(stage).into_owned());
                // Past every key of this stage: `stage NUL …` sorts before `stage 0x01`.
                from = [stage, &[1u8][..]].concat();
            }
            pending.stages = Some(stages);
        }
        let mut stages = pending.stages.clone().expect("set above");
        for waiting in pending.columns.keys() {
            if !stages.contains(waiting) {
                stages.push(waiting.clone());
            }
        }
        Ok(stages)
    }

    /// Every view in the object records, with its key (write what waits first). `visit`
    /// returns `false` to stop. A pass over the whole `objects` tree.
    pub fn each_view(&self, mut visit: impl FnMut(TaskKey, ViewTask) -> bool) -> Result<()> {
        self.write_pending_views()?;
        let mut columns: HashMap<String, Columns> = HashMap::new();
        for entry in self.index().scan(Tree::Objects, b"") {
            let (key, value) = entry?;
            let Some(split) = key.iter().position(|&b| b == 0) else {
                continue;
            };
            if split + 1 == key.len() {
                continue; // a stage's columns
            }
            let stage = String::from_utf8_lossy(&key[..split]).into_owned();
            if !columns.contains_key(&stage) {
                let bytes = self
                    .index()
                    .get(Tree::Objects, &columns_key(&stage))?
                    .unwrap_or_default();
                let loaded = Columns::decode(&bytes).map_err(|e| self.damaged_views(&stage, e))?;
                columns.insert(stage.clone(), loaded);
            }
            let record = ObjectStage::decode(&value).map_err(|e| self.damaged_views(&stage, e))?;
            let columns = &columns[&stage];
            for task in record.tasks(columns) {
                let (record_, result) = task.map_err(|e| self.damaged_views(&stage, e))?;
                let view = place(&result.item).map(|(_, v)| v.to_string());
                let previous = view.and_then(|v| record.previous(columns, &v));
                let key = record_.key();
                if !visit(
                    key,
                    ViewTask {
                        record: record_,
                        result,
                        previous,
                    },
                ) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The view whose key is `key`: the first time, one pass over every object record
    /// notes each view's key (the page's task links and `mvc why KEY` look up many).
    pub(super) fn find_view(&self, key: &TaskKey) -> Result<Option<ViewTask>> {
        if self.pending.lock().unwrap().owners.is_none() {
            let mut owners = HashMap::new();
            self.each_view(|k, v| {
                owners.insert(k, (v.result.stage, v.result.item));
                true
            })?;
            let mut pending = self.pending.lock().unwrap();
            // Views recorded during the pass were not noted: one recorded after it is.
            if pending.owners.is_none() {
                pending.owners = Some(owners);
            }
        }
        let owner = self
            .pending
            .lock()
            .unwrap()
            .owners
            .as_ref()
            .and_then(|o| o.get(key).cloned());
        let Some((stage, item)) = owner else {
            return Ok(None);
        };
        Ok(self
            .view_task(&stage, &item)?
            .filter(|v| v.record.key() == *key))
    }

    /// Whether the object records hold a view of `stage`.
    pub(super) fn has_views_of(&self, stage: &str) -> bool {
        self.index()
            .scan(Tree::Objects, &columns_key(stage))
            .next()
            .is_some()
    }

    /// The views of `stage` recorded in object records, from the first item not before
    /// `from`, in item order: the records of the objects from `from`'s on, one at a time.
    pub(super) fn views_of_stage<'a>(
        &'a self,
        stage: &str,
        from: &str,
    ) -> impl Iterator<Item = Result<(String, Latest)>> + 'a {
        if let Err(e) = self.write_pending_views() {
            return Box::new(std::iter::once(Err(e))) as Box<dyn Iterator<Item = _>>;
        }
        let prefix = columns_key(stage);
        let from_object = place(from).map(|(o, _)| o).unwrap_or(from);
        let start = record_key(stage, from_object);
        let stage = stage.to_string();
        let from = from.to_string();
        let mut columns: Option<Columns> = None;
        let records = self.index().scan_from(Tree::Objects, &prefix, &start);
        Box::new(
            records
                .filter(move |entry| !matches!(entry, Ok((k, _)) if k.len() == prefix.len()))
                .map(move |entry| -> Result<Vec<(String, Latest)>> {
                    let (_, value) = entry?;
                    if columns.is_none() {
                        let bytes = self
                            .index()
                            .get(Tree::Objects, &columns_key(&stage))?
                            .unwrap_or_default();
                        columns = Some(
                            Columns::decode(&bytes).map_err(|e| self.damaged_views(&stage, e))?,
                        );
                    }
                    let columns = columns.as_ref().expect("set above");
                    let record =
                        ObjectStage::decode(&value).map_err(|e| self.damaged_views(&stage, e))?;
                    let mut items = Vec::with_capacity(record.len());
                    for task in record.tasks(columns) {
                        let (r, result) = task.map_err(|e| self.damaged_views(&stage, e))?;
                        if result.item.as_str() < from.as_str() {
                            continue;
                        }
                        let view = place(&result.item).map(|(_, v)| v.to_string());
                        let v = ViewTask {
                            previous: view.and_then(|v| record.previous(columns, &v)),
                            record: r,
                            result,
                        };
                        items.push((v.result.item.clone(), v.latest()));
                    }
                    items.sort_by(|a, b| a.0.cmp(&b.0));
                    Ok(items)
                })
                .flat_map(|batch| match batch {
                    Ok(items) => items.into_iter().map(Ok).collect::<Vec<_>>(),
                    Err(e) => vec![Err(e)],
                }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memo::{MemoValue, StageMemo};
    use crate::store::records::{Output, encode, manifest_digest};
    use crate::task::ParamSlice;

    /// A view task of `stage` (`object@vN`), reading `input` from upstream.
    fn view(stage: &str, object: &str, n: u32, input: &[u8]) -> (TaskKey, KeyRecord, TaskResult) {
        let item = format!("{object}@v{n}");
        let record = KeyRecord {
            schema: 1,
            kind: "render".into(),
            kind_version: 1,
            item: item.clone(),
            shared: Digest::of(b"shared"),
            item_params: [("azimuth".to_string(), (n * 60).to_string())].into(),
            inputs: [("objects".to_string(), Digest::of(input))].into(),
        };
        let bytes = format!("{item} {}", input.len()).into_bytes();
        let outputs = vec![
            Output {
                name: "view.png".into(),
                digest: Digest::of(&bytes),
                size: bytes.len() as u64,
                inline: Some(bytes),
            },
            Output {
                name: "big.bin".into(),
                digest: Digest::of(b"a blob"),
                size: 6,
                inline: None,
            },
        ];
        let result = TaskResult {
            stage: stage.into(),
            item,
            manifest: manifest_digest(&outputs),
            outputs,
            stdout: None,
            stderr: None,
            started_ms: 1_000 + n as u64,
            duration_ms: 5,
            host: "local".into(),
        };
        (record.key(), record, result)
    }

    /// A new cache's store (the folder goes with the guard).
    fn opened() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("cache")).unwrap();
        (dir, store)
    }

    fn command(item: &str) -> (TaskKey, KeyRecord, TaskResult) {
        let record = KeyRecord {
            schema: 1,
            kind: "command".into(),
            kind_version: 1,
            item: item.into(),
            shared: Digest::of(b"objects"),
            item_params: ParamSlice::new(),
            inputs: Default::default(),
        };
        let result = TaskResult {
            stage: "objects".into(),
            item: item.into(),
            manifest: manifest_digest(&[]),
            outputs: Vec::new(),
            stdout: None,
            stderr: None,
            started_ms: 1,
            duration_ms: 1,
            host: "local".into(),
        };
        (record.key(), record, result)
    }

    #[test]
    fn views_are_one_record_per_object_and_read_back_as_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let mut tasks = Vec::new();
        {
            let store = Store::open(&cache).unwrap();
            let (key, record, result) = command("a");
            store.commit_success(&key, &record, &result).unwrap();
            for object in ["a", "b"] {
                for n in 0..4 {
                    let task = view("views", object, n, object.as_bytes());
                    store.commit_success(&task.0, &task.1, &task.2).unwrap();
                    tasks.push(task);
                }
            }
            // Read before they are written: from the records waiting.
            let (key, record, result) = &tasks[5];
            assert_eq!(
                store
                    .result_of(key, "views", &result.item)
                    .unwrap()
                    .as_ref(),
                Some(result)
            );
            assert_eq!(store.record(key).unwrap().as_ref(), Some(record));
            store.flush().unwrap();
            // Two records of views and one of the object's own task, with their stages'
            // columns; no entry of its own.
            assert_eq!(store.index().len(Tree::Tasks), 0);
            assert_eq!(store.index().len(Tree::Latest), 0);
            assert_eq!(store.index().len(Tree::Objects), 5);
            let counts = store.entry_counts().unwrap();
            assert_eq!((counts.results, counts.records), (9, 9));
        }
        let store = Store::open(&cache).unwrap();
        let schema = store.index().get(Tree::Meta, b"schema").unwrap().unwrap();
        assert_eq!(schema, SCHEMA_WITH_OBJECTS.to_le_bytes());
        for (key, record, result) in &tasks {
            assert_eq!(
                store
                    .result_of(key, "views", &result.item)
                    .unwrap()
                    .as_ref(),
                Some(result)
            );
            assert_eq!(
                store
                    .record_of(key, "views", &result.item)
                    .unwrap()
                    .as_ref(),
                Some(record)
            );
            // By key alone, as `mvc why KEY` and the page's task links ask.
            assert_eq!(store.result(key).unwrap().as_ref(), Some(result));
            let latest = store.latest("views", &result.item).unwrap().unwrap();
            assert_eq!((latest.key, latest.previous), (*key, None));
        }
        // One reader for all of them (a unit's inputs), each record decoded once: the same,
        // and a key its record does not hold is still not found.
        let mut reader = store.result_reader();
        for (key, _, result) in tasks.iter().chain(&tasks) {
            let read = reader.result_of(key, "views", &result.item).unwrap();
            assert_eq!(read.as_ref(), Some(result));
        }
        let wrong = reader.result_of(&tasks[2].0, "views", &tasks[1].2.item);
        assert!(wrong.unwrap().is_none(), "a@v2's key is not a@v1's");
        // Another stage's item of the same name, or another key, is not these (a view is
        // not looked for under other stages' names: `view_in_another_stage`).
        let (key, _, result) = &tasks[0];
        assert!(
            store
                .result_of(key, "embed", &result.item)
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .result_of(&Digest::of(b"x"), "views", &result.item)
                .unwrap()
                .is_none()
        );
        assert!(store.latest("views", "a@v9").unwrap().is_none());
        assert!(store.has_seen_stage("views") && !store.has_seen_stage("embed"));
    }

    /// An object's own task is a record of its own, found by key, stage and item; one with
    /// parameters of its own stays three entries.
    #[test]
    fn an_objects_own_task_is_a_record_unless_it_has_parameters_of_its_own() {
        let (_dir, store) = opened();
        let (key, record, result) = command("a");
        store.commit_success(&key, &record, &result).unwrap();
        let (_, mut with_params, mut its_result) = command("c");
        with_params.item_params = [("path".to_string(), "c.glb".to_string())].into();
        its_result.item = with_params.item.clone();
        let key_with_params = with_params.key();
        store
            .commit_success(&key_with_params, &with_params, &its_result)
            .unwrap();
        store.flush().unwrap();
        assert_eq!(
            store.index().len(Tree::Objects),
            2,
            "a's record, the columns"
        );
        assert_eq!(store.index().len(Tree::Tasks), 1, "c's result");
        assert_eq!(store.result(&key).unwrap().as_ref(), Some(&result));
        assert_eq!(
            store.record_of(&key, "objects", "a").unwrap().as_ref(),
            Some(&record)
        );
        assert_eq!(store.latest("objects", "a").unwrap().unwrap().key, key);
        let latest = store.latest("objects", "c").unwrap().unwrap();
        assert_eq!(latest.key, key_with_params);
        // Its key is found under another stage's name (a stage renamed); another key not.
        assert_eq!(
            store.result_of(&key, "renamed", "a").unwrap().as_ref(),
            Some(&result)
        );
        assert!(
            store
                .result_of(&Digest::of(b"x"), "renamed", "a")
                .unwrap()
                .is_none()
        );
        assert_eq!(
            store
                .result_of(&key_with_params, "objects", "c")
                .unwrap()
                .as_ref(),
            Some(&its_result)
        );
    }

    /// A view recorded before a lull is written by the run's tick once it has waited
    /// [`WRITE_EVERY`], not held until the next result.
    #[test]
    fn a_view_waits_at_most_write_every_for_the_tick() {
        let (_dir, store) = opened();
        let (key, record, result) = view("views", "a", 0, b"a");
        let committed = Instant::now();
        store.commit_success(&key, &record, &result).unwrap();
        store.write_views_if_due().unwrap();
        // (Unless this machine stalled for as long between the two calls.)
        if committed.elapsed() < WRITE_EVERY {
            assert_eq!(store.index().len(Tree::Objects), 0, "not due yet");
        }
        std::thread::sleep(WRITE_EVERY + Duration::from_millis(20));
        store.write_views_if_due().unwrap();
        assert_eq!(
            store.index().len(Tree::Objects),
            2,
            "the record and its columns"
        );
    }

    #[test]
    fn a_changed_view_keeps_its_previous_key_and_a_failure_takes_its_place() {
        let (_dir, store) = opened();
        let (old, record, first) = view("views", "a", 0, b"first");
        store.commit_success(&old, &record, &first).unwrap();
        let (new, record, result) = view("views", "a", 0, b"second model");
        store.commit_success(&new, &record, &result).unwrap();
        store.flush().unwrap();
        let latest = store.latest("views", "a@v0").unwrap().unwrap();
        assert_eq!((latest.key, latest.previous), (new, Some(old)));
        // The task it replaced is an entry of its own: going back finds it.
        assert_eq!(
            store.result_of(&old, "views", "a@v0").unwrap().as_ref(),
            Some(&first)
        );
        // The same key again keeps the key before it.
        store.commit_success(&new, &record, &result).unwrap();
        let latest = store.latest("views", "a@v0").unwrap().unwrap();
        assert_eq!(latest.previous, Some(old));
        // A failure is the item's latest from now on, not the success before it.
        let (failed, record, _) = view("views", "a", 0, b"broken model");
        let failure = crate::store::records::Failure {
            stage: "views".into(),
            item: "a@v0".into(),
            error: "it broke".into(),
            stderr: None,
            when_ms: 9_999,
        };
        store.commit_failure(&failed, &record, &failure).unwrap();
        assert_eq!(store.latest("views", "a@v0").unwrap().unwrap().key, failed);
        assert!(store.view_task("views", "a@v0").unwrap().is_none());
        assert_eq!(
            store.index().len(Tree::Objects),
            1,
            "the columns stay; the record went"
        );
    }

    #[test]
    fn the_items_of_a_stage_merge_views_with_entries_of_their_own() {
        let (_dir, store) = opened();
        // An entry of its own for a view, as an mvc before object records wrote it.
        let (own, record, result) = view("views", "a", 1, b"a");
        store
            .index()
            .put(Tree::Records, &own.0, &record.encode())
            .unwrap();
        store
            .index()
            .put(Tree::Tasks, &own.0, &encode(&result))
            .unwrap();
        let latest = Latest {
            key: own,
            previous: None,
            when_ms: 5,
        };
        let at = latest_key("views", "a@v1");
        store
            .index()
            .put(Tree::Latest, &at, &encode(&latest))
            .unwrap();
        // Written behind the presence filter's back, as an older mvc would have: it is made
        // again from the index, as a run does.
        store.tighten_presence().unwrap();
        for (object, n) in [("a", 0), ("b", 0), ("a", 2)] {
            let (key, record, result) = view("views", object, n, object.as_bytes());
            store.commit_success(&key, &record, &result).unwrap();
        }
        let items = |from: &str| -> Vec<String> {
            store
                .latest_of_stage("views", from)
                .map(|e| e.unwrap().0)
                .collect()
        };
        assert_eq!(items(""), ["a@v0", "a@v1", "a@v2", "b@v0"]);
        assert_eq!(items("a@v1"), ["a@v1", "a@v2", "b@v0"]);
        assert_eq!(items("b"), ["b@v0"]);
        // The view recorded again joins its object's record, which then speaks for it.
        let (again, record, result) = view("views", "a", 1, b"changed");
        store.commit_success(&again, &record, &result).unwrap();
        let latest: Vec<_> = store
            .latest_of_stage("views", "")
            .map(|e| e.unwrap())
            .collect();
        assert_eq!(latest.len(), 4);
        assert_eq!((latest[1].1.key, latest[1].1.previous), (again, Some(own)));
    }

    #[test]
    fn a_lost_object_record_comes_back_from_the_journal() {
        let (dir, store) = opened();
        std::fs::create_dir_all(dir.path().join("cache/blobs")).unwrap();
        store.blobs().put_bytes(b"a blob").unwrap();
        store.begin_journal(b"run1").unwrap();
        let mut memo = Vec::new();
        for n in 0..3 {
            let (key, record, result) = view("views", "a", n, b"a");
            store.commit_success(&key, &record, &result).unwrap();
            memo.push((
                key,
                MemoValue::Done {
                    manifest: result.manifest,
                    blobs: result.blob_outputs().collect(),
                },
            ));
        }
        store.flush().unwrap();
        StageMemo::save(store.index(), store.blobs(), "views", memo.clone()).unwrap();
        store.end_journal(b"run1").unwrap();
        let stages = ["views".to_string()];
        assert!(store.restore_what_memos_lack(&stages).unwrap().is_none());
        store
            .index()
            .delete(Tree::Objects, &record_key("views", "a"))
            .unwrap();
        let lacked = store.restore_what_memos_lack(&stages).unwrap().unwrap();
        // Each view lost is a result and a key record.
        assert_eq!(lacked.missing, 6);
        assert_eq!(lacked.restored.unwrap().results, 3);
        for (key, _) in &memo {
            assert!(store.result(key).unwrap().is_some());
        }
    }
}
