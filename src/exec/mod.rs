//! The engine: task graph, resolution, planning, the local executor and the scheduler side of
//! remote workers. It defines the `StageKind` trait (`kind`) and names no kind; what a run
//! shows live goes through `view::RunView`, which the commands implement.

mod aggregate;
mod columns;
mod dispatch;
pub mod graph;
pub mod ids;
pub mod keying;
pub mod kind;
pub mod launcher;
mod learnt;
pub mod plan;
mod queue;
mod remote_units;
pub mod resolve;
pub mod run;
mod stage_results;
pub mod stage_summaries;
pub mod summary;
mod units;
pub mod view;
pub mod why;
pub mod workdir;
pub mod workers;
pub mod workflow;

/// Runs blocking work inline when it is small, on tokio's blocking pool when it is not.
///
/// Each hop to the blocking pool costs thread wake-ups, and on virtual machines those cost
/// cross-CPU interrupts: with every file operation of a task sent there, a task's own
/// bookkeeping cost as much as starting its process. Small work (a few files, a few index
/// writes) stays on the worker; large work (big blobs, thousands of inputs) goes off it.
pub async fn blocking_if<T: Send + 'static>(
    heavy: bool,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    if heavy {
        tokio::task::spawn_blocking(work)
            .await
            .expect("blocking work does not panic")
    } else {
        work()
    }
}

/// How long a unit may take to end once it has been told to stop (its processes are killed
/// at that moment and report at once) before it is abandoned.
pub const ABANDON_AFTER_KILL: std::time::Duration = std::time::Duration::from_secs(2);

/// Awaits a unit's work; once `kill` has fired, waits at most [`ABANDON_AFTER_KILL`] more
/// and then drops it (`None`). A thread it started and cannot interrupt (a computation in a
/// library, a reader stuck on a hostile file) is left behind: the run ends on time anyway,
/// and the thread dies with the process.
pub async fn unless_abandoned<T>(
    kill: &tokio_util::sync::CancellationToken,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::pin!(work);
    tokio::select! {
        done = &mut work => return Some(done),
        _ = kill.cancelled() => {}
    }
    tokio::time::timeout(ABANDON_AFTER_KILL, work).await.ok()
}
