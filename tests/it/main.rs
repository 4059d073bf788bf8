//! The integration tests, one binary (as ripgrep's `tests/tests.rs`): each area is a module, and
//! `common/` holds what they share (sandboxes, the local mirror, the fixture CLIP, Blender,
//! Slurm and tmpfs helpers). One binary links candle and the crate once, not once per area.
//! `tests/memory.rs` stays apart: it installs its own global allocator.
//!
//! Run one area with `cargo test --test it AREA::` (e.g. `cargo test --test it store::`).

mod common;

mod architecture;
mod clip;
mod columns;
mod distributed;
mod docs;
mod download;
mod embed;
mod end_to_end;
mod failures;
mod heads;
mod incremental;
mod interruptions;
mod object_records;
mod output;
mod pipeline_errors;
mod presence;
mod real_models;
mod render;
mod render_blender;
mod scale;
mod science;
mod slurm;
mod store;
mod summaries;
mod ui;
mod variants;
