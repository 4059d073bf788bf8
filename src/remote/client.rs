//! The HTTP client of a coordinator (reqwest): what `mvc worker` and `mvc status --connect`
//! say to it.

use super::auth::Token;
use super::protocol::{
    API, Complete, ErrorReply, Fail, Heartbeat, HeartbeatReply, JSON_LIMIT, LeaseReply,
    LeaseRequest, PipelineText, Register, Registered, SESSION_HEADER, Status,
};
use super::tls::Fingerprint;
use crate::store::blobs::{BlobError, BlobStore};
use crate::task::Digest;
use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Why a call failed, sorted by what the caller does about it.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// 401: the token is wrong or missing. Retrying cannot help.
    #[error("the coordinator refused the token (401 Unauthorized): {0}")]
    Unauthorized(String),
    /// 404 on a worker call: this coordinator does not know the worker (it restarted).
    #[error("{0}")]
    UnknownWorker(String),
    /// A blob the coordinator does not have (or removed as damaged): its producer must run
    /// again.
    #[error("{0}")]
    BlobMissing(String),
    /// A blob arrived with bytes that do not hash to its name.
    #[error("{0}")]
    BlobCorrupt(String),
    /// The coordinator's TLS certificate is not the one trusted. Retrying cannot help.
    #[error("{0}")]
    Untrusted(String),
    /// Any other answer that is not a success.
    #[error("the coordinator answered {0}: {1}")]
    Refused(StatusCode, String),
    /// No answer (not listening, connection reset, timeout): worth retrying.
    #[error("cannot reach the coordinator: {0}")]
    Network(String),
}

impl CallError {
    pub fn is_network(&self) -> bool {
        matches!(self, CallError::Network(_))
    }
}

/// How a client reaches its coordinator, beyond the URL and the token.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Trust exactly the certificate with this fingerprint (a self-signed coordinator).
    pub fingerprint: Option<Fingerprint>,
    /// A transfer on which nothing arrives for this long fails (and is tried again): a
    /// stalled blob no longer holds its unit for ever.
    pub idle: Duration,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            fingerprint: None,
            idle: Duration::from_secs(60),
        }
    }
}

#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    auth: Option<String>,
    /// This client's session secret (see [`SESSION_HEADER`]); clones share it.
    session: String,
    /// Set by the pinning verifier when it turned the coordinator's certificate down.
    untrusted: Arc<AtomicBool>,
    /// With no fingerprint, what to suggest when the certificate is refused.
    pinned: bool,
}

/// An error's text is read at most this far (error replies are one sentence).
const ERROR_TEXT_LIMIT: usize = 64 << 10;

/// Uploads are given at least this rate before they count as stalled.
const MIN_UPLOAD_RATE: u64 = 1 << 20;

