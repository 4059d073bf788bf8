//! The commands of the `mvc` binary, one file per subcommand. Each takes its parsed
//! arguments, does its work through the layers below, and returns an [`Output`] that
//! [`output::emit`] prints as text, JSON or nothing. `main.rs` only parses and dispatches.

pub mod embed;
pub mod export;
pub mod flags;
pub mod gc;
pub mod listen;
pub mod output;
pub mod plan;
pub mod progress;
pub mod repair;
pub mod run;
pub mod serve;
pub mod status;
pub mod ui;
pub mod why;
pub mod worker;

pub use output::{Format, Output};

use crate::exec::resolve::Engine;
use crate::pipeline::Pipeline;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The first argument with which mvc runs as its own process launcher (see
/// `exec::launcher`), and that helper's entry point.
pub use crate::exec::launcher::{LAUNCHER_ARG, helper_main as launcher_helper_main};

/// The allocator of mvc's binaries: `main.rs`, and the benchmarks that run mvc's engine and
/// store in their own process, each declare it as their `#[global_allocator]` (the library
/// does not, so that `tests/memory.rs` can count with its own). mimalloc, not glibc's malloc:
/// recording a result makes and frees many small allocations (sled's copy-on-write nodes
/// above all); glibc's spent a quarter of recording's time in them, part of it waiting on an
/// arena's lock held by sled's flusher thread (BENCHMARKS.md, "The allocator, and sled's
/// inserts on two threads").
pub use mimalloc::MiMalloc as Allocator;

/// What every command is given besides its own arguments.
#[derive(Clone, Debug)]
pub struct Global {
    /// `--cache DIR`.
    pub cache: Option<PathBuf>,
    pub format: Format,
}

impl Global {
    /// The cache directory: `--cache`, else the pipeline's `cache`, else `./cache`.
    pub fn cache_dir(&self, pipeline: Option<&Pipeline>) -> PathBuf {
        self.cache
            .clone()
            .or_else(|| pipeline.map(|p| p.workflow.cache_dir.clone()))
            .unwrap_or_else(|| PathBuf::from("cache"))
    }
}

/// Opens the cache at `dir` for a command, and says (on stderr, unless `--quiet`) when
/// opening it put back records its index had lost.
pub fn open_store(dir: &Path, global: &Global) -> Result<crate::store::Store> {
    let store = crate::store::Store::open(dir)?;
    note_restored(&store, global);
    Ok(store)
}

/// Says what opening the main index put back from the journals, if it had lost records.
pub fn note_restored(store: &crate::store::Store, global: &Global) {
    if let Some(restored) = store.restored()
        && global.format != Format::Quiet
    {
        eprintln!(
            "mvc: the index of {} had come back at an earlier state than the last run left it \
             (damage, or power lost before it reached the disk): {}",
            store.dir().display(),
            restored.summary()
        );
    }
}

/// `--with FILE` and `--set STAGE.KEY=VALUE`: a variant of the pipeline without editing its
/// file, on every command that reads one.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct VariantArgs {
    /// Merge a TOML file of the pipeline's shape over it (tables merge, values replace, a
    /// stage only it has is added). Repeatable, applied in order.
    #[arg(long = "with", value_name = "FILE")]
    pub with: Vec<PathBuf>,
    /// Set one parameter, e.g. --set train_object.steps=2000 or --set
    /// 'views.polar=[20,50]'. VALUE is TOML (a bare word is a string); `{ sweep = [...] }`
    /// sweeps it. Repeatable, applied after every --with.
    #[arg(long = "set", value_name = "STAGE.KEY=VALUE")]
    pub set: Vec<String>,
}

impl VariantArgs {
    pub fn layers(&self) -> crate::pipeline::Layers {
        crate::pipeline::Layers {
            with: self.with.clone(),
            set: self.set.clone(),
        }
    }

    /// For a command whose pipeline file is optional: the flags mean nothing without one.
    pub fn need_file(&self, file: Option<&Path>) -> Result<()> {
        if file.is_none() && !(self.with.is_empty() && self.set.is_empty()) {
            anyhow::bail!("--with and --set change a pipeline: give its file");
        }
        Ok(())
    }
}

/// Reads and checks a pipeline file with its overlays and overrides (errors name the file,
/// line and column, or the override); the run records the command line that gave them.
pub fn load(file: &Path, variants: &VariantArgs) -> Result<Pipeline> {
    let mut pipeline = Pipeline::load_with(file, &variants.layers())?;
    pipeline.workflow.command = std::env::args().collect();
    Ok(pipeline)
}

/// Runs the async part of a command that runs, serves or talks over HTTP, on a tokio
/// runtime. The runtime is not waited for when the command is done: dropping it would wait
/// for every blocking thread, and a thread left behind by an abandoned unit (stuck in a
/// computation after Ctrl-C) would keep mvc alive past its grace period. Results are already
/// recorded and flushed by then; the threads die with the process.
pub fn block_on<T>(work: impl std::future::Future<Output = T>) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let out = runtime.block_on(work);
    runtime.shutdown_timeout(Duration::from_millis(500));
    Ok(out)
}

/// Makes the index durable and leaves the plan's memory to the operating system: freeing a
/// million tasks' allocations one by one took a tenth of a second of a two-second plan.
pub fn exit_without_freeing(engine: Engine) -> Result<()> {
    engine.store.flush_and_stamp()?;
    std::mem::forget(engine);
    Ok(())
}
