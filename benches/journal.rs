//! What the run journal costs: recording N results (an embedding's size inline, as the
//! embed stage records them) through the store with the journal on, against the same loop
//! with no journal, in the same process, on the same kind of cache. Also how long a repair
//! of that cache takes (the journal replayed into a fresh index), and what the check a run
//! makes before it plans costs (every record the plan memos name looked for in the index, in
//! one pass), against the memo lookups a plan makes for the same tasks.
//!
//!     cargo bench --bench journal                         # N = 100,000
//!     MVC_BENCH_TASKS=20000 cargo bench --bench journal

use mvc::store::Store;
use mvc::store::records::{Output, TaskResult, manifest_digest};
use mvc::task::{Digest, KeyRecord, ParamSlice};
use std::collections::BTreeMap;
use std::time::Instant;

fn main() {
    let n: u64 = std::env::var("MVC_BENCH_TASKS")
        .ok()
        .and_then(|v| v.replace(['_', ','], "").parse().ok())
        .unwrap_or(100_000);
    println!("journal: {n} results of 2 KiB (inline) each, recorded with and without the journal");
    // Alternate, twice each, so that neither side gets the warm page cache alone.
    let mut plain = Vec::new();
    let mut journaled = Vec::new();
    for round in 0..2 {
        for with_journal in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("cache")).unwrap();
            let run = (round as u64 * 2 + with_journal as u64).to_be_bytes();
            if with_journal {
                store.begin_journal(&run).unwrap();
            }
            let started = Instant::now();
            record(&store, n);
            store.put_run(&run, &run_record()).unwrap();
            store.end_journal(&run).unwrap();
            store.flush().unwrap();
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "  round {round}, journal {}: {seconds:.2} s, {:.1} µs per result",
                if with_journal { "on " } else { "off" },
                seconds * 1e6 / n as f64
            );
            match with_journal {
                true => journaled.push(seconds),
                false => plain.push(seconds),
            }
            if with_journal && round == 1 {
                check_against_memos(&store);
                drop(store);
                let bytes = journal_bytes(&dir.path().join("cache/journal"));
                let started = Instant::now();
                let report = Store::repair(&dir.path().join("cache"), true).unwrap();
                println!(
                    "  journal: {:.1} MB ({:.0} bytes per result); repair from it: {:.2} s for \
                     {} results",
                    bytes as f64 / 1e6,
                    bytes as f64 / n as f64,
                    started.elapsed().as_secs_f64(),
                    report.restored.results
                );
            }
        }
    }
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let (plain, journaled) = (best(&plain), best(&journaled));
    println!(
        "best: without journal {:.1} µs per result, with {:.1} µs: ratio {:.2}x (+{:.1} µs)",
        plain * 1e6 / n as f64,
        journaled * 1e6 / n as f64,
        journaled / plain,
        (journaled - plain) * 1e6 / n as f64
    );
}

/// Times `restore_what_memos_lack` on a memo naming every result, against looking each key
/// up in that memo (what a plan does per cached task).
fn check_against_memos(store: &Store) {
    use mvc::store::index::Tree;
    use mvc::store::memo::{MemoValue, StageMemo};
    let keys: Vec<Digest> = store
        .index()
        .keys(Tree::Tasks)
        .map(|k| Digest(k.unwrap().try_into().unwrap()))
        .collect();
    let list = keys
        .iter()
        .map(|k| {
            let value = MemoValue::Done {
                manifest: *k,
                blobs: Vec::new(),
            };
            (*k, value)
        })
        .collect();
    StageMemo::save(store.index(), store.blobs(), "embed", list).unwrap();
    let memo = StageMemo::load(store.index(), store.blobs(), "embed").unwrap();
    let started = Instant::now();
    let hits = keys.iter().filter(|k| memo.get(k).is_some()).count();
    let lookups = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let lacked = store
        .restore_what_memos_lack(&["embed".to_string()])
        .unwrap();
    let check = started.elapsed().as_secs_f64();
    assert!(lacked.is_none() && hits == keys.len());
    let per = |s: f64| s * 1e6 / keys.len() as f64;
    println!(
        "  check before planning: {:.2} s for {} memo entries ({:.2} µs each); the plan's memo \
         lookups of the same keys: {:.3} s ({:.2} µs each): ratio {:.1}x",
        check,
        keys.len(),
        per(check),
        lookups,
        per(lookups),
        check / lookups
    );
}

/// Records `n` results as the engine does (record, result, latest), each with one 2 KiB
/// inline output, an embedding's size.
fn record(store: &Store, n: u64) {
    let shared = Digest::of(b"shared");
    for i in 0..n {
        let item = format!("object{:06}@a{}_p50", i / 36, i % 36);
        let record = KeyRecord {
            schema: 1,
            kind: "embed".into(),
            kind_version: 2,
            item: item.clone(),
            shared,
            item_params: ParamSlice::new(),
            inputs: BTreeMap::from([("views".to_string(), Digest::of(item.as_bytes()))]),
        };
        let key = record.key();
        let bytes: Vec<u8> = (0..2048).map(|b| (b as u64 ^ i) as u8).collect();
        let outputs = vec![Output {
            name: "embedding.f32".into(),
            digest: Digest::of(&bytes),
            size: bytes.len() as u64,
            inline: Some(bytes),
        }];
        let result = TaskResult {
            stage: "embed".into(),
            item,
            manifest: manifest_digest(&outputs),
            outputs,
            stdout: None,
            stderr: None,
            started_ms: 0,
            duration_ms: 1,
            host: "local".into(),
        };
        store.commit_success(&key, &record, &result).unwrap();
    }
}

fn run_record() -> mvc::store::records::RunRecord {
    mvc::store::records::RunRecord {
        pipeline: "bench".into(),
        pipeline_path: "bench.toml".into(),
        started_ms: 0,
        ended_ms: 0,
        outcome: mvc::store::records::RunOutcome::Ok,
        stages: Default::default(),
        reach: Digest::of(b""),
        source: None,
        published: Vec::new(),
        command: Vec::new(),
    }
}

fn journal_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
