//! The presence filter: a fingerprint of every entry the main index may hold in its
//! results, failures and latest trees, so that a lookup of something the index has never
//! recorded (the tasks of a new ring of views, a new object) is answered "no" without
//! asking sled. At ten million tasks the index is 24 GB; each of those lookups went to a
//! random place of it, and a plan after a new ring spent most of its time there
//! (BENCHMARKS.md, "The presence filter").
//!
//! A fingerprint is 64 bits of the entry's blake3 hash: two entries share one with a
//! chance of about one in 10^11 at a hundred million entries, so a plan of millions of new
//! tasks finds none that the index must answer, and need not open it at all. (A Bloom
//! filter of 10 bits an entry said "maybe" for 1% of them, and one "maybe" is enough to open
//! a 24 GB index.) A shared fingerprint only sends the lookup to the index: "no" is exact.
//!
//! gc and `forget_result` delete entries without telling it: it holds a superset of the
//! index. The store decides when it speaks for the index at all (`Store`: the stamp of the
//! main index's files, as for the stage summaries).
//!
//! File layout (`presence/<digest>`, the digest of its bytes): `mvcpres2`, count (u64 LE),
//! then the fingerprints, sorted, u64 LE each.

use super::blobs::Hashed;
use super::index::{Index, Tree};
use super::memo::KeyHasher;
use crate::task::Digest;
use anyhow::{Context, Result};
use std::collections::HashSet;
use std::hash::BuildHasherDefault;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const MAGIC: &[u8; 8] = b"mvcpres2";

/// The filter's file is read and written this many bytes at a time.
const PIECE: usize = 1 << 20;

/// The side index's key of the filter's file: the digest of the main index's stamp it was
/// saved with (32 bytes), then the file's name (the hex digest of its bytes).
const POINTER: &[u8] = b"presence";

/// The trees whose entries the filter holds.
pub fn covers(tree: Tree) -> bool {
    matches!(
        tree,
        Tree::Tasks | Tree::Failures | Tree::Latest | Tree::Objects
    )
}

fn fingerprint(tree: Tree, key: &[u8]) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(tree.name().as_bytes());
    h.update(b"\0");
    h.update(key);
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap())
}

/// How the main index was found as it opened, which decides whether the filter speaks for it.
pub enum AtOpen {
    /// Created now: empty, as the filter.
    New,
    /// Its files as the side index's stamp has them.
    AsStamped,
    /// Changed since the stamp (a process died with it open, an older mvc).
    Changed,
    /// The journals wrote to it as it opened.
    Replayed,
}

/// The filter as a store keeps it: loaded from `cache/presence/` when it speaks for the main
/// index, told of every entry the store writes, saved with each stamp.
pub struct Keeper {
    dir: PathBuf,
    known: RwLock<Option<Known>>,
    /// Set once it was looked for while the main index was not open.
    tried: AtomicBool,
    /// Lookups it answered "no" without the index.
    answered_absent: AtomicU64,
}

/// The filter this process holds, and the file it was last saved as (`None`: changed since).
struct Known {
    filter: Presence,
    saved: Option<String>,
}

impl Keeper {
    /// The keeper of the filter of the cache at `cache` (its file in `cache/presence/`).
    pub fn new(cache: &Path) -> Keeper {
        Keeper {
            dir: cache.join("presence"),
            known: RwLock::new(None),
            tried: AtomicBool::new(false),
            answered_absent: AtomicU64::new(0),
        }
    }

    /// Loads the filter once while the main index is not open, with the stamp that
    /// `stamp_if_unchanged` (asked only then) gives when the index's files are as stamped.
    /// The other threads of a plan wait for it: one that went on without it would open the
    /// index for a lookup the filter answers.
    pub fn load_without_index(
        &self,
        side: &dyn Index,
        stamp_if_unchanged: impl FnOnce() -> Option<Vec<u8>>,
    ) {
        if self.tried.load(Ordering::Acquire) {
            return;
        }
        let mut known = self.known.write().unwrap();
        if !self.tried.swap(true, Ordering::AcqRel)
            && known.is_none()
            && let Some(stamp) = stamp_if_unchanged()
        {
            *known = self.load(side, Some(&stamp));
        }
    }

