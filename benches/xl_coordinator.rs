//! One coordinator and 1,000 GPU workers (issue 30, point 4): a load generator speaks the real
//! protocol, with the real client code (`mvc::remote::client::Client`), over loopback, to a
//! real coordinator (`mvc run p.toml --listen 127.0.0.1:PORT --no-local`).
//!
//!     cargo bench --bench xl_coordinator
//!     MVC_BENCH_WORKERS=1000 MVC_BENCH_OBJECTS=6000 MVC_BENCH_TASK_MS=40 cargo bench --bench xl_coordinator
//!     MVC_BENCH_RUNS=steady cargo bench --bench xl_coordinator   # the steady run alone
//!
//! The pipeline is `xl`'s (`benches/common/xl_shape.rs`): per object one `objects` task, 36
//! render tasks (one unit per object) and 36 embed tasks. Each simulated worker registers,
//! sends heartbeats, leases a unit, "works" on it for `MVC_BENCH_TASK_MS` per task (default
//! 40 ms: 1,000 workers then offer 25,000 tasks/s, more than the goal of 20,000), and
//! reports every task done with one 8-byte inline output, as a worker whose outputs stay
//! small does. A worker the coordinator no longer knows registers again, as `mvc worker`
//! does.
//!
//! Two runs, each on a new cache:
//! 1. **steady**: the whole pipeline; the rate of view tasks (render and embed) reported and
//!    acknowledged, from the first lease to the last report, and the latency of each lease
//!    that got a unit (p50, p99).
//! 2. **restart**: the same, with the coordinator killed (SIGKILL) when half the tasks are
//!    acknowledged and started again on the same cache and port.
//!
//! After each: `mvc plan` must find every task cached (`lost` counts those it would run
//! again), and no task may be acknowledged twice (`duplicated`: a result the coordinator
//! took, then asked for again). One line per run:
//! `xl-coordinator: workers=1000 tasks_per_s=… p99_lease_ms=… lost=0 duplicated=0`.
//!
//! Those figures span the whole run, which starts with 1,000 workers asking at the same
//! moment and ends with workers waiting for the last renders to finish so that their
//! embeddings can be leased: a lease then waits for work to exist, not for the coordinator.
//! A second line gives the same figures for the **sustained** stretch alone: from the moment
//! every worker has had its first unit to the lease of the last object (after which no new
//! work enters the pipeline):
//! `xl-coordinator-sustained: seconds=… tasks_per_s=… p50_lease_ms=… p99_lease_ms=…`.

use mvc::exec::kind::TaskOutcome;
use mvc::remote::client::{CallError, Client};
use mvc::remote::protocol::{Complete, Heartbeat, LeaseRequest, Register, Unit};
use mvc::resources::Resources;
use mvc::store::records::Output;
use mvc::task::{Digest, TaskKey};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "common/coordinator.rs"]
mod coordinator;
#[path = "common/timed.rs"]
mod timed;
#[path = "common/xl_shape.rs"]
mod xl_shape;
use coordinator::start_coordinator;
use timed::{group, resident_mb};
use xl_shape::{TASKS_PER_OBJECT, made, write_pipelines};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace(['_', ','], "").parse().ok())
        .unwrap_or(default)
}

struct Settings {
    workers: u64,
    objects: u64,
    task_ms: u64,
}

