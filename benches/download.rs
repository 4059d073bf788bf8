//! The download stage's overhead per object: `mvc run` fetching N generated GLBs of 1 MB
//! from a local mirror, against the same N files fetched directly with reqwest at the same
//! concurrency (the transfer time at loopback speed), in the same command.
//!
//!     cargo bench --bench download                      # N = 200
//!     MVC_BENCH_OBJECTS=1000 cargo bench --bench download
//!     MVC_BENCH_LATENCY_MS=50 cargo bench --bench download   # a server 50 ms away
//!
//! The catalog (object-paths, 160 shards, selection) is fetched by a first run with
//! `limit = 1`; the timed run then selects all N and downloads the N - 1 GLBs left, so its
//! time is the objects stage plus a rerun of the selection.

// A benchmark is one measured scenario read top to bottom; the 100-line limit of
// clippy.toml holds for src/.
#![allow(clippy::too_many_lines)]

#[path = "../tests/it/common/mirror.rs"]
mod mirror;

use mirror::{Mirror, Object};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NET_SLOTS: usize = 8;

fn main() {
    let n: u32 = std::env::var("MVC_BENCH_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let size = 1 << 20;
    // The whole catalog: the N food objects, and objects of other categories up to this
    // many (798,759 in Objaverse 1.0), which the selection reads and leaves out.
    let catalog: u32 = std::env::var("MVC_BENCH_CATALOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .max(n);
    let mut objects: Vec<Object> = (0..n)
        .map(|i| Object::new(i, (i % 160) as usize, &["food-drink"], "Snack", size))
        .collect();
    let filler_glb = Arc::new(mirror::make_glb(0, 0));
    let fillers: Vec<Object> = (n..catalog)
        .map(|i| Object::filler(i, &filler_glb))
        .collect();
    let all: Vec<Object> = objects.iter().cloned().chain(fillers).collect();
    let generated = Instant::now();
    let mirror = Mirror::start(&all);
    drop(all);
    println!(
        "catalog: {catalog} objects, generated and compressed in {:.1} s",
        generated.elapsed().as_secs_f64()
    );
    objects.truncate(n as usize);
    // A delay before each GLB answer, as a distant server has (default: none, loopback).
    let latency_ms: u64 = std::env::var("MVC_BENCH_LATENCY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    mirror.set_glb_latency(Duration::from_millis(latency_ms));
    let dir = tempfile::tempdir().unwrap();
    let mvc = env!("CARGO_BIN_EXE_mvc");
    // Each run: wall time, and the peak memory of the mvc process (its VmHWM, polled:
    // wait4's rusage would count the pages of this process, which holds the catalog,
    // shared with the child between fork and exec).
    let run = |limit: &str| -> (Duration, u64) {
        std::fs::write(
            dir.path().join("p.toml"),
            format!(
                "[executor]\nnet = {NET_SLOTS}\n[stage.objects]\nkind = \"download\"\n{limit}\n"
            ),
        )
        .unwrap();
        let start = Instant::now();
        let mut child = Command::new(mvc)
            .args(["run", "p.toml", "--json", "-q"])
            .current_dir(dir.path())
            .env("HF_ENDPOINT", &mirror.endpoint)
            .env("NO_PROXY", "127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status_file = format!("/proc/{}/status", child.id());
        let mut peak_kb = 0;
        let status = loop {
            if let Ok(text) = std::fs::read_to_string(&status_file)
                && let Some(line) = text.lines().find(|l| l.starts_with("VmHWM:"))
            {
                let kb: u64 = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                peak_kb = peak_kb.max(kb);
            }
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let took = start.elapsed();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(status.success(), "mvc failed: {stderr}");
        (took, peak_kb / 1024)
    };
    let (catalog_run, catalog_mb) = run("limit = 1");
    println!(
        "first run (object-paths, 160 shards, selection over the catalog, 1 GLB): {:.2} s, \
         peak memory {catalog_mb} MB",
        catalog_run.as_secs_f64(),
    );
    let (timed, timed_mb) = run("");
    // Everything cached: what a run costs besides its downloads (process start, planning
    // in rounds, reading the manifest, writing the run record).
    let (cached, _) = run("");

    // The baseline: the same N - 1 files, fetched directly at the same concurrency.
    let urls: Vec<String> = objects
        .iter()
        .map(|o| {
            format!(
                "{}/datasets/{}/resolve/{}/{}",
                mirror.endpoint,
                mirror::DATASET,
                mirror::REVISION,
                o.path()
            )
        })
        .collect();
    let skip_first = {
        // `limit = 1` took the smallest uid.
        let mut uids: Vec<&str> = objects.iter().map(|o| o.uid.as_str()).collect();
        uids.sort();
        uids[0].to_string()
    };
    let urls: Vec<String> = urls
        .into_iter()
        .filter(|u| !u.contains(&skip_first))
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let baseline = rt.block_on(async {
        let client = reqwest::Client::new();
        let start = Instant::now();
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(NET_SLOTS));
        let mut handles = Vec::new();
        for url in urls.clone() {
            let client = client.clone();
            let sem = sem.clone();
            handles.push(tokio::spawn(async move {
                let _permit = sem.acquire().await.unwrap();
                let bytes = client
                    .get(&url)
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                assert_eq!(bytes.len() as u64 % 4, 0);
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        start.elapsed()
    });
    let fetched = urls.len() as f64;
    let overhead = (timed.as_secs_f64() - baseline.as_secs_f64()) / fetched;
    println!(
        "objects: {} GLBs of {} KiB, net slots {NET_SLOTS}, server latency {latency_ms} ms",
        urls.len(),
        size / 1024
    );
    println!(
        "direct fetch (reqwest, same concurrency): {:.3} s",
        baseline.as_secs_f64()
    );
    println!(
        "mvc run (selection rerun + {} downloads): {:.3} s ({:.2}x direct), peak memory {timed_mb} MB",
        urls.len(),
        timed.as_secs_f64(),
        timed.as_secs_f64() / baseline.as_secs_f64()
    );
    println!(
        "overhead per object: {:.2} ms (process start, selection rerun, blake3, fsync, index \
         writes included)",
        overhead * 1000.0
    );
    println!(
        "the same run fully cached: {:.3} s; overhead per object without it: {:.2} ms",
        cached.as_secs_f64(),
        (timed.as_secs_f64() - cached.as_secs_f64() - baseline.as_secs_f64()) / fetched * 1000.0
    );
    println!(
        "most requests in flight at once: {}",
        mirror.max_in_flight()
    );
}
