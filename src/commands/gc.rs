//! `mvc gc` output.

use crate::store::gc::GcReport;
use crate::text::{group_digits, human_bytes, name_width};
use std::fmt::Write as _;

pub fn to_text(report: &GcReport, keep_runs: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "keeping what the last {keep_runs} run(s) of each pipeline reached ({} run(s) kept, {} \
         dropped)",
        report.runs_kept, report.runs_dropped
    );
    let mut stages: Vec<&String> = report.kept.keys().chain(report.deleted.keys()).collect();
    stages.sort();
    stages.dedup();
    if !stages.is_empty() {
        let width = name_width(stages.iter().copied());
        let _ = writeln!(
            out,
            "{:<width$}  {:>10}  {:>10}  {:>12}  {:>12}",
            "stage", "kept", "kept bytes", "deleted", "freed bytes"
        );
        for stage in stages {
            let kept = report.kept.get(stage).cloned().unwrap_or_default();
            let deleted = report.deleted.get(stage).cloned().unwrap_or_default();
            let _ = writeln!(
                out,
                "{:<width$}  {:>10}  {:>10}  {:>12}  {:>12}",
                stage,
                group_digits(kept.tasks),
                human_bytes(kept.bytes),
                group_digits(deleted.tasks),
                human_bytes(deleted.bytes)
            );
        }
    }
    let _ = writeln!(
        out,
        "blob files: {} {} ({}); {} failure record(s), {} key record(s), {} temp file(s)",
        group_digits(report.blobs_deleted),
        if report.dry_run {
            "would be deleted"
        } else {
            "deleted"
        },
        human_bytes(report.blob_bytes_freed),
        report.failures_deleted,
        report.records_deleted,
        report.temp_files_removed
    );
    if report.dry_run {
        let _ = writeln!(out, "dry run: nothing was deleted");
    }
    out
}
