//! Stage summaries: for each stage, the digest of everything its tasks' keys were made from
//! (its summary key) and what the last run found for all of them at once: how many tasks,
//! how many cached, how many failed, and the digest of their results. A plan whose every
//! stage's summary key is the one recorded knows the whole pipeline is cached without
//! making, keying or looking up a single task (ARCHITECTURE.md, "Stage summaries").
//!
//! Like the plan memos, a summary is a shortcut the index never depends on: it is not
//! journaled, `gc` and a repair drop them all, and one that does not decode is no summary.
//!
//! Layout of a value (fixed, 130 bytes): `mvcsum1\0`, summary key (32), tasks (u64 LE),
//! cached (u64 LE), failed (u64 LE), results digest (32), has-blob-list (1), digest of the
//! list of the stage's output blobs (32; zero when there is none), padding (1).

use super::index::{Index, Tree};
use crate::task::Digest;
use anyhow::Result;

const MAGIC: &[u8; 8] = b"mvcsum1\0";
const LEN: usize = 8 + 32 + 8 * 3 + 32 + 1 + 32 + 1;

/// What the last run found for every task of one stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageSummary {
    /// The digest of everything the stage's items and keys depend on.
    pub key: Digest,
    pub tasks: u64,
    pub cached: u64,
    /// Failed items and items blocked by a failure upstream.
    pub failed: u64,
    /// The digest of every task's key and result, in item order: what the summary keys of
    /// the stages that read this one are made from.
    pub results: Digest,
    /// The blob holding the stage's output blobs (digest and size, 40 bytes each), which a
    /// plan checks are all still present, as a memo hit checks its task's; `None` when the
    /// stage's outputs are all inline in the index.
    pub blob_list: Option<Digest>,
}

impl StageSummary {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.key.0);
        out.extend_from_slice(&self.tasks.to_le_bytes());
        out.extend_from_slice(&self.cached.to_le_bytes());
        out.extend_from_slice(&self.failed.to_le_bytes());
        out.extend_from_slice(&self.results.0);
        out.push(self.blob_list.is_some() as u8);
        out.extend_from_slice(&self.blob_list.unwrap_or_default().0);
        out.push(0);
        out
    }

    fn decode(bytes: &[u8]) -> Option<StageSummary> {
        if bytes.len() != LEN || &bytes[..8] != MAGIC {
            return None;
        }
        let digest = |at: usize| Digest(bytes[at..at + 32].try_into().unwrap());
        let number = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let blob_list = match bytes[96] {
            0 => None,
            1 => Some(digest(97)),
            _ => return None,
        };
        Some(StageSummary {
            key: digest(8),
            tasks: number(40),
            cached: number(48),
            failed: number(56),
            results: digest(64),
            blob_list,
        })
    }
}

/// A stage's output blobs as its summary lists them (stored as one blob): digest and size,
/// 40 bytes each, the layout of a plan memo's blob table.
#[derive(Clone, Debug, Default)]
pub struct BlobList(Vec<u8>);

const BLOB_ENTRY: usize = 40;

impl BlobList {
    pub fn push(&mut self, digest: &Digest, size: u64) {
        self.0.extend_from_slice(&digest.0);
        self.0.extend_from_slice(&size.to_le_bytes());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The entries of a stored list; `None` when its length is not a whole number of them.
    pub fn entries(bytes: &[u8]) -> Option<impl Iterator<Item = (Digest, u64)> + '_> {
        bytes.len().is_multiple_of(BLOB_ENTRY).then(|| {
            bytes.chunks_exact(BLOB_ENTRY).map(|entry| {
                (
                    Digest(entry[..32].try_into().unwrap()),
                    u64::from_le_bytes(entry[32..].try_into().unwrap()),
                )
            })
        })
    }
}

/// The name the summary of one view column of a stage is kept under, beside its stage's:
/// `stage \0 column` (no stage name holds a NUL).
pub fn column_name(stage: &str, column: &str) -> String {
    format!("{stage}\0{column}")
}

/// The summary last recorded for `stage` (or a [column](column_name) of it); `None` when
/// there is none or it does not decode.
pub fn load(index: &dyn Index, stage: &str) -> Result<Option<StageSummary>> {
    Ok(index
        .get(Tree::Summaries, stage.as_bytes())?
        .and_then(|bytes| StageSummary::decode(&bytes)))
}

pub fn save(index: &dyn Index, stage: &str, summary: &StageSummary) -> Result<()> {
    index.put(Tree::Summaries, stage.as_bytes(), &summary.encode())
}

/// Drops every summary: whatever changes the index behind the runs' back (`gc`, a repair)
/// calls this, so that the next plan asks the index again.
pub fn forget(index: &dyn Index) -> Result<()> {
    let stages: Vec<Vec<u8>> = index.keys(Tree::Summaries).collect::<Result<_>>()?;
    for stage in stages {
        index.delete(Tree::Summaries, &stage)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::index::SledIndex;

    fn summary(blob_list: Option<Digest>) -> StageSummary {
        StageSummary {
            key: Digest::of(b"key"),
            tasks: 36_000_000,
            cached: 35_999_990,
            failed: 10,
            results: Digest::of(b"results"),
            blob_list,
        }
    }

    #[test]
    fn a_blob_list_reads_back_and_a_truncated_one_is_refused() {
        let mut list = BlobList::default();
        list.push(&Digest::of(b"a"), 6000);
        list.push(&Digest::of(b"b"), 1);
        let entries: Vec<_> = BlobList::entries(list.bytes()).unwrap().collect();
        assert_eq!(entries, [(Digest::of(b"a"), 6000), (Digest::of(b"b"), 1)]);
        assert!(BlobList::entries(&list.bytes()[..79]).is_none());
    }

    #[test]
    fn a_summary_reads_back_as_it_was_saved_and_a_damaged_one_is_no_summary() {
        let dir = tempfile::tempdir().unwrap();
        let index = SledIndex::open(&dir.path().join("index")).unwrap();
        assert_eq!(load(&index, "views").unwrap(), None);
        for s in [summary(None), summary(Some(Digest::of(b"list")))] {
            save(&index, "views", &s).unwrap();
            assert_eq!(load(&index, "views").unwrap(), Some(s));
        }
        let mut bytes = summary(None).encode();
        for damaged in [&bytes[..LEN - 1], b"mvcsum2\0".as_slice()] {
            index.put(Tree::Summaries, b"views", damaged).unwrap();
            assert_eq!(load(&index, "views").unwrap(), None);
        }
        bytes[96] = 7;
        index.put(Tree::Summaries, b"views", &bytes).unwrap();
        assert_eq!(load(&index, "views").unwrap(), None);
        save(&index, "embed", &summary(None)).unwrap();
        forget(&index).unwrap();
        assert_eq!(load(&index, "embed").unwrap(), None);
    }
}
