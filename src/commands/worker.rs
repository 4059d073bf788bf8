//! `mvc worker`: run units for a coordinator (`mvc run --listen` or `mvc serve` elsewhere).

use super::{Global, Output, block_on};
use crate::remote::worker::{WorkerOptions, default_slots, run_worker};
use crate::resources::SlotOverrides;
use anyhow::Result;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// The coordinator's URL, e.g. http://10.0.0.5:7070.
    #[arg(long, value_name = "URL")]
    pub connect: String,
    /// A file holding the coordinator's token (else MVC_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The SHA-256 fingerprint of a coordinator's self-signed certificate, as it printed
    /// it (else MVC_FINGERPRINT): the worker trusts that certificate and no other.
    #[arg(long, value_name = "HEX")]
    pub fingerprint: Option<String>,
    /// Slots this worker offers, e.g. `cpu=8,gpu=1,blender=2` (default: this machine's
    /// cores and GPUs, and one Blender process when Blender is installed).
    #[arg(long, value_name = "SLOTS", value_parser = super::flags::slots)]
    pub slots: Option<SlotOverrides>,
    /// A label shown by `mvc status` (repeatable).
    #[arg(long = "label", value_name = "TEXT")]
    pub labels: Vec<String>,
    /// Exit after this many seconds with nothing to do, or when the run is over.
    #[arg(long, value_name = "SECS", value_parser = super::flags::seconds, allow_hyphen_values = true)]
    pub exit_when_idle: Option<Duration>,
    /// After Ctrl-C or SIGTERM: how long stopped units may take to report before the
    /// worker exits.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = super::flags::seconds, allow_hyphen_values = true)]
    pub grace: Duration,
}

pub fn run(args: WorkerArgs, global: &Global) -> Result<Output> {
    let token = crate::remote::auth::Token::load(args.token_file.as_deref())?;
    let fingerprint = crate::remote::tls::Fingerprint::load(args.fingerprint.as_deref())?;
    let slots = match args.slots {
        Some(given) => given.apply(default_slots()),
        None => default_slots(),
    };
    if slots.is_zero() {
        anyhow::bail!("--slots: the worker offers no slot, so it could run nothing");
    }
    let opts = WorkerOptions {
        url: args.connect,
        token,
        fingerprint,
        slots,
        labels: args.labels,
        exit_when_idle: args.exit_when_idle,
        cache: global.cache.clone(),
        grace: args.grace,
        say: super::output::say(global.format),
    };
    let summary = block_on(run_worker(opts))??;
    // The worker's last line has always gone to stderr, where its log goes.
    if global.format == super::Format::Text {
        eprintln!(
            "mvc worker: {} ({} unit(s) run)",
            summary.why, summary.units
        );
    }
    let code = if summary.why == "interrupted" { 130 } else { 0 };
    Ok(Output::new(String::new(), &summary).with_code(code))
}
