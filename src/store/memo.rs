//! Plan memos: one blob per stage listing the keys the index had answered for that stage at
//! the end of the last run, with what downstream keys need (the output manifest digest) and
//! what a hit must check (blob sizes).
//!
//! Why: sled answers about 300k random lookups a second on this kind of machine, so a plan
//! of a million cached tasks spent over three seconds in the index alone. A memo is read
//! sequentially and verified in one go. It only ever holds keys that were committed to the
//! index; a key it lacks falls back to the index, and `gc` rewrites memos when it deletes.
//!
//! The format is a flat table searched in place (no decoding: loading a memo of half a
//! million entries is one read and one hash):
//! - header: `mvcmemo1`, entry count (u64 LE);
//! - entries sorted by key, 80 bytes each: key (32), manifest (32), status (1: 0 done,
//!   1 failed), padding (7), first blob index (u32 LE), blob count (u32 LE);
//! - blob table, 40 bytes each: digest (32), size (u64 LE).

use super::blobs::BlobStore;
use super::index::{Index, Tree};
use crate::task::{Digest, TaskKey};
use anyhow::{Result, bail};
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Write;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemoValue {
    Done {
        manifest: Digest,
        blobs: Vec<(Digest, u64)>,
    },
    Failed,
}

/// Task keys are already uniformly random: hashing them again is wasted work.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
    fn write_usize(&mut self, _: usize) {
        // Length prefixes of fixed-size keys carry no information.
    }
}

pub type KeySet = HashSet<TaskKey, BuildHasherDefault<KeyHasher>>;

const MAGIC: &[u8; 8] = b"mvcmemo1";
const HEADER: usize = 16;
const ENTRY: usize = 80;
const BLOB: usize = 40;
const BUCKETS: usize = 1 << 16;

fn bucket_of(first_two: &[u8]) -> usize {
    (first_two[0] as usize) << 8 | first_two[1] as usize
}

fn bucket(key: &TaskKey) -> usize {
    bucket_of(&key.0[..2])
}

#[derive(Default)]
pub struct StageMemo {
    bytes: Vec<u8>,
    count: usize,
    /// `buckets[b]..buckets[b + 1]`: the entries whose key starts with the 16 bits `b`
    /// (keys are uniformly random, so a lookup scans a handful of entries).
    buckets: Vec<u32>,
}

impl StageMemo {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn entry(&self, i: usize) -> &[u8] {
        &self.bytes[HEADER + i * ENTRY..HEADER + (i + 1) * ENTRY]
    }

    fn value(&self, entry: &[u8]) -> MemoValue {
        if entry[64] == 1 {
            return MemoValue::Failed;
        }
        let first = u32::from_le_bytes(entry[72..76].try_into().unwrap()) as usize;
        let n = u32::from_le_bytes(entry[76..80].try_into().unwrap()) as usize;
        let table = HEADER + self.count * ENTRY;
        let blobs = (first..first + n)
            .map(|b| {
                let at = table + b * BLOB;
                let digest = Digest(self.bytes[at..at + 32].try_into().unwrap());
                let size = u64::from_le_bytes(self.bytes[at + 32..at + 40].try_into().unwrap());
                (digest, size)
            })
            .collect();
        MemoValue::Done {
            manifest: Digest(entry[32..64].try_into().unwrap()),
            blobs,
        }
    }

    pub fn get(&self, key: &TaskKey) -> Option<MemoValue> {
        if self.count == 0 {
            return None;
        }
        let b = bucket(key);
        let prefix = u64::from_be_bytes(key.0[..8].try_into().unwrap());
        (self.buckets[b] as usize..self.buckets[b + 1] as usize)
            .map(|i| self.entry(i))
            .find(|e| u64::from_be_bytes(e[..8].try_into().unwrap()) == prefix && e[..32] == key.0)
            .map(|e| self.value(e))
    }

