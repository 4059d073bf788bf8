//! Fetching files from a Hugging Face dataset repository (or a mirror with the same paths),
//! reliably: timeouts, retries with backoff and jitter on transient errors (honouring
//! `Retry-After`), no retry on 401/403/404, resume of partial files with `Range`, and a
//! body shorter than its `Content-Length` never counted as a file.

use crate::meter::ByteMeter;
use std::io::{Seek, Write};
use std::path::Path;
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
#[derive(Debug)]
pub enum FetchError {
    /// The server says the file is not there or not ours to read (401, 403, 404, 410, and
    /// other 4xx): retrying will not help.
    Permanent(String),
    /// Still failing after every retry (connection errors, timeouts, 408, 429, 5xx, cut-off
    /// bodies), the endpoint is known to be unreachable, or this machine could not write the
    /// file (a full disk): worth trying in a later run.
    Transient(String),
    /// Stopped by Ctrl-C.
    Cancelled,
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Permanent(m) | FetchError::Transient(m) => f.write_str(m),
            FetchError::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// What one attempt gave, when not the file.
enum Attempt {
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
        let http = reqwest::Client::builder()
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
    /// only when this returns `Ok`.
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
        let local = |e: std::io::Error| Attempt::Local(format!("writing {}: {e}", dest.display()));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dest)
            .map_err(local)?;
        let mut have = file.metadata().map_err(local)?.len();
        let mut request = self.http.get(url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if have > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
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
        let status = response.status();
        match status.as_u16() {
            // The server ignored the range: start over.
            200 if have > 0 => {
                file.set_len(0).map_err(local)?;
                have = 0;
            }
            200 => {}
            206 => {
                let start = response
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(content_range_start);
                if start != Some(have) {
                    file.set_len(0).map_err(local)?;
                    return Err(Attempt::Retry {
                        error: format!(
                            "{url}: asked to resume at byte {have}, the server answered a \
                             different range; starting over"
                        ),
                        after: None,
                        unreachable: false,
                    });
                }
            }
            416 => {
                // `bytes */TOTAL`: when we hold exactly TOTAL bytes, the file was whole already
                // (a run stopped between the download and storing it).
                let total = response
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes */"))
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if total == Some(have) {
                    return Ok(have);
                }
                // What we hold does not fit the file any more: start over.
                file.set_len(0).map_err(local)?;
                return Err(Attempt::Retry {
                    error: format!("{url}: the partial download does not fit; starting over"),
                    after: None,
                    unreachable: false,
                });
            }
            408 | 429 | 500..=599 => {
                return Err(Attempt::Retry {
                    error: format!("{url}: HTTP {status}"),
                    after: retry_after(response.headers()),
                    unreachable: false,
                });
            }
            401 | 403 => {
                return Err(Attempt::Permanent(format!(
                    "{url}: HTTP {status}: not allowed; if the dataset is gated or private, \
                     set HF_TOKEN to a token that can read it"
                )));
            }
            _ if !status.is_success() => {
                return Err(Attempt::Permanent(format!("{url}: HTTP {status}")));
            }
            _ => {}
        }
        let expected = response.content_length().map(|n| n + have);
        file.seek(std::io::SeekFrom::Start(have)).map_err(local)?;
        let mut writer = std::io::BufWriter::with_capacity(256 * 1024, &mut file);
        let mut response = response;
        let mut size = have;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    writer.write_all(&chunk).map_err(local)?;
                    size += chunk.len() as u64;
                    meter.add_done(chunk.len() as u64);
                }
                Ok(None) => break,
                Err(e) => {
                    // Keep what arrived: the next attempt resumes after it.
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
        if let Some(expected) = expected
            && size != expected
        {
            return Err(Attempt::Retry {
                error: format!("{url}: the response ended after {size} of {expected} bytes"),
                after: None,
                unreachable: false,
            });
        }
        // No fsync here: the file is checked, then moved into the blob store, which syncs
        // it before it counts (a crash before that leaves a partial file to resume).
        Ok(size)
    }
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
