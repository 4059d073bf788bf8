//! Bytes moved by running work, counted for progress bars.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Bytes transferred by a stage's running tasks, for its progress bar.
#[derive(Debug, Default)]
pub struct ByteMeter {
    done: AtomicU64,
    total: AtomicU64,
}

impl ByteMeter {
    pub fn add_done(&self, n: u64) {
        self.done.fetch_add(n, Relaxed);
    }
    pub fn add_total(&self, n: u64) {
        self.total.fetch_add(n, Relaxed);
    }
    /// (done, total)
    pub fn read(&self) -> (u64, u64) {
        (self.done.load(Relaxed), self.total.load(Relaxed))
    }
}