    pub fn iter(&self) -> impl Iterator<Item = (TaskKey, MemoValue)> + '_ {
        (0..self.count).map(|i| {
            let entry = self.entry(i);
            (Digest(entry[..32].try_into().unwrap()), self.value(entry))
        })
    }

    fn parse(bytes: Vec<u8>) -> Result<StageMemo> {
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            bail!("not a plan memo");
        }
        let count = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
        let table = HEADER + count * ENTRY;
        if bytes.len() < table || !(bytes.len() - table).is_multiple_of(BLOB) {
            bail!("truncated plan memo");
        }
        let mut memo = StageMemo {
            bytes,
            count,
            buckets: Vec::new(),
        };
        let mut buckets = vec![0u32; BUCKETS + 1];
        let blobs = (memo.bytes.len() - table) / BLOB;
        let mut previous: Option<&[u8]> = None;
        for i in 0..count {
            let e = memo.entry(i);
            if previous.is_some_and(|p| p >= &e[..32]) {
                bail!("plan memo entries are not sorted");
            }
            previous = Some(&e[..32]);
            buckets[bucket_of(&e[..2]) + 1] += 1;
            let first = u32::from_le_bytes(e[72..76].try_into().unwrap()) as usize;
            let n = u32::from_le_bytes(e[76..80].try_into().unwrap()) as usize;
            if first + n > blobs {
                bail!("plan memo entry {i} points past its blob table");
            }
        }
        for b in 0..BUCKETS {
            buckets[b + 1] += buckets[b];
        }
        memo.buckets = buckets;
        Ok(memo)
    }

    /// The memo saved for `stage`, or an empty one when there is none or it does not verify
    /// (a memo is only a shortcut: losing it costs time, never correctness).
    pub fn load(index: &dyn Index, blobs: &BlobStore, stage: &str) -> Result<StageMemo> {
        let Some(digest) = index.get(Tree::Memos, stage.as_bytes())? else {
            return Ok(StageMemo::default());
        };
        let Ok(digest) = <[u8; 32]>::try_from(digest.as_slice()) else {
            return Ok(StageMemo::default());
        };
        let bytes = match blobs.read(&Digest(digest)) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::debug!("plan memo of stage {stage} unusable: {e}");
                return Ok(StageMemo::default());
            }
        };
        Ok(StageMemo::parse(bytes).unwrap_or_default())
    }

    pub fn encode(mut list: Vec<(TaskKey, MemoValue)>) -> Vec<u8> {
        list.sort_unstable_by_key(|e| e.0);
        list.dedup_by_key(|e| e.0);
        let mut bytes = Vec::with_capacity(HEADER + list.len() * ENTRY);
        write_sorted(&mut bytes, list.len(), list.into_iter()).expect("a Vec takes every write");
        bytes
    }

    pub fn save(
        index: &dyn Index,
        blobs: &BlobStore,
        stage: &str,
        list: Vec<(TaskKey, MemoValue)>,
    ) -> Result<()> {
        let digest = blobs.put_bytes(&StageMemo::encode(list))?;
        index.put(Tree::Memos, stage.as_bytes(), &digest.0)?;
        Ok(())
    }

    /// Saves the memo of `count` entries given sorted by key, each key once, as they come:
    /// neither the list nor its encoding is held (at Objaverse-XL's size a stage's memo is
    /// gigabytes, and a run's end held both, 170 bytes a task, at once).
    pub fn save_sorted(
        index: &dyn Index,
        blobs: &BlobStore,
        stage: &str,
        count: usize,
        entries: impl Iterator<Item = (TaskKey, MemoValue)>,
    ) -> Result<()> {
        let digest = blobs.put_streamed(|out| write_sorted(out, count, entries))?;
        index.put(Tree::Memos, stage.as_bytes(), &digest.0)?;
        Ok(())
    }
}