/// 32 random bytes from the operating system, as hex.
fn new_session() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no random numbers from the system: {e}"))?;
    Ok(crate::text::hex(&bytes))
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Client {
    /// `url` is the coordinator's base URL, e.g. `http://10.0.0.5:7070`.
    pub fn new(url: &str, token: Option<&Token>) -> anyhow::Result<Client> {
        Client::with_options(url, token, &ClientOptions::default())
    }

    pub fn with_options(
        url: &str,
        token: Option<&Token>,
        options: &ClientOptions,
    ) -> anyhow::Result<Client> {
        let url = url.trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            anyhow::bail!("--connect {url}: give an http:// or https:// URL");
        }
        let untrusted = Arc::new(AtomicBool::new(false));
        let mut http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(options.idle)
            .tcp_nodelay(true);
        if let Some(fingerprint) = options.fingerprint {
            if !url.starts_with("https://") {
                anyhow::bail!(
                    "--connect {url}: a fingerprint pins a TLS certificate; give the https:// \
                     URL the coordinator printed"
                );
            }
            http = http.tls_backend_preconfigured(super::tls::pinned_client(
                fingerprint,
                untrusted.clone(),
            )?);
        }
        Ok(Client {
            base: format!("{url}{API}"),
            http: http.build()?,
            auth: token.map(Token::header),
            session: new_session()?,
            untrusted,
            pinned: options.fingerprint.is_some(),
        })
    }

    /// A request that got no answer: a certificate turned down is final, anything else is
    /// the network's and worth another try.
    fn unanswered(&self, e: &reqwest::Error) -> CallError {
        let text = chain(e);
        if self.untrusted.swap(false, Ordering::SeqCst) {
            return CallError::Untrusted(format!(
                "{text}; check --fingerprint (or MVC_FINGERPRINT) against the one the \
                 coordinator printed"
            ));
        }
        if !self.pinned && text.contains("invalid peer certificate") {
            return CallError::Untrusted(format!(
                "{text}; a coordinator with a self-signed certificate is trusted by its \
                 fingerprint: give --fingerprint (or MVC_FINGERPRINT) as it printed"
            ));
        }
        CallError::Network(text)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(SESSION_HEADER, &self.session);
        if let Some(auth) = &self.auth {
            r = r.header(reqwest::header::AUTHORIZATION, auth);
        }
        r
    }

    async fn check(response: reqwest::Response) -> Result<reqwest::Response, CallError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = match read_bounded(response, ERROR_TEXT_LIMIT).await {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(_) => String::new(),
        };
        let message = serde_json::from_str::<ErrorReply>(&text)
            .map(|e| e.error)
            .unwrap_or(text);
        Err(match status {
            StatusCode::UNAUTHORIZED => CallError::Unauthorized(message),
            StatusCode::NOT_FOUND => CallError::UnknownWorker(message),
            _ => CallError::Refused(status, message),
        })
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<R, CallError> {
        let body = serde_json::to_vec(body).expect("requests serialise");
        let response = self
            .request(reqwest::Method::POST, path)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| self.unanswered(&e))?;
        Self::read_json(response).await
    }

    async fn read_json<R: DeserializeOwned>(response: reqwest::Response) -> Result<R, CallError> {
        let url = response.url().path().to_string();
        let response = Self::check(response).await?;
        let bytes = read_bounded(response, JSON_LIMIT)
            .await
            .map_err(|e| match e {
                Bounded::TooLarge => CallError::Refused(
                    StatusCode::OK,
                    format!("the answer from {url} is larger than {JSON_LIMIT} bytes: refused"),
                ),
                Bounded::Network(e) => CallError::Network(chain(&e)),
            })?;
        serde_json::from_slice(&bytes).map_err(|e| {
            CallError::Refused(StatusCode::OK, format!("unreadable answer from {url}: {e}"))
        })
    }

    const CALL: Duration = Duration::from_secs(60);

    pub async fn register(&self, register: &Register) -> Result<Registered, CallError> {
        self.post("/workers", register, Self::CALL).await
    }

    pub async fn lease(&self, request: &LeaseRequest) -> Result<LeaseReply, CallError> {
        let timeout = Duration::from_millis(request.wait_ms) + Duration::from_secs(10);
        self.post("/lease", request, timeout).await
    }

    pub async fn heartbeat(&self, beat: &Heartbeat) -> Result<HeartbeatReply, CallError> {
        self.post("/heartbeat", beat, Duration::from_secs(10)).await
    }

    pub async fn complete(&self, unit: u64, body: &Complete) -> Result<(), CallError> {
        self.post::<_, serde_json::Value>(&format!("/units/{unit}/complete"), body, Self::CALL)
            .await
            .map(|_| ())
    }

    pub async fn fail(&self, unit: u64, body: &Fail) -> Result<(), CallError> {
        self.post::<_, serde_json::Value>(&format!("/units/{unit}/fail"), body, Self::CALL)
            .await
            .map(|_| ())
    }

    pub async fn pipeline(&self, digest: &Digest) -> Result<PipelineText, CallError> {
        self.get_json(&format!("/pipelines/{digest}")).await
    }

    pub async fn status(&self) -> Result<Status, CallError> {
        self.get_json("/status").await
    }

    async fn get_json<R: DeserializeOwned>(&self, path: &str) -> Result<R, CallError> {
        let response = self
            .request(reqwest::Method::GET, path)
            .timeout(Self::CALL)
            .send()
            .await
            .map_err(|e| self.unanswered(&e))?;
        Self::read_json(response).await
    }

    /// Whether the coordinator has a blob.
    pub async fn has_blob(&self, digest: &Digest) -> Result<bool, CallError> {
        let response = self
            .request(reqwest::Method::HEAD, &format!("/blobs/{digest}"))
            .timeout(Self::CALL)
            .send()
            .await
            .map_err(|e| self.unanswered(&e))?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(false),
            _ => Self::check(response).await.map(|_| true),
        }
    }

    /// Fetches a blob into `blobs`, verified while it arrives. Returns its size.
    pub async fn get_blob(&self, digest: &Digest, blobs: &BlobStore) -> Result<u64, CallError> {
        let mut response = self
            .request(reqwest::Method::GET, &format!("/blobs/{digest}"))
            .send()
            .await
            .map_err(|e| self.unanswered(&e))?;
        response = match Self::check(response).await {
            Err(CallError::UnknownWorker(message)) => return Err(CallError::BlobMissing(message)),
            other => other?,
        };
        let local = |e: std::io::Error| {
            CallError::Refused(StatusCode::OK, format!("writing blob {digest} here: {e}"))
        };
        let mut writer = blobs.writer(digest).map_err(local)?;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| CallError::Network(chain(&e)))?
        {
            writer.write(&chunk).map_err(local)?;
        }
        match writer.finish() {
            Ok(size) => Ok(size),
            Err(BlobError::Corrupt { actual, .. }) => Err(CallError::BlobCorrupt(format!(
                "blob {digest} arrived with bytes that hash to {actual}"
            ))),
            Err(e) => Err(CallError::Refused(StatusCode::OK, e.to_string())),
        }
    }

    /// Uploads `file` as blob `digest`, streaming it.
    pub async fn put_blob(&self, digest: &Digest, file: &Path) -> Result<(), CallError> {
        let f = tokio::fs::File::open(file).await.map_err(|e| {
            CallError::Refused(StatusCode::OK, format!("reading {}: {e}", file.display()))
        })?;
        let size = f.metadata().await.map(|m| m.len()).unwrap_or(0);
        let stream = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20);
        // Stalls on the way out are not seen by the idle limit (that watches what arrives):
        // the whole upload gets a time from its size at a slow rate.
        let limit = Self::CALL + Duration::from_secs(size / MIN_UPLOAD_RATE);
        let response = self
            .request(reqwest::Method::PUT, &format!("/blobs/{digest}"))
            .timeout(limit)
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .map_err(|e| self.unanswered(&e))?;
        Self::check(response).await.map(|_| ())
    }
}

enum Bounded {
    TooLarge,
    Network(reqwest::Error),
}

/// A response's body, refused once it passes `limit` bytes (whatever Content-Length says).
async fn read_bounded(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, Bounded> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(Bounded::Network)? {
        if body.len() + chunk.len() > limit {
            return Err(Bounded::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Waits before the next try: 100 ms doubling to 5 s, with jitter so that many workers
/// reconnecting to a restarted coordinator do not arrive together.
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            next: Duration::from_millis(100),
        }
    }
}

impl Backoff {
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// The next wait (with jitter), for callers that wait in their own way.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next + self.next.mul_f64(fastrand::f64() * 0.5);
        self.next = (self.next * 2).min(Duration::from_secs(5));
        delay
    }

    pub fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
}