fn main() {
    let settings = Settings {
        workers: env_num("MVC_BENCH_WORKERS", 1000).max(1),
        objects: env_num("MVC_BENCH_OBJECTS", 6000).max(1),
        task_ms: env_num("MVC_BENCH_TASK_MS", 40),
    };
    println!(
        "xl-coordinator: {} workers, {} objects ({} tasks), {} ms of simulated work per task \
         (offering {} tasks/s), {} cores",
        settings.workers,
        group(settings.objects),
        group(settings.objects * TASKS_PER_OBJECT),
        settings.task_ms,
        (settings.workers * 1000)
            .checked_div(settings.task_ms)
            .map(group)
            .unwrap_or_else(|| "unbounded".to_string()),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // `MVC_BENCH_RUNS=steady` leaves out the restart run (for measuring a change quickly).
    let runs: &[bool] = match std::env::var("MVC_BENCH_RUNS").as_deref() {
        Ok("steady") => &[false],
        _ => &[false, true],
    };
    for &restart in runs {
        let outcome = runtime.block_on(one_run(&settings, restart));
        println!(
            "{}: {} view tasks acknowledged in {:.1}s; leases with a unit: {} (p50 {:.1} ms, \
             p99 {:.1} ms); re-registrations {}; peak RSS of the coordinator{} {} MB",
            if restart {
                "restart (coordinator killed half way and started again)"
            } else {
                "steady"
            },
            group(outcome.view_tasks),
            outcome.wall.as_secs_f64(),
            group(outcome.latencies_us.len() as u64),
            percentile(&outcome.latencies_us, 0.50),
            percentile(&outcome.latencies_us, 0.99),
            outcome.reregistered,
            if restart { "s" } else { "" },
            outcome.coordinator_rss_mb
        );
        println!(
            "xl-coordinator: workers={} tasks_per_s={:.0} p99_lease_ms={:.1} lost={} \
             duplicated={}",
            settings.workers,
            outcome.view_tasks as f64 / outcome.wall.as_secs_f64(),
            percentile(&outcome.latencies_us, 0.99),
            outcome.lost,
            outcome.duplicated
        );
        let sustained = &outcome.sustained;
        println!(
            "xl-coordinator-sustained: seconds={:.1} tasks_per_s={:.0} p50_lease_ms={:.1} \
             p99_lease_ms={:.1}",
            sustained.wall.as_secs_f64(),
            sustained.view_tasks as f64 / sustained.wall.as_secs_f64(),
            percentile(&sustained.latencies_us, 0.50),
            percentile(&sustained.latencies_us, 0.99),
        );
        println!("{}", outcome.phases);
    }
}

fn percentile(us: &[u64], p: f64) -> f64 {
    if us.is_empty() {
        return f64::NAN;
    }
    let mut sorted = us.to_vec();
    sorted.sort_unstable();
    let k = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[k] as f64 / 1e3
}

/// What the simulated workers saw, together.
#[derive(Default)]
struct Seen {
    /// Tasks each key's result was acknowledged for.
    acknowledged: HashMap<TaskKey, u32>,
    view_tasks: u64,
    first_lease: Option<Instant>,
    last_report: Option<Instant>,
    latencies_us: Vec<u64>,
    reregistered: u64,
    /// When each lease that got a unit was asked for, its latency and its stage.
    leases: Vec<(Instant, u64, String)>,
    /// When each view unit's results were acknowledged, and its tasks.
    acknowledged_at: Vec<(Instant, u64)>,
    /// When each worker got its first unit.
    first_unit: HashMap<u64, Instant>,
}

struct Outcome {
    view_tasks: u64,
    wall: Duration,
    latencies_us: Vec<u64>,
    reregistered: u64,
    lost: u64,
    duplicated: u64,
    coordinator_rss_mb: u64,
    sustained: Sustained,
    /// The whole run's leases in its three stretches, as one printed line.
    phases: String,
}

/// The figures of the sustained stretch: from the moment every worker has had its first
/// unit to the lease of the last object.
#[derive(Default)]
struct Sustained {
    wall: Duration,
    view_tasks: u64,
    latencies_us: Vec<u64>,
}

impl Seen {
    /// The sustained stretch: from the moment every worker has had its first unit to the
    /// lease of the last object.
    fn sustained_bounds(&self) -> (Option<Instant>, Option<Instant>) {
        let from = self.first_unit.values().max().copied();
        let to = self
            .leases
            .iter()
            .filter(|(_, _, stage)| stage == "objects")
            .map(|(at, _, _)| *at)
            .max();
        (from, to)
    }

    fn sustained(&self) -> Sustained {
        let (Some(from), Some(to)) = self.sustained_bounds() else {
            return Sustained::default();
        };
        let within = |at: &Instant| (from..=to).contains(at);
        Sustained {
            wall: to.saturating_duration_since(from),
            view_tasks: self
                .acknowledged_at
                .iter()
                .filter(|(at, _)| within(at))
                .map(|(_, n)| n)
                .sum(),
            latencies_us: self
                .leases
                .iter()
                .filter(|(at, _, _)| within(at))
                .map(|(_, us, _)| *us)
                .collect(),
        }
    }

    /// The leases of the whole run in three stretches: the start (before every worker had
    /// its first unit), the sustained stretch, and the end (after the last object's lease):
    /// how many, and their p50 and p99, so that the whole run's p99 says where it comes
    /// from.
    fn phases(&self) -> String {
        let (from, to) = self.sustained_bounds();
        let mut stretches: [Vec<u64>; 3] = Default::default();
        for (at, us, _) in &self.leases {
            let k = match (from, to) {
                (Some(from), _) if *at < from => 0,
                (_, Some(to)) if *at > to => 2,
                _ => 1,
            };
            stretches[k].push(*us);
        }
        let [start, sustained, end] = stretches.map(|us| {
            format!(
                "{} (p50 {:.1} ms, p99 {:.1} ms)",
                us.len(),
                percentile(&us, 0.50),
                percentile(&us, 0.99)
            )
        });
        format!("leases by stretch: start {start}; sustained {sustained}; end {end}")
    }

    /// With `MVC_BENCH_LEASES=FILE`, writes every lease to `FILE.steady` or `FILE.restart`
    /// as `seconds since the first lease,latency in µs,stage`.
    fn write_leases(&self, run: &str) {
        let (Ok(path), Some(first)) = (std::env::var("MVC_BENCH_LEASES"), self.first_lease) else {
            return;
        };
        let rows: String = self
            .leases
            .iter()
            .map(|(at, us, stage)| {
                let s = at.saturating_duration_since(first).as_secs_f64();
                format!("{s:.4},{us},{stage}\n")
            })
            .collect();
        std::fs::write(format!("{path}.{run}"), rows).unwrap();
    }
}

async fn one_run(settings: &Settings, restart: bool) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    write_pipelines(dir.path(), settings.objects);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mvc = env!("CARGO_BIN_EXE_mvc");
    let mut coordinator = start_coordinator(mvc, dir.path(), &listen, &[]).0;
    let url = format!("http://{listen}");
    // Sized for every task at once: a table that grows moves its entries while it holds
    // the lock, and every simulated worker waiting on it waits too.
    let seen = Arc::new(Mutex::new(Seen {
        acknowledged: HashMap::with_capacity((settings.objects * TASKS_PER_OBJECT) as usize),
        ..Seen::default()
    }));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..settings.workers {
        let client = Client::new(&url, None).unwrap();
        workers.push(tokio::spawn(simulated_worker(
            w,
            client,
            settings.task_ms,
            seen.clone(),
            acknowledged.clone(),
            done.clone(),
        )));
    }
    let mut peak_rss_mb = 0;
    if restart {
        let half = settings.objects * TASKS_PER_OBJECT / 2;
        while acknowledged.load(Ordering::Relaxed) < half {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak_rss_mb = resident_mb(&coordinator.id().to_string());
        coordinator.kill().unwrap();
        coordinator.wait().unwrap();
        coordinator = start_coordinator(mvc, dir.path(), &listen, &[]).0;
    }
    // The coordinator's run ends once every task is recorded.
    let pid = coordinator.id();
    let watcher = tokio::task::spawn_blocking(move || {
        let status = coordinator.wait().unwrap();
        assert!(status.success(), "the coordinator's run failed: {status}");
    });
    while !watcher.is_finished() {
        peak_rss_mb = peak_rss_mb.max(resident_mb(&pid.to_string()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    watcher.await.unwrap();
    done.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }

    let lost = tasks_to_run(mvc, dir.path());
    let seen = Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap();
    let duplicated = seen.acknowledged.values().filter(|&&n| n > 1).count() as u64;
    let sustained = seen.sustained();
    seen.write_leases(if restart { "restart" } else { "steady" });
    let phases = seen.phases();
    Outcome {
        sustained,
        phases,
        view_tasks: seen.view_tasks,
        wall: seen
            .last_report
            .zip(seen.first_lease)
            .map(|(l, f)| l - f)
            .unwrap_or_default(),
        latencies_us: seen.latencies_us,
        reregistered: seen.reregistered,
        lost,
        duplicated,
        coordinator_rss_mb: peak_rss_mb,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Tasks `mvc plan` would still run on the cache the run left.
fn tasks_to_run(mvc: &str, dir: &Path) -> u64 {
    let plan = Command::new(mvc)
        .args(["plan", "p.toml", "--json"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        plan.status.success(),
        "mvc plan failed: {}",
        String::from_utf8_lossy(&plan.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    ["objects", "views", "embed"]
        .iter()
        .map(|s| json["stages"][s]["to_run"].as_u64().unwrap())
        .sum()
}

const SLOTS: Resources = Resources {
    cpu: 8,
    gpu: 1,
    blender: 0,
    net: 1,
};

/// One GPU worker: register, heartbeat, lease, work, report, until the run is over.
async fn simulated_worker(
    w: u64,
    client: Client,
    task_ms: u64,
    seen: Arc<Mutex<Seen>>,
    acknowledged: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
) {
    let register = Register {
        name: format!("sim:{w}"),
        host: format!("sim{w}"),
        slots: SLOTS,
        labels: Vec::new(),
        blender: None,
        slurm_job: None,
    };
    let id = Arc::new(AtomicU64::new(0));
    let running = Arc::new(AtomicU64::new(0));
    let mut heartbeat: Option<tokio::task::JoinHandle<()>> = None;
    let mut must_register = true;
    while !done.load(Ordering::Relaxed) {
        if must_register {
            match client.register(&register).await {
                Ok(registered) => {
                    if id.swap(registered.worker, Ordering::Relaxed) != 0 {
                        seen.lock().unwrap().reregistered += 1;
                    }
                    must_register = false;
                    if let Some(h) = heartbeat.take() {
                        h.abort();
                    }
                    heartbeat = Some(tokio::spawn(heartbeats(
                        client.clone(),
                        id.clone(),
                        running.clone(),
                        Duration::from_millis(registered.heartbeat_ms),
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            continue;
        }
        let asked = Instant::now();
        let request = LeaseRequest {
            worker: id.load(Ordering::Relaxed),
            free: SLOTS,
            wait_ms: 1000,
        };
        let unit = match client.lease(&request).await {
            Ok(reply) if reply.finished => break,
            Ok(reply) => reply.unit,
            Err(CallError::UnknownWorker(_)) => {
                must_register = true;
                continue;
            }
            Err(_) => {
                // The coordinator is down (restarting): as `mvc worker`, try again shortly.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(unit) = unit else { continue };
        let latency = asked.elapsed();
        {
            let mut s = seen.lock().unwrap();
            s.first_lease.get_or_insert(asked);
            s.latencies_us.push(latency.as_micros() as u64);
            s.leases
                .push((asked, latency.as_micros() as u64, unit.stage.clone()));
            s.first_unit.entry(w).or_insert(asked);
        }
        running.store(unit.id, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(task_ms * unit.tasks.len() as u64)).await;
        let reported = report(&client, &id, &register.name, &unit, &done).await;
        running.store(0, Ordering::Relaxed);
        match reported {
            Reported::Taken => {
                let views = unit.stage != "objects";
                let mut s = seen.lock().unwrap();
                for t in &unit.tasks {
                    *s.acknowledged.entry(t.key).or_default() += 1;
                }
                let now = Instant::now();
                if views {
                    s.view_tasks += unit.tasks.len() as u64;
                    s.acknowledged_at.push((now, unit.tasks.len() as u64));
                }
                s.last_report = Some(now);
                acknowledged.fetch_add(unit.tasks.len() as u64, Ordering::Relaxed);
            }
            Reported::Unknown => must_register = true,
            Reported::Refused => {}
        }
    }
    if let Some(h) = heartbeat {
        h.abort();
    }
}

enum Reported {
    /// The coordinator took the results.
    Taken,
    /// It no longer knows this worker (it restarted): the unit's results are dropped.
    Unknown,
    /// It refused them (the unit is no longer this worker's), or the run ended first.
    Refused,
}

/// Reports every task of a unit done, each with 8 bytes of its own; tries again while the
/// coordinator cannot be reached, until the run is over.
async fn report(
    client: &Client,
    id: &AtomicU64,
    name: &str,
    unit: &Unit,
    done: &AtomicBool,
) -> Reported {
    let outcomes = unit
        .tasks
        .iter()
        .map(|t| {
            let bytes = made(&unit.stage, &t.item);
            TaskOutcome::Success {
                outputs: vec![Output {
                    name: "o".into(),
                    digest: Digest::of(&bytes),
                    size: bytes.len() as u64,
                    inline: Some(bytes.to_vec()),
                }],
                stdout: None,
                stderr: None,
                started_ms: 0,
                duration_ms: 0,
            }
        })
        .collect();
    let body = Complete {
        worker: id.load(Ordering::Relaxed),
        worker_name: name.to_string(),
        keys: unit.tasks.iter().map(|t| t.key).collect(),
        outcomes,
    };
    loop {
        match client.complete(unit.id, &body).await {
            Ok(()) => return Reported::Taken,
            Err(CallError::UnknownWorker(_)) => return Reported::Unknown,
            // The run ended without this unit (the coordinator that leased it was killed,
            // and its successor ran the tasks again): nobody is left to take it.
            Err(e) if e.is_network() && done.load(Ordering::Relaxed) => return Reported::Refused,
            Err(e) if e.is_network() => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(_) => return Reported::Refused,
        }
    }
}

async fn heartbeats(client: Client, id: Arc<AtomicU64>, running: Arc<AtomicU64>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let unit = running.load(Ordering::Relaxed);
        let beat = Heartbeat {
            worker: id.load(Ordering::Relaxed),
            running: if unit == 0 { Vec::new() } else { vec![unit] },
        };
        let _ = client.heartbeat(&beat).await;
    }
}
