//! The `mvc` command line.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use mvc::commands;
use mvc::exec::plan::plan;
use mvc::exec::run::{RunOptions, run_with};
use mvc::exec::slots::Resources;
use mvc::pipeline::Pipeline;
use mvc::store::Store;
use mvc::store::records::RunOutcome;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "mvc",
    version,
    about = "Content-addressed pipelines for multi-view CLIP consistency studies",
    long_about = "Runs pipeline files of stages whose tasks are cached by content: after a \
                  change, only the tasks it invalidated run, and `mvc plan` says which and why."
)]
struct Cli {
    /// Cache directory (default: the pipeline's `cache`, else ./cache).
    #[arg(long, global = true, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// More log output (-v: info, -vv: debug); MVC_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline: plan it, then execute every task that is not cached.
    Run {
        file: PathBuf,
        /// Print a JSON summary as the last line of stdout.
        #[arg(long)]
        json: bool,
        /// CPU slots (concurrent cpu tasks); default: the number of cores.
        #[arg(short, long)]
        jobs: Option<u32>,
        /// Slot counts, e.g. `cpu=4,gpu=1,blender=2,net=8`.
        #[arg(long, value_name = "SLOTS")]
        slots: Option<String>,
        /// Continue past item failures (the default).
        #[arg(long, conflicts_with = "fail_fast")]
        keep_going: bool,
        /// Stop starting new tasks after the first failure.
        #[arg(long)]
        fail_fast: bool,
        /// Run again the items whose failure an earlier run recorded.
        #[arg(long)]
        retry_failed: bool,
        /// Seconds running tasks get to finish after Ctrl-C before they are killed.
        #[arg(long, default_value_t = 30.0, value_name = "SECS")]
        grace: f64,
        /// No progress display.
        #[arg(short, long)]
        quiet: bool,
        #[command(flatten)]
        remote: ListenArgs,
    },
    /// A long-lived coordinator: runs the pipeline, then again whenever its file changes,
    /// serving workers all along (Ctrl-C stops it).
    Serve {
        file: PathBuf,
        /// Slot counts of this machine, e.g. `cpu=4,gpu=1`.
        #[arg(long, value_name = "SLOTS")]
        slots: Option<String>,
        /// No progress display.
        #[arg(short, long)]
        quiet: bool,
        #[command(flatten)]
        remote: ListenArgs,
    },
    /// Run units for a coordinator (`mvc run --listen` or `mvc serve` elsewhere).
    Worker {
        /// The coordinator's URL, e.g. http://10.0.0.5:7070.
        #[arg(long, value_name = "URL")]
        connect: String,
        /// A file holding the coordinator's token (else MVC_TOKEN).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Slots this worker offers, e.g. `cpu=8,gpu=1,blender=2` (default: this machine's
        /// cores and GPUs, and one Blender process when Blender is installed).
        #[arg(long, value_name = "SLOTS")]
        slots: Option<String>,
        /// A label shown by `mvc status` (repeatable).
        #[arg(long = "label", value_name = "TEXT")]
        labels: Vec<String>,
        /// Exit after this many seconds with nothing to do, or when the run is over.
        #[arg(long, value_name = "SECS")]
        exit_when_idle: Option<f64>,
        /// After Ctrl-C or SIGTERM: how long stopped units may take to report before the
        /// worker exits.
        #[arg(long, value_name = "SECS", default_value_t = 10.0)]
        grace: f64,
    },
    /// Say what `run` would do and why, without running anything.
    Plan {
        file: PathBuf,
        #[arg(long)]
        json: bool,
        /// Plan as if --retry-failed were given to run.
        #[arg(long)]
        retry_failed: bool,
    },
    /// Show a task's key record and what changed since the last record for its item.
    #[command(
        override_usage = "mvc why FILE STAGE ITEM\n       mvc why KEY",
        arg_required_else_help = true
    )]
    Why {
        /// FILE STAGE ITEM, or a task KEY (64 hex digits or a unique prefix).
        #[arg(num_args = 1..=3, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// What the cache holds and its last runs; with FILE, where each stage stands.
    Status {
        file: Option<PathBuf>,
        /// Ask a running coordinator instead: its workers, their slots and what each runs.
        #[arg(long, value_name = "URL", conflicts_with_all = ["file", "verify"])]
        connect: Option<String>,
        /// The coordinator's token file (with --connect; else MVC_TOKEN).
        #[arg(long, value_name = "FILE", requires = "connect")]
        token_file: Option<PathBuf>,
        /// Re-hash every blob and check every index entry.
        #[arg(long)]
        verify: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete what the last runs did not reach.
    Gc {
        /// A pipeline file, to use its cache directory.
        file: Option<PathBuf>,
        /// Report what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Runs to keep per pipeline.
        #[arg(long, default_value_t = 1, value_name = "N")]
        keep_runs: usize,
    },
    /// Write a stage's outputs as ordinary files: DIR/<item>/<output>.
    Export {
        file: PathBuf,
        stage: String,
        dir: PathBuf,
    },
    /// CLIP embeddings of images and captions into a safetensors file (`image_embeds`,
    /// `text_embeds`, float32, in the order given).
    Embed {
        /// A Hugging Face model folder, or a hub repo id (downloaded into the cache).
        #[arg(long, value_name = "PATH_OR_REPO")]
        model: String,
        /// The hub revision (branch, tag or commit) of a repo id.
        #[arg(long)]
        revision: Option<String>,
        #[arg(long, value_name = "FILE.safetensors")]
        out: PathBuf,
        /// An image to embed (PNG or JPEG); repeat for more.
        #[arg(long = "image", value_name = "IMG")]
        images: Vec<PathBuf>,
        /// A caption to embed; repeat for more.
        #[arg(long = "text", value_name = "TEXT")]
        texts: Vec<String>,
        /// auto: CUDA when this build has it and a GPU answers, else the CPU.
        #[arg(long, default_value = "auto", value_name = "auto|cpu|cuda")]
        device: mvc::clip::DeviceChoice,
        /// Numeric type on the GPU (f32 is the reference).
        #[arg(long, default_value = "f32", value_name = "f32|f16|bf16")]
        dtype: mvc::clip::Precision,
        /// The colour transparent pixels are composited onto.
        #[arg(long, default_value = "white", value_name = "white|#rrggbb")]
        background: String,
        /// Images or captions per forward pass.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Also write the model's inputs: `pixel_values` and `input_ids` (int64).
        #[arg(long)]
        dump_inputs: bool,
    },
}

/// How a run listens for workers.
#[derive(clap::Args, Clone, Debug)]
struct ListenArgs {
    /// Serve workers on this address (e.g. 127.0.0.1:7070, or 0.0.0.0:7070 with a token).
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// A file holding the token workers must present (else MVC_TOKEN); required when
    /// listening on anything but loopback.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Run nothing on this machine: every unit goes to a worker.
    #[arg(long)]
    no_local: bool,
    /// Seconds a silent worker keeps its units before they go back to the queue.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    lease_timeout: f64,
}

/// A coordinator and, under Slurm, the launcher submitting its workers.
struct Remote {
    listener: mvc::exec::run::Listener,
    slurm: Option<(
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<mvc::remote::slurm::SlurmSummary>,
    )>,
}

impl Remote {
    /// Stops submitting workers and cancels the Slurm jobs still queued or running.
    async fn finish(self) {
        if let Some((stop, handle)) = self.slurm {
            stop.cancel();
            if let Ok(summary) = handle.await
                && summary.jobs_submitted > 0
            {
                eprintln!(
                    "slurm: {} worker job(s) submitted in this run (arrays {}); none left in \
                     the queue",
                    summary.jobs_submitted,
                    summary.arrays.join(", ")
                );
            }
        }
    }
}

impl ListenArgs {
    /// Starts the coordinator when --listen is given or the executor is Slurm (which
    /// listens on every address by default, so its token is then required).
    async fn start(
        &self,
        pipeline: &Pipeline,
        file: &Path,
        store: &Arc<Store>,
    ) -> Result<Option<Remote>> {
        use mvc::remote::coordinator::{Coordinator, CoordinatorConfig};
        let addr = match (self.listen, &pipeline.slurm) {
            (Some(addr), _) => addr,
            (None, Some(_)) => "0.0.0.0:0".parse().expect("a valid address"),
            (None, None) => {
                if self.no_local {
                    anyhow::bail!(
                        "--no-local needs --listen ADDR: without workers nothing would run"
                    );
                }
                return Ok(None);
            }
        };
        let token = mvc::remote::auth::Token::load(self.token_file.as_deref())?;
        let mut config = CoordinatorConfig::new(addr, token);
        if !(self.lease_timeout > 0.0 && self.lease_timeout.is_finite()) {
            anyhow::bail!("--lease-timeout must be a positive number of seconds");
        }
        config.lease_timeout = Duration::from_secs_f64(self.lease_timeout);
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let source = mvc::remote::protocol::PipelineText {
            path: file.display().to_string(),
            text,
        };
        let (coordinator, rx) =
            Coordinator::start(config, store.clone(), &pipeline.name, source).await?;
        eprintln!(
            "mvc: serving workers on {} (mvc worker --connect {})",
            coordinator.url(),
            coordinator.url()
        );
        let slurm = match &pipeline.slurm {
            None => None,
            Some(cfg) => {
                let launcher = mvc::remote::slurm::SlurmLauncher::new(
                    cfg.clone(),
                    pipeline,
                    coordinator.clone(),
                    self.token_file.as_deref(),
                )?;
                let stop = tokio_util::sync::CancellationToken::new();
                let handle = tokio::spawn(launcher.run(stop.clone()));
                Some((stop, handle))
            }
        };
        Ok(Some(Remote {
            listener: mvc::exec::run::Listener::new(coordinator, rx),
            slurm,
        }))
    }

    /// The slots of this machine: none with --no-local, or under Slurm unless
    /// `local = true`.
    fn local_slots(&self, pipeline: &Pipeline, slots: Resources) -> Resources {
        let slurm_only = pipeline.slurm.as_ref().is_some_and(|s| !s.local);
        if self.no_local || slurm_only {
            Resources::default()
        } else {
            slots
        }
    }
}

fn main() -> ExitCode {
    // `mvc plan … | head` should end quietly, not panic on a closed pipe.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == mvc::exec::launcher::LAUNCHER_ARG)
    {
        mvc::exec::launcher::helper_main();
    }
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MVC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .init();
}

fn cache_dir(flag: &Option<PathBuf>, pipeline: Option<&Pipeline>) -> PathBuf {
    flag.clone()
        .or_else(|| pipeline.map(|p| p.cache_dir.clone()))
        .unwrap_or_else(|| PathBuf::from("cache"))
}

/// Makes the index durable and leaves the plan's memory to the operating system: freeing a
/// million tasks' allocations one by one took a tenth of a second of a two-second plan.
fn exit_without_freeing(engine: mvc::exec::resolve::Engine) -> Result<()> {
    engine.store.flush()?;
    std::mem::forget(engine);
    Ok(())
}

/// `mvc serve`: runs, then waits for the pipeline file to change (or Ctrl-C) and runs again,
/// keeping the coordinator, and so its workers, up in between.
async fn serve(
    file: PathBuf,
    mut pipeline: Pipeline,
    store: Arc<Store>,
    slots: Option<String>,
    quiet: bool,
    remote: ListenArgs,
) -> Result<ExitCode> {
    let mut started = remote
        .start(&pipeline, &file, &store)
        .await?
        .expect("--listen was checked");
    let outcome = serve_loop(
        &file,
        &mut pipeline,
        &store,
        slots,
        quiet,
        &remote,
        &mut started,
    )
    .await;
    started.finish().await;
    outcome
}

async fn serve_loop(
    file: &Path,
    pipeline: &mut Pipeline,
    store: &Arc<Store>,
    slots: Option<String>,
    quiet: bool,
    remote: &ListenArgs,
    started: &mut Remote,
) -> Result<ExitCode> {
    let listener = &mut started.listener;
    let modified = |f: &Path| std::fs::metadata(f).and_then(|m| m.modified()).ok();
    loop {
        let run_slots = pipeline
            .slots(None, slots.as_deref())
            .map_err(|e| anyhow::anyhow!("--slots: {e}"))?;
        let run_slots = remote.local_slots(pipeline, run_slots);
        let opts = RunOptions {
            slots: run_slots,
            keep_going: true,
            retry_failed: false,
            grace: Duration::from_secs(30),
            quiet,
        };
        let seen = modified(file);
        let report = run_with(pipeline, store.clone(), opts, Some(listener)).await?;
        print!("{}", report.to_text());
        if report.outcome == RunOutcome::Interrupted {
            return Ok(ExitCode::from(130));
        }
        // Between runs, workers stay connected: lease requests wait for the next run.
        listener.coordinator.set_finished(false);
        eprintln!(
            "mvc serve: waiting for {} to change (Ctrl-C stops)",
            file.display()
        );
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if modified(file) != seen {
                break;
            }
        }
        match Pipeline::load(file) {
            Ok(p) => {
                let text = std::fs::read_to_string(file)?;
                listener.coordinator.set_pipeline(&p.name, file, text);
                *pipeline = p;
            }
            Err(e) => eprintln!("mvc serve: {e}; waiting for a fix"),
        }
    }
}

