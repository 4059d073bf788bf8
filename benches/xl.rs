//! Objaverse-XL's shape at scale (issue 30): objects → render 36 views each → embed each view,
//! planned, recorded and planned again by mvc, with every task's own work made negligible so
//! that what is measured is mvc.
//!
//!     cargo bench --bench xl                                  # N = 1,000,000 tasks
//!     MVC_BENCH_TASKS=10000000 cargo bench --bench xl         # 10M
//!     MVC_BENCH_DIR=/tmp/xl cargo bench --bench xl            # keep the cache; plan it again later
//!     MVC_BENCH_BASELINE=/tmp/mvc-old cargo bench --bench xl  # also plan with another build
//!
//! The pipeline (`p.toml`, written by this benchmark): `objects`, a `command` stage over
//! N / 73 object ids from an items file; `views`, a `render` stage with 6 azimuths on 6 rings
//! (36 views per object, as the study); `embed`, an `embed` stage of every view. 73 tasks per
//! object: Objaverse-XL's 10M objects are 730M tasks. (Captions and a per-object gather are
//! left out: captions need a download stage or a caption file per object, which would make
//! the expansion read N blobs; they are 1 task in 74 and change no figure here.)
//!
//! How the cache is filled. Running 730M real renders is not the point, and a `command` task
//! costs 2.4 ms of process start alone. So a child process (this program with
//! `--fill-cache DIR N`) drives mvc's own engine as `mvc run` does, minus the kinds' work:
//! the real graph is built and keyed (`Engine::resolve_ready`), every task to run gets its
//! real key record (`Engine::record_of`), a result of one 8-byte inline output is committed to
//! the index through the run's journal (`Store::commit_success`), the engine is told
//! (`Engine::finish`), and the run ends as a run does (`exec::run::finish_driven_run`: memos,
//! run record, journal). The same loop without mvc (computing each task's 8 bytes) is the
//! baseline of the bookkeeping figure. A child, because a child's peak memory as `wait4`
//! reports it starts from its parent's at spawn: the plans below are spawned by a small
//! process.
//!
//! Then, as separate processes of the real `mvc` binary (peak memory from `wait4`):
//! `mvc plan p.toml --json` on the fully cached state (best of 3), and `mvc plan` of the same
//! pipeline with a seventh ring of 6 azimuths (1/6 = 17% more views), whose 2 × 6 new tasks
//! per object must be planned with their reasons: by the view columns (best of 3), and once
//! with every task keyed (`--full`, as every ring plan was before them), the baseline of its
//! ratios. The fully cached plan is also made with `--full` (best of 3).
//!
//! The fill's resident memory is printed after each of its steps (the graph built, the
//! engine made, the last task recorded, the run ended), beside its peak.
//!
//! Printed, one line per size:
//! `xl: tasks=N cached_plan_s=… cached_plan_rss_mb=… ring_plan_s=… ring_plan_rss_mb=…
//!  store_bytes_per_task=… record_tasks_per_s=… bookkeeping_us_per_task=…`
//!
//! A size this machine's memory cannot hold is refused before anything starts; a size whose
//! `--full` baselines it cannot hold is planned without them, and says so.

use mvc::exec::graph::{Sources, TaskGraph};
use mvc::exec::resolve::{Carry, Engine, Mode};
use mvc::exec::run::finish_driven_run;
use mvc::memory::Need;
use mvc::pipeline::Pipeline;
use mvc::store::Store;
use mvc::store::memo::MemoValue;
use mvc::store::records::{Output, RunOutcome, TaskResult, manifest_digest, now_ms, run_id};
use mvc::task::Digest;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/timed.rs"]
mod timed;
use timed::{bench_dir, du, group, resident_mb, timed};
#[path = "common/xl_shape.rs"]
mod xl_shape;
use xl_shape::{TASKS_PER_OBJECT, VIEWS, made, object_id, write_pipelines};

