//! The coordinator's HTTP side (axum): workers register, lease units, send heartbeats and
//! results, and move blobs. It owns no scheduling of its own: lease requests and results go
//! to the run's scheduler as [`SchedMsg`]s, so local slots and remote workers draw from one
//! queue and every result is recorded by the one process that holds the index.

use super::auth::Token;
use super::protocol::{
    API, Complete, ErrorReply, Fail, Heartbeat, HeartbeatReply, LeaseReply, LeaseRequest,
    PipelineText, Register, Registered, SESSION_HEADER, Status, WorkerStatus,
};
use crate::exec::workers::{Refused, Reply, WorkerHub};
pub use crate::exec::workers::{SchedMsg, Shared, WorkerEntry};
use crate::store::Store;
use crate::store::blobs::BlobError;
use crate::task::Digest;
use anyhow::{Context, Result, bail};
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use indexmap::IndexMap;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

pub use super::protocol::JSON_LIMIT;

/// How the coordinator listens and treats its workers.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    pub listen: SocketAddr,
    pub token: Option<Token>,
    /// A worker silent this long loses its units (they go back to the queue).
    pub lease_timeout: Duration,
    /// Leases of one task before it counts as failed in this run.
    pub max_attempts: u32,
    /// The largest blob a worker may upload.
    pub blob_limit: u64,
    /// HTTPS with this certificate; plain HTTP when `None` (loopback).
    pub tls: Option<super::tls::ServerTls>,
    /// Connections, idle time and handshakes.
    pub limits: super::serve::ServerLimits,
    /// More routes on the same address, with their own checks (the page, `ui`).
    pub more_routes: Option<Router>,
}

impl CoordinatorConfig {
    pub fn new(listen: SocketAddr, token: Option<Token>) -> CoordinatorConfig {
        CoordinatorConfig {
            listen,
            token,
            lease_timeout: Duration::from_secs(30),
            max_attempts: 3,
            blob_limit: 64 << 30,
            tls: None,
            limits: super::serve::ServerLimits::default(),
            more_routes: None,
        }
    }

    /// Heartbeats come a few times per lease timeout, so one lost request costs nothing.
    pub fn heartbeat(&self) -> Duration {
        (self.lease_timeout / 4).max(Duration::from_millis(100))
    }
}

pub struct Coordinator {
    pub config: CoordinatorConfig,
    pub store: Arc<Store>,
    /// The pipeline's name, digest and text (replaced between runs of `mvc serve`).
    pipeline: Mutex<(String, Digest, PipelineText)>,
    to_sched: mpsc::UnboundedSender<SchedMsg>,
    pub shared: Mutex<Shared>,
    /// Blobs this process has hashed and found whole: `HEAD` and `PUT` trust them without
    /// reading them again (a full `GET` hashes every time anyway).
    verified: Mutex<HashSet<Digest>>,
    /// The address actually bound (port 0 picks one).
    pub addr: SocketAddr,
}

impl Coordinator {
    /// Binds the address and starts serving; returns the coordinator and the receiving end
    /// of its scheduler messages.
    pub async fn start(
        config: CoordinatorConfig,
        store: Arc<Store>,
        pipeline_name: &str,
        pipeline: PipelineText,
    ) -> Result<(Arc<Coordinator>, mpsc::UnboundedReceiver<SchedMsg>)> {
        if config.token.is_none() && !config.listen.ip().is_loopback() {
            bail!(
                "--listen {}: a coordinator on an address other than loopback needs a token; \
                 give --token-file FILE (or set MVC_TOKEN) here and on every worker",
                config.listen
            );
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("--listen {}: cannot listen there", config.listen))?;
        let addr = listener.local_addr()?;
        let (to_sched, rx) = mpsc::unbounded_channel();
        let digest = Digest::of(pipeline.text.as_bytes());
        let coordinator = Arc::new(Coordinator {
            config,
            store,
            pipeline: Mutex::new((pipeline_name.to_string(), digest, pipeline)),
            to_sched,
            shared: Mutex::new(Shared::default()),
            verified: Mutex::default(),
            addr,
        });
        let mut app = router(coordinator.clone());
        if let Some(more) = coordinator.config.more_routes.clone() {
            app = app.merge(more);
        }
        let tls = coordinator
            .config
            .tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
        tokio::spawn(super::serve::serve(
            listener,
            app,
            tls,
            coordinator.config.limits,
        ));
        Ok((coordinator, rx))
    }