    /// Decides, as the main index opens, whether the filter speaks for it.
    pub fn at_open(&self, found: AtOpen, side: &dyn Index, stamp: Option<&[u8]>) {
        let mut known = self.known.write().unwrap();
        *known = match found {
            AtOpen::Replayed => None,
            AtOpen::New => Some(Known {
                filter: Presence::default(),
                saved: None,
            }),
            // Loaded already, while the index was not open, from these same files.
            AtOpen::AsStamped if known.is_some() => known.take(),
            AtOpen::AsStamped => self.load(side, stamp),
            AtOpen::Changed => {
                tracing::debug!(
                    "the presence filter is not used: the main index changed since it was saved"
                );
                None
            }
        };
    }

    /// The filter saved with the main index's `stamp` (the one the side index holds).
    fn load(&self, side: &dyn Index, stamp: Option<&[u8]>) -> Option<Known> {
        let not_used = |why: &str| {
            tracing::debug!("the presence filter is not used: {why}");
            None
        };
        let (Ok(Some(pointer)), Some(stamp)) = (side.get(Tree::Meta, POINTER), stamp) else {
            return not_used("none was saved with the main index's stamp");
        };
        if pointer.len() <= 32 || pointer[..32] != Digest::of(stamp).0 {
            return not_used("it was saved with another stamp of the main index");
        }
        let name = String::from_utf8_lossy(&pointer[32..]).into_owned();
        let path = self.dir.join(&name);
        // The pointer names a file that should be there, whole: anything else is damage,
        // which costs only the lookups the filter would have saved until the next run.
        let damaged = |why: String| {
            tracing::warn!(
                "the presence filter {} {why}: not used (the next run makes it again)",
                path.display()
            );
            None
        };
        let read = std::fs::File::open(&path).and_then(|file| {
            let len = file.metadata()?.len();
            Presence::read(file, len).map(|(digest, filter)| (digest, filter, len))
        });
        let (digest, filter, len) = match read {
            Ok(read) => read,
            Err(e) => return damaged(format!("cannot be read ({e})")),
        };
        if digest.to_hex() != name {
            return damaged("is damaged (its bytes are not those it was saved with)".into());
        }
        match filter {
            Ok(filter) => {
                tracing::debug!(
                    "the presence filter holds {} entries ({len} bytes)",
                    filter.entries(),
                );
                Some(Known {
                    filter,
                    saved: Some(name),
                })
            }
            Err(e) => damaged(format!("is damaged ({e:#})")),
        }
    }

    /// Whether it speaks for the main index.
    pub fn known(&self) -> bool {
        self.known.read().unwrap().is_some()
    }

    /// Whether the main index may hold `key` in `tree`: "no" only when the filter speaks for
    /// it and has never had the key.
    pub fn may_hold(&self, tree: Tree, key: &[u8]) -> bool {
        let holds = match &*self.known.read().unwrap() {
            Some(known) => known.filter.may_hold(tree, key),
            None => true,
        };
        if !holds {
            self.answered_absent.fetch_add(1, Ordering::Relaxed);
        }
        holds
    }

    /// Notes an entry the store is about to write to the main index.
    pub fn note(&self, tree: Tree, key: &[u8]) {
        if covers(tree)
            && let Some(known) = self.known.write().unwrap().as_mut()
        {
            known.filter.insert(tree, key);
            known.saved = None;
        }
    }

    /// Lookups answered "no" without the index.
    pub fn answered_absent(&self) -> u64 {
        self.answered_absent.load(Ordering::Relaxed)
    }

