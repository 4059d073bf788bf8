//! Running: task graph, resolution, planning, the local executor and its progress display.

pub mod graph;
pub mod launcher;
pub mod plan;
pub mod progress;
mod remote_units;
pub mod resolve;
pub mod run;
pub mod slots;
pub mod workdir;

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