    pub fn pipeline_digest(&self) -> Digest {
        self.pipeline.lock().unwrap().1
    }

    /// The pipeline the next run serves (`mvc serve` after the file changed).
    pub fn set_pipeline(&self, name: &str, path: &std::path::Path, text: String) {
        let digest = Digest::of(text.as_bytes());
        let source = PipelineText {
            path: path.display().to_string(),
            text,
        };
        *self.pipeline.lock().unwrap() = (name.to_string(), digest, source);
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        match self.config.tls {
            Some(_) => "https",
            None => "http",
        }
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme(), self.addr)
    }

    /// Its workers and queue, as `GET /v1/status` answers (and the page shows).
    pub fn status(&self) -> Status {
        let shared = self.shared.lock().unwrap();
        let now = Instant::now();
        Status {
            pipeline: self.pipeline.lock().unwrap().0.clone(),
            workers: shared
                .workers
                .iter()
                .map(|(id, w)| WorkerStatus {
                    id: *id,
                    name: w.register.name.clone(),
                    host: w.register.host.clone(),
                    slots: w.register.slots,
                    labels: w.register.labels.clone(),
                    blender: w.register.blender.clone(),
                    running: w.holding.values().cloned().collect(),
                    units_done: w.units_done,
                    last_seen_ms_ago: now.duration_since(w.last_seen).as_millis() as u64,
                })
                .collect(),
            queued: shared.queued,
            finished: shared.finished,
            blobs_sent: shared.blobs_sent,
            blobs_received: shared.blobs_received,
        }
    }

    /// The Slurm jobs whose worker registered, sorted.
    pub fn slurm_jobs(&self) -> Vec<String> {
        let mut jobs: Vec<String> = self
            .shared
            .lock()
            .unwrap()
            .slurm_jobs_registered
            .iter()
            .cloned()
            .collect();
        jobs.sort();
        jobs
    }

    /// The fingerprint workers pin, when the certificate is self-signed.
    pub fn fingerprint(&self) -> Option<super::tls::Fingerprint> {
        self.config
            .tls
            .as_ref()
            .filter(|t| t.self_signed)
            .map(|t| t.fingerprint)
    }
}

impl WorkerHub for Coordinator {
    fn store(&self) -> &Arc<Store> {
        &self.store
    }
    fn lease_timeout(&self) -> Duration {
        self.config.lease_timeout
    }
    fn heartbeat(&self) -> Duration {
        self.config.heartbeat()
    }
    fn max_attempts(&self) -> u32 {
        self.config.max_attempts
    }
    fn pipeline_digest(&self) -> Digest {
        Coordinator::pipeline_digest(self)
    }
    fn shared(&self) -> &Mutex<Shared> {
        &self.shared
    }
}

fn router(c: Arc<Coordinator>) -> Router {
    let api = Router::new()
        .route("/workers", post(register))
        .route("/lease", post(lease))
        .route("/heartbeat", post(heartbeat))
        .route("/units/{id}/complete", post(complete))
        .route("/units/{id}/fail", post(fail))
        .route("/pipelines/{digest}", get(pipeline_text))
        .route("/status", get(status))
        .route(
            "/blobs/{digest}",
            get(get_blob).head(get_blob).put(put_blob),
        )
        .layer(DefaultBodyLimit::max(JSON_LIMIT))
        .layer(axum::middleware::from_fn_with_state(c.clone(), authorize));
    Router::new().nest(API, api).with_state(c)
}

