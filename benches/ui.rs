//! The page at scale, measured against the real binary over real HTTP on 127.0.0.1.
//!
//!     cargo bench --bench ui                          # the page of a 1,000,000-task run
//!     MVC_BENCH_TASKS=100000 cargo bench --bench ui
//!
//! 1. First load: `mvc run --ui` on a pipeline of N `command` tasks (`gen` over N/2 items,
//!    `copy` per item); once the run has expanded every task, the page a browser loads first
//!    (the HTML, its style sheet, script and icon, and the first snapshot of its event stream)
//!    is fetched five times: its bytes, and the median and worst time.
//! 2. Ten open pages: the same run of 300 `sleep 0.05` tasks with and without ten readers of
//!    the event stream; mvc's own CPU time (from /proc, the main process) with them, minus
//!    without them, over the run's wall time: the share of a core ten pages cost the run.

use futures_util::StreamExt;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let tasks: usize = std::env::var("MVC_BENCH_TASKS")
        .ok()
        .and_then(|v| v.replace(['_', ','], "").parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    first_load(&runtime, tasks);
    ten_pages(&runtime);
}

/// `mvc run FILE --ui 127.0.0.1:0` in `dir`; returns it and the page's URL.
fn run_with_page(dir: &Path, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mvc"))
        .args(["run", "p.toml", "--ui", "127.0.0.1:0", "--grace", "1"])
        .args(extra)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting mvc");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().expect("mvc said where its page is").unwrap();
        if let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) {
            break url.to_string();
        }
    };
    // Keep reading its stderr, so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, url)
}

fn items_pipeline(dir: &Path, items: usize, cmd: &str, inputs_copy: bool) {
    let mut ids = std::io::BufWriter::new(std::fs::File::create(dir.join("items.txt")).unwrap());
    for i in 0..items {
        writeln!(ids, "obj{i:07}").unwrap();
    }
    ids.flush().unwrap();
    let copy = if inputs_copy {
        "\n[stage.copy]\nkind = \"command\"\ninputs = [\"gen\"]\ncmd = 'true'\n"
    } else {
        ""
    };
    std::fs::write(
        dir.join("p.toml"),
        format!(
            "[pipeline]\nname = \"ui-bench\"\n\n[stage.gen]\nkind = \"command\"\n\
             items_file = \"items.txt\"\ncmd = '{cmd}'\n{copy}"
        ),
    )
    .unwrap();
}

fn first_load(runtime: &tokio::runtime::Runtime, tasks: usize) {
    let dir = tempfile::tempdir().unwrap();
    items_pipeline(dir.path(), tasks / 2, "true", true);
    let (mut child, url) = run_with_page(dir.path(), &["-q"]);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let expanded = Instant::now();
    runtime.block_on(async {
        loop {
            let state: serde_json::Value = serde_json::from_slice(
                &http
                    .get(format!("{url}state.json"))
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap(),
            )
            .unwrap();
            let total: u64 = state["stages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["total"].as_u64().unwrap_or(0))
                .sum();
            if total as usize >= tasks {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    println!(
        "ui first load: {} tasks expanded by the run after {:.1}s",
        tasks,
        expanded.elapsed().as_secs_f64()
    );
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..5 {
        let started = Instant::now();
        bytes = runtime.block_on(async {
            let mut total = 0;
            for path in [
                "",
                "assets/page.css",
                "assets/page.js",
                "assets/icon.svg",
                "state.json",
            ] {
                let body = http.get(format!("{url}{path}")).send().await.unwrap();
                assert!(body.status().is_success(), "{path}: {}", body.status());
                total += body.bytes().await.unwrap().len();
            }
            total
        });
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "ui first load: {} tasks: {:.1} KB in {:.1} ms (median of 5; worst {:.1} ms)",
        tasks,
        bytes as f64 / 1024.0,
        times[2].as_secs_f64() * 1000.0,
        times[4].as_secs_f64() * 1000.0
    );
    stop(&mut child);
}

fn stop(child: &mut Child) {
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let _ = child.wait();
}

/// The main process's CPU time so far (user + system), from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().ok()? + fields[12].parse::<f64>().ok()?;
    Some(ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64)
}

/// One run of the sleeping pipeline with `readers` event streams open: (mvc's CPU seconds,
/// wall seconds, events the readers received).
fn sleeping_run(runtime: &tokio::runtime::Runtime, readers: usize) -> (f64, f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    items_pipeline(dir.path(), 300, "sleep 0.05", false);
    let started = Instant::now();
    let (mut child, url) = run_with_page(dir.path(), &["-q", "-j", "2"]);
    let events = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    for _ in 0..readers {
        let (url, events) = (url.clone(), events.clone());
        runtime.spawn(async move {
            let http = reqwest::Client::builder().no_proxy().build().unwrap();
            let Ok(res) = http.get(format!("{url}events")).send().await else {
                return;
            };
            let mut stream = res.bytes_stream();
            while let Some(Ok(chunk)) = stream.next().await {
                let n = chunk.windows(6).filter(|w| w == b"event:").count() as u64;
                events.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    let pid = child.id();
    let mut cpu = 0.0;
    while child.try_wait().unwrap().is_none() {
        if let Some(c) = cpu_seconds(pid) {
            cpu = c;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let wall = started.elapsed().as_secs_f64();
    (cpu, wall, events.load(std::sync::atomic::Ordering::Relaxed))
}

fn ten_pages(runtime: &tokio::runtime::Runtime) {
    let mut without = Vec::new();
    let mut with = Vec::new();
    for _ in 0..3 {
        without.push(sleeping_run(runtime, 0));
        with.push(sleeping_run(runtime, 10));
    }
    let median = |v: &mut Vec<(f64, f64, u64)>| {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v[1]
    };
    let (cpu0, wall0, _) = median(&mut without);
    let (cpu10, wall10, events) = median(&mut with);
    println!(
        "ui ten pages: mvc's CPU {cpu0:.2}s over {wall0:.1}s without readers, {cpu10:.2}s over \
         {wall10:.1}s with 10 event streams ({events} events received): {:.2}% of a core",
        (cpu10 - cpu0).max(0.0) / wall10 * 100.0
    );
}
