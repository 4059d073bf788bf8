//! `mvc plan`: what `run` would do and why, without running anything.

use super::{Global, Output, exit_without_freeing, load};
use anyhow::Result;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    pub file: PathBuf,
    /// Plan as if --retry-failed were given to run.
    #[arg(long)]
    pub retry_failed: bool,
    #[command(flatten)]
    pub variants: super::VariantArgs,
}

pub fn run(args: PlanArgs, global: &Global) -> Result<Output> {
    let pipeline = load(&args.file, &args.variants)?;
    let dir = global.cache_dir(Some(&pipeline));
    let store = Arc::new(super::open_store(&dir, global)?);
    let (engine, report) = crate::exec::plan::plan(&pipeline.workflow, store, args.retry_failed)?;
    let out = Output {
        text: report.to_text(&pipeline.workflow, &dir),
        json: report.to_json(),
        code: 0,
        text_on_stderr_with_json: false,
    };
    exit_without_freeing(engine)?;
    Ok(out)
}
