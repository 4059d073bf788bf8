//! The cache (ARCHITECTURE.md, "The cache"): a sled index behind the [`Index`] trait, a content-addressed
//! blob store, a stat cache, plan memos, stage summaries, and the lock that keeps it to one
//! process.
//!
//! Layout of a cache directory:
//! - `LOCK`: held by the process that has the cache open (pid and command inside);
//! - `index/`: sled, the main index (results, key records, failures, runs, memos);
//! - `side/`: sled, a small index of what a plan decided by the stage summaries reads (the
//!   summaries, the stat cache, the stamp of `index/`'s files), so that it need not open
//!   `index/`;
//! - `presence/<digest>`: the presence filter of `index/` ([`presence`]): what the index may
//!   hold, so that a lookup of what it never recorded need not ask it;
//! - `blobs/ab/cdef…`: content-addressed files;
//! - `journal/`: what each run recorded, again, to rebuild a damaged index from
//!   ([`journal`], [`repair`]);
//! - `tmp/`: work directories of running tasks (emptied whenever the cache is opened).

pub mod blobs;
pub mod gc;
pub mod index;
pub mod journal;
pub mod lock;
pub mod memo;
pub mod object_stage;
pub mod presence;
pub mod records;
pub mod repair;
pub mod stat_cache;
pub mod summaries;
pub mod verify;
pub mod views;

use crate::task::{Digest, KeyRecord, ParamSlice, TaskKey, slice_digest};
use anyhow::{Context, Result, bail};
use blobs::{BlobError, BlobStore};
use index::{Index, SledIndex, Tree};
use lock::CacheLock;
use records::{Failure, Latest, Output, TaskResult, decode, encode, latest_key, now_ms};
use std::path::{Path, PathBuf};

/// Version of the index's own layout (trees and value encodings). An index written by a newer
/// mvc is refused rather than misread. 2: views are kept one record per object and stage
/// (`views`); 3: so is any other item's task without parameters of its own, in a record of
/// its own. An index of schema 1 or 2 is read as it is (its entries of their own stay until
/// their tasks run again), and becomes 3 when its next object record is written.
pub const INDEX_SCHEMA: u32 = views::SCHEMA_WITH_OBJECTS;

/// Entries written at once from which [`Store::write_sorted_kept`] uses a second thread
/// (below it, starting a thread costs more than it saves: a thread costs about as much as a
/// few dozen inserts).
const WRITE_ON_TWO_THREADS_FROM: usize = 1024;

/// Entries of the index, by what they are.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct EntryCounts {
    pub results: usize,
    pub failures: usize,
    pub records: usize,
}

pub struct Store {
    dir: PathBuf,
    /// The index of results, records and failures: opened with the store, or on first use
    /// when the store was opened with [`Store::open_deferred`].
    main: std::sync::OnceLock<MainIndex>,
    /// Held while the main index is being opened (sled's own lock would refuse a second
    /// open of it by this process).
    opening: std::sync::Mutex<()>,
    /// `side/`: a small index of its own for what a plan decided by the stage summaries
    /// reads (the summaries, the stat cache, the stamp of the main index's files), so that
    /// such a plan never loads the main index (sled loads a page table that grows with it:
    /// 130 MB per million tasks).
    side: SledIndex,
    /// The presence filter of the main index, while it speaks for it: loaded when the main
    /// index is as the last process left it (or new), dropped when anything writes to the
    /// index behind the filter's back (a replay from the journals).
    presence: presence::Keeper,
    blobs: BlobStore,
    tmp: PathBuf,
    /// The journal of the run in progress: every entry recorded goes there too.
    journal: std::sync::Mutex<Option<journal::Writer>>,
    /// Views recorded and not yet written to their objects' records (`views`).
    pending: std::sync::Mutex<views::Pending>,
    lock: CacheLock,
}

/// The main index, once opened.
struct MainIndex {
    index: Box<dyn Index>,
    /// What opening the cache put back into an index that had lost records.
    restored: Option<repair::Restored>,
}

/// What a run found when the index lacked records its plan memos named.
#[derive(Debug)]
pub struct MemosLacked {
    /// Entries (results, failures, key records) the memos named and the index lacked.
    pub missing: u64,
    /// What the journals put back (`None` without journals: the memos were dropped instead).
    pub restored: Option<repair::Restored>,
}

/// Two streams of `(item, latest)` in item order, merged; an item in both is taken from
/// `views` (a view's object record speaks for it over an entry of its own).
fn merge_by_item<'a>(
    own: impl Iterator<Item = Result<(String, Latest)>> + 'a,
    views: impl Iterator<Item = Result<(String, Latest)>> + 'a,
) -> impl Iterator<Item = Result<(String, Latest)>> + 'a {
    let mut own = own.peekable();
    let mut views = views.peekable();
    std::iter::from_fn(move || {
        let take_view = match (own.peek(), views.peek()) {
            (None, None) => return None,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some(Err(_)), _) => false,
            (_, Some(Err(_))) => true,
            (Some(Ok((a, _))), Some(Ok((b, _)))) => match a.cmp(b) {
                std::cmp::Ordering::Less => false,
                std::cmp::Ordering::Greater => true,
                std::cmp::Ordering::Equal => {
                    own.next();
                    true
                }
            },
        };
        match take_view {
            true => views.next(),
            false => own.next(),
        }
    })
}

/// The keys of `wanted` (sorted here) that are not keys of `tree`: one merge pass over both.
fn absent_keys<K: IndexKey>(index: &dyn Index, tree: Tree, wanted: &mut Vec<K>) -> Result<Vec<K>> {
    wanted.sort_unstable_by(|a, b| a.bytes().cmp(b.bytes()));
    wanted.dedup_by(|a, b| a.bytes() == b.bytes());
    let mut missing = Vec::new();
    let mut want = wanted.iter().peekable();
    for key in index.keys(tree) {
        let key = key?;
        while let Some(w) = want.peek() {
            match w.bytes().cmp(key.as_slice()) {
                std::cmp::Ordering::Less => missing.extend(want.next().cloned()),
                std::cmp::Ordering::Equal => {
                    want.next();
                    break;
                }
                std::cmp::Ordering::Greater => break,
            }
        }
        if want.peek().is_none() {
            break;
        }
    }
    missing.extend(want.cloned());
    Ok(missing)
}

/// A key of the index: a task's, or an object record's.
trait IndexKey: Clone {
    fn bytes(&self) -> &[u8];
}

