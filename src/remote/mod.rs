//! Distribution (ARCHITECTURE.md, "Distribution"): the coordinator inside `mvc run --listen`, the
//! `mvc worker` client, and the Slurm launcher that starts workers as batch jobs.
//!
//! One protocol, HTTP/JSON under [`protocol::API`]. The coordinator owns the index and the
//! blob store; workers keep their own blob cache and never open the index.

pub mod auth;
pub mod client;
pub mod coordinator;
pub mod lease_loop;
pub mod protocol;
pub mod reach;
pub mod serve;
pub mod slurm;
pub mod tls;
pub mod worker;

/// Where the lines for people of a worker or the Slurm launcher go: the command chooses
/// (stderr, or nowhere with `-q`), so that nothing under `remote/` prints by itself.
#[derive(Clone)]
pub struct Say(pub std::sync::Arc<dyn Fn(&str) + Send + Sync>);

impl Say {
    pub fn line(&self, line: &str) {
        (self.0)(line)
    }
}

impl std::fmt::Debug for Say {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Say")
    }
}
