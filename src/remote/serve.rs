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

impl Default for ServerLimits {
    fn default() -> ServerLimits {
        ServerLimits {
            max_connections: 1024,
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
