//! The scheduler's state changes, without I/O: which tasks wait in which stage's queue, the
//! slots left, how many units run, whether the run is stopping, and what each event (a task
//! resolved, a unit done, an outcome, Ctrl-C) does to them. `run.rs` owns the loop: it waits
//! for events, hands them to a [`Dispatch`], spawns the units it is given and shows the notes
//! it gets back. The unit tests below drive a `Dispatch` through whole runs by hand, with no
//! process, socket or timer, as HyperQueue's `tako` tests its reactor.

use super::ids::{StageId, TaskId};
use super::queue::StageQueue;
use super::resolve::Engine;
use super::units::{Reported, find_item, reads_from, reopen_producer};
use crate::resources::Resources;
use anyhow::Result;

/// A unit the scheduler may start now: its tasks (already marked running in the engine)
/// and the slots it holds until it is done.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct UnitToStart {
    pub(super) stage: StageId,
    pub(super) tasks: Vec<TaskId>,
    pub(super) slots: Resources,
}

/// What an interruption (Ctrl-C or SIGTERM) does.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Interrupt {
    /// The first: no new units; running ones have the grace period to finish. `running`
    /// is how many there are.
    Stop { running: usize },
    /// The second: running units are killed now.
    KillNow,
}

/// The state of a run's scheduling between events. A run has one; each round (the graph
/// built again once deferred stages can expand) starts with [`Dispatch::begin_round`].
pub(super) struct Dispatch {
    /// Tasks ready to run, per stage (indexed like the graph's stages), in this round.
    pub(super) queues: Vec<StageQueue>,
    /// All the slots of this machine.
    slots: Resources,
    /// Slots not held by a running unit.
    free: Resources,
    /// Units started and not yet done.
    running: usize,
    /// No new units are started (an interruption, a failure with `--fail-fast`, a full disk).
    stopping: bool,
    /// Ctrl-C or SIGTERM was received.
    interrupted: bool,
    keep_going: bool,
    /// Stages in the order their queues are served (upstream first).
    order: Vec<StageId>,
    /// The error of the last task that could not run (said once, not once per task).
    last_abort: Option<String>,
}

impl Dispatch {
    /// A run's dispatch: stages served in `order`, with `slots` to fill.
    pub(super) fn new(order: &[StageId], slots: Resources, keep_going: bool) -> Dispatch {
        Dispatch {
            queues: Vec::new(),
            slots,
            free: slots,
            running: 0,
            stopping: false,
            interrupted: false,
            keep_going,
            order: order.to_vec(),
            last_abort: None,
        }
    }

    /// A new round over a graph of `stages` stages: empty queues, every slot free. Whether
    /// the run is stopping carries over.
    pub(super) fn begin_round(&mut self, stages: usize) {
        self.queues = vec![StageQueue::default(); stages];
        self.free = self.slots;
        self.running = 0;
    }

    pub(super) fn stopping(&self) -> bool {
        self.stopping
    }

    pub(super) fn interrupted(&self) -> bool {
        self.interrupted
    }

    #[cfg(test)]
    pub(super) fn running(&self) -> usize {
        self.running
    }

    /// Queues a task that has just become ready.
    pub(super) fn enqueue(&mut self, engine: &Engine, t: TaskId) {
        let s = engine.graph.task_stage[t];
        self.queues[s].push_back(engine, t);
    }

    /// The next unit of stage `s`, whose tasks each need `need`, if it fits in the free
    /// slots: its tasks are marked running and its slots taken. Nothing starts while the run
    /// is stopping.
    fn next_unit(
        &mut self,
        engine: &mut Engine,
        s: StageId,
        need: Resources,
    ) -> Option<UnitToStart> {
        if self.stopping || self.queues[s].is_empty() || !self.free.fits(&need) {
            return None;
        }
        let tasks = self.queues[s].take_unit(engine, usize::MAX);
        for &t in &tasks {
            engine.start(t);
        }
        self.free.take(&need);
        self.running += 1;
        Some(UnitToStart {
            stage: s,
            tasks,
            slots: need,
        })
    }

    /// Whether a task needing `need` could ever run on this machine's slots.
    pub(super) fn fits_machine(&self, need: &Resources) -> bool {
        self.slots.fits(need)
    }