/// Why the coordinator refuses a request. Each variant is one HTTP status; its message says
/// what to do, and the worker shows it. Handlers return `Result<Response, ApiError>` and use
/// `?`: [`IntoResponse`] makes the `{"error": …}` reply ([`ErrorReply`]) in this one place.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request cannot be read, or names something malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no token, or the wrong one.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: a worker id used from another session than the one that registered it.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such worker, blob or pipeline here.
    #[error("{0}")]
    NotFound(String),
    /// 409: the report contradicts what the scheduler knows (a unit leased to another).
    #[error("{0}")]
    Conflict(String),
    /// 413: a blob over the coordinator's limit.
    #[error("{0}")]
    TooLarge(String),
    /// 416: a `Range` outside the blob (its size goes into `Content-Range`).
    #[error("the range is not within the blob's {size} bytes")]
    RangeOutside { size: u64 },
    /// 503: the run is over, or ended before the report was recorded.
    #[error("{0}")]
    Unavailable(String),
    /// 500: this machine failed (a file it could not read or write).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RangeOutside { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn internal(error: impl std::fmt::Display) -> ApiError {
        ApiError::Internal(error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let content_range = match &self {
            ApiError::RangeOutside { size } => {
                HeaderValue::from_str(&format!("bytes */{size}")).ok()
            }
            _ => None,
        };
        let mut response = (
            status,
            axum::Json(ErrorReply {
                error: self.to_string(),
            }),
        )
            .into_response();
        if let Some(value) = content_range {
            response.headers_mut().insert(header::CONTENT_RANGE, value);
        }
        response
    }
}

/// Every request carries `Authorization: Bearer TOKEN` when the coordinator has a token.
async fn authorize(State(c): State<Arc<Coordinator>>, request: Request, next: Next) -> Response {
    if let Some(token) = &c.config.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| token.matches(g)) {
            return ApiError::Unauthorized(
                "missing or wrong token: give the coordinator's token with --token-file or \
                 MVC_TOKEN"
                    .into(),
            )
            .into_response();
        }
    }
    next.run(request).await
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("unreadable request: {e}")))
}

/// The hash of the session secret a request carries.
fn session_of(headers: &HeaderMap) -> Result<Digest, ApiError> {
    match headers.get(SESSION_HEADER).map(|v| v.as_bytes()) {
        Some(secret) if secret.len() >= 32 => Ok(Digest::of(secret)),
        _ => Err(ApiError::BadRequest(format!(
            "the request carries no session ({SESSION_HEADER}); the worker's mvc is older \
             than the coordinator's: update it"
        ))),
    }
}

async fn register(
    State(c): State<Arc<Coordinator>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let register: Register = parse_json(&body)?;
    let session = session_of(&headers)?;
    let mut shared = c.shared.lock().unwrap();
    if let Some(job) = &register.slurm_job {
        shared.slurm_jobs_registered.insert(job.clone());
    }
    shared.next_worker += 1;
    // Ids are per coordinator process, so a restarted coordinator never mistakes an old
    // worker id for a new worker: ids start from a random base.
    let id = (u64::from(fastrand::u32(..)) << 20) + shared.next_worker;
    tracing::info!(
        "worker {} ({}) registered with {}",
        register.name,
        register.host,
        register.slots
    );
    shared.workers.insert(
        id,
        WorkerEntry {
            register,
            session,
            last_seen: Instant::now(),
            heartbeat: None,
            holding: IndexMap::new(),
            units_done: 0,
        },
    );
    Ok(axum::Json(Registered {
        worker: id,
        heartbeat_ms: c.config.heartbeat().as_millis() as u64,
        lease_timeout_ms: c.config.lease_timeout.as_millis() as u64,
    })
    .into_response())
}

/// Notes that a worker is alive; `Err` (404) when it is not registered here, 403 when the
/// request comes from another session than the worker's.
fn touch(c: &Coordinator, worker: u64, session: Digest) -> Result<(), ApiError> {
    let mut shared = c.shared.lock().unwrap();
    match shared.workers.get_mut(&worker) {
        Some(w) if w.session == session => {
            w.last_seen = Instant::now();
            Ok(())
        }
        Some(_) => Err(ApiError::Forbidden(format!(
            "worker {worker} is another session's; register to get an id of your own"
        ))),
        None => Err(ApiError::NotFound(format!(
            "worker {worker} is not registered here (the coordinator restarted?); register again"
        ))),
    }
}