/// As `mvc` itself (`src/main.rs`): what is measured in this process is mvc's engine and store.
#[global_allocator]
static ALLOCATOR: mvc::commands::Allocator = mvc::commands::Allocator;

/// Peak memory of a plan with every task made (`--full`): 2,884–2,964 MB at 10M since the
/// lists a run writes per task are streamed, and 9,247–10,467 MB at 30M before (BENCHMARKS.md),
/// with a margin. Sizes whose baselines this machine cannot hold are planned without them.
const PEAK_FULL_PLAN: Need = Need {
    each: 400,
    fixed: 512 << 20,
};

/// `Err(why)` when `tasks` planned with every task made need more than `available` bytes.
fn full_plans_fit(tasks: u64, available: Option<u64>) -> Result<(), String> {
    let need = PEAK_FULL_PLAN.of(tasks);
    match available {
        Some(available) if need > available => Err(format!(
            "{} tasks planned with every task made need about {} MB ({} bytes a task), and \
             this machine has {} MB available",
            group(tasks),
            group(need >> 20),
            PEAK_FULL_PLAN.each,
            group(available >> 20)
        )),
        _ => Ok(()),
    }
}

/// Peak memory of the most demanding step (filling the cache in a child process: the graph,
/// the engine's per-task arrays in run mode, sled's page cache), from BENCHMARKS.md with a
/// margin: 831 MB at 3M tasks, 2,362 MB at 10M, 16,347 MB at 80M and 19,554 MB at 100M
/// since the lists a run writes per task are streamed (about 200 bytes a task; 3,246 MB at
/// 10M before, and 8,879 MB at 30M).
/// Used only to refuse a size before it starts; every figure printed is measured. (A
/// baseline build given in `MVC_BENCH_BASELINE` may need more: the build before issue 30
/// planned the ring of 3M tasks in 4.1 GB.)
const PEAK: Need = Need {
    each: 225,
    fixed: 512 << 20,
};

fn main() {
    // The cache is filled by a child process (this program again), so that this one stays
    // small: a child's peak memory, as wait4 reports it, starts from its parent's at spawn.
    let args: Vec<String> = std::env::args().collect();
    if let Some(k) = args.iter().position(|a| a == FILL_ARG) {
        let dir = PathBuf::from(&args[k + 1]);
        let tasks: u64 = args[k + 2].parse().unwrap();
        std::env::set_current_dir(&dir).unwrap();
        let fill = fill_cache(&dir, tasks);
        std::fs::write(dir.join(FILLED), serde_json::to_vec(&fill).unwrap()).unwrap();
        return;
    }
    let asked: u64 = std::env::var("MVC_BENCH_TASKS")
        .ok()
        .map(|v| {
            v.replace(['_', ','], "").parse().unwrap_or_else(|_| {
                eprintln!("xl: MVC_BENCH_TASKS={v} is not a number of tasks (e.g. 10000000)");
                std::process::exit(2)
            })
        })
        .unwrap_or(1_000_000);
    let objects = (asked / TASKS_PER_OBJECT).max(1);
    let tasks = objects * TASKS_PER_OBJECT;
    refuse_what_memory_cannot_hold(tasks);

    let (dir, _kept) = bench_dir();
    let mvc = env!("CARGO_BIN_EXE_mvc");
    println!(
        "xl: {} tasks ({} objects x (1 + {VIEWS} views + {VIEWS} embeddings)), cache in {}",
        group(tasks),
        group(objects),
        dir.display()
    );
    write_pipelines(&dir, objects);

    let baseline = baseline_loop(objects);
    let fill = filled(&dir, tasks);
    print_fill(&fill, per_task_us(baseline, tasks));

    let (cached, ring) = plans(mvc, &dir, tasks, objects);
    let (cached_s, cached_mb) = (cached.wall_s, cached.peak_mb);
    let (ring_s, ring_mb) = (ring.wall_s, ring.peak_mb);
    if let Ok(baseline) = std::env::var("MVC_BENCH_BASELINE") {
        // Another build of mvc (an earlier commit's) plans the same cache: the ratios say
        // what a change did, on the same machine in the same command.
        let base = best_plan(&baseline, &dir, "p.toml", 0, &[]);
        let (base_cached_s, base_cached_mb) = (base.wall_s, base.peak_mb);
        let base = best_plan(&baseline, &dir, "p-ring.toml", 2 * 6 * objects, &[]);
        let (base_ring_s, base_ring_mb) = (base.wall_s, base.peak_mb);
        println!(
            "baseline {baseline}: cached plan {base_cached_s:.2}s {base_cached_mb} MB, ring \
             plan {base_ring_s:.2}s {base_ring_mb} MB; this build / baseline: cached plan \
             time {:.2}, memory {:.2}; ring plan time {:.2}, memory {:.2}",
            cached_s / base_cached_s,
            cached_mb as f64 / base_cached_mb as f64,
            ring_s / base_ring_s,
            ring_mb as f64 / base_ring_mb as f64
        );
    }
    let store = store_bytes(&dir.join("cache"));
    println!(
        "store: {} bytes on disk (index {}, journal {}, memos and other blobs {})",
        group(store.total),
        group(store.index),
        group(store.journal),
        group(store.total - store.index - store.journal)
    );
    let bookkeeping = fill.wall_s * 1e6 / fill.tasks as f64 - per_task_us(baseline, tasks);
    println!(
        "xl: tasks={tasks} cached_plan_s={cached_s:.3} cached_plan_rss_mb={cached_mb} \
         ring_plan_s={ring_s:.2} ring_plan_rss_mb={ring_mb} store_bytes_per_task={:.0} \
         record_tasks_per_s={:.0} bookkeeping_us_per_task={bookkeeping:.2}",
        store.total as f64 / tasks as f64,
        fill.tasks as f64 / fill.recording_s,
    );
}

