//! The index: small, ordered key-value trees. One trait, one backend (sled), so that the
//! backend can be replaced in one file if sled's known problems (space growth, crash
//! recovery) bite.

use anyhow::{Context, Result};
use std::path::Path;

/// The trees of the index (ARCHITECTURE.md, "The cache").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tree {
    /// Index-wide facts: the schema version.
    Meta,
    /// Task key → task result (output manifest, logs, timing).
    Tasks,
    /// Task key → key record, for `mvc why` and plan reasons.
    Records,
    /// Shared-parameter digest → parameter slice (stored once per stage version).
    Params,
    /// `stage \0 item` → the key of the last result recorded for that item.
    Latest,
    /// Task key → permanent item failure (the negative cache).
    Failures,
    /// Absolute path → (size, mtime, inode) → digest: the stat cache.
    Stats,
    /// Run id → run summary.
    Runs,
    /// Stage name → digest of the stage's plan memo blob.
    Memos,
    /// Unit id → the tasks a remote worker holds (with their key records), so that a
    /// coordinator restarted on this cache accepts the results of units leased before.
    Leases,
    /// Stage name → its stage summary (`store::summaries`): what the last run found for all
    /// of the stage's tasks at once.
    Summaries,
    /// `stage \0 object` → the views of an object in that stage, one record
    /// (`store::object_stage`); `stage \0` → the stage's view columns.
    Objects,
}

impl Tree {
    /// In the order of the journal's tree codes: a new tree goes at the end.
    pub const ALL: [Tree; 12] = [
        Tree::Meta,
        Tree::Tasks,
        Tree::Records,
        Tree::Params,
        Tree::Latest,
        Tree::Failures,
        Tree::Stats,
        Tree::Runs,
        Tree::Memos,
        Tree::Leases,
        Tree::Summaries,
        Tree::Objects,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tree::Meta => "meta",
            Tree::Tasks => "tasks",
            Tree::Records => "records",
            Tree::Params => "params",
            Tree::Latest => "latest",
            Tree::Failures => "failures",
            Tree::Stats => "stats",
            Tree::Runs => "runs",
            Tree::Memos => "memos",
            Tree::Leases => "leases",
            Tree::Summaries => "summaries",
            Tree::Objects => "objects",
        }
    }
}

pub type Entry = (Vec<u8>, Vec<u8>);

pub trait Index: Send + Sync {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>>;
    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<()>;
    fn delete(&self, tree: Tree, key: &[u8]) -> Result<()>;
    /// Entries whose key starts with `prefix`, in key order.
    fn scan<'a>(
        &'a self,
        tree: Tree,
        prefix: &[u8],
    ) -> Box<dyn Iterator<Item = Result<Entry>> + 'a>;
    /// Entries whose key starts with `prefix` and is at least `from`, in key order (a page
    /// of a long scan, without reading the entries before it).
    fn scan_from<'a>(
        &'a self,
        tree: Tree,
        prefix: &[u8],
        from: &[u8],
    ) -> Box<dyn Iterator<Item = Result<Entry>> + 'a>;
    /// The keys of a tree, in order (a sequential pass that does not copy the values).
    fn keys<'a>(&'a self, tree: Tree) -> Box<dyn Iterator<Item = Result<Vec<u8>>> + 'a>;
    fn len(&self, tree: Tree) -> usize;
    /// Makes every write so far durable.
    fn flush(&self) -> Result<()>;
    /// Bytes the index occupies on disk.
    fn size_on_disk(&self) -> u64;
    /// Why this index cannot be used, when it is [`Unavailable`].
    fn unavailable(&self) -> Option<&str> {
        None
    }
}

/// An index that could not be opened when first used (`Store::index` on a store opened
/// with `Store::open_deferred`): every call answers with the reason.
pub struct Unavailable(pub String);

impl Unavailable {
    fn error(&self) -> anyhow::Error {
        anyhow::anyhow!("{}", self.0)
    }
}