    /// Makes the filter hold every entry of `index` when it does not speak for it: one pass
    /// over the keys of three trees. `true` when it had to.
    pub fn rebuild(&self, index: &dyn Index) -> Result<bool> {
        if index.unavailable().is_some() || self.known() {
            return Ok(false);
        }
        // Fingerprints as the keys go by: at 100M tasks the keys themselves would not fit.
        let mut fingerprints = Vec::new();
        for tree in [Tree::Tasks, Tree::Failures, Tree::Latest] {
            for key in index.keys(tree) {
                fingerprints.push(fingerprint(tree, &key?));
            }
        }
        // An object record, and each of its views as if it had a latest entry of its own: a
        // lookup of a view that no record holds (a new ring's) is then answered "no".
        let mut columns = (Vec::new(), super::object_stage::Columns::default());
        for entry in index.scan(Tree::Objects, b"") {
            let (key, value) = entry?;
            fingerprints.push(fingerprint(Tree::Objects, &key));
            let Some(split) = key.iter().position(|&b| b == 0) else {
                continue;
            };
            let (stage, object) = (&key[..split], &key[split + 1..]);
            if object.is_empty() {
                // The stage's columns come before its records.
                let decoded =
                    super::object_stage::Columns::decode(&value).map_err(|e| anyhow::anyhow!(e))?;
                columns = (stage.to_vec(), decoded);
                continue;
            }
            if columns.0 != stage {
                continue;
            }
            let record =
                super::object_stage::ObjectStage::decode(&value).map_err(|e| anyhow::anyhow!(e))?;
            let stage = String::from_utf8_lossy(stage);
            for item in record.items(&columns.1) {
                fingerprints.push(fingerprint(
                    Tree::Latest,
                    &super::records::latest_key(&stage, &item),
                ));
            }
            // An item that is not a view, as if it had a result of its own too: its key,
            // recorded under a stage's old name, is looked for only when the filter says
            // "maybe" (`Store::view_in_another_stage`).
            if let Ok(Some((record, _))) = record.view(&columns.1, "") {
                fingerprints.push(fingerprint(Tree::Tasks, &record.key().0));
            }
        }
        let filter = Presence::from_fingerprints(fingerprints);
        tracing::debug!(
            "the presence filter was rebuilt: {} entries",
            filter.entries()
        );
        *self.known.write().unwrap() = Some(Known {
            filter,
            saved: None,
        });
        Ok(true)
    }

    /// Something wrote to the main index behind the filter: it speaks for it no more (until
    /// a run rebuilds it).
    pub fn distrust(&self) {
        *self.known.write().unwrap() = None;
    }

