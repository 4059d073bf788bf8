//! Stage kinds: what a stage of each `kind` reads, fans out over, and does.
//!
//! The engine knows stages only through [`StageKind`]: items and how they bind to inputs,
//! the parameter slices that go into keys, the resources a task holds, how tasks group into
//! execution units, and how a unit executes.

pub mod gather;
mod item_decl;
mod registry;
pub mod table;

// The kinds, one line each: the kind's module (`stages/MODULE.rs` or `stages/MODULE/`) and
// the parameters of its table. The order is the order error messages list the kinds in.
registry::kinds! {
    command => CommandParams,
    download => DownloadParams,
    render => RenderParams,
    embed => EmbedParams,
    split => SplitParams,
    train => TrainParams,
    evaluate => EvaluateParams,
    report => ReportParams,
}

use crate::resources::Resources;
use crate::store::Store;
use crate::store::records::Output;
use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

/// The kinds' API is the engine's ([`crate::exec::kind`]); kinds and older callers name it here.
pub use crate::exec::kind::*;

pub use crate::task::validate_item_id;
pub use item_decl::ItemDecl;

pub use table::StageTable;

/// The `device` of a stage table: `auto` (default), `cpu` or `cuda`; an error at its position.
pub fn device_param(
    stage: &str,
    device: &Option<toml::Spanned<String>>,
) -> Result<crate::clip::DeviceChoice> {
    match device {
        None => Ok(crate::clip::DeviceChoice::Auto),
        Some(d) => d.get_ref().parse().map_err(|e: String| {
            crate::diag::AtSpan {
                span: d.span(),
                message: format!("stage `{stage}`: {e}"),
            }
            .into()
        }),
    }
}

/// The slots a task on `device` holds: a `gpu` slot for CUDA; on the CPU one `cpu` slot (the
/// model or head uses every core by itself; two tasks in flight overlap their preparation).
pub fn device_resources(device: crate::clip::DeviceChoice) -> Resources {
    match device {
        crate::clip::DeviceChoice::Cuda => Resources {
            cpu: 0,
            gpu: 1,
            blender: 0,
            net: 0,
        },
        crate::clip::DeviceChoice::Auto | crate::clip::DeviceChoice::Cpu => Resources::ONE_CPU,
    }
}

/// The outcome of a task that made `result`: its outputs, or its error as the item's failure
/// (`Cancelled` instead when the run is being stopped: a killed task has not failed).
pub fn outcome(
    stage: &str,
    started_ms: u64,
    kill: &CancellationToken,
    result: Result<Vec<Output>>,
) -> TaskOutcome {
    match result {
        Ok(outputs) => TaskOutcome::Success {
            outputs,
            stdout: None,
            stderr: None,
            started_ms,
            duration_ms: crate::store::records::now_ms().saturating_sub(started_ms),
        },
        Err(_) if kill.is_cancelled() => TaskOutcome::Cancelled,
        Err(e) => TaskOutcome::Failed {
            error: format!("{stage}: {e:#}"),
            stderr: None,
        },
    }
}

/// Runs each task of a unit on the blocking pool, one after another: `work` makes a task's
/// outputs (for kinds whose tasks are long computations: training, evaluation).
pub async fn each_task_blocking<F>(
    stage: &str,
    ctx: &ExecCtx,
    unit: Vec<UnitTask>,
    work: F,
) -> Vec<TaskOutcome>
where
    F: Fn(&Store, UnitTask, &CancellationToken) -> Result<Vec<Output>> + Clone + Send + 'static,
{
    let mut outcomes = Vec::with_capacity(unit.len());
    for task in unit {
        let started_ms = crate::store::records::now_ms();
        let (store, kill, work) = (ctx.store.clone(), ctx.kill.clone(), work.clone());
        let result = crate::exec::blocking_if(true, move || work(&store, task, &kill)).await;
        outcomes.push(outcome(stage, started_ms, &ctx.kill, result));
    }
    outcomes
}

/// An upstream output's bytes by name.
pub fn read_named(store: &Store, outputs: &[Output], name: &str, what: &str) -> Result<Vec<u8>> {
    let output = outputs
        .iter()
        .find(|o| o.name == name)
        .with_context(|| format!("{what} has no {name}"))?;
    store
        .read_output(output)
        .with_context(|| format!("reading {what}/{name}; run the pipeline again"))
}

/// Upper-cases a name for an environment variable: letters and digits kept, others `_`.
pub fn env_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}