async fn lease(
    State(c): State<Arc<Coordinator>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let request: LeaseRequest = parse_json(&body)?;
    touch(&c, request.worker, session_of(&headers)?)?;
    if c.shared.lock().unwrap().finished {
        let reply = LeaseReply {
            unit: None,
            finished: true,
        };
        return Ok(axum::Json(reply).into_response());
    }
    let wait = Duration::from_millis(request.wait_ms.min(60_000));
    let (reply, answer) = oneshot::channel();
    let sent = c.to_sched.send(SchedMsg::Lease {
        worker: request.worker,
        free: request.free,
        deadline: Instant::now() + wait,
        reply,
    });
    if sent.is_err() {
        return Ok(axum::Json(LeaseReply::default()).into_response());
    }
    // The scheduler answers by the deadline while a run is going; between runs (or while
    // the run plans) nobody answers and the request ends empty a little after it.
    let unit = tokio::time::timeout(wait + Duration::from_secs(1), answer)
        .await
        .ok()
        .and_then(|r| r.ok())
        .flatten();
    let finished = unit.is_none() && c.shared.lock().unwrap().finished;
    Ok(axum::Json(LeaseReply { unit, finished }).into_response())
}

async fn heartbeat(
    State(c): State<Arc<Coordinator>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let beat: Heartbeat = parse_json(&body)?;
    let session = session_of(&headers)?;
    touch(&c, beat.worker, session)?;
    let mut shared = c.shared.lock().unwrap();
    // A unit is this worker's if this process leased it to the worker, or if the previous
    // process leased it to the worker's session and holds it for its report.
    let cancel: Vec<u64> = beat
        .running
        .iter()
        .copied()
        .filter(|u| {
            shared.leased.get(u) != Some(&beat.worker) && shared.earlier.get(u) != Some(&session)
        })
        .collect();
    if let Some(w) = shared.workers.get_mut(&beat.worker) {
        w.heartbeat = Some((Instant::now(), beat.running));
    }
    Ok(axum::Json(HeartbeatReply { cancel }).into_response())
}

async fn ask_scheduler(
    c: &Coordinator,
    msg: SchedMsg,
    answer: oneshot::Receiver<Reply>,
) -> Result<Response, ApiError> {
    if c.to_sched.send(msg).is_err() {
        return Err(ApiError::Unavailable("the run is over".into()));
    }
    match answer.await {
        Ok(Ok(message)) => Ok(axum::Json(serde_json::json!({ "ok": message })).into_response()),
        Ok(Err((Refused::Conflict, message))) => Err(ApiError::Conflict(message)),
        Ok(Err((Refused::BadRequest, message))) => Err(ApiError::BadRequest(message)),
        Err(_) => Err(ApiError::Unavailable(
            "the run ended before this was recorded; send it again".into(),
        )),
    }
}

async fn complete(
    State(c): State<Arc<Coordinator>>,
    Path(unit): Path<u64>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    relay(
        &c,
        &headers,
        &body,
        |body: &Complete| body.worker,
        |body, session, reply| SchedMsg::Complete {
            unit,
            body,
            session,
            reply,
        },
    )
    .await
}

async fn fail(
    State(c): State<Arc<Coordinator>>,
    Path(unit): Path<u64>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    relay(
        &c,
        &headers,
        &body,
        |body: &Fail| body.worker,
        |body, session, reply| SchedMsg::Fail {
            unit,
            body,
            session,
            reply,
        },
    )
    .await
}

/// A worker's report about a unit, handed to the scheduler with the sender's session,
/// whose answer is the reply. The scheduler takes it only from the session the unit was
/// leased to: a worker that registered again after a coordinator restart still reports
/// its old units, under a new id but the same session.
async fn relay<B: serde::de::DeserializeOwned>(
    c: &Coordinator,
    headers: &HeaderMap,
    body: &[u8],
    worker: impl FnOnce(&B) -> u64,
    message: impl FnOnce(B, Digest, oneshot::Sender<Reply>) -> SchedMsg,
) -> Result<Response, ApiError> {
    let body: B = parse_json(body)?;
    let session = session_of(headers)?;
    let _ = touch(c, worker(&body), session);
    let (reply, answer) = oneshot::channel();
    ask_scheduler(c, message(body, session, reply), answer).await
}

