//! Fetching files from a Hugging Face dataset repository (or a mirror with the same paths),
//! reliably: timeouts, retries with backoff and jitter on transient errors (honouring
//! `Retry-After`), no retry on 401/403/404, resume of partial files with `Range`, and a
//! body shorter than its `Content-Length` never counted as a file.
//!
//! A partial file is resumed only as the same file: its validators (the response's strong
//! `ETag`, and the SHA-256 the hub gives LFS files as `X-Linked-Etag` on its redirect) are
//! kept beside it, sent back as `If-Range` and compared, so that a repository whose `main`
//! moved between two runs never has two versions joined. A file whose SHA-256 is known is
//! checked against it once whole.

use crate::meter::ByteMeter;
use sha2::Digest as _;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The Hugging Face hub, unless `HF_ENDPOINT` names a mirror.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// How hard to try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub retries: u32,
    /// The first backoff; each later one doubles, up to `max_backoff`, with ±25% jitter.
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub connect_timeout: Duration,
    /// Longest silence while reading a response.
    pub read_timeout: Duration,
    /// How long an endpoint found unreachable is taken to stay so (requests meanwhile fail
    /// at once, with one message); after that the next request tries again. A worker lives
    /// through many runs, and one outage must not fail its downloads for ever.
    pub remember_unreachable: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            retries: 5,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            remember_unreachable: Duration::from_secs(30),
        }
    }
}

/// Why a fetch gave up.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The server says the file is not there (404, 410): retrying will not help, and a
    /// caller for whom the file is optional goes on without it.
    #[error("{0}")]
    NotFound(String),
    /// The server says the file is not ours to read (401, 403), or refuses it otherwise
    /// (other 4xx, too many redirects): retrying will not help.
    #[error("{0}")]
    Permanent(String),
    /// Still failing after every retry (connection errors, timeouts, 408, 429, 5xx, cut-off
    /// bodies), the endpoint is known to be unreachable, or this machine could not write the
    /// file (a full disk): worth trying in a later run.
    #[error("{0}")]
    Transient(String),
    /// Stopped by Ctrl-C.
    #[error("cancelled")]
    Cancelled,
}

/// What one attempt gave, when not the file.
enum Attempt {
    /// 404 or 410.
    NotFound(String),
    Permanent(String),
    /// This machine failed (the disk is full, the cache is not writable): not the file's
    /// fault, and no retry in the next seconds helps; the item fails for this run only.
    Local(String),
    Retry {
        error: String,
        /// The server's `Retry-After`.
        after: Option<Duration>,
        /// The server could not be reached at all.
        unreachable: bool,
    },
}

/// What a response's status says about a download in progress.
enum Answer {
    /// The file was whole already (a run stopped between the download and storing it).
    AlreadyWhole(u64),
    /// Its body is the file (or the rest of it), whose SHA-256 is `sha256` when known.
    Body { sha256: Option<String> },
}

/// A download's file as the last attempt left it: its bytes so far, and the validators that
/// say which version of the file they are from.
struct Partial {
    dest: PathBuf,
    file: std::fs::File,
    have: u64,
    validators: PathBuf,
    known: Option<Validator>,
}

