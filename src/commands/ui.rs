//! `mvc ui`: the page of a cache that no run holds (its stages as the plan sees them, the
//! failures it recorded, its results and runs), read-only, until Ctrl-C. When a run holds
//! the cache, it says where that run's page is.

use super::{Global, Output, block_on, load};
use crate::exec::summary::known_failures;
use crate::pipeline::Pipeline;
use crate::store::Store;
use crate::store::records::format_time;
use crate::ui::UiState;
use crate::ui::live::{Live, Phase};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct UiArgs {
    /// The pipeline file; without it, the pipeline the cache's last run read (--cache DIR).
    pub file: Option<PathBuf>,
    /// Where to serve the page. Off loopback it needs --token-file and serves HTTPS.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    #[command(flatten)]
    pub auth: super::listen::ServerAuth,
    #[command(flatten)]
    pub variants: super::VariantArgs,
}

pub fn run(args: UiArgs, global: &Global) -> Result<Output> {
    args.variants.need_file(args.file.as_deref())?;
    let given = args
        .file
        .as_deref()
        .map(|f| load(f, &args.variants))
        .transpose()?;
    let cache = global.cache_dir(given.as_ref());
    let store = Arc::new(open_unheld(&cache, global)?);
    let pipeline = match given {
        Some(p) => p,
        None => last_run_pipeline(&store)?,
    };
    let (engine, plan) = crate::exec::plan::plan(&pipeline.workflow, store.clone(), false)?;
    let live = Live::new(&pipeline.workflow, Phase::Idle);
    live.apply_plan(&plan, &known_failures(&engine), true);
    drop(engine);
    let last = store.runs()?.pop();
    live.change(|s| {
        s.about = Some(match &last {
            Some(r) => format!(
                "No run holds this cache: the page shows what it holds, read-only. Its last \
                 run, of {}, started {} and ended: {}.",
                r.pipeline,
                format_time(r.started_ms),
                format!("{:?}", r.outcome).to_lowercase()
            ),
            None => "No run holds this cache, and none has been recorded in it yet.".into(),
        });
    });
    let state = UiState::new(live, store.clone());
    block_on(async move {
        let how = args.auth.page_listen(args.listen, "--listen", &store);
        let served = crate::ui::serve::start(how, state).await?;
        eprintln!("{} (Ctrl-C stops)", served.line());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        Ok::<_, anyhow::Error>(Output::nothing(0))
    })?
}

/// The cache, or, when a run holds it, an error that says where that run's page is.
fn open_unheld(cache: &Path, global: &Global) -> Result<Store> {
    let e = match super::open_store(cache, global) {
        Ok(store) => return Ok(store),
        Err(e) => e,
    };
    let held = e
        .chain()
        .find_map(|c| c.downcast_ref::<crate::store::lock::CacheInUse>());
    match held.map(|h| h.page.as_deref()) {
        Some(Some(url)) => bail!("{e:#}\nthat run's page is at {url}"),
        Some(None) => bail!(
            "{e:#}\nthat run serves no page; a run started with --ui ADDR (or --listen ADDR) \
             has one"
        ),
        None => Err(e),
    }
}

/// The pipeline the cache's last run read, from the text its run record kept.
fn last_run_pipeline(store: &Store) -> Result<Pipeline> {
    let run = store.runs()?.into_iter().rev().find(|r| r.source.is_some());
    let Some(run) = run else {
        bail!(
            "the cache {} has no run that recorded its pipeline; give the pipeline file: \
             mvc ui FILE",
            store.dir().display()
        );
    };
    let digest = run.source.expect("found by its source");
    let text = store
        .blobs()
        .read(&digest)
        .with_context(|| format!("reading the pipeline of the run of {}", run.pipeline))?;
    let text = String::from_utf8(text).context("the recorded pipeline is not UTF-8")?;
    Ok(Pipeline::parse(Path::new(&run.pipeline_path), &text)?)
}