async fn pipeline_text(
    State(c): State<Arc<Coordinator>>,
    Path(digest): Path<String>,
) -> Result<Response, ApiError> {
    let pipeline = c.pipeline.lock().unwrap().clone();
    let asked = digest.parse::<Digest>().map_err(ApiError::BadRequest)?;
    if asked != pipeline.1 {
        return Err(ApiError::NotFound(format!(
            "this coordinator runs another pipeline than {}",
            asked.short()
        )));
    }
    Ok(axum::Json(pipeline.2).into_response())
}

async fn status(State(c): State<Arc<Coordinator>>) -> Response {
    axum::Json(c.status()).into_response()
}

/// The digest of a blob path: validated before any path is built from it.
fn blob_digest(text: &str) -> Result<Digest, ApiError> {
    text.parse::<Digest>().map_err(ApiError::BadRequest)
}

/// Whether blob `digest` is here and whole. One that is not is quarantined (removed), so
/// it reads as missing from then on: a worker then reports its input gone, the run reruns
/// its producer, and that upload stores good bytes again.
async fn blob_is_whole(c: &Arc<Coordinator>, digest: &Digest) -> Result<bool, ApiError> {
    if c.verified.lock().unwrap().contains(digest) && c.store.blobs().size(digest).is_some() {
        return Ok(true);
    }
    let (store, d) = (c.store.clone(), *digest);
    let checked = tokio::task::spawn_blocking(move || store.blobs().verify(&d))
        .await
        .map_err(ApiError::internal)?;
    match checked {
        Ok(true) => {
            c.verified.lock().unwrap().insert(*digest);
            Ok(true)
        }
        Ok(false) => {
            quarantine(c, digest);
            Ok(false)
        }
        Err(BlobError::Missing(_)) => Ok(false),
        Err(e) => Err(ApiError::internal(e)),
    }
}

fn quarantine(c: &Coordinator, digest: &Digest) {
    tracing::warn!("blob {digest} is damaged in this cache: removed, so that it is made again");
    c.verified.lock().unwrap().remove(digest);
    c.store.blobs().quarantine(digest);
}

/// `GET` (and `HEAD`) a blob, whole or one `Range: bytes=A-B`. A blob is never served as
/// good when it is not: `HEAD` and ranges check it first, a whole `GET` hashes it while
/// sending and breaks off before its last bytes when it does not match its name.
async fn get_blob(
    State(c): State<Arc<Coordinator>>,
    method: Method,
    Path(digest): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let digest = blob_digest(&digest)?;
    let missing = || ApiError::NotFound(format!("no blob {digest} here"));
    if (method == Method::HEAD || headers.contains_key(header::RANGE))
        && !blob_is_whole(&c, &digest).await?
    {
        return Err(missing());
    }
    let path = c.store.blobs().path(&digest);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
        Err(e) => return Err(ApiError::internal(e)),
    };
    let size = file.metadata().await.map_err(ApiError::internal)?.len();
    let range = match headers.get(header::RANGE).map(|v| parse_range(v, size)) {
        None => None,
        Some(Some(r)) => Some(r),
        Some(None) => return Err(ApiError::RangeOutside { size }),
    };
    let (start, end) = range.unwrap_or((0, size));
    let mut builder = Response::builder()
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if range.is_some() {
        builder = builder.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", end.saturating_sub(1)),
        );
    }
    if method == Method::HEAD {
        return Ok(builder.body(Body::empty()).expect("valid response"));
    }
    {
        let mut shared = c.shared.lock().unwrap();
        shared.blobs_sent.0 += 1;
        shared.blobs_sent.1 += end - start;
    }
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    if range.is_none() {
        let body = Body::from_stream(hashed_while_sent(c.clone(), digest, file, size));
        return Ok(builder.body(body).expect("valid response"));
    }
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(ApiError::internal)?;
    }
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(end - start), 1 << 20);
    Ok(builder
        .body(Body::from_stream(stream))
        .expect("valid response"))
}

