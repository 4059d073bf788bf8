//! The `mvc` command line: parses arguments and calls one command (`src/commands/`).

use clap::{Parser, Subcommand};
use mvc::commands::{self, Format, Global};
use std::path::PathBuf;
use std::process::ExitCode;

/// Why this allocator: [`mvc::commands::Allocator`].
#[global_allocator]
static ALLOCATOR: mvc::commands::Allocator = mvc::commands::Allocator;

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
    /// Print the result as one line of JSON on stdout (a run's summary also goes to stderr).
    #[arg(long, global = true)]
    json: bool,
    /// No progress display and no result: only errors and warnings (the exit status says
    /// how it went).
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline: plan it, then execute every task that is not cached.
    Run(commands::run::RunArgs),
    /// A long-lived coordinator: runs the pipeline, then again whenever its file changes,
    /// serving workers all along (Ctrl-C stops it).
    Serve(commands::serve::ServeArgs),
    /// Run units for a coordinator (`mvc run --listen` or `mvc serve` elsewhere).
    Worker(commands::worker::WorkerArgs),
    /// Say what `run` would do and why, without running anything.
    Plan(commands::plan::PlanArgs),
    /// Show a task's key record and what changed since the last record for its item.
    #[command(
        override_usage = "mvc why FILE STAGE ITEM\n       mvc why KEY",
        arg_required_else_help = true
    )]
    Why(commands::why::WhyArgs),
    /// What the cache holds and its last runs; with FILE, where each stage stands.
    Status(commands::status::StatusArgs),
    /// Serve the page of a cache no run holds: its stages, failures, objects, results and
    /// runs, read-only (Ctrl-C stops).
    Ui(commands::ui::UiArgs),
    /// Delete what the last runs did not reach.
    Gc(commands::gc::GcArgs),
    /// Rebuild a damaged index from the run journals and the blobs (the old one is kept).
    Repair(commands::repair::RepairArgs),
    /// Write a stage's outputs as ordinary files: DIR/<item>/<output>.
    Export(commands::export::ExportArgs),
    /// CLIP embeddings of images and captions into a safetensors file (`image_embeds`,
    /// `text_embeds`, float32, in the order given).
    Embed(commands::embed::EmbedArgs),
}

fn main() -> ExitCode {
    // SIGPIPE stays ignored (Rust's default): a peer that closes its socket while mvc writes
    // to it (a TLS client greeting a plain HTTP server, a worker gone mid-answer) is an error
    // on that connection, not the death of the coordinator or worker. `mvc plan … | head`
    // still ends quietly: the one writer of stdout (`output::emit`) drops a write error.
    // Task processes start with SIGPIPE at its default again (std resets it in children).
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == commands::LAUNCHER_ARG)
    {
        commands::launcher_helper_main();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let json = std::env::args_os().any(|a| a == "--json");
            return commands::output::emit_usage_error(json, &e);
        }
    };
    init_logging(cli.verbose);
    let format = Format::from_flags(cli.json, cli.quiet);
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => commands::output::emit_error(format, &e),
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

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let global = Global {
        cache: cli.cache,
        format: Format::from_flags(cli.json, cli.quiet),
    };
    let output = match cli.command {
        Command::Run(args) => commands::run::run(args, &global)?,
        Command::Serve(args) => commands::serve::run(args, &global)?,
        Command::Worker(args) => commands::worker::run(args, &global)?,
        Command::Plan(args) => commands::plan::run(args, &global)?,
        Command::Why(args) => commands::why::run(args, &global)?,
        Command::Status(args) => commands::status::run(args, &global)?,
        Command::Ui(args) => commands::ui::run(args, &global)?,
        Command::Gc(args) => commands::gc::run(args, &global)?,
        Command::Repair(args) => commands::repair::run(args, &global)?,
        Command::Export(args) => commands::export::run(args, &global)?,
        Command::Embed(args) => commands::embed::run(args, &global)?,
    };
    Ok(commands::output::emit(global.format, &output))
}
