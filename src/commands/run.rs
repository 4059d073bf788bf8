//! `mvc run`: plan a pipeline, then execute every task that is not cached.

use super::listen::ListenArgs;
use super::progress::Progress;
use super::{Global, Output, block_on, load};
use crate::exec::run::{RunOptions, RunReport, run_with_view};
use crate::resources::SlotOverrides;
use crate::store::records::RunOutcome;
use crate::ui::RunPage;
use anyhow::Result;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    pub file: PathBuf,
    /// CPU slots (concurrent cpu tasks); default: the number of cores.
    #[arg(short, long, value_parser = clap::value_parser!(u32).range(1..=crate::resources::MAX_SLOT_COUNT as i64))]
    pub jobs: Option<u32>,
    /// Slot counts, e.g. `cpu=4,gpu=1,blender=2,net=8`.
    #[arg(long, value_name = "SLOTS", value_parser = super::flags::slots)]
    pub slots: Option<SlotOverrides>,
    /// Continue past item failures (the default).
    #[arg(long, conflicts_with = "fail_fast")]
    pub keep_going: bool,
    /// Stop starting new tasks after the first failure.
    #[arg(long)]
    pub fail_fast: bool,
    /// Run again the items whose failure an earlier run recorded.
    #[arg(long)]
    pub retry_failed: bool,
    /// Seconds running tasks get to finish after Ctrl-C before they are killed.
    #[arg(long, default_value = "30", value_name = "SECS", value_parser = super::flags::seconds, allow_hyphen_values = true)]
    pub grace: Duration,
    /// Serve the run's live page on this address (e.g. 127.0.0.1:8080); off loopback it
    /// needs --token-file and serves HTTPS (--tls-cert, or a self-signed certificate).
    #[arg(long, value_name = "ADDR")]
    pub ui: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub remote: ListenArgs,
    #[command(flatten)]
    pub variants: super::VariantArgs,
}

pub fn run(args: RunArgs, global: &Global) -> Result<Output> {
    let pipeline = load(&args.file, &args.variants)?;
    let slots = pipeline.slots(args.jobs, args.slots.as_ref());
    let slots = args.remote.local_slots(&pipeline, slots);
    let store = Arc::new(super::open_store(
        &global.cache_dir(Some(&pipeline)),
        global,
    )?);
    let quiet = global.format == super::Format::Quiet;
    let opts = RunOptions {
        slots,
        keep_going: !args.fail_fast,
        retry_failed: args.retry_failed,
        grace: args.grace,
        quiet,
    };
    let page = RunPage::new(&pipeline.workflow, store.clone());
    let view = page.view(Box::new(Progress::of(&pipeline.workflow, quiet)));
    let report = block_on(async {
        // The page's address is taken before anything runs: one in use stops the run here.
        if let Some(addr) = args.ui {
            let how = args.remote.auth.page_listen(addr, "--ui", &store);
            let served = crate::ui::serve::start(how, page.state.clone()).await?;
            eprintln!("{}", served.line());
            store.announce_page(&served.url);
        }
        let mut started = args
            .remote
            .start(&pipeline, &args.file, &store, Some(&page.state))
            .await?;
        if args.ui.is_some() || started.is_some() {
            page.plan_in_background(pipeline.workflow.clone(), args.retry_failed);
        }
        let report = run_with_view(
            &pipeline.workflow,
            store,
            opts,
            started.as_mut().map(|r| &mut r.listener),
            view,
        )
        .await;
        if let Some(r) = started {
            r.finish().await;
        }
        report
    })??;
    Ok(output(&report))
}

/// A run's summary, and its exit status: 0 when every task succeeded, 1 when some failed,
/// 130 when it was interrupted.
pub fn output(report: &RunReport) -> Output {
    Output {
        text: report.to_text(),
        json: report.to_json(),
        code: match report.outcome {
            RunOutcome::Ok => 0,
            RunOutcome::Failed => 1,
            RunOutcome::Interrupted => 130,
        },
        text_on_stderr_with_json: true,
    }
}
