//! `mvc status --verify`: every blob re-hashed, every index entry decoded and its blobs
//! checked. Read-only: it reports, and the next run recomputes what is broken.

use super::Store;
use super::index::Tree;
use super::object_stage::{Columns, ObjectStage};
use super::records::{Failure, Latest, TaskResult, decode};
use crate::task::{Digest, KeyRecord};
use anyhow::Result;
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub blobs: u64,
    pub blob_bytes: u64,
    pub results: u64,
    pub problems: Vec<String>,
    /// Temp files of interrupted writes (harmless; `mvc gc` removes them).
    pub temp_files: u64,
}

impl VerifyReport {
    pub fn clean(&self) -> bool {
        self.problems.is_empty()
    }
}

pub fn verify(store: &Store) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let sizes = verify_blobs(store, &mut report)?;
    let blobs = Blobs { sizes: &sizes };
    verify_results(store, &blobs, &mut report)?;
    verify_views(store, &blobs, &mut report)?;
    for entry in store.index().scan(Tree::Records, b"") {
        let (key, value) = entry?;
        if let Err(e) = KeyRecord::decode(&value) {
            report
                .problems
                .push(format!("record {}: {e}", crate::text::hex(&key)));
        }
    }
    for entry in store.index().scan(Tree::Failures, b"") {
        let (key, value) = entry?;
        if let Err(e) = decode::<Failure>(&value, "failure record") {
            report
                .problems
                .push(format!("failure {}: {e}", crate::text::hex(&key)));
        }
    }
    for entry in store.index().scan(Tree::Latest, b"") {
        let (key, value) = entry?;
        if let Err(e) = decode::<Latest>(&value, "latest entry") {
            report
                .problems
                .push(format!("latest {}: {e}", String::from_utf8_lossy(&key)));
        }
    }
    for entry in store.index().scan(Tree::Runs, b"") {
        let (_, value) = entry?;
        match super::records::decode_run(&value) {
            Ok(run) => blobs.need(
                format!(
                    "run of {} at {}",
                    run.pipeline,
                    super::records::format_time(run.started_ms)
                ),
                &run.reach,
                None,
                &mut report.problems,
            ),
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    Ok(report)
}

/// Re-hashes every blob; returns the size of each whole one.
fn verify_blobs(store: &Store, report: &mut VerifyReport) -> Result<HashMap<Digest, u64>> {
    let listing = store.blobs().list()?;
    report.temp_files = listing.temp_files.len() as u64;
    let mut sizes: HashMap<Digest, u64> = HashMap::with_capacity(listing.blobs.len());
    for (digest, size) in &listing.blobs {
        report.blobs += 1;
        report.blob_bytes += size;
        match store.blobs().verify(digest) {
            Ok(true) => {
                sizes.insert(*digest, *size);
            }
            Ok(false) => report
                .problems
                .push(format!("blob {digest} does not match its digest (corrupt)")),
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    for stray in &listing.strays {
        report.problems.push(format!(
            "{} is not a blob (stray file in the blob store)",
            stray.display()
        ));
    }
    Ok(sizes)
}

/// The whole blobs, by digest, that index entries must find.
struct Blobs<'a> {
    sizes: &'a HashMap<Digest, u64>,
}

impl Blobs<'_> {
    /// Notes a problem when `digest` is not a whole blob (of `size` bytes, when given).
    fn need(&self, what: String, digest: &Digest, size: Option<u64>, problems: &mut Vec<String>) {
        match (self.sizes.get(digest), size) {
            (None, _) => problems.push(format!("{what}: blob {digest} is missing or corrupt")),
            (Some(have), Some(want)) if *have != want => problems.push(format!(
                "{what}: blob {digest} has {have} bytes, the index says {want}"
            )),
            _ => {}
        }
    }
}

/// Checks every task result: it decodes, its inline outputs match their digests, its blob
/// outputs and logs are whole, and its key record is there.
fn verify_results(store: &Store, blobs: &Blobs, report: &mut VerifyReport) -> Result<()> {
    for entry in store.index().scan(Tree::Tasks, b"") {
        let (key, value) = entry?;
        report.results += 1;
        let result: TaskResult = match decode(&value, "task result") {
            Ok(r) => r,
            Err(e) => {
                report
                    .problems
                    .push(format!("task {}: {e}", crate::text::hex(&key)));
                continue;
            }
        };
        let label = check_outputs(&result, blobs, &mut report.problems);
        if store.record(&digest_of(&key))?.is_none() {
            report.problems.push(format!(
                "{label}: result {} has no key record",
                crate::text::hex(&key)
            ));
        }
    }
    Ok(())
}

/// Checks every object record: it decodes with its stage's columns, and its views' blob
/// outputs and logs are whole.
fn verify_views(store: &Store, blobs: &Blobs, report: &mut VerifyReport) -> Result<()> {
    let mut columns: HashMap<Vec<u8>, Columns> = HashMap::new();
    for entry in store.index().scan(Tree::Objects, b"") {
        let (key, value) = entry?;
        let name = String::from_utf8_lossy(&key).replace('\0', "/");
        let Some(split) = key.iter().position(|&b| b == 0) else {
            report
                .problems
                .push(format!("object record `{name}` has no stage"));
            continue;
        };
        if split + 1 == key.len() {
            match Columns::decode(&value) {
                Ok(c) => {
                    columns.insert(key[..split].to_vec(), c);
                }
                Err(e) => report.problems.push(format!("view columns of {name}: {e}")),
            }
            continue;
        }
        let Some(stage_columns) = columns.get(&key[..split]) else {
            report.problems.push(format!(
                "object record {name}: its stage has no view columns"
            ));
            continue;
        };
        let record = match ObjectStage::decode(&value) {
            Ok(r) => r,
            Err(e) => {
                report.problems.push(format!("object record {name}: {e}"));
                continue;
            }
        };
        for task in record.tasks(stage_columns) {
            let (_, result) = match task {
                Ok(t) => t,
                Err(e) => {
                    report.problems.push(format!("object record {name}: {e}"));
                    break;
                }
            };
            report.results += 1;
            check_outputs(&result, blobs, &mut report.problems);
        }
    }
    Ok(())
}

/// Notes a result's inline outputs that do not match their digests and its blob outputs and
/// logs that are not whole; returns its `stage/item` label.
fn check_outputs(result: &TaskResult, blobs: &Blobs, problems: &mut Vec<String>) -> String {
    let label = format!("{}/{}", result.stage, result.item);
    for output in &result.outputs {
        match &output.inline {
            Some(bytes) => {
                if Digest::of(bytes) != output.digest {
                    problems.push(format!(
                        "{label}: inline output `{}` is corrupt",
                        output.name
                    ));
                }
            }
            None => blobs.need(
                format!("{label} output `{}`", output.name),
                &output.digest,
                Some(output.size),
                problems,
            ),
        }
    }
    for log in result.stdout.iter().chain(&result.stderr) {
        blobs.need(format!("{label} log"), log, None, problems);
    }
    label
}

fn digest_of(key: &[u8]) -> Digest {
    Digest(key.try_into().unwrap_or([0; 32]))
}
