//! The engine's names for tasks and stages. Both are places in flat arrays: a [`TaskId`]
//! indexes every per-task array of a graph and an engine (4 bytes, so a million tasks cost
//! megabytes), a [`StageId`] every per-stage one. Their own types keep a task from being
//! used as a stage, or a count as either, and arrays are indexed by them directly
//! (`engine.state[t]`), without `as usize` at every use.

use serde::{Deserialize, Serialize};

/// A task of a graph. Tasks are numbered densely in stage order: a stage's tasks are
/// contiguous, and a task's upstream tasks have smaller ids.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[repr(transparent)]
pub struct TaskId(pub u32);

impl TaskId {
    /// Marks an item input whose upstream stage has no item of that id.
    pub const MISSING: TaskId = TaskId(u32::MAX);

    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// The tasks `start`, `start + 1`, … (`len` of them).
    pub fn range(start: TaskId, len: u32) -> TaskRange {
        (start.0..start.0 + len).map(TaskId)
    }
}

/// Consecutive tasks (a stage's).
pub type TaskRange = std::iter::Map<std::ops::Range<u32>, fn(u32) -> TaskId>;

/// A stage of a graph: its place among the workflow's stages (declaration order).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[repr(transparent)]
pub struct StageId(pub u32);

impl StageId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Arrays indexed by an id type: `Vec<T>` and `[T]` both (indexing does not look through
/// `Vec`'s `Deref` for an index type of its own).
macro_rules! indexed_by {
    ($id:ty) => {
        impl<T> std::ops::Index<$id> for [T] {
            type Output = T;
            fn index(&self, id: $id) -> &T {
                &self[id.index()]
            }
        }
        impl<T> std::ops::IndexMut<$id> for [T] {
            fn index_mut(&mut self, id: $id) -> &mut T {
                &mut self[id.index()]
            }
        }
        impl<T> std::ops::Index<$id> for Vec<T> {
            type Output = T;
            fn index(&self, id: $id) -> &T {
                &self[id.index()]
            }
        }
        impl<T> std::ops::IndexMut<$id> for Vec<T> {
            fn index_mut(&mut self, id: $id) -> &mut T {
                &mut self[id.index()]
            }
        }
    };
}

indexed_by!(TaskId);
indexed_by!(StageId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_index_vectors_and_slices() {
        let mut v = vec![10, 20, 30];
        v[TaskId(1)] += 1;
        let s: &[i32] = &v;
        assert_eq!((s[TaskId(1)], v[StageId(2)]), (21, 30));
        let tasks: Vec<TaskId> = TaskId::range(TaskId(5), 3).collect();
        assert_eq!(tasks, [TaskId(5), TaskId(6), TaskId(7)]);
        assert_eq!(TaskId::MISSING.0, u32::MAX);
    }
}
