//! Where the page listens and who may read it: loopback by default; any other address only
//! with a token and TLS, as a coordinator's workers need. Every response gets the headers that
//! keep the page read-only and its content inert (CSP, nosniff, no referrer).

use super::UiState;
use crate::remote::auth::Token;
use crate::remote::tls::ServerTls;
use anyhow::{Context, Result, bail};
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// Scripts only from mvc's own files, no inline script, nothing from elsewhere; images may be
/// `data:` URIs (the icon). No framing.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

/// The cookie a browser keeps the token in once given `?token=`.
const COOKIE: &str = "mvc_token";

/// The routes behind the security headers and, with a token, its check.
pub fn guarded(routes: Router, token: Option<Token>) -> Router {
    let routes = match token {
        Some(token) => routes.layer(axum::middleware::from_fn(move |req, next| {
            authorize(token.clone(), req, next)
        })),
        None => routes,
    };
    routes.layer(axum::middleware::from_fn(headers))
}

async fn headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}

/// The token from a bearer header or the cookie; `?token=` once sets the cookie and sends
/// the browser to the same page without it (so it stays out of the history and the logs).
async fn authorize(token: Token, req: Request, next: Next) -> Response {
    let given = |text: &str| token.matches(text);
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(given);
    let cookie = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| {
            c.trim()
                .strip_prefix(&format!("{COOKIE}="))
                .map(str::to_string)
        })
        .any(|c| given(&c));
    if bearer || cookie {
        return next.run(req).await;
    }
    let query = req.uri().query().unwrap_or("");
    let from_query = query
        .split('&')
        .filter_map(|p| p.strip_prefix("token="))
        .find(|t| given(t));
    if let Some(secret) = from_query {
        let cookie = format!("{COOKIE}={secret}; Path=/; HttpOnly; Secure; SameSite=Strict");
        let mut res = (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, req.uri().path().to_string())],
        )
            .into_response();
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            res.headers_mut().insert(header::SET_COOKIE, v);
        }
        return res;
    }
    (
        StatusCode::UNAUTHORIZED,
        super::layout::message_page(
            "401",
            "This page needs the run's token: open it once as URL?token=TOKEN (the browser then \
             keeps it as a cookie), or reach the page through an SSH tunnel to its loopback \
             address.",
        ),
    )
        .into_response()
}

/// How the page is served.
pub struct PageListen<'a> {
    pub addr: SocketAddr,
    pub token_file: Option<&'a Path>,
    pub tls_cert: Option<&'a Path>,
    pub tls_key: Option<&'a Path>,
    /// Where a self-signed certificate is kept (the cache's).
    pub tls_dir: std::path::PathBuf,
    /// What flag named the address, for messages (`--ui`, `--listen`).
    pub flag: &'a str,
}

/// A page being served: its URL, and the certificate's fingerprint when self-signed.
pub struct Served {
    pub url: String,
    pub fingerprint: Option<String>,
}

impl Served {
    /// The line that tells a person where the page is.
    pub fn line(&self) -> String {
        match &self.fingerprint {
            None => format!("mvc: the page is at {}", self.url),
            Some(f) => format!(
                "mvc: the page is at {} (open it once with ?token=TOKEN; a self-signed \
                 certificate, SHA-256 fingerprint {f})",
                self.url
            ),
        }
    }
}

/// Binds the address (before anything runs, so an address in use stops the command) and
/// serves the page there until the process ends.
pub async fn start(how: PageListen<'_>, state: Arc<UiState>) -> Result<Served> {
    let loopback = how.addr.ip().is_loopback();
    let token = Token::load(how.token_file)?;
    if !loopback && token.is_none() {
        bail!(
            "{} {}: a page on an address other than loopback needs a token; give --token-file \
             FILE (or set MVC_TOKEN), or serve it on 127.0.0.1 and reach it through an SSH \
             tunnel",
            how.flag,
            how.addr
        );
    }
    let tls = ServerTls::choose(how.addr, how.tls_cert, how.tls_key, &how.tls_dir)?;
    let listener = tokio::net::TcpListener::bind(how.addr)
        .await
        .with_context(|| {
            format!(
                "{} {}: cannot listen there (is the address in use? choose another port)",
                how.flag, how.addr
            )
        })?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let fingerprint = tls
        .as_ref()
        .filter(|t| t.self_signed)
        .map(|t| t.fingerprint.to_string());
    let acceptor = tls
        .as_ref()
        .map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
    let app = super::router(state, token);
    tokio::spawn(crate::remote::serve::serve(
        listener,
        app,
        acceptor,
        crate::remote::serve::ServerLimits::default(),
    ));
    Ok(Served {
        url: format!("{scheme}://{addr}/"),
        fingerprint,
    })
}