impl Partial {
    /// Opens `dest` to resume it; bytes that nothing says the version of are dropped.
    fn open(dest: &Path) -> Result<Partial, Attempt> {
        let local = |e| local_error(dest, e);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dest)
            .map_err(local)?;
        let mut have = file.metadata().map_err(local)?.len();
        let validators = validator_path(dest);
        let known = match have {
            0 => None,
            _ => read_validator(&validators),
        };
        if have > 0 && known.is_none() {
            // Nothing says which version of the file these bytes are from: start over.
            file.set_len(0).map_err(local)?;
            have = 0;
        }
        Ok(Partial {
            dest: dest.to_path_buf(),
            file,
            have,
            validators,
            known,
        })
    }

    fn local(&self, e: std::io::Error) -> Attempt {
        local_error(&self.dest, e)
    }

    /// Drops the bytes held: the next attempt starts over.
    fn start_over(&mut self) -> Result<(), Attempt> {
        self.file.set_len(0).map_err(|e| self.local(e))?;
        self.have = 0;
        Ok(())
    }

    /// What the response's status means for the bytes held: resume, start over, done, or
    /// an error (retried or permanent).
    async fn answer(
        &mut self,
        url: &str,
        response: &reqwest::Response,
        linked_sha256: Option<String>,
    ) -> Result<Answer, Attempt> {
        let known_sha256 = self.known.as_ref().and_then(|k| k.sha256.clone());
        let status = response.status();
        let sha256 = known_sha256.clone().or_else(|| linked_sha256.clone());
        let retry = |error: String| Attempt::Retry {
            error,
            after: None,
            unreachable: false,
        };
        let content_range = response
            .headers()
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok());
        match status.as_u16() {
            // A whole file: the server ignored the range, or `If-Range` said the file is
            // not the one the partial bytes came from. Start over, noting what this is.
            200 => {
                if self.have > 0 {
                    self.start_over()?;
                }
                let validator = Validator {
                    etag: strong_etag(response.headers()),
                    sha256: linked_sha256.clone(),
                };
                write_validator(&self.validators, &validator).map_err(|e| self.local(e))?;
                Ok(Answer::Body {
                    sha256: linked_sha256,
                })
            }
            // A range of a file that is not the one the partial bytes came from (a server
            // that does not honour `If-Range`): start over.
            206 if matches!((&known_sha256, &linked_sha256), (Some(before), Some(now)) if before != now) =>
            {
                self.start_over()?;
                let _ = std::fs::remove_file(&self.validators);
                Err(retry(format!(
                    "{url}: the file changed on the hub since its partial download began; \
                     starting over"
                )))
            }
            206 if content_range.and_then(content_range_start) != Some(self.have) => {
                let have = self.have;
                self.start_over()?;
                Err(retry(format!(
                    "{url}: asked to resume at byte {have}, the server answered a different \
                     range; starting over"
                )))
            }
            206 => Ok(Answer::Body { sha256 }),
            416 => {
                // `bytes */TOTAL`: when we hold exactly TOTAL bytes, the file was whole already
                // (a run stopped between the download and storing it).
                let total = content_range
                    .and_then(|v| v.strip_prefix("bytes */"))
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if total == Some(self.have) {
                    if let Some(expected) = &sha256 {
                        verify_sha256(url, &self.dest, &mut self.file, expected).await?;
                    }
                    return Ok(Answer::AlreadyWhole(self.have));
                }
                // What we hold does not fit the file any more: start over.
                self.start_over()?;
                Err(retry(format!(
                    "{url}: the partial download does not fit; starting over"
                )))
            }
            408 | 429 | 500..=599 => Err(Attempt::Retry {
                error: format!("{url}: HTTP {status}"),
                after: retry_after(response.headers()),
                unreachable: false,
            }),
            401 | 403 => Err(Attempt::Permanent(format!(
                "{url}: HTTP {status}: not allowed; if the dataset is gated or private, set \
                 HF_TOKEN to a token that can read it"
            ))),
            404 | 410 => Err(Attempt::NotFound(format!("{url}: HTTP {status}"))),
            _ if !status.is_success() => Err(Attempt::Permanent(format!("{url}: HTTP {status}"))),
            _ => Ok(Answer::Body { sha256 }),
        }
    }

    /// Appends the response's body to the bytes held; its size in the end. A body that
    /// breaks off keeps what arrived, so that the next attempt resumes after it.
    async fn receive(
        &mut self,
        url: &str,
        mut response: reqwest::Response,
        meter: &ByteMeter,
    ) -> Result<u64, Attempt> {
        let local = |e| local_error(&self.dest, e);
        let expected = response.content_length().map(|n| n + self.have);
        self.file
            .seek(std::io::SeekFrom::Start(self.have))
            .map_err(local)?;
        let mut writer = std::io::BufWriter::with_capacity(256 * 1024, &mut self.file);
        let mut size = self.have;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    writer.write_all(&chunk).map_err(local)?;
                    size += chunk.len() as u64;
                    meter.add_done(chunk.len() as u64);
                }
                Ok(None) => break,
                Err(e) => {
                    writer.flush().map_err(local)?;
                    return Err(Attempt::Retry {
                        error: format!(
                            "{url}: the response broke off after {size}{} bytes: {}",
                            expected.map(|n| format!(" of {n}")).unwrap_or_default(),
                            error_chain(&e)
                        ),
                        after: None,
                        unreachable: false,
                    });
                }
            }
        }
        writer.flush().map_err(local)?;
        drop(writer);
        match expected {
            Some(expected) if size != expected => Err(Attempt::Retry {
                error: format!("{url}: the response ended after {size} of {expected} bytes"),
                after: None,
                unreachable: false,
            }),
            _ => Ok(size),
        }
    }
}