    /// Saves the filter (when it changed) and points the side index at it with the main
    /// index's new `stamp`; without one that speaks for the index, drops the pointer.
    pub fn save(&self, side: &dyn Index, stamp: &[u8]) -> Result<()> {
        let mut guard = self.known.write().unwrap();
        let Some(known) = guard.as_mut() else {
            return side.delete(Tree::Meta, POINTER);
        };
        let name = match &known.saved {
            Some(name) => name.clone(),
            None => {
                std::fs::create_dir_all(&self.dir)
                    .with_context(|| format!("creating {}", self.dir.display()))?;
                // Written as it is encoded, and named by the digest of what was written: at a
                // hundred million tasks its bytes are 800 MB that need not be held at once.
                // (`write_to` writes pieces of a megabyte: no buffer between.)
                let mut out = Hashed::new(tempfile::NamedTempFile::new_in(&self.dir)?);
                known.filter.write_to(&mut out).with_context(|| {
                    format!("writing the presence filter in {}", self.dir.display())
                })?;
                let name = Digest::from_hasher(&out.hasher).to_hex();
                out.file
                    .persist(self.dir.join(&name))
                    .map_err(|e| e.error)?;
                known.saved = Some(name.clone());
                name
            }
        };
        // Earlier filters, and a temporary file a killed process left.
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                if entry.file_name() != name.as_str() {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let mut pointer = Digest::of(stamp).0.to_vec();
        pointer.extend_from_slice(name.as_bytes());
        side.put(Tree::Meta, POINTER, &pointer)
    }

    /// Drops the side index's pointer (`mvc repair`: the index it spoke for goes aside).
    pub fn forget(side: &dyn Index) -> Result<()> {
        side.delete(Tree::Meta, POINTER)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Presence {
    /// As loaded or last merged: sorted, without repeats.
    sorted: Vec<u64>,
    /// Put in since (merged when the filter is encoded).
    added: Added,
}

/// The fingerprints put in since the filter was loaded, as 4,096 sets by 12 bits of each
/// that the sets' tables do not use (fingerprints are uniformly random). A set that outgrows
/// its table moves every entry at once: one set of a 30M-task fill's 29 million view items
/// moved them all, 600 MB, while one window of 100,000 records waited 2.2 s for it (the `xl`
/// benchmark's slowest, BENCHMARKS.md, "`xl` at 30M"). Here a table that grows moves a
/// 4,096th of them. Sets that fill at the same pace also double at nearly the same count:
/// 256 of them (as before) all doubled within about 1% of it, and that window of records
/// was still the `embed` stage's slowest at 30M (65,871/s against 113,000 and more;
/// BENCHMARKS.md, "Each stage's slowest 100k; …"). A set's count strays from the mean by
/// about its square root, so sets of a sixteenth the size spread their doublings four
/// times wider.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Added {
    /// Empty until the first fingerprint, and again once they are taken.
    sets: Vec<HashSet<u64, BuildHasherDefault<KeyHasher>>>,
}

impl Added {
    const SETS: usize = 4096;

    /// Bits 40 to 51: a set's table takes its places from the low bits (18 of them at a
    /// billion entries) and its tags from the top seven, so these stay as random within a
    /// set as they are among all.
    fn set_of(fp: u64) -> usize {
        (fp >> 40) as usize % Self::SETS
    }

    fn contains(&self, fp: u64) -> bool {
        !self.sets.is_empty() && self.sets[Self::set_of(fp)].contains(&fp)
    }

    fn insert(&mut self, fp: u64) {
        if self.sets.is_empty() {
            self.sets = (0..Self::SETS).map(|_| HashSet::default()).collect();
        }
        self.sets[Self::set_of(fp)].insert(fp);
    }

    fn len(&self) -> usize {
        self.sets.iter().map(|s| s.len()).sum()
    }

    fn is_empty(&self) -> bool {
        self.sets.iter().all(|s| s.is_empty())
    }

    /// Every fingerprint, sorted; leaves none (and no sets) behind.
    fn take_sorted(&mut self) -> Vec<u64> {
        let mut all = Vec::with_capacity(self.len());
        for set in std::mem::take(&mut self.sets) {
            all.extend(set);
        }
        all.sort_unstable();
        all
    }
}

impl Presence {
    /// Whether the index may hold `key` in `tree`: `false` is certain.
    pub fn may_hold(&self, tree: Tree, key: &[u8]) -> bool {
        self.holds(fingerprint(tree, key))
    }

    fn holds(&self, fp: u64) -> bool {
        sorted_holds(&self.sorted, fp) || self.added.contains(fp)
    }

    /// Notes that the index holds `key` in `tree`: from now on `may_hold` says so.
    pub fn insert(&mut self, tree: Tree, key: &[u8]) {
        let fp = fingerprint(tree, key);
        if !self.holds(fp) {
            self.added.insert(fp);
        }
    }

    /// A filter of exactly these entries.
    pub fn of<'a>(entries: impl Iterator<Item = (Tree, &'a [u8])>) -> Presence {
        Presence::from_fingerprints(entries.map(|(t, k)| fingerprint(t, k)).collect())
    }

