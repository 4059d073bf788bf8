//! How `run` and `serve` listen for workers: the coordinator they start (with `--listen`,
//! or for a Slurm executor) and, under Slurm, the launcher submitting worker jobs.

use crate::pipeline::Pipeline;
use crate::resources::Resources;
use crate::store::Store;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How a run listens for workers.
#[derive(clap::Args, Clone, Debug)]
pub struct ListenArgs {
    /// Serve workers on this address (e.g. 127.0.0.1:7070, or 0.0.0.0:7070 with a token).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub auth: ServerAuth,
    /// Run nothing on this machine: every unit goes to a worker.
    #[arg(long)]
    pub no_local: bool,
    /// Seconds a silent worker keeps its units before they go back to the queue.
    #[arg(long, default_value = "30", value_name = "SECS", value_parser = super::flags::positive_seconds, allow_hyphen_values = true)]
    pub lease_timeout: Duration,
}

/// Who may talk to what mvc serves (workers, the page), and over what: the same flags for a
/// coordinator, `--ui` and `mvc ui`.
#[derive(clap::Args, Clone, Debug)]
pub struct ServerAuth {
    /// A file holding the token workers and the page ask for (else MVC_TOKEN); required when
    /// listening on anything but loopback.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Serve HTTPS with this certificate (PEM; the chain, leaf first). Without it, a server
    /// off loopback serves a self-signed certificate kept in the cache, whose fingerprint
    /// workers are given (--fingerprint).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl ServerAuth {
    /// Where a page asked for with `flag` listens, with these token and TLS settings.
    pub fn page_listen<'a>(
        &'a self,
        addr: std::net::SocketAddr,
        flag: &'a str,
        store: &Store,
    ) -> crate::ui::serve::PageListen<'a> {
        crate::ui::serve::PageListen {
            addr,
            token_file: self.token_file.as_deref(),
            tls_cert: self.tls_cert.as_deref(),
            tls_key: self.tls_key.as_deref(),
            tls_dir: store.tls_dir(),
            flag,
        }
    }
}

/// A coordinator and, under Slurm, the launcher submitting its workers.
pub struct Remote {
    pub listener: crate::exec::run::Listener,
    /// The coordinator itself (the listener sees it as the engine does).
    pub coordinator: Arc<crate::remote::coordinator::Coordinator>,
    slurm: Option<(
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<crate::remote::slurm::SlurmSummary>,
    )>,
}

impl Remote {
    /// Stops submitting workers and cancels the Slurm jobs still queued or running.
    pub async fn finish(self) {
        if let Some((stop, handle)) = self.slurm {
            stop.cancel();
            if let Ok(summary) = handle.await
                && summary.jobs_submitted > 0
            {
                eprintln!(
                    "slurm: {} worker job(s) submitted in this run (arrays {}); none left in \
                     the queue",
                    summary.jobs_submitted,
                    summary.arrays.join(", ")
                );
            }
        }
    }
}

impl ListenArgs {
    /// Starts the coordinator when --listen is given or the executor is Slurm (which
    /// listens on every address by default, so its token is then required).
    pub async fn start(
        &self,
        pipeline: &Pipeline,
        file: &Path,
        store: &Arc<Store>,
        page: Option<&Arc<crate::ui::UiState>>,
    ) -> Result<Option<Remote>> {
        use crate::remote::coordinator::{Coordinator, CoordinatorConfig};
        let addr = match (self.listen, &pipeline.slurm) {
            (Some(addr), _) => addr,
            (None, Some(_)) => "0.0.0.0:0".parse().expect("a valid address"),
            (None, None) => {
                if self.no_local {
                    anyhow::bail!(
                        "--no-local needs --listen ADDR: without workers nothing would run"
                    );
                }
                return Ok(None);
            }
        };
        let token = crate::remote::auth::Token::load(self.auth.token_file.as_deref())?;
        let mut config = CoordinatorConfig::new(addr, token.clone());
        // The page, on the coordinator's own address, behind its token and TLS.
        config.more_routes = page.map(|state| crate::ui::router(state.clone(), token));
        config.lease_timeout = self.lease_timeout;
        config.tls = crate::remote::tls::ServerTls::choose(
            addr,
            self.auth.tls_cert.as_deref(),
            self.auth.tls_key.as_deref(),
            &store.tls_dir(),
        )?;
        // The pipeline as it runs (with its overlays and overrides): workers build the same
        // stages from it.
        let source = crate::remote::protocol::PipelineText {
            path: file.display().to_string(),
            text: pipeline.workflow.source.clone(),
        };
        let (coordinator, rx) =
            Coordinator::start(config, store.clone(), &pipeline.workflow.name, source).await?;
        match coordinator.fingerprint() {
            None => eprintln!(
                "mvc: serving workers on {} (mvc worker --connect {})",
                coordinator.url(),
                coordinator.url()
            ),
            Some(fingerprint) => eprintln!(
                "mvc: serving workers on {url} over TLS with a self-signed certificate, SHA-256 \
                 fingerprint {fingerprint} (mvc worker --connect {url} --fingerprint \
                 {fingerprint})",
                url = coordinator.url()
            ),
        }
        if let Some(state) = page {
            let _ = state.coordinator.set(coordinator.clone());
            eprintln!("mvc: the run's page is at {}/", coordinator.url());
        }
        let slurm = match &pipeline.slurm {
            None => None,
            Some(cfg) => {
                let launcher = crate::remote::slurm::SlurmLauncher::new(
                    cfg.clone(),
                    pipeline,
                    coordinator.clone(),
                    self.auth.token_file.as_deref(),
                    // Slurm's lines always reach stderr, as the coordinator's own do.
                    super::output::say(super::Format::Text),
                )?;
                let stop = tokio_util::sync::CancellationToken::new();
                let handle = tokio::spawn(launcher.run(stop.clone()));
                Some((stop, handle))
            }
        };
        Ok(Some(Remote {
            listener: crate::exec::run::Listener::new(coordinator.clone(), rx),
            coordinator,
            slurm,
        }))
    }

    /// The slots of this machine: none with --no-local, or under Slurm unless
    /// `local = true`.
    pub fn local_slots(&self, pipeline: &Pipeline, slots: Resources) -> Resources {
        let slurm_only = pipeline.slurm.as_ref().is_some_and(|s| !s.local);
        if self.no_local || slurm_only {
            Resources::default()
        } else {
            slots
        }
    }
}