impl Index for Unavailable {
    fn get(&self, _: Tree, _: &[u8]) -> Result<Option<Vec<u8>>> {
        Err(self.error())
    }
    fn put(&self, _: Tree, _: &[u8], _: &[u8]) -> Result<()> {
        Err(self.error())
    }
    fn delete(&self, _: Tree, _: &[u8]) -> Result<()> {
        Err(self.error())
    }
    fn scan<'a>(&'a self, _: Tree, _: &[u8]) -> Box<dyn Iterator<Item = Result<Entry>> + 'a> {
        Box::new(std::iter::once(Err(self.error())))
    }
    fn scan_from<'a>(
        &'a self,
        _: Tree,
        _: &[u8],
        _: &[u8],
    ) -> Box<dyn Iterator<Item = Result<Entry>> + 'a> {
        Box::new(std::iter::once(Err(self.error())))
    }
    fn keys<'a>(&'a self, _: Tree) -> Box<dyn Iterator<Item = Result<Vec<u8>>> + 'a> {
        Box::new(std::iter::once(Err(self.error())))
    }
    fn len(&self, _: Tree) -> usize {
        0
    }
    fn flush(&self) -> Result<()> {
        Err(self.error())
    }
    fn size_on_disk(&self) -> u64 {
        0
    }
    fn unavailable(&self) -> Option<&str> {
        Some(&self.0)
    }
}

/// How often sled writes its buffers out. A SIGKILL loses the results recorded in the last
/// interval (their tasks run again); sled's default of 500 ms made that up to half a second
/// of work.
const FLUSH_EVERY_MS: u64 = 100;

pub struct SledIndex {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    /// The cache directory, for the error of a damaged index.
    cache: String,
}

impl SledIndex {
    pub fn open(dir: &Path) -> Result<SledIndex> {
        // sled's default page cache is 1 GiB; plans of a million tasks must stay under 1 GB
        // in all, and the plan memos (not sled) carry the bulk lookups.
        SledIndex::open_sized(dir, 128 << 20, 512 << 10)
    }

    /// A small index (the cache's side index: a few entries per stage and input file). sled
    /// writes a segment as it opens: 32 KiB, not the default 512 KiB, so that on a nearly
    /// full disk opening it does not take the room the main index needs to open.
    pub fn open_small(dir: &Path) -> Result<SledIndex> {
        SledIndex::open_sized(dir, 8 << 20, 32 << 10)
    }

    fn open_sized(dir: &Path, cache_bytes: u64, segment_bytes: usize) -> Result<SledIndex> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .segment_size(segment_bytes)
            .flush_every_ms(Some(FLUSH_EVERY_MS))
            .open()
            .with_context(|| format!("opening the index at {}", dir.display()))?;
        let trees = Tree::ALL
            .iter()
            .map(|t| db.open_tree(t.name()))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("opening the index trees at {}", dir.display()))?;
        let cache = dir.parent().unwrap_or(dir).display().to_string();
        Ok(SledIndex { db, trees, cache })
    }

    fn tree(&self, tree: Tree) -> &sled::Tree {
        &self.trees[Tree::ALL.iter().position(|t| *t == tree).unwrap()]
    }

    /// sled's error, as an [`super::IndexDamaged`] (which says what to run) when it is damage
    /// found while reading: an index can open and still hold a damaged page.
    fn error(&self, e: sled::Error) -> anyhow::Error {
        match e {
            sled::Error::Corruption { .. } => super::IndexDamaged {
                cache: self.cache.clone(),
                cause: e.to_string(),
            }
            .into(),
            e => e.into(),
        }
    }
}

impl Index for SledIndex {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let value = self.tree(tree).get(key).map_err(|e| self.error(e))?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<()> {
        self.tree(tree)
            .insert(key, value)
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    fn delete(&self, tree: Tree, key: &[u8]) -> Result<()> {
        self.tree(tree).remove(key).map_err(|e| self.error(e))?;
        Ok(())
    }

    fn scan<'a>(
        &'a self,
        tree: Tree,
        prefix: &[u8],
    ) -> Box<dyn Iterator<Item = Result<Entry>> + 'a> {
        Box::new(self.tree(tree).scan_prefix(prefix).map(|r| {
            r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(|e| self.error(e))
        }))
    }

    fn scan_from<'a>(
        &'a self,
        tree: Tree,
        prefix: &[u8],
        from: &[u8],
    ) -> Box<dyn Iterator<Item = Result<Entry>> + 'a> {
        let prefix = prefix.to_vec();
        Box::new(
            self.tree(tree)
                .range(from.to_vec()..)
                .take_while(move |r| r.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)))
                .map(|r| {
                    r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                        .map_err(|e| self.error(e))
                }),
        )
    }

    fn keys<'a>(&'a self, tree: Tree) -> Box<dyn Iterator<Item = Result<Vec<u8>>> + 'a> {
        Box::new(
            self.tree(tree)
                .iter()
                .keys()
                .map(|k| k.map(|k| k.to_vec()).map_err(|e| self.error(e))),
        )
    }

    fn len(&self, tree: Tree) -> usize {
        self.tree(tree).len()
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().context("flushing the index")?;
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}
