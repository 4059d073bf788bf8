//! Running: task graph, resolution, planning, the local executor and its progress display.

pub mod graph;
pub mod plan;
pub mod progress;
pub mod resolve;
pub mod run;
pub mod slots;
pub mod workdir;