impl IndexKey for TaskKey {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl IndexKey for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// How many of `wanted` (sorted here) are not keys of `tree`.
fn absent(index: &dyn Index, tree: Tree, wanted: &mut Vec<TaskKey>) -> Result<u64> {
    Ok(absent_keys(index, tree, wanted)?.len() as u64)
}

/// What `mvc repair` did.
#[derive(Debug, serde::Serialize)]
pub struct RepairReport {
    pub cache: PathBuf,
    /// Where the damaged index was moved (kept, in case it is wanted).
    pub moved_to: PathBuf,
    /// Why it was rebuilt (sled's error, or the records it had lost).
    pub why: String,
    pub restored: repair::Restored,
}

/// The error of a cache whose index cannot be opened: what sled said, and what to run.
#[derive(Debug, thiserror::Error)]
#[error(
    "the index of the cache {cache} is damaged ({cause}); its results can be rebuilt from the \
     run journal and the blobs beside it: run `mvc repair --cache {cache}` (the damaged index \
     is kept aside), then run again"
)]
pub struct IndexDamaged {
    pub cache: String,
    pub cause: String,
}

impl Store {
    /// Opens (creating if needed) the cache at `dir`, taking its lock, with its index.
    pub fn open(dir: &Path) -> Result<Store> {
        let store = Store::open_deferred(dir)?;
        store.open_main()?;
        Ok(store)
    }

