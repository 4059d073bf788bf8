//! `mvc serve`: a long-lived coordinator that runs the pipeline, then again whenever its file
//! changes, serving workers all along (Ctrl-C stops it).

use super::listen::{ListenArgs, Remote};
use super::progress::Progress;
use super::{Global, Output, block_on, load};
use crate::exec::run::{RunOptions, run_with_view};
use crate::pipeline::Pipeline;
use crate::resources::SlotOverrides;
use crate::store::Store;
use crate::store::records::RunOutcome;
use crate::ui::RunPage;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    pub file: PathBuf,
    /// Slot counts of this machine, e.g. `cpu=4,gpu=1`.
    #[arg(long, value_name = "SLOTS", value_parser = super::flags::slots)]
    pub slots: Option<SlotOverrides>,
    #[command(flatten)]
    pub remote: ListenArgs,
    #[command(flatten)]
    pub variants: super::VariantArgs,
}

pub fn run(args: ServeArgs, global: &Global) -> Result<Output> {
    let pipeline = load(&args.file, &args.variants)?;
    if args.remote.listen.is_none() && pipeline.slurm.is_none() {
        anyhow::bail!("mvc serve needs --listen ADDR");
    }
    let store = Arc::new(super::open_store(
        &global.cache_dir(Some(&pipeline)),
        global,
    )?);
    block_on(serve(
        (args.file, args.variants),
        pipeline,
        store,
        args.slots,
        global,
        args.remote,
    ))?
}

/// `mvc serve`: runs, then waits for the pipeline file to change (or Ctrl-C) and runs again,
/// keeping the coordinator, and so its workers, up in between.
pub async fn serve(
    (file, variants): (PathBuf, super::VariantArgs),
    mut pipeline: Pipeline,
    store: Arc<Store>,
    slots: Option<SlotOverrides>,
    global: &Global,
    remote: ListenArgs,
) -> Result<Output> {
    let page = RunPage::new(&pipeline.workflow, store.clone());
    let mut started = remote
        .start(&pipeline, &file, &store, Some(&page.state))
        .await?
        .expect("--listen was checked");
    let outcome = serve_loop(
        (&file, &variants),
        &mut pipeline,
        (&store, &page),
        slots,
        global,
        &remote,
        &mut started,
    )
    .await;
    started.finish().await;
    outcome
}

async fn serve_loop(
    (file, variants): (&Path, &super::VariantArgs),
    pipeline: &mut Pipeline,
    (store, page): (&Arc<Store>, &RunPage),
    slots: Option<SlotOverrides>,
    global: &Global,
    remote: &ListenArgs,
    started: &mut Remote,
) -> Result<Output> {
    let listener = &mut started.listener;
    // The file and its overlays: a change to any is a new pipeline.
    let watched: Vec<&Path> = std::iter::once(file)
        .chain(variants.with.iter().map(PathBuf::as_path))
        .collect();
    let modified = || {
        watched
            .iter()
            .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
            .collect::<Vec<_>>()
    };
    loop {
        let run_slots = pipeline.slots(None, slots.as_ref());
        let run_slots = remote.local_slots(pipeline, run_slots);
        let opts = RunOptions {
            slots: run_slots,
            keep_going: true,
            retry_failed: false,
            grace: Duration::from_secs(30),
            quiet: global.format == super::Format::Quiet,
        };
        let seen = modified();
        page.state.live.restart(&pipeline.workflow);
        page.plan_in_background(pipeline.workflow.clone(), false);
        let view = page.view(Box::new(Progress::of(&pipeline.workflow, opts.quiet)));
        let report = run_with_view(
            &pipeline.workflow,
            store.clone(),
            opts,
            Some(listener),
            view,
        )
        .await?;
        // Each run's summary is printed as it ends (one JSON line per run with --json).
        super::output::emit(global.format, &super::run::output(&report));
        if report.outcome == RunOutcome::Interrupted {
            return Ok(Output::nothing(130));
        }
        // Between runs, workers stay connected: lease requests wait for the next run.
        listener.coordinator.set_finished(false);
        let coordinator = &started.coordinator;
        eprintln!(
            "mvc serve: waiting for {} to change (Ctrl-C stops)",
            file.display()
        );
        // SIGTERM too: the run installed tokio's handler for it, which would otherwise
        // swallow it here, between runs.
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(Output::nothing(0)),
                _ = sigterm.recv() => return Ok(Output::nothing(0)),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if modified() != seen {
                break;
            }
        }
        match load(file, variants) {
            Ok(p) => {
                coordinator.set_pipeline(&p.workflow.name, file, p.workflow.source.clone());
                *pipeline = p;
            }
            Err(e) => eprintln!("mvc serve: {e}; waiting for a fix"),
        }
    }
}