/// This machine's failure while writing a download.
fn local_error(dest: &Path, e: std::io::Error) -> Attempt {
    Attempt::Local(format!("writing {}: {e}", dest.display()))
}

/// A client for one repository (a dataset or a model) at one revision.
#[derive(Debug)]
pub struct HubClient {
    http: reqwest::Client,
    endpoint: String,
    /// `{endpoint}/datasets/{dataset}/resolve/{revision}/` or `{endpoint}/{model}/resolve/{revision}/`
    base: String,
    token: Option<String>,
    policy: RetryPolicy,
    /// Set once the endpoint could not be reached after every retry: requests in the next
    /// `remember_unreachable` fail at once with this message instead of each retrying (one
    /// clear error, not one per object).
    unreachable: Mutex<Option<(String, std::time::Instant)>>,
}

impl HubClient {
    /// A client for `repo` at `revision` on `endpoint` (`HF_ENDPOINT`), sending `token`
    /// (`HF_TOKEN`) as a bearer token when set. `repo` is the path of the repository on the
    /// hub: `datasets/<owner>/<name>` for a dataset, `<owner>/<name>` for a model.
    pub fn new(
        endpoint: &str,
        repo: &str,
        revision: &str,
        token: Option<String>,
        policy: RetryPolicy,
    ) -> anyhow::Result<HubClient> {
        let endpoint = endpoint.trim_end_matches('/').to_string();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            anyhow::bail!(
                "HF_ENDPOINT `{endpoint}` is not an http:// or https:// URL; set it to the \
                 hub ({DEFAULT_ENDPOINT}) or a mirror's base URL"
            );
        }
        // Redirects are followed by hand: the hub's redirect of an LFS file carries its
        // SHA-256 (`X-Linked-Etag`), which the response it leads to does not.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(policy.connect_timeout)
            .read_timeout(policy.read_timeout)
            .user_agent(concat!("mvc/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(HubClient {
            http,
            base: format!("{endpoint}/{repo}/resolve/{revision}/"),
            endpoint,
            token: token.filter(|t| !t.is_empty()),
            policy,
            unreachable: Mutex::new(None),
        })
    }

    /// The client `HF_ENDPOINT` and `HF_TOKEN` ask for, for a repository path as
    /// [`HubClient::new`] takes it.
    pub fn from_env(repo: &str, revision: &str, policy: RetryPolicy) -> anyhow::Result<Self> {
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        HubClient::new(
            &endpoint,
            repo,
            revision,
            std::env::var("HF_TOKEN").ok(),
            policy,
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Downloads `url` (a dataset file from [`HubClient::url`], or a Cap3D CSV) into `dest`,
    /// resuming from what `dest` already holds. Returns the file's size. `dest` is complete
    /// only when this returns `Ok`; the caller then removes it with [`forget_partial`]
    /// (or moves it, then calls that), which also removes the validators kept beside it.
    pub async fn fetch_url_to_file(
        &self,
        url: &str,
        dest: &Path,
        meter: &ByteMeter,
        kill: &CancellationToken,
    ) -> Result<u64, FetchError> {
        let mut failures = 0u32;
        loop {
            {
                let mut known = self.unreachable.lock().expect("not poisoned");
                match &*known {
                    Some((why, since)) if since.elapsed() < self.policy.remember_unreachable => {
                        return Err(FetchError::Transient(why.clone()));
                    }
                    Some(_) => *known = None,
                    None => {}
                }
            }
            let attempt = tokio::select! {
                a = self.attempt(url, dest, meter) => a,
                _ = kill.cancelled() => return Err(FetchError::Cancelled),
            };
            let (error, after, unreachable) = match attempt {
                Ok(size) => return Ok(size),
                Err(Attempt::NotFound(error)) => return Err(FetchError::NotFound(error)),
                Err(Attempt::Permanent(error)) => return Err(FetchError::Permanent(error)),
                Err(Attempt::Local(error)) => {
                    return Err(FetchError::Transient(format!(
                        "{error}; this is this machine's problem, not the file's: free disk \
                         space or make the cache writable, then run again (nothing was \
                         recorded as failed)"
                    )));
                }
                Err(Attempt::Retry {
                    error,
                    after,
                    unreachable,
                }) => (error, after, unreachable),
            };
            failures += 1;
            if failures > self.policy.retries {
                let message = format!(
                    "{error} (gave up after {failures} attempt{})",
                    if failures == 1 { "" } else { "s" }
                );
                if unreachable {
                    let why = format!(
                        "cannot reach HF_ENDPOINT {}: {message}; check HF_ENDPOINT (unset, it \
                         is {DEFAULT_ENDPOINT}) and the network",
                        self.endpoint
                    );
                    // Downloads failing at the same moment all report the first message.
                    let mut known = self.unreachable.lock().expect("not poisoned");
                    let (why, _) = known
                        .get_or_insert_with(|| (why, std::time::Instant::now()))
                        .clone();
                    return Err(FetchError::Transient(why));
                }
                return Err(FetchError::Transient(message));
            }
            let wait = after.unwrap_or_else(|| self.backoff(failures));
            tracing::debug!("{error}; retrying in {wait:?}");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = kill.cancelled() => return Err(FetchError::Cancelled),
            }
        }
    }

    /// Exponential backoff with ±25% jitter, so that many clients failing together do not
    /// come back together.
    fn backoff(&self, failures: u32) -> Duration {
        let base = self
            .policy
            .backoff
            .saturating_mul(1u32 << (failures - 1).min(16))
            .min(self.policy.max_backoff);
        base.mul_f64(0.75 + fastrand::f64() * 0.5)
    }

    async fn attempt(&self, url: &str, dest: &Path, meter: &ByteMeter) -> Result<u64, Attempt> {
        let mut partial = Partial::open(dest)?;
        let (response, linked_sha256) = self
            .get_following_redirects(url, partial.have, &partial.known)
            .await?;
        let sha256 = match partial.answer(url, &response, linked_sha256).await? {
            Answer::AlreadyWhole(size) => return Ok(size),
            Answer::Body { sha256 } => sha256,
        };
        let size = partial.receive(url, response, meter).await?;
        if let Some(expected) = &sha256 {
            verify_sha256(url, dest, &mut partial.file, expected).await?;
        }
        // No fsync here: the file is checked, then moved into the blob store, which syncs
        // it before it counts (a crash before that leaves a partial file to resume).
        Ok(size)
    }

    /// `GET url` (from byte `have`, if the validators allow), following up to five
    /// redirects by hand. Returns the last response and the SHA-256 an `X-Linked-Etag`
    /// gave on the way.
    async fn get_following_redirects(
        &self,
        url: &str,
        have: u64,
        known: &Option<Validator>,
    ) -> Result<(reqwest::Response, Option<String>), Attempt> {
        let mut at = url.to_string();
        let mut linked = None;
        for _ in 0..=5 {
            let mut request = self.http.get(&at);
            // The token goes to the hub only, never to where it redirects (a CDN).
            if let Some(token) = &self.token
                && at.starts_with(&self.endpoint)
            {
                request = request.bearer_auth(token);
            }
            if have > 0 {
                request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
                if let Some(etag) = known.as_ref().and_then(|k| k.etag.as_deref()) {
                    request = request.header(reqwest::header::IF_RANGE, etag);
                }
            }
            let response = request.send().await.map_err(|e| match e.is_connect() {
                // Said of the endpoint, not of the file: every download gets the same message.
                true => Attempt::Retry {
                    unreachable: true,
                    error: error_chain(&e.without_url()),
                    after: None,
                },
                false => Attempt::Retry {
                    unreachable: false,
                    error: format!("{url}: {}", error_chain(&e)),
                    after: None,
                },
            })?;
            linked = linked.or_else(|| linked_sha256(response.headers()));
            if !response.status().is_redirection() {
                return Ok((response, linked));
            }
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| reqwest::Url::parse(&at).ok()?.join(l).ok())
                .ok_or_else(|| {
                    Attempt::Permanent(format!(
                        "{url}: HTTP {} without a usable Location",
                        response.status()
                    ))
                })?;
            at = location.to_string();
        }
        Err(Attempt::Permanent(format!("{url}: more than 5 redirects")))
    }
}

