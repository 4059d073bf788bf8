//! The index at Objaverse-XL's size (issue 30, point 2): three entries per task (as mvc keeps
//! tasks that are not views, and kept views before schema 2) against one record per object and stage (`mvc::store::object_stage`), written to sled
//! through mvc's own `SledIndex` (its page cache, segment size and flush interval).
//!
//!     cargo bench --bench xl_store                                   # 1M tasks
//!     MVC_BENCH_TASKS=100000000 cargo bench --bench xl_store         # 100M (one record per object and stage only)
//!     MVC_BENCH_PER_TASK_MAX=3000000 cargo bench --bench xl_store    # the largest size the per-task layout is also written at
//!
//! The shape is `xl`'s: per object one `objects` task, 36 render views and 36 embeddings of
//! them (73 tasks), each with the key record and result `benches/xl.rs`'s fill records (the
//! same item ids, camera parameters, inputs, and one 8-byte inline output).
//!
//! - **per task**: each task's key record, result and latest entry, three inserts.
//! - **per object and stage** (what mvc writes): the `objects` task per task (it is not a view); the 36 views of
//!   each view stage as one record; each stage's view columns once.
//!
//! Both write the same tasks in the same order; neither has the run's journal (which `xl`'s
//! figures include). Measured: the rate of making, encoding and inserting (and its slowest
//! window of 100,000 tasks: sled's known slowdown past ~100M keys, sled#1303, would show
//! there), bytes on disk per task after a flush, and 100,000 lookups of random view tasks,
//! each checked against what was written. One line per layout:
//! `xl-store: layout=… tasks=N record_tasks_per_s=… slowest_100k_per_s=… bytes_per_task=…
//! lookups_per_s=…`.
//!
//! A size the disk cannot hold is refused before anything is written.

use mvc::store::index::{Index, SledIndex, Tree};
use mvc::store::object_stage::{Columns, ObjectStage};
use mvc::store::records::{Latest, Output, TaskResult, encode, latest_key, manifest_digest};
use mvc::task::{Digest, KEY_SCHEMA, KeyRecord, ParamSlice};
use std::path::Path;
use std::time::Instant;

#[path = "common/timed.rs"]
mod timed;
use timed::{bench_dir, du, group};
#[path = "common/xl_shape.rs"]
mod xl_shape;
use xl_shape::{RINGS, TASKS_PER_OBJECT, VIEWS, made, object_id};

/// As `mvc` itself (`src/main.rs`): what is measured in this process is mvc's engine and store.
#[global_allocator]
static ALLOCATOR: mvc::commands::Allocator = mvc::commands::Allocator;

/// Bytes on disk a task takes, with a margin, to refuse a size the disk cannot hold: the per-task
/// layout measured 2.4 KB in `xl` (without the journal); one record per object and stage is
/// the `objects` task's entries (about 2.4 KB for 73 tasks) and the views' records.
const PER_TASK_DISK: u64 = 3_000;
const PER_OBJECT_DISK: u64 = 200;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace(['_', ','], "").parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, PartialEq)]
enum Layout {
    PerTask,
    PerObjectStage,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::PerTask => "per-task",
            Layout::PerObjectStage => "per-object-stage",
        }
    }

    fn disk_per_task(self) -> u64 {
        match self {
            Layout::PerTask => PER_TASK_DISK,
            Layout::PerObjectStage => PER_OBJECT_DISK,
        }
    }
}

fn main() {
    let tasks = env_num("MVC_BENCH_TASKS", 1_000_000);
    let per_task_max = env_num("MVC_BENCH_PER_TASK_MAX", 3_000_000);
    let objects = (tasks / TASKS_PER_OBJECT).max(1);
    let (dir, _guard) = bench_dir();
    let layouts: Vec<Layout> = match tasks <= per_task_max {
        true => vec![Layout::PerTask, Layout::PerObjectStage],
        false => {
            println!(
                "xl-store: {} tasks is more than MVC_BENCH_PER_TASK_MAX={}: the per-task layout is \
                 not written at this size (it would need about {} GB of disk)",
                group(tasks),
                group(per_task_max),
                (tasks * PER_TASK_DISK) >> 30
            );
            vec![Layout::PerObjectStage]
        }
    };
    refuse_what_disk_cannot_hold(&dir, objects * TASKS_PER_OBJECT, &layouts);
    println!(
        "xl-store: {} objects, {} tasks, in {}",
        group(objects),
        group(objects * TASKS_PER_OBJECT),
        dir.display()
    );
    let mut rates = Vec::new();
    for layout in layouts {
        let index_dir = dir.join(layout.name());
        let _ = std::fs::remove_dir_all(&index_dir);
        let figures = write_and_read(layout, &index_dir, objects);
        println!(
            "xl-store: layout={} tasks={} record_tasks_per_s={:.0} slowest_100k_per_s={:.0} \
             bytes_per_task={:.0} lookups_per_s={:.0}",
            layout.name(),
            figures.tasks,
            figures.record_per_s,
            figures.slowest_per_s,
            figures.bytes_per_task,
            figures.lookups_per_s
        );
        rates.push(figures);
        std::fs::remove_dir_all(&index_dir).unwrap();
    }
    if let [per_task, per_object] = &rates[..] {
        println!(
            "xl-store: one record per object and stage against three entries per task: {:.1}x the recording \
             rate, {:.3}x the bytes, {:.2}x the lookup rate",
            per_object.record_per_s / per_task.record_per_s,
            per_object.bytes_per_task / per_task.bytes_per_task,
            per_object.lookups_per_s / per_task.lookups_per_s
        );
    }
}