    /// Opens the cache at `dir` and takes its lock, leaving the main index to be opened on
    /// first use ([`Store::open_main`]): `mvc plan`, which may be decided by the stage
    /// summaries alone.
    pub fn open_deferred(dir: &Path) -> Result<Store> {
        // Absolute, because tasks run in their own directories and get paths into the cache.
        let dir = &std::path::absolute(dir)
            .with_context(|| format!("resolving the cache path {}", dir.display()))?;
        if dir.exists() && !dir.is_dir() {
            bail!(
                "the cache path {} is a file, not a directory; remove it or pass --cache DIR \
                 (or set `cache` in the [pipeline] table) to use another directory",
                dir.display()
            );
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the cache directory {}", dir.display()))?;
        let lock = CacheLock::acquire(dir)?;
        let tmp = dir.join("tmp");
        // We hold the lock: whatever is in tmp/ belongs to a process that died.
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)
                .with_context(|| format!("clearing leftovers in {}", tmp.display()))?;
        }
        std::fs::create_dir_all(&tmp)?;
        let side = open_side(dir)?;
        Ok(Store {
            dir: dir.to_path_buf(),
            main: std::sync::OnceLock::new(),
            opening: std::sync::Mutex::new(()),
            side,
            presence: presence::Keeper::new(dir),
            blobs: BlobStore::new(dir.join("blobs")),
            tmp,
            journal: std::sync::Mutex::new(None),
            pending: std::sync::Mutex::new(views::Pending::default()),
            lock,
        })
    }

    /// Opens the main index if it is not open yet: a damaged one is an [`IndexDamaged`]
    /// error, one of a newer mvc is refused, and one that came back at an earlier state than
    /// its journal gets back what it lost.
    pub fn open_main(&self) -> Result<()> {
        let _opening = self.opening.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(main) = self.main.get() {
            return match main.index.unavailable() {
                Some(error) => Err(anyhow::anyhow!("{error}")),
                None => Ok(()),
            };
        }
        tracing::debug!(
            "opening the main index {}",
            self.dir.join("index").display()
        );

        // A run found the index damaged where it still opens: it is not used until repaired.
        if let Ok(Some(cause)) = self.side.get(Tree::Meta, FOUND_DAMAGED) {
            return Err(IndexDamaged {
                cache: self.dir.display().to_string(),
                cause: String::from_utf8_lossy(&cause).into_owned(),
            }
            .into());
        }
        // Whether the presence filter can speak for the index: asked before sled touches its
        // files.
        let existed = self.dir.join("index").exists();
        let unchanged = existed && self.main_unchanged();
        let index = open_index(&self.dir)?;
        check_schema(&index, &self.dir)?;
        // An index that opens but lacks the last run its journal ended with came back at an
        // earlier state (sled recovers to the last page it can read, without a word): the
        // journals put back what it lost before anything is planned on it.
        let journals = self.dir.join("journal");
        let restored = match journal::last_run(&journals)? {
            Some(run) if !run.is_empty() && index.get(Tree::Runs, &run)?.is_none() => {
                self.forget_stage_summaries()?;
                Some(repair::replay(&index, &self.blobs, &journals)?)
            }
            _ => None,
        };
        let found = match (&restored, existed, unchanged) {
            (Some(_), _, _) => presence::AtOpen::Replayed,
            (None, false, _) => presence::AtOpen::New,
            (None, true, true) => presence::AtOpen::AsStamped,
            (None, true, false) => presence::AtOpen::Changed,
        };
        let stamp = self.side.get(Tree::Meta, MAIN_STAMP).ok().flatten();
        self.presence.at_open(found, &self.side, stamp.as_deref());
        let _ = self.main.set(MainIndex {
            index: Box::new(index),
            restored,
        });
        Ok(())
    }

    /// Whether the main index may hold `key` in `tree`: "no" only when the presence filter
    /// speaks for the index and has never had it. With the index not open yet, the filter is
    /// loaded without it when its files are as stamped: a plan whose lookups the filter and
    /// the memos answer never opens it.
    fn may_hold(&self, tree: Tree, key: &[u8]) -> bool {
        self.presence_without_index();
        self.presence.may_hold(tree, key)
    }

    /// Loads the presence filter (once) while the main index is not open and its files are
    /// as stamped.
    fn presence_without_index(&self) {
        if self.main.get().is_some() {
            return;
        }
        self.presence.load_without_index(&self.side, || {
            let unchanged = self.main.get().is_none() && self.main_unchanged();
            let stamp = self.side.get(Tree::Meta, MAIN_STAMP).ok().flatten();
            stamp.filter(|_| unchanged)
        });
    }

    /// Makes the presence filter hold every entry of the index when it does not speak for it
    /// (a cache from before it, or whose index changed behind it: a crash, a replay): one
    /// pass over the keys of three trees. A run does this before it plans; `true` when it
    /// had to.
    pub fn rebuild_presence(&self) -> Result<bool> {
        self.presence.rebuild(self.index())
    }

    /// Makes the presence filter again from what the index holds after `gc` deleted
    /// entries: otherwise it would answer "maybe" for them forever, and grow with every
    /// result the cache ever held. One pass over the keys, as gc's own.
    pub fn tighten_presence(&self) -> Result<()> {
        self.presence.distrust();
        self.presence.rebuild(self.index()).map(|_| ())
    }

    /// Whether the main index's files are as the last process that had it open left them
    /// (sizes, times, inodes): then the stage summaries, made from it, still speak for it.
    /// A stamp that cannot be read, or files that differ, are "no".
    pub fn main_unchanged(&self) -> bool {
        let Ok(Some(recorded)) = self.side.get(Tree::Meta, MAIN_STAMP) else {
            return false;
        };
        main_stamp(&self.dir).is_some_and(|now| now == recorded)
    }

    /// `mvc repair`: moves the index aside and builds a new one from the run journals and the
    /// blobs. Without `force`, an index that opens and holds the last run's records is left
    /// alone (the answer is an error that says so).
    pub fn repair(dir: &Path, force: bool) -> Result<RepairReport> {
        let dir = &std::path::absolute(dir)
            .with_context(|| format!("resolving the cache path {}", dir.display()))?;
        if !dir.join("index").exists() && !dir.join("journal").exists() {
            bail!(
                "{} holds no mvc cache (no index, no journal)",
                dir.display()
            );
        }
        let lock = CacheLock::acquire(dir)?;
        let journals = dir.join("journal");
        let why = match open_index(dir) {
            // Only damage: an index that cannot be opened for another reason (permissions,
            // a full disk) is not moved aside.
            Err(e) => match e.downcast_ref::<IndexDamaged>() {
                Some(damaged) => format!("it was damaged: {}", damaged.cause),
                None => return Err(e),
            },
            Ok(index) => {
                let last = journal::last_run(&journals)?;
                let lacks = match &last {
                    Some(run) if !run.is_empty() => index.get(Tree::Runs, run)?.is_none(),
                    _ => false,
                };
                // Damage a run found where the index still opens (`check_scans_see`).
                let found = open_side(dir)?.get(Tree::Meta, FOUND_DAMAGED)?;
                match (found, lacks) {
                    (Some(cause), _) => {
                        format!(
                            "a run found it damaged: {}",
                            String::from_utf8_lossy(&cause)
                        )
                    }
                    (None, true) => {
                        "it opened at an earlier state than the last run left it".into()
                    }
                    (None, false) if force => "--force".into(),
                    (None, false) => bail!(
                        "the index of {} opens and holds the last run its journal recorded: \
                         nothing to repair (--force rebuilds it from the journals anyway)",
                        dir.display()
                    ),
                }
            }
        };
        let moved_to = dir.join(format!("index.damaged-{}", now_ms()));
        if dir.join("index").exists() {
            std::fs::rename(dir.join("index"), &moved_to).with_context(|| {
                format!("moving the damaged index aside to {}", moved_to.display())
            })?;
        }
        // The summaries were made from the index that goes aside.
        let side = open_side(dir)?;
        summaries::forget(&side)?;
        presence::Keeper::forget(&side)?;
        side.delete(Tree::Meta, FOUND_DAMAGED)?;
        side.flush()?;
        let index = SledIndex::open(&dir.join("index"))?;
        check_schema(&index, dir)?;
        let restored = repair::replay(&index, &BlobStore::new(dir.join("blobs")), &journals)?;
        drop(lock);
        Ok(RepairReport {
            cache: dir.clone(),
            moved_to,
            why,
            restored,
        })
    }

    /// What opening the cache put back into its index, if it had lost records.
    pub fn restored(&self) -> Option<&repair::Restored> {
        self.main.get().and_then(|main| main.restored.as_ref())
    }

    /// Checks that the index holds every record the plan memos of `stages` name (a result
    /// and its key record for a task they list as done, a failure for one they list as
    /// failed), and puts back from the journals what it lacks. sled can lose pages in the
    /// middle of its log and still open with the last run's record in it; the memos, which a
    /// plan trusts without asking the index, would then name results the index no longer
    /// has. One sequential pass over three trees: done once per run, before it plans.
    pub fn restore_what_memos_lack(&self, stages: &[String]) -> Result<Option<MemosLacked>> {
        let mut done: Vec<TaskKey> = Vec::new();
        let mut failed: Vec<TaskKey> = Vec::new();
        for stage in stages {
            for (key, value) in memo::StageMemo::load(self.index(), self.blobs(), stage)?.iter() {
                match value {
                    memo::MemoValue::Done { .. } => done.push(key),
                    memo::MemoValue::Failed => failed.push(key),
                }
            }
        }
        // Views are in their objects' records, not entries of their own: one pass over
        // those (each view's key made again) takes them off the lists.
        if !done.is_empty() {
            let mut in_views = memo::KeySet::default();
            self.each_view(|key, _| {
                in_views.insert(key);
                true
            })?;
            if !in_views.is_empty() {
                done.retain(|k| !in_views.contains(k));
            }
        }
        let mut recorded: Vec<TaskKey> = done.iter().chain(&failed).copied().collect();
        // The three passes at once: the results' tree, the largest, sets the time.
        let index = self.index();
        let missing = std::thread::scope(|scope| {
            let records = scope.spawn(|| absent(index, Tree::Records, &mut recorded));
            let failures = scope.spawn(|| absent(index, Tree::Failures, &mut failed));
            let results = absent(index, Tree::Tasks, &mut done);
            let joined = |h: std::thread::ScopedJoinHandle<'_, Result<u64>>| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("checking the index panicked")))
            };
            Ok::<u64, anyhow::Error>(results? + joined(records)? + joined(failures)?)
        })?;
        if missing == 0 {
            return Ok(None);
        }
        // Whatever the journals put back, the summaries were made from an index that has
        // changed since: the next plan asks the index again.
        self.forget_stage_summaries()?;
        let journals = self.dir.join("journal");
        let restored = match journal::files(&journals)?.is_empty() {
            false => {
                self.presence.distrust();
                let restored = repair::replay(self.index(), self.blobs(), &journals)?;
                self.forget_what_views_read()?;
                self.check_scans_see(Tree::Tasks, &done)?;
                self.check_scans_see(Tree::Failures, &failed)?;
                self.check_scans_see(Tree::Objects, &restored.object_records)?;
                Some(restored)
            }
            // Nothing to put back from: the memos go, so that the plan asks the index (and
            // runs again what it lacks) instead of trusting them.
            true => {
                self.forget_memos()?;
                None
            }
        };
        Ok(Some(MemosLacked { missing, restored }))
    }

    fn forget_memos(&self) -> Result<()> {
        repair::forget_memos(self.index())
    }

    /// After a replay into an index that had lost records: a key that a lookup finds but a
    /// pass over the tree does not is damage in the tree itself (sled can come back so).
    /// The presence filter, gc and the other passes would miss it, so the index is not used
    /// until `mvc repair` rebuilds it.
    fn check_scans_see<K: IndexKey>(&self, tree: Tree, keys: &[K]) -> Result<()> {
        let unseen = absent_keys(self.index(), tree, &mut keys.to_vec())?;
        let found = unseen
            .iter()
            .filter(|k| matches!(self.index().get(tree, k.bytes()), Ok(Some(_))))
            .count();
        if found > 0 {
            let cause = format!(
                "{found} entries of its {} tree are found by key but not by a pass over the \
                 tree",
                tree.name()
            );
            // Noted where the next command and `mvc repair` look, before anything else
            // reads this index.
            self.side.put(Tree::Meta, FOUND_DAMAGED, cause.as_bytes())?;
            self.side.flush()?;
            return Err(IndexDamaged {
                cache: self.dir.display().to_string(),
                cause,
            }
            .into());
        }
        Ok(())
    }

    /// Starts the journal of a run: from now on every entry recorded is written there too.
    /// A cache with no finished journal yet (new, or from an mvc before journals) first gets
    /// a snapshot of everything its index holds.
    pub fn begin_journal(&self, run: &[u8]) -> Result<()> {
        let dir = self.dir.join("journal");
        let name = crate::text::hex(run);
        if journal::last_run(&dir)?.is_none()
            && let Some(last) = self.last_run_id()?
        {
            journal::snapshot(self.index(), &dir, &format!("{name}-s"), &last)?;
        }
        *self.journal.lock().unwrap() = Some(journal::Writer::create(&dir, &name)?);
        Ok(())
    }

    /// Ends the run's journal and makes it durable.
    pub fn end_journal(&self, run: &[u8]) -> Result<()> {
        // Records still waiting belong to this run: into the journal before it ends, or a
        // replay would not have them.
        if self.main.get().is_some() {
            self.write_pending_views()?;
        }
        match self.journal.lock().unwrap().take() {
            Some(writer) => writer.finish(run, false).map(|_| ()),
            None => Ok(()),
        }
    }

    /// After `gc` deleted entries: one snapshot of the index replaces every journal.
    pub fn snapshot_journal(&self) -> Result<()> {
        let last = self.last_run_id()?.unwrap_or_default();
        journal::snapshot(
            self.index(),
            &self.dir.join("journal"),
            &format!("{}-gc", crate::text::hex(&records::run_id(now_ms()))),
            &last,
        )
    }

    /// The id of the newest run the index records (ids sort by start time).
    fn last_run_id(&self) -> Result<Option<Vec<u8>>> {
        self.index().keys(Tree::Runs).last().transpose()
    }

    /// Writes an entry to the index, and to the journal of the run in progress.
    fn put_kept(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<()> {
        let index = self.index();
        // Into the filter first: a lookup between the two writes must not be told "no".
        self.presence.note(tree, key);
        index.put(tree, key, value)?;
        if let Some(w) = self.journal.lock().unwrap().as_mut() {
            w.put(tree, key, value);
        }
        Ok(())
    }

    /// Writes many entries of `tree` (`None`: deleted), in key order, to the index and the
    /// journal, each value as `encode` makes its bytes. A batch this large is split between
    /// this thread and one more, each encoding, inserting and journalling its half: sled's
    /// insert is most of recording an object's own task (one insert each, where a view shares
    /// its record's with 35 others), and sled takes inserts from two threads at once. The
    /// halves are disjoint ranges of keys, so they land in different leaves; the journal's
    /// order between them does not matter, as no key is in both.
    fn write_sorted_kept<V: Sync>(
        &self,
        tree: Tree,
        entries: &[(Vec<u8>, Option<V>)],
        encode: impl Fn(&V) -> Vec<u8> + Sync,
    ) -> Result<()> {
        let index = self.index();
        // Into the filter first: a lookup between the two writes must not be told "no".
        for (key, value) in entries {
            if value.is_some() {
                self.presence.note(tree, key);
            }
        }
        let write = |part: &[(Vec<u8>, Option<V>)]| -> Result<()> {
            let encoded: Vec<(&[u8], Option<Vec<u8>>)> = part
                .iter()
                .map(|(key, value)| (key.as_slice(), value.as_ref().map(&encode)))
                .collect();
            for (key, value) in &encoded {
                match value {
                    Some(value) => index.put(tree, key, value)?,
                    None => index.delete(tree, key)?,
                }
            }
            if let Some(w) = self.journal.lock().unwrap().as_mut() {
                for (key, value) in &encoded {
                    w.entry(tree, key, value.as_deref());
                }
            }
            Ok(())
        };
        if entries.len() < WRITE_ON_TWO_THREADS_FROM {
            return write(entries);
        }
        let (first, second) = entries.split_at(entries.len() / 2);
        std::thread::scope(|scope| {
            let other = scope.spawn(|| write(second));
            let mine = write(first);
            let other = other
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("writing to the index panicked")));
            mine.and(other)
        })
    }

    fn delete_kept(&self, tree: Tree, key: &[u8]) -> Result<()> {
        self.index().delete(tree, key)?;
        if let Some(w) = self.journal.lock().unwrap().as_mut() {
            w.delete(tree, key);
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The main index, opened now if it was not (an index that cannot be opened then
    /// answers every call with the reason; [`Store::open_main`] gives it as an error first).
    pub fn index(&self) -> &dyn Index {
        if self.main.get().is_none()
            && let Err(e) = self.open_main()
        {
            // Only the first failure is set; a concurrent opener's result stands.
            let _ = self.main.set(MainIndex {
                index: Box::new(index::Unavailable(format!("{e:#}"))),
                restored: None,
            });
        }
        self.main.get().expect("set above").index.as_ref()
    }

    /// The stage summary last recorded for `stage`.
    pub fn stage_summary(&self, stage: &str) -> Result<Option<summaries::StageSummary>> {
        summaries::load(&self.side, stage)
    }

    /// The summary last recorded for one view column of `stage`.
    pub fn column_summary(
        &self,
        stage: &str,
        column: &str,
    ) -> Result<Option<summaries::StageSummary>> {
        summaries::load(&self.side, &summaries::column_name(stage, column))
    }

    /// Records stage summaries, with the lists of their output blobs. The main index is made
    /// durable first, so that a summary never speaks for results the index could still lose.
    pub fn record_stage_summaries(
        &self,
        recorded: &[(String, summaries::StageSummary, summaries::BlobList)],
    ) -> Result<()> {
        if recorded.is_empty() {
            return Ok(());
        }
        self.index().flush()?;
        for (stage, summary, blob_list) in recorded {
            if !blob_list.is_empty() {
                self.blobs.put_bytes(blob_list.bytes())?;
            }
            summaries::save(&self.side, stage, summary)?;
        }
        self.side.flush()
    }

    /// Whether every output blob a summary lists is still there, as a memo hit checks its
    /// task's (a size each, no read).
    pub fn summary_blobs_present(&self, summary: &summaries::StageSummary) -> bool {
        let Some(list) = &summary.blob_list else {
            return true;
        };
        let Ok(bytes) = self.blobs.read(list) else {
            return false;
        };
        summaries::BlobList::entries(&bytes).is_some_and(|blobs| self.outputs_present(blobs))
    }

    /// Drops every stage summary, durably, before whatever changes the main index behind
    /// them (a run, gc, a repair).
    pub fn forget_stage_summaries(&self) -> Result<()> {
        summaries::forget(&self.side)?;
        self.side.flush()
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// Where running tasks get their work directories (same file system as the blobs, so
    /// outputs are moved into the store, not copied).
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// An entry of one of the trees the presence filter covers, asking the index only when
    /// the filter says it may hold it.
    fn get_present(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if !self.may_hold(tree, key) {
            return Ok(None);
        }
        self.index().get(tree, key)
    }

    /// Whether the main index has never held the task `key` of `item` in `stage`: no result
    /// or failure under its key, and no latest entry or record view of its item. Asked of
    /// the presence filter alone: `false` ("it may have") whenever the filter does not speak
    /// for the index, or holds one of their fingerprints.
    pub fn never_held(&self, stage: &str, item: &str, key: Option<&TaskKey>) -> bool {
        !self.may_hold(Tree::Latest, &latest_key(stage, item))
            && key.is_none_or(|key| {
                !self.may_hold(Tree::Tasks, &key.0) && !self.may_hold(Tree::Failures, &key.0)
            })
    }

    /// Whether the presence filter speaks for the main index (then a lookup of what the index
    /// never held costs no read of it).
    pub fn presence_known(&self) -> bool {
        self.presence_without_index();
        self.presence.known()
    }

    /// The plan memo of `stage`: from the main index, or, while it is not open and its files
    /// are as stamped, from the copy of its memo list the side index took with the stamp.
    pub fn plan_memo(&self, stage: &str) -> Result<memo::StageMemo> {
        if self.main.get().is_none() && self.main_unchanged() && self.memo_copy_current() {
            return memo::StageMemo::load(&self.side, &self.blobs, stage);
        }
        memo::StageMemo::load(self.index(), &self.blobs, stage)
    }

    /// Whether the side index's copy of the memo list was taken with the stamp it holds (an
    /// mvc from before the copy stamps the index without taking one).
    fn memo_copy_current(&self) -> bool {
        match (
            self.side.get(Tree::Meta, MEMO_COPY),
            self.side.get(Tree::Meta, MAIN_STAMP),
        ) {
            (Ok(Some(copy)), Ok(Some(stamp))) => copy == Digest::of(&stamp).0,
            _ => false,
        }
    }

    /// Records the main index's `stamp` in the side index, with what was taken with it: the
    /// copy of the memo list (already copied) and the presence filter.
    fn record_stamp(&self, stamp: &[u8]) -> Result<()> {
        self.side.put(Tree::Meta, MAIN_STAMP, stamp)?;
        self.side.put(Tree::Meta, MEMO_COPY, &Digest::of(stamp).0)?;
        self.presence.save(&self.side, stamp)
    }

    /// Copies the main index's memo list into the side index, as the stamp is taken: the
    /// copy is read only while the stamp holds.
    fn copy_memo_list(&self, main: &dyn Index) -> Result<()> {
        let old: Vec<Vec<u8>> = self.side.keys(Tree::Memos).collect::<Result<_>>()?;
        for stage in old {
            self.side.delete(Tree::Memos, &stage)?;
        }
        for entry in main.scan(Tree::Memos, b"") {
            let (stage, digest) = entry?;
            self.side.put(Tree::Memos, &stage, &digest)?;
        }
        Ok(())
    }

    /// The result of `key`, by its key alone: from its entry of its own, else searched
    /// through the object records (a pass over them). A caller that knows the task's stage
    /// and item asks [`Store::result_of`].
    pub fn result(&self, key: &TaskKey) -> Result<Option<TaskResult>> {
        match self.own_result(key)? {
            Some(result) => Ok(Some(result)),
            None => Ok(self.find_view(key)?.map(|v| v.result)),
        }
    }

    fn own_result(&self, key: &TaskKey) -> Result<Option<TaskResult>> {
        self.get_present(Tree::Tasks, &key.0)?
            .map(|b| decode(&b, "task result"))
            .transpose()
    }

    pub fn failure(&self, key: &TaskKey) -> Result<Option<Failure>> {
        self.get_present(Tree::Failures, &key.0)?
            .map(|b| decode(&b, "failure record"))
            .transpose()
    }

    /// The key record of `key`, by its key alone (as [`Store::result`]).
    pub fn record(&self, key: &TaskKey) -> Result<Option<KeyRecord>> {
        match self.own_record(key)? {
            Some(record) => Ok(Some(record)),
            None => Ok(self.find_view(key)?.map(|v| v.record)),
        }
    }

    fn own_record(&self, key: &TaskKey) -> Result<Option<KeyRecord>> {
        self.index()
            .get(Tree::Records, &key.0)?
            .map(|b| KeyRecord::decode(&b).context("the index holds an unreadable key record"))
            .transpose()
    }

    pub fn shared_params(&self, digest: &Digest) -> Result<Option<ParamSlice>> {
        self.index()
            .get(Tree::Params, &digest.0)?
            .map(|b| decode(&b, "parameter slice"))
            .transpose()
    }

    pub fn put_shared_params(&self, slice: &ParamSlice) -> Result<Digest> {
        let digest = slice_digest(slice);
        let value = encode(slice);
        if self.index().get(Tree::Params, &digest.0)?.is_none() {
            self.index().put(Tree::Params, &digest.0, &value)?;
        }
        // Into the journal every time (once per stage and run): a plan may have put it in
        // the index before any run's journal had it.
        if let Some(w) = self.journal.lock().unwrap().as_mut() {
            w.put(Tree::Params, &digest.0, &value);
        }
        Ok(digest)
    }

    /// The item's latest result or failure: its view in its object's record, else its
    /// entry of its own.
    pub fn latest(&self, stage: &str, item: &str) -> Result<Option<Latest>> {
        if let Some(view) = self.view_task(stage, item)? {
            return Ok(Some(view.latest()));
        }
        self.own_latest(stage, item)
    }

    fn own_latest(&self, stage: &str, item: &str) -> Result<Option<Latest>> {
        self.get_present(Tree::Latest, &latest_key(stage, item))?
            .map(|b| decode(&b, "latest entry"))
            .transpose()
    }

    /// The items of `stage` that have a result recorded, with their latest entries, in item
    /// order, from the first item not before `from` (the page's object grid pages by it).
    pub fn latest_of_stage<'a>(
        &'a self,
        stage: &str,
        from: &str,
    ) -> impl Iterator<Item = Result<(String, Latest)>> + 'a {
        let prefix = latest_key(stage, "");
        let start = latest_key(stage, from);
        let own = self
            .index()
            .scan_from(Tree::Latest, &prefix, &start)
            .map(move |entry| {
                let (k, v) = entry?;
                let item = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                Ok((item, decode(&v, "latest entry")?))
            });
        merge_by_item(own, self.views_of_stage(stage, from))
    }

    /// Where partial downloads wait to be resumed by a later run (kept across runs, unlike
    /// work directories; gc removes them).
    pub fn partial_dir(&self) -> PathBuf {
        self.dir.join("partial")
    }

    /// Where a coordinator keeps its self-signed TLS certificate (kept, so that its
    /// fingerprint stays the same from run to run; gc leaves it).
    /// Notes where this process's page is, for `mvc ui` on this cache (best effort: the page
    /// works without it).
    pub fn announce_page(&self, url: &str) {
        if let Err(e) = self.lock.announce_page(url) {
            tracing::debug!("noting the page's address in the cache lock: {e:#}");
        }
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.dir.join("tls")
    }

    /// Whether the index has ever recorded a task of `stage` (a stage never seen has only new
    /// items, which the planner says without a lookup each).
    pub fn has_seen_stage(&self, stage: &str) -> bool {
        self.index()
            .scan(Tree::Latest, &latest_key(stage, ""))
            .next()
            .is_some()
            || self.has_views_of(stage)
    }

    /// Records a run under `run_id` (its start time and process, so records sort by time).
    pub fn put_run(&self, run_id: &[u8], record: &records::RunRecord) -> Result<()> {
        self.put_kept(Tree::Runs, run_id, &encode(record))
    }

    /// Every run record, oldest first.
    pub fn runs(&self) -> Result<Vec<records::RunRecord>> {
        let mut runs = Vec::new();
        for entry in self.index().scan(Tree::Runs, b"") {
            let (_, value) = entry?;
            runs.push(records::decode_run(&value)?);
        }
        Ok(runs)
    }

    /// How many results, failures and key records the index holds (a view in an object
    /// record counts as a result and a key record).
    pub fn entry_counts(&self) -> Result<EntryCounts> {
        let mut views = 0;
        self.each_view(|_, _| {
            views += 1;
            true
        })?;
        Ok(EntryCounts {
            results: self.index().len(Tree::Tasks) + views,
            failures: self.index().len(Tree::Failures),
            records: self.index().len(Tree::Records) + views,
        })
    }

    /// The keys of the key records whose bytes start with `prefix`, in order.
    pub fn record_keys_with_prefix(&self, prefix: &[u8]) -> Result<Vec<TaskKey>> {
        let mut keys: Vec<TaskKey> = Vec::new();
        for entry in self.index().scan(Tree::Records, prefix) {
            let (k, _) = entry?;
            keys.push(Digest(k.as_slice().try_into().unwrap_or([0; 32])));
        }
        self.each_view(|key, _| {
            if key.0.starts_with(prefix) {
                keys.push(key);
            }
            true
        })?;
        keys.sort_unstable();
        keys.dedup();
        Ok(keys)
    }

    /// Units out with workers, as the engine persisted them (id, its own encoding): a
    /// restarted coordinator records their results.
    pub fn leases(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        for entry in self.index().scan(Tree::Leases, b"") {
            let (id, value) = entry?;
            if let Ok(id) = <[u8; 8]>::try_from(id.as_slice()) {
                out.push((u64::from_be_bytes(id), value));
            }
        }
        Ok(out)
    }

    /// Records a unit leased to a worker. It is on disk after the next [`Store::flush`]; the
    /// scheduler sends the unit only after that, so a coordinator killed at any moment still
    /// knows every unit out and takes the results its workers send to the next one.
    pub fn put_lease(&self, id: u64, value: &[u8]) -> Result<()> {
        self.index().put(Tree::Leases, &id.to_be_bytes(), value)
    }

    pub fn delete_lease(&self, id: u64) -> Result<()> {
        self.index().delete(Tree::Leases, &id.to_be_bytes())
    }

    /// Records a completed task. The `tasks` entry is written after its record and before
    /// `latest`: a kill at any point leaves either no result or a complete one, and `latest`
    /// never names a key whose result was never written.
    pub fn commit_success(
        &self,
        key: &TaskKey,
        record: &KeyRecord,
        result: &TaskResult,
    ) -> Result<()> {
        // A view joins its object's record; anything else is three entries of its own.
        if let views::Joined::No { earlier } = self.commit_view(key, record, result)? {
            self.put_kept(Tree::Records, &key.0, &record.encode())?;
            self.put_kept(Tree::Tasks, &key.0, &encode(result))?;
            self.set_latest(&result.stage, &result.item, key, earlier)?;
        }
        // Most keys never failed: the filter says so without a walk down sled's tree.
        if self.may_hold(Tree::Failures, &key.0) {
            self.delete_kept(Tree::Failures, &key.0)?;
        }
        Ok(())
    }

    /// Records a permanent item failure under its key (the negative cache).
    pub fn commit_failure(
        &self,
        key: &TaskKey,
        record: &KeyRecord,
        failure: &Failure,
    ) -> Result<()> {
        // The failure is now the item's latest: its object's record must not name the
        // success before it.
        let earlier = self.drop_view(&failure.stage, &failure.item)?;
        self.put_kept(Tree::Records, &key.0, &record.encode())?;
        self.put_kept(Tree::Failures, &key.0, &encode(failure))?;
        self.set_latest(&failure.stage, &failure.item, key, earlier)?;
        Ok(())
    }

    /// `earlier`: the key the item's view had in its object's record, which it has no
    /// more (the item's previous key when it has no entry of its own).
    fn set_latest(
        &self,
        stage: &str,
        item: &str,
        key: &TaskKey,
        earlier: Option<TaskKey>,
    ) -> Result<()> {
        let previous = self.own_latest(stage, item)?;
        let previous = match previous {
            _ if earlier.is_some_and(|e| e != *key) => earlier,
            Some(p) if p.key == *key => p.previous,
            Some(p) => Some(p.key),
            None => None,
        };
        let latest = Latest {
            key: *key,
            previous,
            when_ms: now_ms(),
        };
        self.put_kept(Tree::Latest, &latest_key(stage, item), &encode(&latest))
    }

    /// Forgets a result whose outputs are gone or corrupt, so its task (of `item` in
    /// `stage`) runs again.
    pub fn forget_result(&self, key: &TaskKey, stage: &str, item: &str) -> Result<()> {
        // A summary may count it as cached: the summaries go first.
        self.forget_stage_summaries()?;
        if self
            .view_task(stage, item)?
            .is_some_and(|v| v.record.key() == *key)
        {
            self.drop_view(stage, item)?;
        }
        self.delete_kept(Tree::Tasks, &key.0)
    }

    /// The bytes of an output, verified.
    pub fn read_output(&self, output: &Output) -> Result<Vec<u8>, BlobError> {
        match &output.inline {
            Some(bytes) => {
                let actual = Digest::of(bytes);
                if actual != output.digest {
                    return Err(BlobError::Corrupt {
                        digest: output.digest,
                        actual,
                    });
                }
                Ok(bytes.clone())
            }
            None => self.blobs.read(&output.digest),
        }
    }

    /// Writes an output to `dest` (creating parent directories), verified.
    pub fn materialize_output(&self, output: &Output, dest: &Path) -> Result<(), BlobError> {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|source| BlobError::Io {
                digest: output.digest,
                source,
            })?;
        }
        match &output.inline {
            Some(_) => {
                let bytes = self.read_output(output)?;
                std::fs::write(dest, bytes).map_err(|source| BlobError::Io {
                    digest: output.digest,
                    source,
                })
            }
            None => self.blobs.copy_to(&output.digest, dest).map(|_| ()),
        }
    }

    /// Whether every blob output of a result is present with its recorded size (a `stat`
    /// each, no read: content is verified when a reader uses it).
    pub fn outputs_present(&self, blobs: impl Iterator<Item = (Digest, u64)>) -> bool {
        blobs
            .into_iter()
            .all(|(d, size)| self.blobs.size(&d) == Some(size))
    }

    /// A file's digest, through the stat cache (which lives in the side index: a plan
    /// decided by the stage summaries digests its files without the main index).
    pub fn file_digest(&self, path: &Path) -> Result<(Digest, stat_cache::Hashed)> {
        stat_cache::file_digest(&self.side, path)
    }

    /// The stat cache's index (gc drops the entries of files that are gone).
    pub(crate) fn stat_index(&self) -> &dyn Index {
        &self.side
    }

    /// Makes what the main index recorded durable. The coordinator calls it before each
    /// group of replies to its workers, so it does no more than that.
    pub fn flush(&self) -> Result<()> {
        if self.main.get().is_some() {
            self.write_pending_views()?;
        }
        match self.main.get() {
            Some(main) if main.index.unavailable().is_none() => main.index.flush(),
            _ => Ok(()),
        }
    }

    /// Makes everything durable, as a command does before it ends, and stamps the main
    /// index's files: until another process changes them, a plan may trust the stage
    /// summaries without opening it ([`Store::main_unchanged`]).
    pub fn flush_and_stamp(&self) -> Result<()> {
        self.flush()?;
        tracing::debug!(
            "the presence filter answered {} lookups without the index",
            self.presence.answered_absent()
        );
        if let Some(main) = self.main.get()
            && main.index.unavailable().is_none()
            && let Some(stamp) = main_stamp(&self.dir)
        {
            self.copy_memo_list(main.index.as_ref())?;
            self.record_stamp(&stamp)?;
        }
        self.side.flush()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // The views not yet written to their objects' records are results recorded.
        if self
            .main
            .get()
            .is_some_and(|m| m.index.unavailable().is_none())
            && let Err(e) = self.write_pending_views()
        {
            tracing::warn!("the last views recorded could not be written: {e:#}");
        }
        // sled writes its files once more as it closes: the stamp is taken after that.
        let Some(main) = self.main.take() else {
            return;
        };
        let usable =
            main.index.unavailable().is_none() && self.copy_memo_list(main.index.as_ref()).is_ok();
        drop(main);
        if usable && let Some(stamp) = main_stamp(&self.dir) {
            if let Err(e) = self.record_stamp(&stamp) {
                // Without all three, none: a plan then opens the index.
                tracing::debug!("the stamp of the main index was not recorded: {e:#}");
                let _ = self.side.delete(Tree::Meta, MAIN_STAMP);
            }
            let _ = self.side.flush();
        }
    }
}

