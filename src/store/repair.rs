//! Putting back into an index what the run journals hold: after `mvc repair` moved a damaged
//! index aside (into a fresh one), or when a cache is opened and its index has come back at an
//! earlier state than the last run left it (into that one).
//!
//! A result is put back only when its blobs are there with their recorded sizes (their
//! content is verified when read, as always): a result whose blobs are gone is lost, and its
//! task runs again. Nothing is ever served that the journals and blobs do not hold.

use super::blobs::BlobStore;
use super::index::{Index, Tree};
use super::journal::{self, Frame};
use super::object_stage::{Columns, ObjectStage};
use super::records::{Latest, RunRecord, TaskResult, decode};
use crate::task::{Digest, TaskKey};
use anyhow::{Result, anyhow, bail};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// What a replay put back, and what it could not.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Restored {
    /// Journal files read.
    pub journals: usize,
    /// Results whose blobs are all there: cached again.
    pub results: u64,
    /// Of those, how many the index did not hold before.
    pub results_missing_before: u64,
    /// Recorded item failures (the negative cache).
    pub failures: u64,
    /// Results the journals hold whose blobs are gone: their tasks run again.
    pub lost: u64,
    /// Journals read only in part (cut short by a killed run, or damaged), and why.
    pub partial: Vec<String>,
    /// The keys of the object records (and stages' columns) put back: a pass over the tree
    /// must see them all (`Store::check_scans_see`).
    #[serde(skip)]
    pub object_records: Vec<Vec<u8>>,
}

impl Restored {
    /// "1,234 results (12 of them missing from the index) and 3 recorded failures put back
    /// from 4 journals; 2 lost (their blobs are gone: they run again)".
    pub fn summary(&self) -> String {
        use crate::text::group_digits as g;
        let mut text = format!(
            "{} results ({} of them missing from the index) and {} recorded failures put back \
             from {} journal{}",
            g(self.results),
            g(self.results_missing_before),
            g(self.failures),
            self.journals,
            if self.journals == 1 { "" } else { "s" }
        );
        text.push_str(&match self.lost {
            0 => "; none lost".to_string(),
            n => format!("; {} lost (their blobs are gone: they run again)", g(n)),
        });
        for partial in &self.partial {
            text.push_str(&format!("; {partial}"));
        }
        text
    }
}

/// Puts every entry of the journals in `dir`, oldest first, into `index`, and removes its plan
/// memos (the next run writes them again from what the index holds).
pub fn replay(index: &dyn Index, blobs: &BlobStore, dir: &Path) -> Result<Restored> {
    let mut restored = Restored::default();
    let mut results: HashSet<TaskKey> = HashSet::new();
    let mut failures: HashSet<TaskKey> = HashSet::new();
    let mut lost: HashSet<TaskKey> = HashSet::new();
    let mut columns: HashMap<Vec<u8>, Columns> = HashMap::new();
    let mut object_records: HashSet<Vec<u8>> = HashSet::new();
    for path in journal::files(dir)? {
        let contents = journal::read(&path)?;
        restored.journals += 1;
        if let Some(damage) = &contents.damage {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            restored.partial.push(match contents.end {
                None => format!("journal {name} was cut short ({damage}): read up to there"),
                Some(_) => format!("journal {name} is {damage}: read up to there"),
            });
        }
        for frame in contents.frames {
            let Frame::Entry { tree, key, value } = frame else {
                continue;
            };
            let Some(tree) = journal::tree_of(tree) else {
                continue;
            };
            let Some(value) = value else {
                index.delete(tree, &key)?;
                match tree {
                    Tree::Tasks => results.remove(&key_of(&key)),
                    Tree::Failures => failures.remove(&key_of(&key)),
                    Tree::Objects => object_records.remove(&key),
                    _ => false,
                };
                continue;
            };
            match tree {
                Tree::Tasks => {
                    let key = key_of(&key);
                    let result: TaskResult = decode(&value, "task result")?;
                    let present = result
                        .blob_outputs()
                        .all(|(digest, size)| blobs.size(&digest) == Some(size));
                    if !present {
                        lost.insert(key);
                        continue;
                    }
                    if index.get(Tree::Tasks, &key.0)?.is_none() {
                        restored.results_missing_before += 1;
                    }
                    index.put(Tree::Tasks, &key.0, &value)?;
                    lost.remove(&key);
                    results.insert(key);
                }
                Tree::Latest => {
                    // `latest` never names a key with neither a result nor a failure.
                    let latest: Latest = decode(&value, "latest entry")?;
                    if lost.contains(&latest.key)
                        && !results.contains(&latest.key)
                        && !failures.contains(&latest.key)
                    {
                        continue;
                    }
                    index.put(tree, &key, &value)?;
                }
                Tree::Runs => {
                    // A run whose reach blob is gone (gc took it) would fail `status --verify`.
                    let run: RunRecord = super::records::decode_run(&value)?;
                    if blobs.size(&run.reach).is_some() {
                        index.put(tree, &key, &value)?;
                    }
                }
                Tree::Failures => {
                    failures.insert(key_of(&key));
                    index.put(tree, &key, &value)?;
                }
                Tree::Objects => {
                    let record = ObjectEntry {
                        key: &key,
                        value: &value,
                        journal: &path,
                    };
                    match put_object_entry(
                        index,
                        blobs,
                        record,
                        &mut columns,
                        &mut results,
                        &mut lost,
                    )? {
                        true => object_records.insert(key),
                        false => object_records.remove(&key),
                    };
                }
                _ => index.put(tree, &key, &value)?,
            }
        }
    }
    forget_memos(index)?;
    index.flush()?;
    restored.results = results.len() as u64;
    restored.failures = failures.len() as u64;
    restored.lost = lost.len() as u64;
    restored.object_records = object_records.into_iter().collect();
    Ok(restored)
}