    /// Every unit that can start now, stage by stage in order (upstream first), until the
    /// slots are full: what [`Dispatch::next_unit`] gives for each stage in turn.
    pub(super) fn units_to_start(&mut self, engine: &mut Engine) -> Vec<UnitToStart> {
        let mut units = Vec::new();
        for k in 0..self.order.len() {
            let s = self.order[k];
            let need = engine.graph.stages[s].kind.resources();
            while let Some(unit) = self.next_unit(engine, s, need) {
                units.push(unit);
            }
        }
        units
    }

    /// A unit is done: its slots are free again.
    pub(super) fn unit_done(&mut self, slots: &Resources) {
        self.running -= 1;
        self.free.give(slots);
    }

    /// Ctrl-C or SIGTERM.
    pub(super) fn interrupt(&mut self) -> Interrupt {
        if self.interrupted {
            return Interrupt::KillNow;
        }
        self.stopping = true;
        self.interrupted = true;
        Interrupt::Stop {
            running: self.running,
        }
    }

    /// Whether the round is over: nothing runs here or on workers (`remote_running`), and
    /// nothing waits (`held`: tasks a coordinator holds for workers), or the run stops.
    pub(super) fn is_over(&self, remote_running: usize, held: usize) -> bool {
        let queued: usize = self.queues.iter().map(|q| q.len()).sum::<usize>() + held;
        self.running == 0 && remote_running == 0 && (self.stopping || queued == 0)
    }

    /// Records what a task's unit reported in the engine; returns what to tell the person
    /// watching, if anything.
    pub(super) fn take_outcome(
        &mut self,
        engine: &mut Engine,
        t: TaskId,
        reported: Reported,
    ) -> Result<Option<String>> {
        Ok(match reported {
            Reported::Success(manifest, value) => {
                engine.finish(t, Ok((manifest, value)));
                None
            }
            Reported::Failed(error) => {
                engine.finish(t, Err(error));
                self.stop_after_failure()
            }
            Reported::Cancelled => {
                engine.unrun(t);
                None
            }
            Reported::Aborted(error) => {
                // Many tasks failing for one reason (an unreachable server) say it once.
                let note = (self.last_abort.as_ref() != Some(&error)).then(|| {
                    self.last_abort = Some(error.clone());
                    format!(
                        "error: {} could not run: {error}",
                        engine.graph.task_label(t)
                    )
                });
                engine.finish_unrecorded(t, error);
                note
            }
            Reported::DiskFull(error) => {
                let note = (!self.stopping).then(|| {
                    self.stopping = true;
                    format!(
                        "error: {} could not finish: {error}\nstarting no new tasks (they would \
                         fail the same way); running ones finish",
                        engine.graph.task_label(t)
                    )
                });
                engine.finish_unrecorded(t, error);
                note
            }
            Reported::InputCorrupt { stage, item, error } => {
                Some(self.input_corrupt(engine, t, &stage, &item, &error)?)
            }
        })
    }

    /// Without `--keep-going`, the first failure stops new work.
    fn stop_after_failure(&mut self) -> Option<String> {
        if self.keep_going || self.stopping {
            return None;
        }
        self.stopping = true;
        Some(
            "a task failed: letting running tasks finish, starting no new ones \
             (--keep-going continues past failures)"
                .to_string(),
        )
    }

    /// Task `t` found its input `stage/item` gone or damaged: the producer runs again, and
    /// `t` and every queued task that reads it wait for it.
    fn input_corrupt(
        &mut self,
        engine: &mut Engine,
        t: TaskId,
        stage: &str,
        item: &str,
        error: &str,
    ) -> Result<String> {
        let again = reopen_producer(engine, t, stage, item)?;
        let note = format!(
            "warning: {error}; {stage}/{item} is treated as a cache miss and {}, then {} runs",
            if again {
                "runs again"
            } else {
                "is already running again"
            },
            engine.graph.task_label(t)
        );
        if let Some(p) = again.then(|| find_item(engine, stage, item)).flatten() {
            self.enqueue(engine, p);
            // Tasks queued already that read it wait for it too (they would be dispatched
            // with an input that is no longer there).
            for queue in self.queues.iter_mut() {
                let readers = queue.remove_where(engine, |c| reads_from(engine, c, p));
                for c in readers {
                    reopen_producer(engine, c, stage, item)?;
                }
            }
        }
        Ok(note)
    }
}

#[cfg(test)]
mod tests {
    //! Whole runs driven by hand: tasks are resolved by the real engine over a real (temporary)
    //! store, units are committed through the real `commit_outcome`, and nothing executes: a
    //! test says what each unit reported, as a unit's task would.

