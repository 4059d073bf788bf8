//! The coordinator's connection loop: HTTP or HTTPS, with limits a cluster needs.
//!
//! `axum::serve` has no limits of its own: a client that connects and says nothing, or stops
//! reading halfway through a blob, held a connection (and a task) for ever, and any number
//! of them could. Here every connection has an idle limit on reads and writes (a stalled
//! transfer ends, and the worker tries again), a time limit on its request head and its TLS
//! handshake, and the number open at once is bounded: one over the bound is closed at once.

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The bounds of one coordinator's server.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// A connection on which nothing is read or written for this long is closed. Longer
    /// than the longest lease wait (60 s), so a waiting lease request is never cut.
    pub idle: Duration,
    /// The time a client has to finish the TLS handshake and to send a request's head.
    pub handshake: Duration,
}

/// Connections open at once by default. A worker holds up to three (a lease request that
/// waits, its heartbeats, a report), so 1,024 did not admit 1,000 workers: after a
/// coordinator restarted under them, the connections of 35 workers' reports were closed as
/// they were accepted, again and again, until the run ended (`benches/xl_coordinator.rs`).
pub const MAX_CONNECTIONS: usize = 16_384;

impl Default for ServerLimits {
    fn default() -> ServerLimits {
        ServerLimits {
            max_connections: MAX_CONNECTIONS,
            idle: Duration::from_secs(120),
            handshake: Duration::from_secs(20),
        }
    }
}

/// Serves `app` on `listener` until the process ends.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: ServerLimits,
) {
    allow_open_files(limits.max_connections);
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let mut said_full = false;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, mostly: wait for some to close.
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            if !said_full {
                tracing::warn!(
                    "{} connections are open: closing the one from {peer} (and others, until \
                     some end)",
                    limits.max_connections
                );
                said_full = true;
            }
            drop(tcp);
            continue;
        };
        said_full = false;
        let _ = tcp.set_nodelay(true);
        let (app, tls) = (app.clone(), tls.clone());
        tokio::spawn(async move {
            let _open = permit;
            let mut io = tokio_io_timeout::TimeoutStream::new(tcp);
            io.set_read_timeout(Some(limits.idle));
            io.set_write_timeout(Some(limits.idle));
            let io = Box::pin(io);
            let result = match tls {
                None => serve_connection(io, app, limits).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.handshake, acceptor.accept(io)).await {
                        Ok(Ok(stream)) => serve_connection(stream, app, limits).await,
                        Ok(Err(e)) => {
                            tracing::debug!("TLS handshake with {peer}: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake with {peer}: timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!("connection from {peer}: {e}");
            }
        });
    }
}

async fn serve_connection<I>(
    io: I,
    app: Router,
    limits: ServerLimits,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.handshake);
    builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await
}

/// Raises this process's soft limit on open files, as far as its hard limit allows, so that
/// `connections` connections fit beside the cache's files (a login shell's soft limit is
/// often 1,024, its hard limit far higher; Go's runtime raises it the same way). Says so when
/// the hard limit is too low: connections past it wait in the accept loop.
fn allow_open_files(connections: usize) {
    const BESIDE: libc::rlim_t = 1024;
    let wanted = (connections as libc::rlim_t).saturating_add(BESIDE);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given, which lives on this stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 || limit.rlim_cur >= wanted
    {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: wanted.min(limit.rlim_max),
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads the struct it is given; raising the soft limit up to the hard
    // one needs no privilege.
    let set = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0;
    if !set || raised.rlim_cur < wanted {
        tracing::warn!(
            "this process may open {} files (its hard limit), fewer than the {connections} \
             connections the coordinator allows plus its own files: with many workers, raise \
             it (`ulimit -Hn`, or LimitNOFILE= under systemd)",
            if set { raised.rlim_cur } else { limit.rlim_cur }
        );
    }
}
