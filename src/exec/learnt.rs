//! What a run learnt about its tasks beyond the plan memos (a result it recorded, a hit in
//! the index, a failure it recorded), kept for the memos it saves at its end and for the
//! stage summaries.
//!
//! Kept per task, not in a map by key: a task's key and manifest are already the engine's
//! (`Engine::keys`, `Engine::manifests`), so a task needs one byte here, and its output
//! blobs when it has any. A map by key held both again (about 90 bytes a task, in a table
//! up to twice the size of its entries), and each time its table grew it moved every entry
//! at once: the coordinator's loop stopped for 40 ms and 160 ms as the map passed 114,689
//! and 229,377 results, and every lease waiting on the loop waited with it
//! (`benches/xl_coordinator.rs`; BENCHMARKS.md, "The coordinator's loop, stopped by a
//! growing table").

use super::ids::TaskId;
use crate::store::memo::MemoValue;
use crate::task::Digest;
use std::collections::BTreeMap;

const NOTHING: u8 = 0;
const DONE: u8 = 1;
const FAILED: u8 = 2;

pub struct Learnt {
    /// Per task: nothing learnt, a result, or a recorded failure. Zeroed memory: pages of
    /// tasks that learn nothing (a plan's) are never touched.
    marks: Vec<u8>,
    /// The output blobs of the tasks learnt done that have any. A tree, not a table: it
    /// never moves what it holds to grow.
    blobs: BTreeMap<TaskId, Box<[(Digest, u64)]>>,
}

impl Learnt {
    pub fn new(tasks: usize) -> Learnt {
        Learnt {
            marks: vec![NOTHING; tasks],
            blobs: BTreeMap::new(),
        }
    }

    /// Notes what task `t` was found or recorded as.
    pub fn set(&mut self, t: TaskId, value: MemoValue) {
        match value {
            MemoValue::Done { blobs, .. } => {
                self.marks[t] = DONE;
                if blobs.is_empty() {
                    self.blobs.remove(&t);
                } else {
                    self.blobs.insert(t, blobs.into_boxed_slice());
                }
            }
            MemoValue::Failed => {
                self.marks[t] = FAILED;
                self.blobs.remove(&t);
            }
        }
    }

    /// What was learnt of task `t`, whose manifest is `manifest`; `None` when nothing was.
    pub fn get(&self, t: TaskId, manifest: Digest) -> Option<MemoValue> {
        match self.marks[t] {
            DONE => Some(MemoValue::Done {
                manifest,
                blobs: self.blobs.get(&t).map(|b| b.to_vec()).unwrap_or_default(),
            }),
            FAILED => Some(MemoValue::Failed),
            _ => None,
        }
    }

    /// Whether task `t` was recorded as failed in this run.
    pub fn failed(&self, t: TaskId) -> bool {
        self.marks[t] == FAILED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_task_gives_back_what_was_learnt_of_it_and_nothing_else() {
        let mut learnt = Learnt::new(4);
        let manifest = Digest::of(b"manifest");
        let blob = (Digest::of(b"png"), 51_200);
        learnt.set(
            TaskId(0),
            MemoValue::Done {
                manifest,
                blobs: vec![blob],
            },
        );
        learnt.set(
            TaskId(1),
            MemoValue::Done {
                manifest,
                blobs: vec![],
            },
        );
        learnt.set(TaskId(2), MemoValue::Failed);
        assert_eq!(
            learnt.get(TaskId(0), manifest),
            Some(MemoValue::Done {
                manifest,
                blobs: vec![blob]
            })
        );
        assert_eq!(
            learnt.get(TaskId(1), manifest),
            Some(MemoValue::Done {
                manifest,
                blobs: vec![]
            })
        );
        assert_eq!(learnt.get(TaskId(2), manifest), Some(MemoValue::Failed));
        assert!(learnt.failed(TaskId(2)) && !learnt.failed(TaskId(0)));
        assert_eq!(learnt.get(TaskId(3), manifest), None);
        // A task that failed and then ran (a retry in the same run) keeps only the later.
        learnt.set(
            TaskId(2),
            MemoValue::Done {
                manifest,
                blobs: vec![blob],
            },
        );
        assert!(!learnt.failed(TaskId(2)));
        assert_eq!(
            learnt.get(TaskId(2), manifest),
            Some(MemoValue::Done {
                manifest,
                blobs: vec![blob]
            })
        );
        // And the other way round: its blobs go with its result.
        learnt.set(TaskId(0), MemoValue::Failed);
        assert_eq!(learnt.get(TaskId(0), manifest), Some(MemoValue::Failed));
        assert!(!learnt.blobs.contains_key(&TaskId(0)));
    }
}
