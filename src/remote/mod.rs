//! Distribution (DESIGN.md §6): the coordinator inside `mvc run --listen`, the
//! `mvc worker` client, and the Slurm launcher that starts workers as batch jobs.
//!
//! One protocol, HTTP/JSON under [`protocol::API`]. The coordinator owns the index and the
//! blob store; workers keep their own blob cache and never open the index.

pub mod auth;
pub mod client;
pub mod coordinator;
pub mod protocol;
pub mod reach;
pub mod serve;
pub mod slurm;
pub mod tls;
pub mod worker;
