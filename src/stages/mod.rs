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

/// Whether a stage of this kind reads every variant of a swept input (the report, which
/// compares them), rather than following the sweep with a variant of its own per variant.
pub fn takes_every_variant(kind: &str) -> bool {
    kind == report::KIND
}

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
        let producers = producers(&task);
        let (store, kill, work) = (ctx.store.clone(), ctx.kill.clone(), work.clone());
        let result = crate::exec::blocking_if(true, move || work(&store, task, &kill)).await;
        outcomes.push(match unreadable_input(stage, &result, &producers) {
            Some(not_ours) => not_ours,
            None => outcome(stage, started_ms, &ctx.kill, result),
        });
    }
    outcomes
}

/// Which upstream task made each blob a task reads: (digest, stage, item). Kept aside while
/// the task runs (it takes its inputs), to name the producer of one that cannot be read.
fn producers(task: &UnitTask) -> Vec<(crate::task::Digest, String, String)> {
    let mut producers = Vec::new();
    for input in &task.inputs {
        for (item, result) in &input.items {
            for (digest, _) in result.blob_outputs() {
                producers.push((digest, input.stage.clone(), item.clone()));
            }
        }
    }
    producers
}

/// A task that failed because an input could not be read is not the item's failure: a blob
/// gone or damaged makes its producer run again ([`TaskOutcome::InputCorrupt`]); any other
/// read error (the disk's) is not recorded, and the next run tries again.
fn unreadable_input(
    stage: &str,
    result: &Result<Vec<Output>>,
    producers: &[(crate::task::Digest, String, String)],
) -> Option<TaskOutcome> {
    use crate::store::blobs::BlobError;
    let error = result.as_ref().err()?;
    let blob = error.chain().find_map(|c| c.downcast_ref::<BlobError>())?;
    let producer = match blob {
        BlobError::Missing(d) | BlobError::Corrupt { digest: d, .. } => {
            producers.iter().find(|(p, _, _)| p == d)
        }
        BlobError::Io { .. } => None,
    };
    Some(match producer {
        Some((_, up, item)) => TaskOutcome::InputCorrupt {
            stage: up.clone(),
            item: item.clone(),
            error: format!("{stage}: {error:#}"),
        },
        None => TaskOutcome::Aborted(format!(
            "{stage}: {error:#} (an input could not be read: not this item's failure, so it is \
             not recorded; the next run tries again)"
        )),
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::blobs::BlobError;
    use crate::task::Digest;

    #[test]
    fn an_input_that_cannot_be_read_is_not_the_tasks_failure() {
        let weights = Digest::of(b"weights");
        let producers = vec![(weights, "train".to_string(), "all".to_string())];
        let corrupt = Err(anyhow::Error::new(BlobError::Corrupt {
            digest: weights,
            actual: Digest::of(b"other"),
        })
        .context("reading train/weights.safetensors"));
        match unreadable_input("eval", &corrupt, &producers) {
            Some(TaskOutcome::InputCorrupt { stage, item, error }) => {
                assert_eq!((stage.as_str(), item.as_str()), ("train", "all"));
                assert!(error.contains("failed verification"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        let io = Err(anyhow::Error::new(BlobError::Io {
            digest: weights,
            source: std::io::Error::other("Input/output error"),
        }));
        assert!(matches!(
            unreadable_input("eval", &io, &producers),
            Some(TaskOutcome::Aborted(e)) if e.contains("not recorded")
        ));
        let own = Err(anyhow::anyhow!("the test part has 1 object"));
        assert!(unreadable_input("eval", &own, &producers).is_none());
        assert!(unreadable_input("eval", &Ok(Vec::new()), &producers).is_none());
    }
}