    fn from_fingerprints(mut sorted: Vec<u64>) -> Presence {
        sorted.sort_unstable();
        sorted.dedup();
        Presence {
            sorted,
            added: Added::default(),
        }
    }

    pub fn entries(&self) -> u64 {
        (self.sorted.len() + self.added.len()) as u64
    }

    /// Writes the bytes of the file to `out` a piece at a time, after merging in what was
    /// added ([`Presence::merge_added`]).
    pub fn write_to(&mut self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        self.merge_added();
        out.write_all(MAGIC)?;
        out.write_all(&(self.sorted.len() as u64).to_le_bytes())?;
        let mut piece = Vec::with_capacity(PIECE);
        for fps in self.sorted.chunks(PIECE / 8) {
            piece.clear();
            for fp in fps {
                piece.extend_from_slice(&fp.to_le_bytes());
            }
            out.write_all(&piece)?;
        }
        Ok(())
    }

    /// The bytes of the file, whole.
    #[cfg(test)]
    pub fn encode(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.entries() as usize * 8);
        self.write_to(&mut out).expect("writing to memory");
        out
    }

    /// Merges what was added into the sorted entries, in place: from the back, into room
    /// made for exactly them. A stable sort of the two runs took half of them again as
    /// scratch, and the file's bytes, made whole, a third copy: 8 bytes a task each, at the
    /// end of a run (a 10M fill's end rose 83 MB with them and 11 MB without; BENCHMARKS.md,
    /// "Each stage's slowest 100k; the presence filter's sets and its save").
    fn merge_added(&mut self) {
        if self.added.is_empty() {
            return;
        }
        let added = self.added.take_sorted();
        if self.sorted.is_empty() {
            self.sorted = added;
            return;
        }
        let kept = self.sorted.len();
        self.sorted.reserve_exact(added.len());
        self.sorted.resize(kept + added.len(), 0);
        // `insert` puts in only what the sorted entries do not hold: no repeats to drop.
        let (mut from_kept, mut from_added) = (kept, added.len());
        for at in (0..self.sorted.len()).rev() {
            if from_added == 0 {
                break;
            }
            if from_kept > 0 && self.sorted[from_kept - 1] > added[from_added - 1] {
                from_kept -= 1;
                self.sorted[at] = self.sorted[from_kept];
            } else {
                from_added -= 1;
                self.sorted[at] = added[from_added];
            }
        }
        debug_assert!(self.sorted.windows(2).all(|w| w[0] < w[1]));
    }

    pub fn decode(bytes: &[u8]) -> Result<Presence> {
        let (_, filter) = Presence::read(bytes, bytes.len() as u64)?;
        filter
    }

    /// Reads a filter's `len` bytes from `from` a piece at a time: the digest of the bytes,
    /// and the filter they hold (or why they hold none). At a hundred million tasks the
    /// bytes and the entries are 1.6 GB each, and a plan held both at once.
    pub fn read(
        mut from: impl std::io::Read,
        len: u64,
    ) -> std::io::Result<(Digest, Result<Presence>)> {
        let mut hasher = blake3::Hasher::new();
        let mut header = [0u8; 16];
        let got = fill(&mut from, &mut header)?;
        hasher.update(&header[..got]);
        let count = u64::from_le_bytes(header[8..16].try_into().unwrap());
        let shape = if got < 16 || &header[..8] != MAGIC {
            Err("not a presence filter (wrong magic or cut short)".to_string())
        } else if len.checked_sub(16) != Some(count.saturating_mul(8)) {
            Err(format!(
                "the presence filter says {count} entries but holds {} bytes of them",
                len.saturating_sub(16)
            ))
        } else {
            Ok(())
        };
        // Sized by the file's length, not by what its bytes claim.
        let mut sorted = Vec::with_capacity(if shape.is_ok() { count as usize } else { 0 });
        let mut piece = vec![0u8; PIECE];
        loop {
            let n = fill(&mut from, &mut piece)?;
            hasher.update(&piece[..n]);
            if shape.is_ok() {
                sorted.extend(
                    piece[..n]
                        .chunks_exact(8)
                        .map(|b| u64::from_le_bytes(b.try_into().unwrap())),
                );
            }
            if n < piece.len() {
                break;
            }
        }
        let digest = Digest(*hasher.finalize().as_bytes());
        let filter = match shape {
            Err(why) => Err(anyhow::anyhow!(why)),
            Ok(()) if sorted.len() as u64 != count => Err(anyhow::anyhow!(
                "the presence filter was cut short while it was read"
            )),
            // Out of order, a binary search would miss what it holds.
            Ok(()) if sorted.windows(2).any(|w| w[0] >= w[1]) => Err(anyhow::anyhow!(
                "the presence filter's entries are not in order"
            )),
            Ok(()) => Ok(Presence {
                sorted,
                added: Added::default(),
            }),
        };
        Ok((digest, filter))
    }
}

