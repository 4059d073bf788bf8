//! Plan memos: one blob per stage listing the keys the index had answered for that stage at
//! the end of the last run, with what downstream keys need (the output manifest digest) and
//! what a hit must check (blob sizes).
//!
//! Why: sled answers about 300k random lookups a second on this kind of machine, so a plan
//! of a million cached tasks spent over three seconds in the index alone. A memo is read
//! sequentially and verified in one go. It only ever holds keys that were committed to the
//! index; a key it lacks falls back to the index, and `gc` rewrites memos when it deletes.

use super::blobs::BlobStore;
use super::index::{Index, Tree};
use crate::task::{Digest, TaskKey};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

pub type KeyMap<V> = HashMap<TaskKey, V, BuildHasherDefault<KeyHasher>>;
pub type KeySet = HashSet<TaskKey, BuildHasherDefault<KeyHasher>>;

#[derive(Default)]
pub struct StageMemo {
    pub entries: KeyMap<MemoValue>,
}

impl StageMemo {
    pub fn get(&self, key: &TaskKey) -> Option<&MemoValue> {
        self.entries.get(key)
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
        let list: Vec<(TaskKey, MemoValue)> = match postcard::from_bytes(&bytes) {
            Ok(list) => list,
            Err(_) => return Ok(StageMemo::default()),
        };
        let mut entries = KeyMap::with_capacity_and_hasher(list.len(), Default::default());
        entries.extend(list);
        Ok(StageMemo { entries })
    }

    pub fn save(
        index: &dyn Index,
        blobs: &BlobStore,
        stage: &str,
        mut list: Vec<(TaskKey, MemoValue)>,
    ) -> Result<()> {
        list.sort_by_key(|e| e.0);
        let digest = blobs.put_bytes(&postcard::to_stdvec(&list)?)?;
        index.put(Tree::Memos, stage.as_bytes(), &digest.0)?;
        Ok(())
    }
}