/// The side index's key of the main index's stamp.
const MAIN_STAMP: &[u8] = b"main-stamp";

/// The side index's key of the damage a command found in a main index that still opens
/// (`Store::check_scans_see`): until `mvc repair` rebuilds it, it is not opened.
const FOUND_DAMAGED: &[u8] = b"found-damaged";

/// The side index's key of the digest of the stamp its copy of the memo list was taken with.
const MEMO_COPY: &[u8] = b"memo-copy";

/// The stamp of the main index's files: each one's name, size, modification time and
/// inode, in name order, after the index schema of this mvc. `None` when they cannot be
/// listed (no index yet).
fn main_stamp(dir: &Path) -> Option<Vec<u8>> {
    use std::os::unix::fs::MetadataExt;
    let mut files = Vec::new();
    let mut dirs = vec![dir.join("index")];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).ok()? {
            let entry = entry.ok()?;
            let meta = entry.metadata().ok()?;
            if meta.is_dir() {
                dirs.push(entry.path());
                continue;
            }
            let name = entry.path().strip_prefix(dir).ok()?.to_path_buf();
            files.push((
                name,
                meta.len(),
                meta.mtime(),
                meta.mtime_nsec(),
                meta.ino(),
            ));
        }
    }
    if files.is_empty() {
        return None;
    }
    files.sort();
    let mut stamp = INDEX_SCHEMA.to_le_bytes().to_vec();
    for (name, len, secs, nanos, inode) in files {
        stamp.extend_from_slice(name.as_os_str().as_encoded_bytes());
        stamp.push(0);
        for n in [len, secs as u64, nanos as u64, inode] {
            stamp.extend_from_slice(&n.to_le_bytes());
        }
    }
    Some(stamp)
}