/// Runs the async part of a command that runs, serves or talks over HTTP, on a tokio
/// runtime. The runtime is not waited for when the command is done: dropping it would wait
/// for every blocking thread, and a thread left behind by an abandoned unit (stuck in a
/// computation after Ctrl-C) would keep mvc alive past its grace period. Results are already
/// recorded and flushed by then; the threads die with the process.
fn block_on<T>(work: impl std::future::Future<Output = T>) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let out = runtime.block_on(work);
    runtime.shutdown_timeout(Duration::from_millis(500));
    Ok(out)
}

fn load(file: &Path) -> Result<Pipeline> {
    Ok(Pipeline::load(file)?)
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run {
            file,
            json,
            jobs,
            slots,
            keep_going: _,
            fail_fast,
            retry_failed,
            grace,
            quiet,
            remote,
        } => {
            let pipeline = load(&file)?;
            let mut slots = pipeline
                .slots(jobs, slots.as_deref())
                .map_err(|e| anyhow::anyhow!("--slots: {e}"))?;
            slots = remote.local_slots(&pipeline, slots);
            let store = Arc::new(Store::open(&cache_dir(&cli.cache, Some(&pipeline)))?);
            let opts = RunOptions {
                slots,
                keep_going: !fail_fast,
                retry_failed,
                grace: Duration::from_secs_f64(grace.max(0.0)),
                quiet,
            };
            let report = block_on(async {
                let mut started = remote.start(&pipeline, &file, &store).await?;
                let report = run_with(
                    &pipeline,
                    store,
                    opts,
                    started.as_mut().map(|r| &mut r.listener),
                )
                .await;
                if let Some(r) = started {
                    r.finish().await;
                }
                report
            })??;
            if json {
                eprint!("{}", report.to_text());
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_text());
            }
            Ok(match report.outcome {
                RunOutcome::Ok => ExitCode::SUCCESS,
                RunOutcome::Failed => ExitCode::from(1),
                RunOutcome::Interrupted => ExitCode::from(130),
            })
        }
        Command::Plan {
            file,
            json,
            retry_failed,
        } => {
            let pipeline = load(&file)?;
            let dir = cache_dir(&cli.cache, Some(&pipeline));
            let store = Arc::new(Store::open(&dir)?);
            let (engine, report) = plan(&pipeline, store, retry_failed)?;
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_text(&pipeline, &dir));
            }
            exit_without_freeing(engine)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Why { args } => match args.as_slice() {
            [key] => {
                let store = Store::open(&cache_dir(&cli.cache, None))?;
                print!("{}", commands::why::why_key(&store, key)?);
                Ok(ExitCode::SUCCESS)
            }
            [file, stage, item] => {
                let pipeline = load(Path::new(file))?;
                let store = Arc::new(Store::open(&cache_dir(&cli.cache, Some(&pipeline)))?);
                let (engine, _) = plan(&pipeline, store, false)?;
                print!("{}", commands::why::why_task(&engine, stage, item)?);
                Ok(ExitCode::SUCCESS)
            }
            _ => anyhow::bail!("usage: mvc why FILE STAGE ITEM, or mvc why KEY"),
        },
        Command::Serve {
            file,
            slots,
            quiet,
            remote,
        } => {
            let pipeline = load(&file)?;
            if remote.listen.is_none() && pipeline.slurm.is_none() {
                anyhow::bail!("mvc serve needs --listen ADDR");
            }
            let store = Arc::new(Store::open(&cache_dir(&cli.cache, Some(&pipeline)))?);
            block_on(serve(file, pipeline, store, slots, quiet, remote))?
        }
        Command::Worker {
            connect,
            token_file,
            slots,
            labels,
            exit_when_idle,
            grace,
        } => {
            let token = mvc::remote::auth::Token::load(token_file.as_deref())?;
            let slots = match slots {
                Some(text) => mvc::exec::slots::Resources::parse_overrides(
                    &text,
                    mvc::remote::worker::default_slots(),
                )
                .map_err(|e| anyhow::anyhow!("--slots: {e}"))?,
                None => mvc::remote::worker::default_slots(),
            };
            if slots.is_zero() {
                anyhow::bail!("--slots: the worker offers no slot, so it could run nothing");
            }
            let exit_when_idle = match exit_when_idle {
                Some(s) if !(s >= 0.0 && s.is_finite()) => {
                    anyhow::bail!("--exit-when-idle must be a number of seconds")
                }
                other => other.map(Duration::from_secs_f64),
            };
            let opts = mvc::remote::worker::WorkerOptions {
                url: connect,
                token,
                slots,
                labels,
                exit_when_idle,
                cache: cli.cache.clone(),
                grace: Duration::from_secs_f64(grace.max(0.0)),
            };
            let summary = block_on(mvc::remote::worker::run_worker(opts))??;
            eprintln!(
                "mvc worker: {} ({} unit(s) run)",
                summary.why, summary.units
            );
            Ok(match summary.why.as_str() {
                "interrupted" => ExitCode::from(130),
                _ => ExitCode::SUCCESS,
            })
        }
        Command::Status {
            connect: Some(url),
            token_file,
            json,
            ..
        } => {
            let token = mvc::remote::auth::Token::load(token_file.as_deref())?;
            let client = mvc::remote::client::Client::new(&url, token.as_ref())?;
            let status = block_on(client.status())?.with_context(|| format!("asking {url}"))?;
            if json {
                println!("{}", serde_json::to_string(&status)?);
            } else {
                print!("{}", commands::status::remote_to_text(&status));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            file, verify, json, ..
        } => {
            let pipeline = file.as_deref().map(load).transpose()?;
            let dir = cache_dir(&cli.cache, pipeline.as_ref());
            if !dir.exists() {
                anyhow::bail!(
                    "there is no cache at {} yet (a first `mvc run` creates it)",
                    dir.display()
                );
            }
            let store = Arc::new(Store::open(&dir)?);
            let summary = commands::status::summarize(&store, 5)?;
            let plan_report = match &pipeline {
                Some(p) => Some(plan(p, store.clone(), false)?.1),
                None => None,
            };
            let verify_report = verify
                .then(|| mvc::store::verify::verify(&store))
                .transpose()?;
            if json {
                let value = serde_json::json!({
                    "cache": summary,
                    "stages": plan_report.as_ref().map(|p| &p.stages),
                    "verify": verify_report.as_ref().map(|v| serde_json::json!({
                        "clean": v.clean(),
                        "problems": v.problems,
                        "blobs": v.blobs,
                        "results": v.results,
                    })),
                });
                println!("{value}");
            } else {
                print!(
                    "{}",
                    commands::status::to_text(
                        &summary,
                        plan_report.as_ref(),
                        verify_report.as_ref()
                    )
                );
            }
            Ok(match verify_report {
                Some(v) if !v.clean() => ExitCode::from(1),
                _ => ExitCode::SUCCESS,
            })
        }
        Command::Gc {
            file,
            dry_run,
            keep_runs,
        } => {
            let pipeline = file.as_deref().map(load).transpose()?;
            let store = Store::open(&cache_dir(&cli.cache, pipeline.as_ref()))?;
            let report = mvc::store::gc::gc(&store, keep_runs.max(1), dry_run)?;
            print!("{}", commands::gc::to_text(&report, keep_runs.max(1)));
            Ok(ExitCode::SUCCESS)
        }
        Command::Export { file, stage, dir } => {
            let pipeline = load(&file)?;
            let store = Arc::new(Store::open(&cache_dir(&cli.cache, Some(&pipeline)))?);
            let (engine, _) = plan(&pipeline, store, false)?;
            let report = commands::export::export(&engine, &file, &stage, &dir)?;
            println!(
                "exported {} item(s), {} file(s) ({}) of stage `{stage}` to {}",
                report.items,
                report.files,
                mvc::text::human_bytes(report.bytes),
                dir.display()
            );
            if !report.failed.is_empty() {
                println!(
                    "skipped {} failed item(s): {}",
                    report.failed.len(),
                    report
                        .failed
                        .iter()
                        .take(10)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Embed {
            model,
            revision,
            out,
            images,
            texts,
            device,
            dtype,
            background,
            batch,
            dump_inputs,
        } => {
            let background =
                mvc::clip::config::parse_colour(&background).map_err(anyhow::Error::msg)?;
            let request = commands::embed::EmbedRequest {
                model,
                revision,
                out: out.clone(),
                images,
                texts,
                device,
                dtype,
                background,
                batch,
                dump_inputs,
                cache: cli.cache.clone().unwrap_or_else(|| PathBuf::from("cache")),
            };
            let summary = commands::embed::embed(&request)?;
            println!(
                "wrote {} image and {} text embedding(s) of {} dimensions to {} (on {})",
                summary.images,
                summary.texts,
                summary.dim,
                out.display(),
                summary.device
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
