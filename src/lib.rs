//! mvc: a content-addressed job-graph orchestrator for multi-view CLIP consistency studies.
//!
//! The library holds everything; `src/main.rs` is the command line over it, and the tests
//! drive both.

pub mod clip;
pub mod commands;
pub mod diag;
pub mod disk;
pub mod exec;
pub mod heads;
pub mod hf;
pub mod memory;
pub mod meter;
pub mod models;
pub mod numpy_random;
pub mod pipeline;
pub mod remote;
pub mod render;
pub mod report;
pub mod resources;
pub mod signals;
pub mod stages;
pub mod store;
pub mod task;
pub mod text;
pub mod ui;