/// Whether `sorted` (ascending, without repeats) holds `fp`. Fingerprints are uniformly
/// random, so the place of `fp` is guessed from its value (interpolation search): a handful
/// of reads of memory, each a cache miss at 30M entries, where a binary search made 25 and
/// took three quarters of a plan after a new ring (BENCHMARKS.md, "View columns"). A list
/// that is not uniform (the guesses narrow it slowly) is searched by halves after eight.
fn sorted_holds(sorted: &[u64], fp: u64) -> bool {
    const GUESSES: usize = 8;
    // Narrow: below this many entries, halving is as quick as guessing.
    const NARROW: usize = 64;
    let (mut lo, mut hi) = (0, sorted.len());
    for _ in 0..GUESSES {
        if hi - lo <= NARROW {
            break;
        }
        let (first, last) = (sorted[lo], sorted[hi - 1]);
        if fp < first || fp > last {
            return false;
        }
        // first < last: entries are distinct and there are more than NARROW of them.
        let span = (hi - 1 - lo) as u128;
        let at = lo + ((u128::from(fp - first) * span) / u128::from(last - first)) as usize;
        match sorted[at].cmp(&fp) {
            std::cmp::Ordering::Equal => return true,
            std::cmp::Ordering::Less => lo = at + 1,
            std::cmp::Ordering::Greater => hi = at,
        }
    }
    sorted[lo..hi].binary_search(&fp).is_ok()
}