/// The plans of the filled cache, each a separate `mvc` process: fully cached (best of 3),
/// and after the new ring (best of 3), each also with `--full` (the baselines) when this
/// machine can hold them. Prints them; returns the cached plan and the ring plan.
fn plans(mvc: &str, dir: &Path, tasks: u64, objects: u64) -> (Planned, Planned) {
    let cached = best_plan(mvc, dir, "p.toml", 0, &[]);
    let (cached_s, cached_mb) = (cached.wall_s, cached.peak_mb);
    // The same plans with every task made, keyed and looked up, as every plan was before the
    // stage summaries and the view columns: the baselines, when this machine can hold them.
    let full_fits = full_plans_fit(tasks, mvc::memory::available());
    if let Err(why) = &full_fits {
        println!("the plans with every task keyed (--full, the baselines) are not run: {why}");
    }
    // Best of three when nothing changed; once after the ring: it takes minutes at 30M.
    let full = full_fits
        .is_ok()
        .then(|| best_plan(mvc, dir, "p.toml", 0, &["--full"]));
    println!(
        "cached plan: {cached_s:.3}s {cached_mb} MB {}; with every task keyed (--full) {}",
        if cached.from_summaries {
            "(decided by the stage summaries)"
        } else {
            "(NOT decided by the stage summaries: a cache filled by a build without them?)"
        },
        full.as_ref()
            .map(|f| format!("{:.2}s {} MB", f.wall_s, f.peak_mb))
            .unwrap_or_else(|| "not run".into())
    );
    let new_tasks = 2 * 6 * objects;
    let ring = best_plan(mvc, dir, "p-ring.toml", new_tasks, &[]);
    let (ring_s, ring_mb) = (ring.wall_s, ring.peak_mb);
    let ring_full = full_fits
        .is_ok()
        .then(|| planned(mvc, dir, "p-ring.toml", new_tasks, &["--full"]));
    println!(
        "ring plan: {ring_s:.2}s {ring_mb} MB {}, {:.1} bytes per new task above the cached \
         plan; with every task keyed (--full) {}",
        if ring.from_columns {
            "(decided by the view columns)"
        } else {
            "(NOT decided by the view columns)"
        },
        ring_mb.saturating_sub(cached_mb) as f64 * 1048576.0 / new_tasks as f64,
        ring_full
            .as_ref()
            .map(|f| format!(
                "{:.2}s {} MB; view columns / --full: time {:.3}, memory {:.3}",
                f.wall_s,
                f.peak_mb,
                ring_s / f.wall_s,
                ring_mb as f64 / f.peak_mb as f64
            ))
            .unwrap_or_else(|| "not run".into())
    );
    (cached, ring)
}