/// Opens a sled index, catching the panics sled has on some damage ("tried to serialize
/// Uninitialized" while it rewrites its snapshot), without the panic's message on stderr.
fn open_quietly(
    open: impl FnOnce() -> Result<SledIndex> + std::panic::UnwindSafe,
) -> std::thread::Result<Result<SledIndex>> {
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(open);
    std::panic::set_hook(quiet);
    opened
}

/// Opens the side index (`side/`). It holds only what can be made again (summaries, the
/// stat cache, a stamp), so one that does not open is set aside and started afresh.
fn open_side(dir: &Path) -> Result<SledIndex> {
    let path = dir.join("side");
    if let Ok(Ok(side)) = open_quietly(|| SledIndex::open_small(&path)) {
        return Ok(side);
    }
    tracing::warn!(
        "the side index {} did not open: started afresh (it holds only the stage summaries \
         and the stat cache, which are made again)",
        path.display()
    );
    let aside = dir.join(format!("side.damaged-{}", now_ms()));
    std::fs::rename(&path, &aside)
        .with_context(|| format!("moving the damaged side index to {}", aside.display()))?;
    SledIndex::open_small(&path)
}

/// Opens the index of the cache `dir`; a damaged one (sled's error, or a panic in its
/// recovery) is an [`IndexDamaged`] error that says what to run.
fn open_index(dir: &Path) -> Result<SledIndex> {
    let path = dir.join("index");
    let damaged = |cause: String| IndexDamaged {
        cache: dir.display().to_string(),
        cause,
    };
    match open_quietly(|| SledIndex::open(&path)) {
        Ok(Ok(index)) => Ok(index),
        Ok(Err(e)) if is_corruption(&e) => Err(damaged(format!("{:#}", e.root_cause())).into()),
        Ok(Err(e)) => Err(e),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "sled stopped while reading it".into());
            Err(damaged(format!("sled: {what}")).into())
        }
    }
}