/// Reads into `buf` until it is full or `from` ends: how many bytes it holds.
fn fill(from: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match from.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> [u8; 32] {
        *blake3::hash(&i.to_le_bytes()).as_bytes()
    }

    #[test]
    fn what_was_put_in_is_held_and_nothing_else_is() {
        let keys: Vec<[u8; 32]> = (0..50_000).map(key).collect();
        let mut filter = Presence::of(keys.iter().map(|k| (Tree::Tasks, k.as_slice())));
        for i in 50_000..60_000 {
            filter.insert(Tree::Tasks, &key(i));
        }
        assert_eq!(filter.entries(), 60_000);
        assert!((0..60_000).all(|i| filter.may_hold(Tree::Tasks, &key(i))));
        assert!(!(60_000..160_000).any(|i| filter.may_hold(Tree::Tasks, &key(i))));
        // Trees are apart: a result's key is not a latest entry's.
        assert!(!(0..60_000).any(|i| filter.may_hold(Tree::Latest, &key(i))));
        // Put twice, held once.
        filter.insert(Tree::Tasks, &key(7));
        filter.insert(Tree::Tasks, &key(55_000));
        assert_eq!(filter.entries(), 60_000);
    }

    #[test]
    fn it_reads_back_what_it_wrote_and_refuses_damaged_bytes() {
        let mut filter = Presence::default();
        for i in 0..1000 {
            filter.insert(Tree::Failures, &key(i));
        }
        let bytes = filter.encode();
        let read = Presence::decode(&bytes).unwrap();
        assert_eq!(read, filter);
        assert!((0..1000).all(|i| read.may_hold(Tree::Failures, &key(i))));

        let short = Presence::decode(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(short.to_string().contains("holds 7999 bytes"), "{short}");
        let magic = Presence::decode(b"mvcmemo1\0\0\0\0\0\0\0\0").unwrap_err();
        assert!(magic.to_string().contains("wrong magic"), "{magic}");
        let mut shuffled = bytes.clone();
        shuffled[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        let order = Presence::decode(&shuffled).unwrap_err();
        assert!(order.to_string().contains("not in order"), "{order}");
    }

    #[test]
    fn a_guessed_search_finds_what_a_binary_search_finds_uniform_or_not() {
        let uniform: Vec<u64> = {
            let mut v: Vec<u64> = (0..100_000u64)
                .map(|i| u64::from_le_bytes(key(i)[..8].try_into().unwrap()))
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        // Not uniform at all: a dense run, a gap, and entries at both ends of the range.
        let skewed: Vec<u64> = (0..5_000u64)
            .map(|i| i * 3)
            .chain((0..5_000u64).map(|i| (1 << 40) + i))
            .chain([u64::MAX - 1, u64::MAX])
            .collect();
        for sorted in [&uniform[..], &skewed[..], &[][..], &[7][..]] {
            let probes = sorted
                .iter()
                .flat_map(|&v| [v, v.wrapping_add(1), v.wrapping_sub(1)])
                .chain([0, 1, u64::MAX, u64::MAX / 2]);
            for fp in probes {
                assert_eq!(
                    sorted_holds(sorted, fp),
                    sorted.binary_search(&fp).is_ok(),
                    "{fp} in a list of {}",
                    sorted.len()
                );
            }
        }
    }

    /// A reader that gives at most `most` bytes a call, as a pipe or a slow disk may.
    struct Trickle<'a> {
        bytes: &'a [u8],
        most: usize,
    }

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.most).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_filter_read_a_piece_at_a_time_is_the_one_saved() {
        // Three pieces and a bit: 300,000 entries are 2.4 MB.
        let mut filter = Presence::default();
        for i in 0..300_000 {
            filter.insert(Tree::Tasks, &key(i));
        }
        let bytes = filter.encode();
        let trickle = Trickle {
            bytes: &bytes,
            most: 1000,
        };
        let (digest, read) = Presence::read(trickle, bytes.len() as u64).unwrap();
        assert_eq!(digest, Digest::of(&bytes));
        assert_eq!(read.unwrap(), filter);

        // Shorter than its length said when it was opened: no filter, and the digest of
        // what was read, which is not the file's name.
        let cut = &bytes[..bytes.len() - 8];
        let (digest, read) = Presence::read(cut, bytes.len() as u64).unwrap();
        assert_ne!(digest, Digest::of(&bytes));
        let why = read.unwrap_err();
        assert!(why.to_string().contains("cut short"), "{why}");
    }

    #[test]
    fn what_was_added_is_merged_in_place_into_the_sorted_union_and_written_as_it_goes() {
        let fps = |range: std::ops::Range<u64>| -> Vec<u64> {
            range.map(|i| fingerprint(Tree::Tasks, &key(i))).collect()
        };
        // Loaded entries and added ones, interleaved, some put in twice; then added alone
        // (nothing loaded), and loaded alone (nothing added).
        for (loaded, added) in [(0..50_000, 40_000..90_000), (0..0, 0..3), (0..5, 0..0)] {
            let mut filter = Presence::from_fingerprints(fps(loaded.clone()));
            for i in added.clone() {
                filter.insert(Tree::Tasks, &key(i));
            }
            let mut union = fps(loaded.start..loaded.end.max(added.end));
            union.sort_unstable();
            let mut expected = MAGIC.to_vec();
            expected.extend_from_slice(&(union.len() as u64).to_le_bytes());
            for fp in &union {
                expected.extend_from_slice(&fp.to_le_bytes());
            }
            let mut written = Vec::new();
            filter.write_to(&mut written).unwrap();
            assert_eq!(filter.sorted, union, "{loaded:?} and {added:?}");
            assert!(filter.added.is_empty());
            assert_eq!(written, expected, "{loaded:?} and {added:?}");
        }
    }

    #[test]
    fn a_saved_filter_is_named_by_its_digest_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let side = super::super::index::SledIndex::open_small(&dir.path().join("side")).unwrap();
        let keeper = Keeper::new(dir.path());
        keeper.at_open(AtOpen::New, &side, None);
        // More than a piece of the file (1 MB is 131,072 entries).
        for i in 0..200_000 {
            keeper.note(Tree::Latest, &key(i));
        }
        keeper.save(&side, b"stamp").unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path().join("presence"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(names.len(), 1, "one file, no temporary one: {names:?}");
        let bytes = std::fs::read(&names[0]).unwrap();
        assert_eq!(
            names[0].file_name().unwrap().to_str().unwrap(),
            Digest::of(&bytes).to_hex()
        );

        let again = Keeper::new(dir.path());
        again.at_open(AtOpen::AsStamped, &side, Some(b"stamp"));
        assert!(again.known());
        assert!((0..200_000).all(|i| again.may_hold(Tree::Latest, &key(i))));
        assert!(!(200_000..210_000).any(|i| again.may_hold(Tree::Latest, &key(i))));
    }

    #[test]
    fn the_sets_of_what_was_added_do_not_all_grow_at_once() {
        // 2.4M random fingerprints (splitmix64): past the count at which every one of 4,096
        // sets has doubled from 512 places to 1,024 (7/8 full). What a window of a
        // hundredth of the inserts moves, against what the sets then hold: 256 sets, 16
        // times fuller, all doubled within one such window.
        let total = 2_457_600;
        let window = total / 100;
        let mut added = Added::default();
        let mut state = 0u64;
        let (mut moved, mut worst) = (0usize, 0f64);
        for n in 1..=total {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut fp = state;
            fp = (fp ^ (fp >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            fp = (fp ^ (fp >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            fp ^= fp >> 31;
            let set = Added::set_of(fp);
            let before = added.sets.get(set).map_or(0, |s| s.capacity());
            added.insert(fp);
            let grown = &added.sets[set];
            if before != 0 && grown.capacity() != before {
                moved += grown.len() - 1;
            }
            if n % window == 0 {
                // The first tenth: tables of a few entries, moved in no time.
                if n > total / 10 {
                    worst = worst.max(moved as f64 / n as f64);
                }
                moved = 0;
            }
        }
        assert_eq!(added.len(), total);
        assert!(
            worst < 0.25,
            "one window moved {:.0}% of the entries",
            worst * 100.0
        );
    }

    #[test]
    fn added_fingerprints_are_held_whichever_set_they_fall_in() {
        let mut added = Added::default();
        assert!(added.is_empty() && !added.contains(1));
        // The same bits 40 to 51 (one set) and different ones (others), some put in twice.
        let one_set: Vec<u64> = (0..1000u64).map(|i| (7 << 48) | i << 56 | i).collect();
        let spread: Vec<u64> = (0..1000u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        for &fp in one_set.iter().chain(&spread).chain(&spread[..10]) {
            added.insert(fp);
        }
        let mut all: Vec<u64> = one_set.iter().chain(&spread).copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(added.len(), all.len());
        assert!(all.iter().all(|&fp| added.contains(fp)));
        assert!(!added.contains(6 << 48) && !added.contains(u64::MAX));
        assert_eq!(added.take_sorted(), all);
        assert!(added.is_empty() && !added.contains(all[0]));
        assert_eq!(added, Added::default());
    }
}