fn refuse_what_disk_cannot_hold(dir: &Path, tasks: u64, layouts: &[Layout]) {
    // Written one after the other, each removed before the next: the larger one decides.
    let need = layouts
        .iter()
        .map(|l| l.disk_per_task() * tasks)
        .max()
        .unwrap_or(0);
    let free = mvc::disk::usage(dir).map(|u| u.free).unwrap_or(u64::MAX);
    if need > free {
        let most = layouts
            .iter()
            .map(|l| free / l.disk_per_task())
            .min()
            .unwrap_or(0);
        eprintln!(
            "xl-store: {} tasks need about {} MB of disk in {} ({} bytes a task) and it has \
             {} MB free; nothing was written. Ask for at most MVC_BENCH_TASKS={most}, lower \
             MVC_BENCH_PER_TASK_MAX to write only one record per object and stage, or set \
             MVC_BENCH_DIR to a larger disk.",
            group(tasks),
            group(need >> 20),
            dir.display(),
            layouts.iter().map(|l| l.disk_per_task()).max().unwrap_or(0),
            group(free >> 20)
        );
        std::process::exit(2);
    }
}

struct Figures {
    tasks: u64,
    record_per_s: f64,
    slowest_per_s: f64,
    bytes_per_task: f64,
    lookups_per_s: f64,
}

/// One object's 73 tasks: its `objects` task, then each view stage's 36.
struct ObjectTasks {
    object: (KeyRecord, TaskResult),
    stages: [Vec<(KeyRecord, TaskResult)>; 2],
}

fn write_and_read(layout: Layout, index_dir: &Path, objects: u64) -> Figures {
    let index = SledIndex::open(index_dir).unwrap();
    let mut columns = [Columns::default(), Columns::default()];
    let started = Instant::now();
    let mut window = Instant::now();
    let mut slowest = f64::INFINITY;
    let mut written = 0u64;
    for i in 0..objects {
        let made = object_tasks(i);
        put_per_task(&index, &made.object);
        match layout {
            Layout::PerTask => {
                for task in made.stages.iter().flatten() {
                    put_per_task(&index, task);
                }
            }
            Layout::PerObjectStage => {
                for (stage, tasks) in made.stages.iter().enumerate() {
                    let record = group_of(&mut columns[stage], tasks);
                    let key = latest_key(record.stage(), record.object());
                    index.put(Tree::Tasks, &key, &record.encode()).unwrap();
                }
            }
        }
        let before = written;
        written += TASKS_PER_OBJECT;
        if before / 100_000 != written / 100_000 {
            slowest = slowest.min(100_000.0 / window.elapsed().as_secs_f64());
            window = Instant::now();
        }
    }
    if layout == Layout::PerObjectStage {
        for (stage, columns) in ["views", "embed"].iter().zip(&columns) {
            index
                .put(Tree::Params, stage.as_bytes(), &columns.encode())
                .unwrap();
        }
    }
    index.flush().unwrap();
    let wall = started.elapsed().as_secs_f64();
    let record_per_s = written as f64 / wall;
    let bytes = du(index_dir);
    let lookups_per_s = look_up(layout, &index, objects);
    Figures {
        tasks: written,
        record_per_s,
        slowest_per_s: if slowest.is_finite() {
            slowest
        } else {
            record_per_s
        },
        bytes_per_task: bytes as f64 / written as f64,
        lookups_per_s,
    }
}

fn put_per_task(index: &SledIndex, (record, result): &(KeyRecord, TaskResult)) {
    let key = record.key();
    index.put(Tree::Records, &key.0, &record.encode()).unwrap();
    index.put(Tree::Tasks, &key.0, &encode(result)).unwrap();
    let latest = Latest {
        key,
        previous: None,
        when_ms: result.started_ms,
    };
    index
        .put(
            Tree::Latest,
            &latest_key(&result.stage, &result.item),
            &encode(&latest),
        )
        .unwrap();
}

fn group_of(columns: &mut Columns, tasks: &[(KeyRecord, TaskResult)]) -> ObjectStage {
    let (record, result) = &tasks[0];
    let mut made = ObjectStage::first(columns, record, result).unwrap();
    for (record, result) in &tasks[1..] {
        made.add(columns, record, result, None).unwrap();
    }
    made
}