/// Checks a whole file against the SHA-256 the hub gave; a damaged one is emptied (with its
/// validators), so the next attempt fetches it afresh.
async fn verify_sha256(
    url: &str,
    dest: &Path,
    file: &mut std::fs::File,
    expected: &str,
) -> Result<(), Attempt> {
    let local = |e: std::io::Error| Attempt::Local(format!("reading {}: {e}", dest.display()));
    let path = dest.to_path_buf();
    let actual = tokio::task::spawn_blocking(move || sha256_of(&path))
        .await
        .map_err(|e| Attempt::Local(e.to_string()))?
        .map_err(local)?;
    if actual == expected {
        return Ok(());
    }
    file.set_len(0).map_err(local)?;
    let _ = std::fs::remove_file(validator_path(dest));
    Err(Attempt::Retry {
        error: format!(
            "{url}: arrived damaged: its SHA-256 is {actual}, the hub says {expected}; \
             fetching it again"
        ),
        after: None,
        unreachable: false,
    })
}

/// Removes a partial file and what was kept beside it (once it is stored, or found bad).
pub fn forget_partial(dest: &Path) {
    let _ = std::fs::remove_file(dest);
    let _ = std::fs::remove_file(validator_path(dest));
}

/// What a partial download was begun against.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Validator {
    /// The response's strong `ETag`, sent back as `If-Range`.
    etag: Option<String>,
    /// The file's SHA-256 as the hub gave it (`X-Linked-Etag` of an LFS file).
    sha256: Option<String>,
}

