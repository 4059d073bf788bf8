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

use super::index::Tree;
use super::memo::KeyHasher;
use anyhow::{Result, bail};
use std::collections::HashSet;
use std::hash::BuildHasherDefault;

const MAGIC: &[u8; 8] = b"mvcpres2";

/// The trees whose entries the filter holds.
pub fn covers(tree: Tree) -> bool {
    matches!(tree, Tree::Tasks | Tree::Failures | Tree::Latest)
}

fn fingerprint(tree: Tree, key: &[u8]) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(tree.name().as_bytes());
    h.update(b"\0");
    h.update(key);
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap())
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Presence {
    /// As loaded or last merged: sorted, without repeats.
    sorted: Vec<u64>,
    /// Put in since (merged when the filter is encoded).
    added: HashSet<u64, BuildHasherDefault<KeyHasher>>,
}

impl Presence {
    /// Whether the index may hold `key` in `tree`: `false` is certain.
    pub fn may_hold(&self, tree: Tree, key: &[u8]) -> bool {
        self.holds(fingerprint(tree, key))
    }

    fn holds(&self, fp: u64) -> bool {
        self.sorted.binary_search(&fp).is_ok() || self.added.contains(&fp)
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
        let mut sorted: Vec<u64> = entries.map(|(t, k)| fingerprint(t, k)).collect();
        sorted.sort_unstable();
        sorted.dedup();
        Presence {
            sorted,
            added: HashSet::default(),
        }
    }

    pub fn entries(&self) -> u64 {
        (self.sorted.len() + self.added.len()) as u64
    }

    /// The bytes of the file (what was added is merged in: one pass).
    pub fn encode(&mut self) -> Vec<u8> {
        if !self.added.is_empty() {
            let mut added: Vec<u64> = self.added.drain().collect();
            added.sort_unstable();
            let mut merged = Vec::with_capacity(self.sorted.len() + added.len());
            let (mut a, mut b) = (self.sorted.iter().peekable(), added.iter().peekable());
            while let (Some(&&x), Some(&&y)) = (a.peek(), b.peek()) {
                if x <= y {
                    merged.push(x);
                    a.next();
                } else {
                    merged.push(y);
                    b.next();
                }
            }
            merged.extend(a);
            merged.extend(b);
            self.sorted = merged;
        }
        let mut out = Vec::with_capacity(16 + self.sorted.len() * 8);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.sorted.len() as u64).to_le_bytes());
        for fp in &self.sorted {
            out.extend_from_slice(&fp.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Presence> {
        if bytes.len() < 16 || &bytes[..8] != MAGIC {
            bail!("not a presence filter (wrong magic or cut short)");
        }
        let count = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
        let body = &bytes[16..];
        if body.len() as u64 != count.saturating_mul(8) {
            bail!(
                "the presence filter says {count} entries but holds {} bytes of them",
                body.len()
            );
        }
        let sorted: Vec<u64> = body
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        // Out of order, a binary search would miss what it holds.
        if sorted.windows(2).any(|w| w[0] >= w[1]) {
            bail!("the presence filter's entries are not in order");
        }
        Ok(Presence {
            sorted,
            added: HashSet::default(),
        })
    }
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
}