/// 100,000 random view tasks (a render or an embedding), each looked up as a plan or `mvc
/// why` would and checked against what was written.
fn look_up(layout: Layout, index: &SledIndex, objects: u64) -> f64 {
    const LOOKUPS: u64 = 100_000;
    let columns: Vec<Columns> = match layout {
        Layout::PerTask => Vec::new(),
        Layout::PerObjectStage => ["views", "embed"]
            .iter()
            .map(|s| Columns::decode(&index.get(Tree::Params, s.as_bytes()).unwrap().unwrap()))
            .collect::<Result<_, _>>()
            .unwrap(),
    };
    // The tasks to look up are made (and checked) outside the timed part.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut expected = Vec::with_capacity(LOOKUPS as usize);
    for _ in 0..LOOKUPS {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let object = (state >> 33) % objects;
        let stage = ((state >> 20) & 1) as usize;
        let view = ((state >> 8) % VIEWS) as usize;
        let made = object_tasks(object);
        expected.push(made.stages[stage][view].clone());
    }
    let started = Instant::now();
    let mut found = Vec::with_capacity(expected.len());
    for (_, result) in &expected {
        let back = match layout {
            Layout::PerTask => {
                // Its latest key, then that key's result and record, as a plan's reason does.
                let latest = index
                    .get(Tree::Latest, &latest_key(&result.stage, &result.item))
                    .unwrap()
                    .unwrap();
                let latest: Latest = postcard::from_bytes(&latest).unwrap();
                let result: TaskResult =
                    postcard::from_bytes(&index.get(Tree::Tasks, &latest.key.0).unwrap().unwrap())
                        .unwrap();
                let record =
                    KeyRecord::decode(&index.get(Tree::Records, &latest.key.0).unwrap().unwrap())
                        .unwrap();
                (record, result)
            }
            Layout::PerObjectStage => {
                let (object, view) = mvc::store::object_stage::split_view(&result.item).unwrap();
                let stage = usize::from(result.stage == "embed");
                let bytes = index
                    .get(Tree::Tasks, &latest_key(&result.stage, object))
                    .unwrap()
                    .unwrap();
                ObjectStage::decode(&bytes)
                    .unwrap()
                    .view(&columns[stage], view)
                    .unwrap()
                    .unwrap()
            }
        };
        found.push(back);
    }
    let elapsed = started.elapsed().as_secs_f64();
    for (back, (record, result)) in found.iter().zip(&expected) {
        assert_eq!(
            &back.0, record,
            "the key record of {} came back",
            result.item
        );
        assert_eq!(back.0.key(), record.key());
        assert_eq!(&back.1, result, "the result of {} came back", result.item);
    }
    LOOKUPS as f64 / elapsed
}

/// The tasks of object `i`, as `xl`'s fill records them.
fn object_tasks(i: u64) -> ObjectTasks {
    let object = object_id(i);
    let object_task = task(
        "objects",
        "command",
        &object,
        ParamSlice::new(),
        None,
        "model.glb",
    );
    let object_manifest = object_task.1.manifest;
    let mut views = Vec::with_capacity(VIEWS as usize);
    let mut embeds = Vec::with_capacity(VIEWS as usize);
    for v in 0..VIEWS as usize {
        let (azimuth, polar) = ((v % 6) * 60, RINGS[v / 6]);
        let item = format!("{object}@az{azimuth:03}-pol{polar:03}-d1.5-fov49.1343");
        let camera: ParamSlice = [
            ("azimuth", azimuth.to_string()),
            ("distance", "1.5".to_string()),
            ("fov", "49.13434264120263".to_string()),
            ("polar", polar.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let view = task(
            "views",
            "render",
            &item,
            camera,
            Some(("objects", object_manifest)),
            "o",
        );
        let background: ParamSlice = [("background".to_string(), "#ffffff".to_string())].into();
        let embed = task(
            "embed",
            "embed",
            &item,
            background,
            Some(("views", view.1.manifest)),
            "o",
        );
        views.push(view);
        embeds.push(embed);
    }
    ObjectTasks {
        object: object_task,
        stages: [views, embeds],
    }
}

fn task(
    stage: &str,
    kind: &str,
    item: &str,
    item_params: ParamSlice,
    input: Option<(&str, Digest)>,
    output: &str,
) -> (KeyRecord, TaskResult) {
    let record = KeyRecord {
        schema: KEY_SCHEMA,
        kind: kind.to_string(),
        kind_version: 1,
        item: item.to_string(),
        shared: Digest::of(stage.as_bytes()),
        item_params,
        inputs: input
            .into_iter()
            .map(|(name, digest)| (name.to_string(), digest))
            .collect(),
    };
    let bytes = made(stage, item).to_vec();
    let outputs = vec![Output {
        name: output.to_string(),
        digest: Digest::of(&bytes),
        size: bytes.len() as u64,
        inline: Some(bytes),
    }];
    let result = TaskResult {
        stage: stage.to_string(),
        item: item.to_string(),
        manifest: manifest_digest(&outputs),
        outputs,
        stdout: None,
        stderr: None,
        // A fixed clock, so that a task looked up is made again exactly.
        started_ms: BENCH_EPOCH_MS,
        duration_ms: 3,
        host: "local".to_string(),
    };
    (record, result)
}

/// 2026-12-06, as every task's start (the figures do not depend on it).
const BENCH_EPOCH_MS: u64 = 1_796_000_000_000;
