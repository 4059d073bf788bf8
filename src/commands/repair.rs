//! `mvc repair`: rebuilds a damaged index from the run journals and the blobs.

use super::{Global, Output};
use crate::store::{RepairReport, Store};
use anyhow::Result;
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct RepairArgs {
    /// A pipeline file, to use its cache directory.
    pub file: Option<PathBuf>,
    /// Rebuild even an index that opens and holds the last run's records.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: RepairArgs, global: &Global) -> Result<Output> {
    let pipeline = args
        .file
        .as_deref()
        .map(|f| super::load(f, &super::VariantArgs::default()))
        .transpose()?;
    let report = Store::repair(&global.cache_dir(pipeline.as_ref()), args.force)?;
    Ok(Output::new(to_text(&report), &report))
}

fn to_text(report: &RepairReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "repaired the index of {} ({})",
        report.cache.display(),
        report.why
    );
    let _ = writeln!(
        out,
        "  the old index is kept at {} (delete it when satisfied)",
        report.moved_to.display()
    );
    let r = &report.restored;
    let _ = writeln!(
        out,
        "  recovered: {} results and {} recorded failures, from {} journal{}",
        crate::text::group_digits(r.results),
        crate::text::group_digits(r.failures),
        r.journals,
        if r.journals == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        out,
        "  lost: {} (results whose blobs are gone, and anything recorded by runs that never \
         finished a journal: their tasks run again)",
        crate::text::group_digits(r.lost)
    );
    for partial in &r.partial {
        let _ = writeln!(out, "  {partial}");
    }
    let _ = writeln!(
        out,
        "next: `mvc plan FILE` shows what will run again; `mvc status --verify` checks the cache"
    );
    out
}
