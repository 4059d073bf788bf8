//! One stage's queue of ready tasks, and taking a unit from it.
//!
//! A unit is the first task of the queue and every other queued task of its unit group (all
//! views of an object for a render stage; up to a batch of images for an embed stage). The
//! queue counts its tasks per group, so that taking a unit looks only as far as the group's
//! last queued task, not at the whole queue: the tasks of a group are queued together (an
//! object's views become ready when the object does), so that is a few dozen tasks. Scanning
//! the whole queue for each unit was quadratic: with 216,000 views queued, a coordinator
//! serving 1,000 workers spent about 60% of its time there (`benches/xl_coordinator.rs`).

use super::ids::TaskId;
use super::resolve::Engine;
use std::collections::{HashMap, VecDeque};

/// The most tasks a unit of a batch kind takes when workers share out a stage (guided
/// self-scheduling): a share of the `queued` tasks among the `waiting` requests, and of the
/// `left` tasks of the stage not yet given out (queued or still to become ready) among the
/// `workers`. Early in a stage that is more than the kind's batch, which then applies; towards
/// its end, units shrink so that the last tasks spread over every worker instead of a few
/// workers holding large units while the others wait. With whole 256-task embedding units to
/// the end, 1,000 simulated workers stood idle for the last 10 s of a 25 s run
/// (`benches/xl_coordinator.rs`).
pub(super) fn guided_share(queued: usize, waiting: usize, left: usize, workers: usize) -> usize {
    let among_waiting = queued.div_ceil(waiting.max(1));
    let among_workers = left.max(queued).div_ceil(workers.max(1));
    among_waiting.min(among_workers).max(1)
}

#[derive(Default, Clone)]
pub(super) struct StageQueue {
    tasks: VecDeque<TaskId>,
    /// Queued tasks per unit group (tasks without a group are not counted).
    groups: HashMap<String, usize>,
}

/// The unit group of task `t` (see [`crate::exec::kind::StageKind::unit_group`]).
fn group_of(engine: &Engine, t: TaskId) -> Option<&str> {
    engine
        .graph
        .stage_of(t)
        .kind
        .unit_group(engine.graph.item(t))
}

impl StageQueue {
    pub(super) fn len(&self) -> usize {
        self.tasks.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Queues a task that has just become ready, last.
    pub(super) fn push_back(&mut self, engine: &Engine, t: TaskId) {
        self.count(engine, t);
        self.tasks.push_back(t);
    }

    /// Puts a task back first (a unit that came to nothing runs before newer work).
    pub(super) fn push_front(&mut self, engine: &Engine, t: TaskId) {
        self.count(engine, t);
        self.tasks.push_front(t);
    }

    fn count(&mut self, engine: &Engine, t: TaskId) {
        if let Some(group) = group_of(engine, t) {
            match self.groups.get_mut(group) {
                Some(n) => *n += 1,
                None => {
                    self.groups.insert(group.to_string(), 1);
                }
            }
        }
    }

    fn uncount(&mut self, group: &str, n: usize) {
        if let Some(left) = self.groups.get_mut(group) {
            *left = left.saturating_sub(n);
            if *left == 0 {
                self.groups.remove(group);
            }
        }
    }

    /// Empties the queue, giving back its tasks in order.
    pub(super) fn drain_all(&mut self) -> Vec<TaskId> {
        self.groups.clear();
        self.tasks.drain(..).collect()
    }

    /// Removes the queued tasks for which `remove` is true, giving them back in order.
    pub(super) fn remove_where(
        &mut self,
        engine: &Engine,
        mut remove: impl FnMut(TaskId) -> bool,
    ) -> Vec<TaskId> {
        let mut removed = Vec::new();
        let mut kept = VecDeque::with_capacity(self.tasks.len());
        for t in self.tasks.drain(..) {
            if remove(t) {
                removed.push(t);
            } else {
                kept.push_back(t);
            }
        }
        self.tasks = kept;
        for &t in &removed {
            if let Some(group) = group_of(engine, t) {
                self.uncount(group, 1);
            }
        }
        removed
    }

    /// Takes the next unit: the first task and the other queued tasks of its unit group, in
    /// queue order, up to the stage's `max_unit_tasks`. A kind whose units are batches (it
    /// has such a maximum) takes at most `limit`, but not fewer than its `min_unit_tasks`:
    /// its tasks do not share a costly setup, and workers share them out
    /// (`RemoteUnits::serve`). A kind with whole groups (an object's views: one scene load)
    /// keeps them whole. The queue must not be empty.
    pub(super) fn take_unit(&mut self, engine: &Engine, limit: usize) -> Vec<TaskId> {
        let first = self.tasks.pop_front().expect("queue is not empty");
        let Some(group) = group_of(engine, first) else {
            return vec![first];
        };
        let kind = &engine.graph.stage_of(first).kind;
        let max = match kind.max_unit_tasks() {
            usize::MAX => usize::MAX,
            batch => batch.min(limit.max(kind.min_unit_tasks())).max(1),
        };
        let queued = self.groups.get(group).copied().unwrap_or(1);
        // The others of the group: as many as are queued, as many as fit.
        let wanted = queued.saturating_sub(1).min(max - 1);
        let mut unit = Vec::with_capacity(wanted + 1);
        unit.push(first);
        if wanted > 0 {
            // Only the prefix up to the group's last wanted task is taken apart; the other
            // groups' tasks in it go back first, in their order.
            let mut others = Vec::new();
            let mut end = 0;
            for (i, &t) in self.tasks.iter().enumerate() {
                if unit.len() > wanted {
                    break;
                }
                match group_of(engine, t) == Some(group) {
                    true => unit.push(t),
                    false => others.push(t),
                }
                end = i + 1;
            }
            debug_assert_eq!(
                unit.len(),
                wanted + 1,
                "the group's count matches its tasks"
            );
            self.tasks.drain(..end);
            for t in others.into_iter().rev() {
                self.tasks.push_front(t);
            }
        }
        self.uncount(group, unit.len());
        unit
    }
}

#[cfg(test)]
mod tests {
    use super::guided_share;

    #[test]
    fn workers_share_out_a_stages_last_tasks() {
        // Early: 216,000 embeddings left for 1,000 workers, one asking: more than a batch.
        assert_eq!(guided_share(5_000, 1, 216_000, 1_000), 216);
        // Many asking at once share what is queued.
        assert_eq!(guided_share(5_000, 100, 216_000, 1_000), 50);
        // The end: 3,000 left for 1,000 workers, though one asks alone.
        assert_eq!(guided_share(3_000, 1, 3_000, 1_000), 3);
        // Never nothing, whatever the counts say.
        assert_eq!(guided_share(0, 0, 0, 0), 1);
        assert_eq!(
            guided_share(7, 1, 0, 0),
            7,
            "no worker known: what is queued"
        );
    }
}
