//! Why a coordinator's URL gives no answer, in words a person can act on: nothing listens
//! there, its host does not resolve, nothing answers at all, or it speaks TLS to an
//! `http://` URL (or plain HTTP to an `https://` one). An HTTP client's error says none of
//! this plainly ("connection closed before message completed"), so the diagnosis is a probe
//! of its own: a TCP connection, then, when something listens, a TLS handshake (for an
//! `http://` URL) or a plain HTTP request (for an `https://` one).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long each step of the probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the probe found, as a sentence that says what to check; `None` when something
/// listens and speaks the URL's protocol (the error itself then says more than a probe can).
pub async fn explain(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let tls = parsed.scheme() == "https";
    let host_in_url = parsed.host_str()?;
    let host = host_in_url.trim_matches(['[', ']']).to_string();
    let port = parsed.port_or_known_default()?;
    // As the URL writes it (an IPv6 address in brackets), which is also what resolves.
    let at = format!("{host_in_url}:{port}");
    let addrs = match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::lookup_host(&at)).await {
        Ok(Ok(addrs)) => addrs.collect::<Vec<_>>(),
        Ok(Err(e)) => {
            return Some(format!(
                "the host `{host}` does not resolve ({e}): check the URL"
            ));
        }
        Err(_) => {
            return Some(format!(
                "looking up the host `{host}` takes over 5 s: check DNS"
            ));
        }
    };
    let Some(addr) = addrs.first().copied() else {
        return Some(format!("the host `{host}` has no address: check the URL"));
    };
    let stream = match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Some(format!(
                "nothing listens on {at} (connection refused): is the coordinator (`mvc run \
                 --listen` or `mvc serve`) running, and is this the address it printed?"
            ));
        }
        Ok(Err(e)) => return Some(format!("connecting to {at}: {e}")),
        Err(_) => {
            return Some(format!(
                "{at} does not answer within 5 s: check the address, and any firewall between \
                 this machine and the coordinator"
            ));
        }
    };
    if tls {
        speaks_plain_http(stream, &host).await.then(|| {
            format!(
                "{at} speaks plain HTTP, not TLS: connect to http://{at} (a coordinator serves \
                 HTTPS only with --tls-cert, or off loopback)"
            )
        })
    } else {
        speaks_tls(stream, &host).await.then(|| {
            format!(
                "{at} speaks TLS: connect to https://{at} (with --fingerprint as the \
                 coordinator printed it, when its certificate is self-signed)"
            )
        })
    }
}

/// Whether the server answers a TLS handshake with a certificate. The probe trusts none
/// (its pin is all zeros), so that certificate is refused, which is how it is seen.
async fn speaks_tls(stream: TcpStream, host: &str) -> bool {
    let seen = Arc::new(AtomicBool::new(false));
    let Ok(config) = super::tls::pinned_client(super::tls::Fingerprint::NONE, seen.clone()) else {
        return false;
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| rustls::pki_types::ServerName::try_from("localhost").expect("valid"));
    let _ = tokio::time::timeout(PROBE_TIMEOUT, connector.connect(name, stream)).await;
    seen.load(Ordering::SeqCst)
}

/// Whether the server answers a plain HTTP request with an HTTP status line.
async fn speaks_plain_http(mut stream: TcpStream, host: &str) -> bool {
    let request = format!("GET / HTTP/1.0\r\nHost: {host}\r\n\r\n");
    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        let mut first = [0u8; 5];
        stream.read_exact(&mut first).await?;
        Ok::<_, std::io::Error>(first)
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, exchange).await,
        Ok(Ok(first)) if &first == b"HTTP/"
    )
}