/// Whether an index error is damage to its files (rather than, say, a lock or permissions).
fn is_corruption(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<sled::Error>(),
            Some(sled::Error::Corruption { .. }) | Some(sled::Error::ReportableBug(_))
        )
    })
}

fn check_schema(index: &dyn Index, dir: &Path) -> Result<()> {
    match index.get(Tree::Meta, b"schema")? {
        None => index.put(Tree::Meta, b"schema", &INDEX_SCHEMA.to_le_bytes()),
        Some(bytes) => {
            let found = u32::from_le_bytes(bytes.as_slice().try_into().unwrap_or([0xff; 4]));
            if found > INDEX_SCHEMA {
                bail!(
                    "the cache {} was written by a newer mvc (index schema {found}, this mvc \
                     reads {INDEX_SCHEMA}); upgrade mvc or pass --cache DIR",
                    dir.display()
                );
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memo::{MemoValue, StageMemo};
    use crate::store::records::{Output, manifest_digest};

    /// Batches large enough to be written by two threads, puts and deletes, reach the index
    /// and the journal whole: the index holds what the batches say, and the journal's frames,
    /// replayed in order, make the same entries.
    #[test]
    fn batches_written_on_two_threads_are_whole_in_the_index_and_in_the_journal() {
        use std::collections::BTreeMap;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("cache")).unwrap();
        store.begin_journal(b"run1").unwrap();
        let n = WRITE_ON_TWO_THREADS_FROM * 2 + 1;
        let key = |i: usize| format!("s\0o{i:05}").into_bytes();
        let first: Vec<_> = (0..n)
            .map(|i| (key(i), Some(format!("first {i}").into_bytes())))
            .collect();
        store
            .write_sorted_kept(Tree::Objects, &first, |v: &Vec<u8>| v.clone())
            .unwrap();
        // Every other key deleted, the rest written again, and as many new ones.
        let second: Vec<_> = (0..2 * n)
            .map(|i| match i {
                i if i < n && i % 2 == 0 => (key(i), None),
                i => (key(i), Some(format!("second {i}").into_bytes())),
            })
            .collect();
        store
            .write_sorted_kept(Tree::Objects, &second, |v: &Vec<u8>| v.clone())
            .unwrap();
        store.end_journal(b"run1").unwrap();

        let expected: BTreeMap<Vec<u8>, Vec<u8>> = second
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
            .collect();
        let indexed: BTreeMap<Vec<u8>, Vec<u8>> = store
            .index()
            .scan(Tree::Objects, b"")
            .map(|e| e.unwrap())
            .collect();
        assert_eq!(indexed.len(), n + n / 2);
        assert_eq!(indexed, expected);
        let mut replayed = BTreeMap::new();
        let mut frames = 0;
        for file in journal::files(&dir.path().join("cache/journal")).unwrap() {
            for frame in journal::read(&file).unwrap().frames {
                let journal::Frame::Entry { key, value, .. } = frame else {
                    continue;
                };
                frames += 1;
                match value {
                    Some(v) => replayed.insert(key, v),
                    None => replayed.remove(&key),
                };
            }
        }
        assert_eq!(frames, 3 * n);
        assert_eq!(replayed, expected);
    }

    /// Records `n` results of stage `s` (with memos naming them) in a run with a journal.
    /// Their items have parameters of their own, so each is three entries of its own (an
    /// item without is kept in a record, as views are: `views.rs` tests those).
    fn recorded(store: &Store, n: u32) -> Vec<TaskKey> {
        store.begin_journal(b"run1").unwrap();
        let mut keys = Vec::new();
        let mut memo = Vec::new();
        for i in 0..n {
            let record = KeyRecord {
                schema: 1,
                kind: "command".into(),
                kind_version: 1,
                item: format!("i{i}"),
                shared: Digest::of(b"shared"),
                item_params: [("n".to_string(), i.to_string())].into(),
                inputs: Default::default(),
            };
            let key = record.key();
            let outputs = vec![Output {
                name: "o".into(),
                digest: Digest::of(&i.to_le_bytes()),
                size: 4,
                inline: Some(i.to_le_bytes().to_vec()),
            }];
            let result = TaskResult {
                stage: "s".into(),
                item: format!("i{i}"),
                manifest: manifest_digest(&outputs),
                outputs,
                stdout: None,
                stderr: None,
                started_ms: 0,
                duration_ms: 0,
                host: "local".into(),
            };
            store.commit_success(&key, &record, &result).unwrap();
            memo.push((
                key,
                MemoValue::Done {
                    manifest: result.manifest,
                    blobs: Vec::new(),
                },
            ));
            keys.push(key);
        }
        StageMemo::save(store.index(), store.blobs(), "s", memo).unwrap();
        store.end_journal(b"run1").unwrap();
        keys
    }

    /// Damage a run found in an index that still opens (a pass over a tree missing keys a
    /// lookup finds: the presence filter rebuilt from it would send their tasks to run
    /// again) keeps the index closed until `mvc repair`, which rebuilds it without --force.
    #[test]
    fn an_index_a_run_found_damaged_is_not_used_until_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        {
            let store = Store::open(&cache).unwrap();
            recorded(&store, 5);
            store
                .side
                .put(
                    Tree::Meta,
                    FOUND_DAMAGED,
                    b"2 entries of its tasks tree ...",
                )
                .unwrap();
        }
        let error = Store::open(&cache).err().expect("refused").to_string();
        assert!(
            error.contains("is damaged (2 entries of its tasks tree"),
            "{error}"
        );
        assert!(error.contains("run `mvc repair --cache"), "{error}");
        let report = Store::repair(&cache, false).unwrap();
        assert!(
            report.why.starts_with("a run found it damaged"),
            "{}",
            report.why
        );
        assert_eq!(report.restored.results, 5);
        let store = Store::open(&cache).unwrap();
        assert_eq!(store.index().len(Tree::Tasks), 5);
        drop(store);
        // The finding went with the index it was about.
        let side = open_side(&cache).unwrap();
        assert!(side.get(Tree::Meta, FOUND_DAMAGED).unwrap().is_none());
    }

    #[test]
    fn records_the_memos_name_and_the_index_lost_are_put_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("cache")).unwrap();
        let keys = recorded(&store, 10);
        let stages = ["s".to_string()];
        assert!(store.restore_what_memos_lack(&stages).unwrap().is_none());
        // Lost in the middle of the log: three results and two key records.
        for key in &keys[..3] {
            store.index().delete(Tree::Tasks, &key.0).unwrap();
        }
        for key in &keys[5..7] {
            store.index().delete(Tree::Records, &key.0).unwrap();
        }
        let lacked = store.restore_what_memos_lack(&stages).unwrap().unwrap();
        assert_eq!(lacked.missing, 5);
        let restored = lacked.restored.unwrap();
        assert_eq!((restored.results, restored.lost), (10, 0));
        assert_eq!(restored.results_missing_before, 3);
        for key in &keys {
            assert!(store.result(key).unwrap().is_some());
            assert!(store.record(key).unwrap().is_some());
        }
        assert!(store.restore_what_memos_lack(&stages).unwrap().is_none());
    }

    #[test]
    fn without_a_journal_the_memos_are_dropped_instead() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("cache")).unwrap();
        let keys = recorded(&store, 4);
        std::fs::remove_dir_all(dir.path().join("cache/journal")).unwrap();
        store.index().delete(Tree::Tasks, &keys[0].0).unwrap();
        let lacked = store
            .restore_what_memos_lack(&["s".to_string()])
            .unwrap()
            .unwrap();
        assert_eq!((lacked.missing, lacked.restored.is_none()), (1, true));
        assert!(store.index().get(Tree::Memos, b"s").unwrap().is_none());
    }
}