    use super::*;
    use crate::exec::graph::{Sources, TaskGraph};
    use crate::exec::ids::StageId;
    use crate::exec::kind::{
        Binding, ExecCtx, ExpandCtx, Expansion, ParamCtx, PlannedItem, StageKind, TaskOutcome,
        UnitTask,
    };
    use crate::exec::resolve::{Carry, Mode, State};
    use crate::exec::units::{LOCAL, commit_outcome, prepare_unit};
    use crate::exec::workdir::output_from_bytes;
    use crate::exec::workflow::{Stage, Workflow};
    use crate::store::Store;
    use crate::task::ParamSlice;
    use std::sync::Arc;

    /// A kind for the scheduler alone: fixed items (or one item per upstream item, or one
    /// item over all of them), one cpu slot a task, and optionally units grouped by the
    /// item's first letter, in batches of (fewest, most) tasks. It never executes: the tests
    /// report for it.
    #[derive(Debug, Default)]
    struct Fixed {
        items: Vec<&'static str>,
        binding: Option<Binding>,
        grouped: bool,
        batch: Option<(usize, usize)>,
    }

    #[async_trait::async_trait]
    impl StageKind for Fixed {
        fn kind(&self) -> &'static str {
            "fixed"
        }
        fn version(&self) -> u32 {
            1
        }
        fn resources(&self) -> Resources {
            Resources::ONE_CPU
        }
        fn shared_params(&self, _: &ParamCtx) -> Result<ParamSlice> {
            Ok(ParamSlice::new())
        }
        fn expand(&self, ctx: &ExpandCtx) -> Result<Expansion> {
            let items = match self.binding {
                None => self.items.iter().map(|i| PlannedItem::new(*i)).collect(),
                Some(Binding::All) => vec![PlannedItem::new("all")],
                Some(_) => ctx.inputs[0]
                    .1
                    .iter()
                    .map(|i| PlannedItem::new(i.clone()))
                    .collect(),
            };
            Ok(Expansion {
                items,
                bindings: self.binding.into_iter().collect(),
            })
        }
        fn unit_group<'a>(&self, item: &'a str) -> Option<&'a str> {
            self.grouped.then(|| &item[..1])
        }
        fn max_unit_tasks(&self) -> usize {
            self.batch.map_or(usize::MAX, |(_, most)| most)
        }
        fn min_unit_tasks(&self) -> usize {
            self.batch.map_or(1, |(fewest, _)| fewest)
        }
        async fn execute(&self, _: &ExecCtx, _: Vec<UnitTask>) -> Vec<TaskOutcome> {
            unreachable!("the scheduler's tests execute nothing")
        }
    }

    fn stage(name: &str, inputs: &[&str], kind: Fixed) -> Stage {
        Stage {
            name: name.to_string(),
            line: 1,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            input_keys: Vec::new(),
            set_by: Vec::new(),
            kind: Arc::new(kind),
        }
    }

    /// `a` (items x, y, z, or as given) → `b` (one task per item of `a`) → `c` (one task
    /// reading all of `b`).
    fn three_stages(a_items: Vec<&'static str>, grouped: bool) -> Vec<Stage> {
        vec![
            stage(
                "a",
                &[],
                Fixed {
                    items: a_items,
                    grouped,
                    ..Fixed::default()
                },
            ),
            stage(
                "b",
                &["a"],
                Fixed {
                    binding: Some(Binding::Item),
                    ..Fixed::default()
                },
            ),
            stage(
                "c",
                &["b"],
                Fixed {
                    binding: Some(Binding::All),
                    ..Fixed::default()
                },
            ),
        ]
    }

    /// A run in progress: the engine, the dispatch and the store, with no executor.
    struct Run {
        engine: Engine,
        dispatch: Dispatch,
        store: Arc<Store>,
        _dir: tempfile::TempDir,
    }

    impl Run {
        fn new(stages: Vec<Stage>, cpu: u32, keep_going: bool) -> Run {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(Store::open(&dir.path().join("cache")).unwrap());
            let order = (0..stages.len()).map(|s| StageId(s as u32)).collect();
            let workflow = Workflow {
                path: dir.path().join("p.toml"),
                name: "p".into(),
                cache_dir: dir.path().join("cache"),
                results_dir: dir.path().join("runs"),
                stages,
                order,
                source: String::new(),
                variants: Vec::new(),
                command: Vec::new(),
            };
            let graph = TaskGraph::build(&workflow, &store, &Sources::new()).unwrap();
            let engine =
                Engine::new(graph, store.clone(), Mode::Run, false, Carry::default()).unwrap();
            let slots = Resources {
                cpu,
                ..Resources::default()
            };
            let mut dispatch = Dispatch::new(&workflow.order, slots, keep_going);
            dispatch.begin_round(workflow.stages.len());
            Run {
                engine,
                dispatch,
                store,
                _dir: dir,
            }
        }

        /// Queues what is ready and starts what fits: the labels of each unit started.
        fn step(&mut self) -> Vec<Vec<String>> {
            for t in self.engine.resolve_ready().unwrap() {
                self.dispatch.enqueue(&self.engine, t);
            }
            self.dispatch
                .units_to_start(&mut self.engine)
                .into_iter()
                .map(|u| u.tasks.iter().map(|&t| self.label(t)).collect())
                .collect()
        }

        fn label(&self, t: TaskId) -> String {
            self.engine.graph.task_label(t)
        }

        fn task(&self, label: &str) -> TaskId {
            let (stage, item) = label.split_once('/').unwrap();
            find_item(&self.engine, stage, item).unwrap()
        }

        /// The unit holding `label` reports `outcome` for each of its tasks (labels given),
        /// through the real commit to the index; returns the notes.
        fn report(
            &mut self,
            labels: &[&str],
            outcome: impl Fn(&Store) -> TaskOutcome,
        ) -> Vec<String> {
            let tasks: Vec<TaskId> = labels.iter().map(|l| self.task(l)).collect();
            let prepared = prepare_unit(&self.engine, &tasks).unwrap();
            let slots = self.engine.graph.stage_of(tasks[0]).kind.resources();
            self.dispatch.unit_done(&slots);
            let mut notes = Vec::new();
            for p in prepared {
                let stage = self.engine.graph.stage_of(p.task).name.clone();
                let reported = commit_outcome(
                    &self.store,
                    &stage,
                    &p.identity,
                    LOCAL,
                    outcome(&self.store),
                );
                notes.extend(
                    self.dispatch
                        .take_outcome(&mut self.engine, p.task, reported)
                        .unwrap(),
                );
            }
            notes
        }

        fn succeed(&mut self, labels: &[&str]) -> Vec<String> {
            self.report(labels, |store| TaskOutcome::Success {
                outputs: vec![output_from_bytes(store, "out".into(), b"made".to_vec()).unwrap()],
                stdout: None,
                stderr: None,
                started_ms: 0,
                duration_ms: 1,
            })
        }

        fn fail(&mut self, labels: &[&str], error: &str) -> Vec<String> {
            self.report(labels, |_| TaskOutcome::Failed {
                error: error.to_string(),
                stderr: None,
            })
        }

        fn state(&self, label: &str) -> State {
            self.engine.state[self.task(label)]
        }
    }

    fn units(labels: &[&[&str]]) -> Vec<Vec<String>> {
        labels
            .iter()
            .map(|u| u.iter().map(|l| l.to_string()).collect())
            .collect()
    }

    #[test]
    fn units_start_within_the_slots_upstream_first_and_downstream_waits_for_its_inputs() {
        let mut run = Run::new(three_stages(vec!["x", "y", "z"], false), 2, true);
        assert_eq!(
            run.step(),
            units(&[&["a/x"], &["a/y"]]),
            "two cpu slots, two units"
        );
        assert_eq!(run.step(), units(&[]), "no slot is free");
        assert!(!run.dispatch.is_over(0, 0));
        run.succeed(&["a/x"]);
        // a/z was queued first and its stage comes first: b/x waits for the next slot.
        assert_eq!(run.step(), units(&[&["a/z"]]));
        run.succeed(&["a/y"]);
        run.succeed(&["a/z"]);
        assert_eq!(run.step(), units(&[&["b/x"], &["b/y"]]));
        run.succeed(&["b/x"]);
        assert_eq!(
            run.step(),
            units(&[&["b/z"]]),
            "c reads all of b: it waits for b/z"
        );
        run.succeed(&["b/y"]);
        run.succeed(&["b/z"]);
        assert_eq!(run.step(), units(&[&["c/all"]]));
        assert_eq!(run.dispatch.running(), 1);
        run.succeed(&["c/all"]);
        assert_eq!(run.step(), units(&[]));
        assert!(run.dispatch.is_over(0, 0), "nothing runs and nothing waits");
        assert!(
            run.dispatch.is_over(0, 0) && !run.dispatch.is_over(1, 0),
            "a worker's unit keeps the round going"
        );
        assert!(
            !run.dispatch.is_over(0, 3),
            "tasks held for workers keep it going"
        );
        assert!(run.state("c/all").is_success());
    }

    #[test]
    fn tasks_of_one_group_run_as_one_unit() {
        let mut run = Run::new(three_stages(vec!["p1", "p2", "q1"], true), 4, true);
        assert_eq!(run.step(), units(&[&["a/p1", "a/p2"], &["a/q1"]]));
        assert_eq!(run.dispatch.running(), 2, "a unit holds one task's slots");
    }

    #[test]
    fn a_unit_takes_its_groups_tasks_wherever_they_wait_and_only_those() {
        // No slot: everything stays queued, for the test to take units by hand.
        let mut run = Run::new(
            three_stages(vec!["p1", "q1", "p2", "q2", "p3"], true),
            0,
            true,
        );
        assert_eq!(run.step(), units(&[]));
        let label = |run: &Run, ts: Vec<TaskId>| -> Vec<String> {
            ts.into_iter().map(|t| run.label(t)).collect()
        };
        let taken = run.dispatch.queues[0].take_unit(&run.engine, usize::MAX);
        assert_eq!(label(&run, taken), ["a/p1", "a/p2", "a/p3"]);
        assert_eq!(run.dispatch.queues[0].len(), 2, "q1 and q2 wait, in order");
        // A lost unit's task goes back first, another comes back last: both join one unit.
        let (p1, p2, q1) = (run.task("a/p1"), run.task("a/p2"), run.task("a/q1"));
        run.dispatch.queues[0].push_front(&run.engine, p2);
        run.dispatch.queues[0].push_back(&run.engine, p1);
        let taken = run.dispatch.queues[0].take_unit(&run.engine, usize::MAX);
        assert_eq!(label(&run, taken), ["a/p2", "a/p1"]);
        let removed = run.dispatch.queues[0].remove_where(&run.engine, |t| t == q1);
        assert_eq!(label(&run, removed), ["a/q1"]);
        let taken = run.dispatch.queues[0].take_unit(&run.engine, usize::MAX);
        assert_eq!(label(&run, taken), ["a/q2"], "the count of q forgot q1");
        assert!(run.dispatch.queues[0].is_empty());
    }

    #[test]
    fn a_batch_kinds_unit_is_cut_to_the_share_asked_but_not_below_its_fewest() {
        let batches = Fixed {
            items: vec!["x1", "x2", "x3", "x4", "x5", "x6", "x7", "x8", "x9", "x10"],
            grouped: true,
            batch: Some((2, 4)),
            ..Fixed::default()
        };
        let mut run = Run::new(vec![stage("a", &[], batches)], 0, true);
        assert_eq!(run.step(), units(&[]));
        let mut sizes = Vec::new();
        for limit in [usize::MAX, 3, 1, 100] {
            sizes.push(run.dispatch.queues[0].take_unit(&run.engine, limit).len());
        }
        assert_eq!(
            sizes,
            [4, 3, 2, 1],
            "its most, the share, its fewest, and the one left"
        );
        assert!(run.dispatch.queues[0].is_empty());
    }

    #[test]
    fn a_failed_item_blocks_its_downstream_and_the_rest_runs_on() {
        let mut run = Run::new(three_stages(vec!["x", "y"], false), 4, true);
        run.step();
        assert_eq!(
            run.fail(&["a/x"], "broken mesh"),
            Vec::<String>::new(),
            "--keep-going says nothing"
        );
        run.succeed(&["a/y"]);
        assert_eq!(run.step(), units(&[&["b/y"]]), "b/x is blocked by a/x");
        assert!(run.state("b/x").is_failure());
        assert!(
            run.engine
                .root_failure(run.task("b/x"))
                .contains("broken mesh")
        );
        run.succeed(&["b/y"]);
        assert_eq!(run.step(), units(&[&["c/all"]]), "c reads what b has");
        // The failure is recorded against its key: the next run will not try it again.
        let key = run.engine.keys[run.task("a/x")];
        assert!(run.store.failure(&key).unwrap().is_some());
    }

    #[test]
    fn without_keep_going_the_first_failure_starts_no_new_unit() {
        let mut run = Run::new(three_stages(vec!["x", "y", "z"], false), 1, false);
        assert_eq!(run.step(), units(&[&["a/x"]]));
        let notes = run.fail(&["a/x"], "boom");
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].starts_with("a task failed: letting running tasks finish"),
            "{}",
            notes[0]
        );
        assert!(run.dispatch.stopping());
        assert_eq!(run.step(), units(&[]), "a/y and a/z stay queued");
        assert!(
            run.dispatch.is_over(0, 0),
            "a stopping run is over once nothing runs"
        );
    }

    #[test]
    fn the_first_interrupt_stops_new_units_and_the_second_kills_running_ones() {
        let mut run = Run::new(three_stages(vec!["x", "y", "z"], false), 2, true);
        run.step();
        assert_eq!(run.dispatch.interrupt(), Interrupt::Stop { running: 2 });
        assert!(run.dispatch.interrupted() && run.dispatch.stopping());
        run.succeed(&["a/x"]);
        assert_eq!(run.step(), units(&[]), "nothing new starts after Ctrl-C");
        assert!(!run.dispatch.is_over(0, 0), "a/y still runs");
        assert_eq!(run.dispatch.interrupt(), Interrupt::KillNow);
        // A killed unit's tasks are cancelled: not recorded, and run again next time.
        run.report(&["a/y"], |_| TaskOutcome::Cancelled);
        assert!(run.dispatch.is_over(0, 0));
        assert!(!run.state("a/y").is_success() && !run.state("a/y").is_failure());
        let key = run.engine.keys[run.task("a/y")];
        assert!(run.store.failure(&key).unwrap().is_none());
        // The interruption carries over to a later round of the same run.
        run.dispatch.begin_round(3);
        assert!(run.dispatch.stopping());
    }

    #[test]
    fn a_full_disk_stops_new_units_says_so_once_and_records_nothing() {
        let mut run = Run::new(three_stages(vec!["x", "y", "z"], false), 2, true);
        run.step();
        let full = |_: &Store| TaskOutcome::DiskFull("no room on /cache".into());
        let notes = run.report(&["a/x"], full);
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].contains("a/x could not finish: no room on /cache"),
            "{}",
            notes[0]
        );
        assert!(notes[0].contains("starting no new tasks"), "{}", notes[0]);
        assert!(run.report(&["a/y"], full).is_empty(), "said once");
        assert_eq!(run.step(), units(&[]));
        let key = run.engine.keys[run.task("a/x")];
        assert!(
            run.store.failure(&key).unwrap().is_none(),
            "not the item's failure"
        );
    }

    #[test]
    fn many_tasks_that_cannot_run_for_one_reason_say_it_once() {
        let mut run = Run::new(three_stages(vec!["x", "y", "z"], false), 3, true);
        run.step();
        let aborted = |_: &Store| TaskOutcome::Aborted("cannot reach the hub".into());
        let first = run.report(&["a/x"], aborted);
        assert_eq!(
            first,
            vec!["error: a/x could not run: cannot reach the hub".to_string()]
        );
        assert!(run.report(&["a/y"], aborted).is_empty());
        let other = run.report(&["a/z"], |_| TaskOutcome::Aborted("disk gone".into()));
        assert_eq!(other.len(), 1, "another reason is said");
    }

    #[test]
    fn a_damaged_input_runs_its_producer_again_before_its_reader() {
        let mut run = Run::new(three_stages(vec!["x"], false), 1, true);
        run.step();
        run.succeed(&["a/x"]);
        assert_eq!(run.step(), units(&[&["b/x"]]));
        let notes = run.report(&["b/x"], |_| TaskOutcome::InputCorrupt {
            stage: "a".into(),
            item: "x".into(),
            error: "blob of a/x failed verification".into(),
        });
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].contains("a/x is treated as a cache miss and runs again, then b/x runs"),
            "{}",
            notes[0]
        );
        assert_eq!(run.step(), units(&[&["a/x"]]), "the producer first");
        run.succeed(&["a/x"]);
        assert_eq!(run.step(), units(&[&["b/x"]]), "then the reader");
        run.succeed(&["b/x"]);
        assert_eq!(run.step(), units(&[&["c/all"]]));
    }
}
