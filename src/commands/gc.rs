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
    if report.partial_files_removed > 0 {
        let _ = writeln!(
            out,
            "partial downloads: {} file(s) ({}) {}",
            group_digits(report.partial_files_removed),
            human_bytes(report.partial_bytes_freed),
            if report.dry_run {
                "would be deleted"
            } else {
                "deleted"
            }
        );
    }
    if report.dry_run {
        let _ = writeln!(out, "dry run: nothing was deleted");
    }
    out
}

#[derive(clap::Args, Debug)]
pub struct GcArgs {
    /// A pipeline file, to use its cache directory.
    pub file: Option<std::path::PathBuf>,
    /// Report what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Runs to keep per pipeline.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub keep_runs: u32,
}

/// `mvc gc`: deletes what the last runs did not reach. Models fetched from the hub are kept
/// while their manifests name them (gc is handed their blobs; the store does not ask).
pub fn run(args: GcArgs, global: &super::Global) -> anyhow::Result<super::Output> {
    let pipeline = args
        .file
        .as_deref()
        .map(|f| super::load(f, &super::VariantArgs::default()))
        .transpose()?;
    let store = super::open_store(&global.cache_dir(pipeline.as_ref()), global)?;
    let keep_runs = args.keep_runs as usize;
    let roots = crate::models::manifest_blobs(&store)?;
    let report = crate::store::gc::gc(&store, keep_runs, args.dry_run, &roots)?;
    let text = to_text(&report, keep_runs);
    #[derive(serde::Serialize)]
    struct Json<'a> {
        keep_runs: usize,
        #[serde(flatten)]
        report: &'a GcReport,
    }
    let json = Json {
        keep_runs,
        report: &report,
    };
    Ok(super::Output::new(text, &json))
}