/// Exits with a message when the size asked for needs more memory than this machine has
/// available now: an OOM kill half way is no answer.
fn refuse_what_memory_cannot_hold(tasks: u64) {
    if let Err(message) = PEAK.check(tasks, "tasks", "MVC_BENCH_TASKS", mvc::memory::available()) {
        eprintln!("xl: {message}");
        std::process::exit(2);
    }
}

/// The baseline: the same work per task with no mvc (each task's item id and its 8 bytes).
fn baseline_loop(objects: u64) -> Duration {
    let started = Instant::now();
    let mut sink = 0u64;
    for i in 0..objects {
        let object = object_id(i);
        sink ^= made("objects", &object)[0] as u64;
        for view in 0..VIEWS {
            // As long as a view's real id: `<uid>@az030-pol050-d1.5-fov49.1343`.
            let item = format!(
                "{object}@az{:03}-pol{:03}-d1.5-fov49.1343",
                view % 6,
                view / 6
            );
            sink ^= made("views", &item)[0] as u64;
            sink ^= made("embed", &item)[0] as u64;
        }
    }
    std::hint::black_box(sink);
    started.elapsed()
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Fill {
    tasks: u64,
    wall_s: f64,
    /// Time spent in `Store::commit_success` alone.
    recording_s: f64,
    /// The slowest rate of recording over any 100,000 consecutive records, counting the
    /// time spent in `Store::commit_success` alone (sled's known slowdown past ~100M keys
    /// would show here first).
    slowest_window_per_s: f64,
    /// The slowest rate of the whole loop over 100,000 consecutive tasks: recording and the
    /// engine's bookkeeping (keying a stage's tasks as they become ready).
    #[serde(default)]
    slowest_loop_window_per_s: f64,
    /// Where recording's slowest window ended: the tasks recorded by then, and the stage of
    /// its last one.
    #[serde(default)]
    slowest_window_end: (u64, String),
    /// Recording's rate in each stage (tasks, seconds in `commit_success`).
    #[serde(default)]
    per_stage: Vec<(String, u64, f64)>,
    /// Every window of 100,000 records of a stage's own, as (stage, records of the stage
    /// by its end, tasks/s, recording alone): each stage's slowest, and where they fall.
    #[serde(default)]
    windows: Vec<(String, u64, f64)>,
    /// Resident memory after each step of the fill (the graph built, the engine made, the
    /// last task recorded, the run ended), in MB.
    #[serde(default)]
    resident_mb: Vec<(String, u64)>,
    peak_rss_mb: u64,
}

/// The argument that makes this program the child that fills the cache: `--fill-cache DIR
/// TASKS`.
const FILL_ARG: &str = "--fill-cache";
/// What the child found, in the benchmark's folder: a cache already filled is planned again
/// without filling it (`MVC_BENCH_DIR`), with the figures of its fill.
const FILLED: &str = "filled.json";

/// Fills the cache in a child process, or reads what an earlier fill of this folder found.
fn filled(dir: &Path, tasks: u64) -> Fill {
    let path = dir.join(FILLED);
    if let Ok(bytes) = std::fs::read(&path) {
        let fill: Fill = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(fill.tasks, tasks, "{} holds another size", dir.display());
        println!(
            "the cache in {} is already filled: planning it again (the fill's figures are \
             those of {FILLED})",
            dir.display()
        );
        return fill;
    }
    let exe = std::env::current_exe().unwrap();
    let tasks_arg = tasks.to_string();
    let dir_arg = dir.display().to_string();
    let child = timed(&exe, dir, &[FILL_ARG, &dir_arg, &tasks_arg]);
    assert_eq!(
        child.code,
        Some(0),
        "filling the cache failed:\n{}",
        child.stderr
    );
    let mut fill: Fill = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    fill.peak_rss_mb = child.peak_rss_kb / 1024;
    std::fs::write(&path, serde_json::to_vec(&fill).unwrap()).unwrap();
    fill
}

/// Fills the cache as a run does, with every task's work replaced by [`made`].
fn fill_cache(dir: &Path, expected: u64) -> Fill {
    let pipeline = Pipeline::load(&dir.join("p.toml")).unwrap_or_else(|e| panic!("{e}"));
    let workflow = pipeline.workflow;
    let store = Arc::new(Store::open(&dir.join("cache")).expect("opening the cache"));
    let started_ms = now_ms();
    let run = run_id(started_ms);
    let started = Instant::now();
    store.begin_journal(&run).unwrap();
    let mut memory = Vec::new();
    let graph = TaskGraph::build(&workflow, &store, &Sources::new()).unwrap();
    memory.push(("the graph", resident_mb("self")));
    assert!(
        !graph.has_deferred(),
        "every stage expands from known items"
    );
    let mut engine = Engine::new(graph, store.clone(), Mode::Run, false, Carry::default()).unwrap();
    memory.push(("the engine", resident_mb("self")));
    let mut meter = RecordingMeter::new();
    loop {
        let ready = engine.resolve_ready().unwrap();
        if ready.is_empty() {
            break;
        }
        for t in ready {
            engine.start(t);
            let stage = engine.graph.stage_of(t).name.clone();
            let item = engine.graph.item(t).to_string();
            let bytes = made(&stage, &item);
            let record = engine
                .record_of(t)
                .unwrap_or_else(|_| panic!("{item} keyed"));
            let output = Output {
                name: "o".into(),
                digest: Digest::of(&bytes),
                size: bytes.len() as u64,
                inline: Some(bytes.to_vec()),
            };
            let manifest = manifest_digest(std::slice::from_ref(&output));
            let result = TaskResult {
                stage,
                item,
                outputs: vec![output],
                manifest,
                stdout: None,
                stderr: None,
                started_ms: 0,
                duration_ms: 0,
                host: "local".into(),
            };
            let key = engine.keys[t.index()];
            let at = Instant::now();
            store.commit_success(&key, &record, &result).unwrap();
            meter.recorded(&result.stage, at.elapsed());
            engine.finish(
                t,
                Ok((
                    manifest,
                    MemoValue::Done {
                        manifest,
                        blobs: Vec::new(),
                    },
                )),
            );
        }
    }
    let wall = started.elapsed();
    memory.push(("the last task", resident_mb("self")));
    let report = finish_driven_run(&workflow, &engine, (&run, started_ms), wall).unwrap();
    assert_eq!(
        report.outcome,
        RunOutcome::Ok,
        "the run is recorded as a success"
    );
    let wall = started.elapsed();
    memory.push(("the run's end", resident_mb("self")));
    assert_eq!(meter.done, expected, "every task ran once");
    // The cache's lock goes with the last handle on the store.
    drop(engine);
    drop(store);
    let mut fill = meter.fill(wall);
    fill.resident_mb = memory
        .into_iter()
        .map(|(at, mb)| (at.to_string(), mb))
        .collect();
    fill
}

/// The fill's figures: its time, recording's, and each stage's.
fn print_fill(fill: &Fill, without_mvc_us: f64) {
    println!(
        "filled: {} tasks in {:.1}s ({:.2} us per task; the same loop without mvc {:.3} us); \
         recording alone {:.1}s, slowest 100k records {:.0} tasks/s (recording alone, ending \
         at task {} of stage {}; the whole loop's slowest 100k tasks {:.0}/s); peak RSS {} MB",
        group(fill.tasks),
        fill.wall_s,
        fill.wall_s * 1e6 / fill.tasks as f64,
        without_mvc_us,
        fill.recording_s,
        fill.slowest_window_per_s,
        group(fill.slowest_window_end.0),
        fill.slowest_window_end.1,
        fill.slowest_loop_window_per_s,
        fill.peak_rss_mb
    );
    if !fill.resident_mb.is_empty() {
        let steps: Vec<String> = fill
            .resident_mb
            .iter()
            .map(|(at, mb)| format!("{at} {mb} MB"))
            .collect();
        println!("fill memory, resident after: {}", steps.join(", "));
    }
    for (stage, n, s) in &fill.per_stage {
        // A stage of fewer than 100,000 records has no window of its own.
        let slowest = (fill.windows.iter())
            .filter(|(name, _, _)| name == stage)
            .map(|(_, _, rate)| *rate)
            .reduce(f64::min)
            .map(|rate| format!(", slowest 100k of its own {rate:.0} tasks/s"))
            .unwrap_or_default();
        println!(
            "recorded: stage {stage}: {} tasks at {:.0} tasks/s{slowest}",
            group(*n),
            *n as f64 / s
        );
    }
}

/// Recording's time: in all, over each window of 100,000 tasks (alone, and with the whole
/// loop's), and per stage.
struct RecordingMeter {
    done: u64,
    recording: Duration,
    /// The current window: when it began, and the time its records took.
    window: (Instant, Duration),
    slowest: f64,
    slowest_end: (u64, String),
    slowest_loop: f64,
    /// Per stage: its records, their time, and the time of its current window of them.
    per_stage: Vec<(String, u64, Duration, Duration)>,
    windows: Vec<(String, u64, f64)>,
}

impl RecordingMeter {
    const WINDOW: u64 = 100_000;

    fn new() -> RecordingMeter {
        RecordingMeter {
            done: 0,
            recording: Duration::ZERO,
            window: (Instant::now(), Duration::ZERO),
            slowest: f64::INFINITY,
            slowest_end: (0, String::new()),
            slowest_loop: f64::INFINITY,
            per_stage: Vec::new(),
            windows: Vec::new(),
        }
    }

    /// A task of `stage` recorded in `took`.
    fn recorded(&mut self, stage: &str, took: Duration) {
        self.done += 1;
        self.recording += took;
        self.window.1 += took;
        let at = match self.per_stage.iter().position(|(name, ..)| name == stage) {
            Some(at) => at,
            None => {
                let zero = Duration::ZERO;
                self.per_stage.push((stage.to_string(), 0, zero, zero));
                self.per_stage.len() - 1
            }
        };
        let (_, n, d, window) = &mut self.per_stage[at];
        (*n, *d, *window) = (*n + 1, *d + took, *window + took);
        if n.is_multiple_of(Self::WINDOW) {
            let rate = Self::WINDOW as f64 / window.as_secs_f64();
            *window = Duration::ZERO;
            self.windows.push((stage.to_string(), *n, rate));
        }
        if self.done.is_multiple_of(Self::WINDOW) {
            let tasks = Self::WINDOW as f64;
            let rate = tasks / self.window.1.as_secs_f64();
            if rate < self.slowest {
                self.slowest = rate;
                self.slowest_end = (self.done, stage.to_string());
            }
            let whole = self.window.0.elapsed().as_secs_f64();
            self.slowest_loop = self.slowest_loop.min(tasks / whole);
            self.window = (Instant::now(), Duration::ZERO);
        }
    }

    fn fill(self, wall: Duration) -> Fill {
        let (mut slowest, mut slowest_loop) = (self.slowest, self.slowest_loop);
        let mut slowest_end = self.slowest_end;
        if self.done < Self::WINDOW {
            // Fewer tasks than a window: the one window is the whole fill.
            let last = self.per_stage.last().map(|(stage, ..)| stage.clone());
            slowest_end = (self.done, last.unwrap_or_default());
            slowest = self.done as f64 / self.recording.as_secs_f64();
            slowest_loop = self.done as f64 / wall.as_secs_f64();
        }
        Fill {
            tasks: self.done,
            wall_s: wall.as_secs_f64(),
            recording_s: self.recording.as_secs_f64(),
            slowest_window_per_s: slowest,
            slowest_loop_window_per_s: slowest_loop,
            slowest_window_end: slowest_end,
            per_stage: (self.per_stage.into_iter())
                .map(|(stage, n, d, _)| (stage, n, d.as_secs_f64()))
                .collect(),
            windows: self.windows,
            resident_mb: Vec::new(),
            peak_rss_mb: 0,
        }
    }
}

/// What [`best_plan`] measured.
struct Planned {
    /// The best of three.
    wall_s: f64,
    /// The highest of three.
    peak_mb: u64,
    /// Whether the stage summaries decided it (every time).
    from_summaries: bool,
    /// Whether the view columns decided it (every time).
    from_columns: bool,
}

/// Plans `file` (with `more` arguments) three times as separate processes: the best wall
/// time and the highest peak memory. Checks that exactly `to_run` tasks would run, every one
/// a new view, and that every task of the shape is counted.
fn best_plan(mvc: &str, dir: &Path, file: &str, to_run: u64, more: &[&str]) -> Planned {
    plan_times(mvc, dir, file, to_run, more, 3)
}

/// [`best_plan`], planned once.
fn planned(mvc: &str, dir: &Path, file: &str, to_run: u64, more: &[&str]) -> Planned {
    plan_times(mvc, dir, file, to_run, more, 1)
}

fn plan_times(
    mvc: &str,
    dir: &Path,
    file: &str,
    to_run: u64,
    more: &[&str],
    times: usize,
) -> Planned {
    let mut best = f64::INFINITY;
    let mut peak = 0;
    let mut from_summaries = true;
    let mut from_columns = true;
    for _ in 0..times {
        let mut args = vec!["plan", file, "--json"];
        args.extend_from_slice(more);
        let plan = timed(mvc, dir, &args);
        assert_eq!(
            plan.code,
            Some(0),
            "mvc plan {file} failed:\n{}",
            plan.stderr
        );
        let json: serde_json::Value = serde_json::from_str(plan.stdout.trim()).unwrap();
        let planned: u64 = ["objects", "views", "embed"]
            .iter()
            .map(|s| json["stages"][s]["to_run"].as_u64().unwrap())
            .sum();
        assert_eq!(planned, to_run, "mvc plan {file}: {json}");
        let objects = json["stages"]["objects"]["total"].as_u64().unwrap();
        for s in ["views", "embed"] {
            let views = json["stages"][s]["total"].as_u64().unwrap();
            assert_eq!(views % objects, 0, "mvc plan {file}: {s}: {json}");
            assert!(views >= VIEWS * objects, "mvc plan {file}: {s}: {json}");
        }
        from_summaries &= json["from_summaries"] == serde_json::Value::Bool(true);
        from_columns &= json["from_columns"] == serde_json::Value::Bool(true);
        if to_run > 0 {
            for s in ["views", "embed"] {
                assert_eq!(
                    json["stages"][s]["reasons"]["new item"].as_u64(),
                    Some(to_run / 2),
                    "mvc plan {file}: {s} says why: {json}"
                );
            }
        }
        best = best.min(plan.wall.as_secs_f64());
        peak = peak.max(plan.peak_rss_kb / 1024);
    }
    Planned {
        wall_s: best,
        peak_mb: peak,
        from_summaries,
        from_columns,
    }
}

struct StoreBytes {
    total: u64,
    index: u64,
    journal: u64,
}

fn store_bytes(cache: &Path) -> StoreBytes {
    StoreBytes {
        total: du(cache),
        index: du(&cache.join("index")),
        journal: du(&cache.join("journal")),
    }
}

fn per_task_us(d: Duration, tasks: u64) -> f64 {
    d.as_secs_f64() * 1e6 / tasks as f64
}