/// A blob's bytes in chunks, hashed on the way: the last chunk is held back until the hash
/// is known, and when it does not match, the blob is quarantined and the body ends in an
/// error instead (the receiver never holds the whole of a damaged blob).
fn hashed_while_sent(
    c: Arc<Coordinator>,
    digest: Digest,
    file: tokio::fs::File,
    size: u64,
) -> impl futures_util::Stream<Item = std::io::Result<axum::body::Bytes>> {
    struct Sending {
        c: Arc<Coordinator>,
        file: tokio::fs::File,
        hasher: blake3::Hasher,
        left: u64,
    }
    let start = Sending {
        c,
        file,
        hasher: blake3::Hasher::new(),
        left: size,
    };
    futures_util::stream::try_unfold(start, move |mut s| async move {
        use tokio::io::AsyncReadExt;
        if s.left == 0 {
            return Ok(None);
        }
        let mut chunk = vec![0u8; s.left.min(1 << 20) as usize];
        s.file.read_exact(&mut chunk).await?;
        s.hasher.update(&chunk);
        s.left -= chunk.len() as u64;
        if s.left == 0 && Digest::from_hasher(&s.hasher) != digest {
            quarantine(&s.c, &digest);
            return Err(std::io::Error::other(format!(
                "blob {digest} is damaged here; it was removed"
            )));
        }
        Ok(Some((axum::body::Bytes::from(chunk), s)))
    })
}

/// `bytes=A-B`, `bytes=A-` or `bytes=-N` within `size`, as a half-open range.
fn parse_range(value: &HeaderValue, size: u64) -> Option<(u64, u64)> {
    let spec = value.to_str().ok()?.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (size.saturating_sub(n), size)
        }
        (a, "") => (a.parse().ok()?, size),
        (a, b) => (
            a.parse().ok()?,
            b.parse::<u64>().ok()?.saturating_add(1).min(size),
        ),
    };
    (start < end && start < size).then_some((start, end))
}

/// `PUT` a blob: hashed while it arrives, stored only if it hashes to its name. Idempotent:
/// a blob already here and whole is acknowledged without reading the body; a damaged one is
/// replaced by the bytes sent.
async fn put_blob(
    State(c): State<Arc<Coordinator>>,
    Path(digest): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let digest = blob_digest(&digest)?;
    if c.store.blobs().size(&digest).is_some() && blob_is_whole(&c, &digest).await? {
        // Read and drop the body (up to the blob limit) before answering: a reply while the
        // worker is still sending makes its write fail with a broken pipe, which it would
        // take for a network failure.
        use futures_util::StreamExt;
        let mut stream = body.into_data_stream();
        let mut read = 0u64;
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len() as u64;
            if read > c.config.blob_limit {
                break;
            }
        }
        return Ok(axum::Json(serde_json::json!({ "ok": "already here" })).into_response());
    }
    let mut writer = c
        .store
        .blobs()
        .writer(&digest)
        .map_err(ApiError::internal)?;
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
        if writer.size() + chunk.len() as u64 > c.config.blob_limit {
            return Err(ApiError::TooLarge(format!(
                "blobs larger than {} bytes are refused",
                c.config.blob_limit
            )));
        }
        // Small synchronous writes into the page cache: cheaper than a hop to the blocking
        // pool per chunk.
        writer.write(&chunk).map_err(ApiError::internal)?;
    }
    let finished = tokio::task::spawn_blocking(move || writer.finish())
        .await
        .map_err(ApiError::internal)?;
    let size = match finished {
        Ok(size) => size,
        Err(BlobError::Corrupt { digest, actual }) => {
            return Err(ApiError::BadRequest(format!(
                "the bytes sent hash to {actual}, not {digest}: refused"
            )));
        }
        Err(e) => return Err(ApiError::internal(e)),
    };
    c.verified.lock().unwrap().insert(digest);
    let mut shared = c.shared.lock().unwrap();
    shared.blobs_received.0 += 1;
    shared.blobs_received.1 += size;
    drop(shared);
    Ok(axum::Json(serde_json::json!({ "ok": size })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_within_the_size() {
        let r = |s: &str| parse_range(&HeaderValue::from_str(s).unwrap(), 100);
        assert_eq!(r("bytes=0-9"), Some((0, 10)));
        assert_eq!(r("bytes=90-"), Some((90, 100)));
        assert_eq!(r("bytes=-5"), Some((95, 100)));
        assert_eq!(r("bytes=95-200"), Some((95, 100)));
        assert_eq!(r("bytes=100-"), None);
        assert_eq!(r("items=0-1"), None);
    }
}