/// Beside the partial file: `NAME.part.validator`.
fn validator_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(".validator");
    PathBuf::from(name)
}

fn read_validator(path: &Path) -> Option<Validator> {
    let v: Validator = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    (v.etag.is_some() || v.sha256.is_some()).then_some(v)
}

fn write_validator(path: &Path, v: &Validator) -> std::io::Result<()> {
    std::fs::write(path, serde_json::to_vec(v).expect("serialises"))
}

/// A strong `ETag` (a weak one, `W/"…"`, may not be sent as `If-Range`).
fn strong_etag(headers: &reqwest::header::HeaderMap) -> Option<String> {
    let etag = headers.get(reqwest::header::ETAG)?.to_str().ok()?.trim();
    (!etag.starts_with("W/") && !etag.is_empty()).then(|| etag.to_string())
}

/// The SHA-256 in an `X-Linked-Etag` (64 hex digits, quoted), lower case.
fn linked_sha256(headers: &reqwest::header::HeaderMap) -> Option<String> {
    let value = headers.get("x-linked-etag")?.to_str().ok()?;
    let hex = value.trim().trim_start_matches("W/").trim_matches('"');
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())).then(|| hex.to_lowercase())
}

fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(crate::text::hex(&hasher.finalize()))
}

/// `bytes N-M/T` → N.
fn content_range_start(value: &str) -> Option<u64> {
    value
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// `Retry-After` in seconds or as an HTTP date, capped at ten minutes.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let wait = match value.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let when = httpdate::parse_http_date(value.trim()).ok()?;
            when.duration_since(std::time::SystemTime::now())
                .unwrap_or_default()
        }
    };
    Some(wait.min(Duration::from_secs(600)))
}

/// An error and its causes on one line (reqwest's own message is often just "error
/// sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_and_retry_after_parse() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("items 1-2"), None);
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
    }
}
