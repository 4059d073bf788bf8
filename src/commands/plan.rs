//! `mvc plan`: what `run` would do and why, without running anything.

use super::{Global, Output, exit_without_freeing, load};
use crate::exec::stage_summaries::{Depth, plan_report};
use anyhow::Result;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    pub file: PathBuf,
    /// Plan as if --retry-failed were given to run.
    #[arg(long)]
    pub retry_failed: bool,
    /// Key and look up every task, even when the stage summaries the last run recorded say
    /// that everything is cached (a check of the index itself; slower on large pipelines).
    #[arg(long)]
    pub full: bool,
    #[command(flatten)]
    pub variants: super::VariantArgs,
}

pub fn run(args: PlanArgs, global: &Global) -> Result<Output> {
    let pipeline = load(&args.file, &args.variants)?;
    let dir = global.cache_dir(Some(&pipeline));
    // The main index is opened only if the stage summaries do not decide the plan.
    let store = Arc::new(crate::store::Store::open_deferred(&dir)?);
    let depth = if args.full {
        Depth::Full
    } else {
        Depth::Summaries
    };
    let planned = plan_report(&pipeline.workflow, store.clone(), args.retry_failed, depth);
    super::note_restored(&store, global);
    let (engine, report) = planned?;
    let out = Output {
        text: report.to_text(&pipeline.workflow, &dir),
        json: report.to_json(),
        code: 0,
        text_on_stderr_with_json: false,
    };
    match engine {
        Some(engine) => exit_without_freeing(engine)?,
        None => store.flush_and_stamp()?,
    }
    Ok(out)
}
