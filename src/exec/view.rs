//! What a run shows while it runs, as the engine sees it: counts per stage, bytes moved, and
//! notes ("grace period over…"). The engine feeds a [`RunView`]; the display itself (bars on
//! a terminal, plain lines in a log) belongs to the commands' output layer.

use super::resolve::Counts;
use super::summary::{FailureLine, RunReport};

/// A live view of a run. Stages are indexed in the order the engine expands them (the
/// workflow's `order`).
pub trait RunView: Send {
    /// New totals for the stages (a run's graph grows when deferred stages expand);
    /// `deferred[i]` says why stage `i`'s items are not known yet.
    fn set_stages(&mut self, totals: &[u64], deferred: &[Option<String>]);
    /// Bytes (done, total) per stage, for kinds that transfer data.
    fn set_bytes(&mut self, bytes: Vec<(u64, u64)>);
    /// The current counts (`counts[i]` belongs to stage `i`).
    fn update(&mut self, counts: &[Counts]);
    /// A note for whoever watches (stopping, retrying, waiting for a worker).
    fn note(&self, line: &str);
    /// A task failed in this run (called as it happens; the report at the end lists them
    /// all).
    fn failed(&mut self, _line: &FailureLine) {}
    /// The run is over.
    fn close(&mut self) {}
    /// What the run reports, once it is over (after [`RunView::close`]).
    fn finished(&mut self, _report: &RunReport) {}
}

/// No display, only the notes, on stderr: what a run shows when its caller chose no view.
#[derive(Debug, Default)]
pub struct NotesOnly;

impl RunView for NotesOnly {
    fn set_stages(&mut self, _totals: &[u64], _deferred: &[Option<String>]) {}
    fn set_bytes(&mut self, _bytes: Vec<(u64, u64)>) {}
    fn update(&mut self, _counts: &[Counts]) {}
    fn note(&self, line: &str) {
        eprintln!("{line}");
    }
}