/// An entry of the `objects` tree, as a journal holds it.
struct ObjectEntry<'a> {
    key: &'a [u8],
    value: &'a [u8],
    journal: &'a Path,
}

/// Puts back a stage's view columns, or an object's record as results are put back: a view
/// whose blobs are gone is left out (its task runs again). Whether the index holds the
/// entry now (a record whose every view was left out is deleted).
fn put_object_entry(
    index: &dyn Index,
    blobs: &BlobStore,
    entry: ObjectEntry,
    columns: &mut HashMap<Vec<u8>, Columns>,
    results: &mut HashSet<TaskKey>,
    lost: &mut HashSet<TaskKey>,
) -> Result<bool> {
    let ObjectEntry {
        key,
        value,
        journal,
    } = entry;
    let stage = key.split(|&b| b == 0).next().unwrap_or_default().to_vec();
    if key.len() == stage.len() + 1 {
        // A stage's view columns (written before the records that name them).
        columns.insert(stage, Columns::decode(value).map_err(|e| anyhow!(e))?);
        return index.put(Tree::Objects, key, value).map(|()| true);
    }
    if !columns.contains_key(&stage) {
        let mut columns_key = stage.clone();
        columns_key.push(0);
        if let Some(bytes) = index.get(Tree::Objects, &columns_key)? {
            let decoded = Columns::decode(&bytes).map_err(|e| anyhow!(e))?;
            columns.insert(stage.clone(), decoded);
        }
    }
    let Some(stage_columns) = columns.get(&stage) else {
        bail!(
            "journal {}: the record of {} comes before its stage's view columns",
            journal.display(),
            String::from_utf8_lossy(key)
        );
    };
    let mut record = ObjectStage::decode(value).map_err(|e| anyhow!(e))?;
    let mut present = Vec::new();
    record
        .retain(stage_columns, |r, result| {
            let whole = result
                .blob_outputs()
                .all(|(digest, size)| blobs.size(&digest) == Some(size));
            match whole {
                true => present.push(r.key()),
                false => {
                    lost.insert(r.key());
                }
            }
            whole
        })
        .map_err(|e| anyhow!(e))?;
    for k in present {
        lost.remove(&k);
        results.insert(k);
    }
    match record.is_empty() {
        true => index.delete(Tree::Objects, key).map(|()| false),
        false => index
            .put(Tree::Objects, key, &record.encode())
            .map(|()| true),
    }
}

/// Removes every plan memo pointer: the next run writes them again from what the index holds.
pub fn forget_memos(index: &dyn Index) -> Result<()> {
    let stages: Vec<Vec<u8>> = index.keys(Tree::Memos).collect::<Result<_>>()?;
    for stage in stages {
        index.delete(Tree::Memos, &stage)?;
    }
    Ok(())
}

fn key_of(bytes: &[u8]) -> TaskKey {
    Digest(bytes.try_into().unwrap_or([0; 32]))
}