/// Writes a memo of `count` entries, given sorted by key and each key once; the blob table
/// (the outputs that are files: none for a stage whose outputs live inline) is held until
/// the entries are written.
fn write_sorted(
    out: &mut dyn Write,
    count: usize,
    entries: impl Iterator<Item = (TaskKey, MemoValue)>,
) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(out);
    out.write_all(MAGIC)?;
    out.write_all(&(count as u64).to_le_bytes())?;
    let mut table: Vec<u8> = Vec::new();
    let mut next_blob = 0u32;
    let mut written = 0usize;
    for (key, value) in entries {
        written += 1;
        out.write_all(&key.0)?;
        match value {
            MemoValue::Done { manifest, blobs } => {
                out.write_all(&manifest.0)?;
                out.write_all(&[0u8; 8])?;
                out.write_all(&next_blob.to_le_bytes())?;
                out.write_all(&(blobs.len() as u32).to_le_bytes())?;
                for (digest, size) in &blobs {
                    table.extend_from_slice(&digest.0);
                    table.extend_from_slice(&size.to_le_bytes());
                }
                next_blob += blobs.len() as u32;
            }
            MemoValue::Failed => {
                out.write_all(&[0u8; 32])?;
                out.write_all(&[1u8, 0, 0, 0, 0, 0, 0, 0])?;
                out.write_all(&[0u8; 8])?;
            }
        }
    }
    if written != count {
        // The header's count would not be the entries': a memo that does not parse.
        return Err(std::io::Error::other(format!(
            "{written} memo entries given for a memo of {count}"
        )));
    }
    out.write_all(&table)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_round_trips_and_finds_every_key() {
        let list: Vec<(TaskKey, MemoValue)> = (0..1000u32)
            .map(|i| {
                let key = Digest::of(&i.to_le_bytes());
                let value = match i % 3 {
                    0 => MemoValue::Failed,
                    1 => MemoValue::Done {
                        manifest: Digest::of(b"m"),
                        blobs: vec![],
                    },
                    _ => MemoValue::Done {
                        manifest: Digest::of(&[i as u8]),
                        blobs: vec![(Digest::of(b"b1"), i as u64), (Digest::of(b"b2"), 7)],
                    },
                };
                (key, value)
            })
            .collect();
        let memo = StageMemo::parse(StageMemo::encode(list.clone())).unwrap();
        assert_eq!(memo.len(), 1000);
        for (key, value) in &list {
            assert_eq!(memo.get(key).as_ref(), Some(value));
        }
        assert_eq!(memo.get(&Digest::of(b"absent")), None);
        let mut listed: Vec<_> = memo.iter().collect();
        let mut expected = list;
        listed.sort_by_key(|e| e.0);
        expected.sort_by_key(|e| e.0);
        assert_eq!(listed, expected);
        assert!(StageMemo::parse(b"mvcmemo1\x05\0\0\0\0\0\0\0".to_vec()).is_err());
    }

    #[test]
    fn a_memo_saved_as_it_comes_is_the_memo_saved_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("cache")).unwrap();
        let list: Vec<(TaskKey, MemoValue)> = (0..500u32)
            .map(|i| {
                let value = match i % 4 {
                    0 => MemoValue::Failed,
                    _ => MemoValue::Done {
                        manifest: Digest::of(&[i as u8]),
                        blobs: vec![(Digest::of(&i.to_le_bytes()), i as u64); (i % 3) as usize],
                    },
                };
                (Digest::of(&i.to_le_bytes()), value)
            })
            .collect();
        let (index, blobs) = (store.index(), store.blobs());
        StageMemo::save(index, blobs, "whole", list.clone()).unwrap();
        let mut sorted = list.clone();
        sorted.sort_unstable_by_key(|e| e.0);
        StageMemo::save_sorted(index, blobs, "streamed", sorted.len(), sorted.into_iter()).unwrap();
        let saved = |stage: &str| index.get(Tree::Memos, stage.as_bytes()).unwrap().unwrap();
        assert_eq!(saved("streamed"), saved("whole"), "the same blob");
        let memo = StageMemo::load(index, blobs, "streamed").unwrap();
        for (key, value) in &list {
            assert_eq!(memo.get(key).as_ref(), Some(value));
        }
        let short = StageMemo::save_sorted(index, blobs, "short", 3, list.into_iter().take(2));
        assert!(
            short
                .unwrap_err()
                .to_string()
                .contains("2 memo entries given for a memo of 3"),
            "a count that is not the entries' is refused, not saved"
        );
        assert!(index.get(Tree::Memos, b"short").unwrap().is_none());
    }
}
