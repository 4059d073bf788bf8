//! One dataset file → one task output: fetched into a partial file that survives the run
//! (so a later attempt or run resumes it), checked, then moved into the blob store.

use super::DownloadConfig;
use crate::hf::FetchError;
use crate::exec::blocking_if;
use crate::exec::workdir::output_from_file;
use crate::stages::{ExecCtx, TaskOutcome};
use crate::store::records::now_ms;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// Times a file that arrived whole but failed its check is fetched again (a proxy that cut
/// it short) before the task gives up for this run.
const CONTENT_RETRIES: u32 = 2;

/// What a fetched file must look like; returns why not.
pub type Check = fn(&Path, &str) -> Result<(), String>;

/// Partial files being written now. Two stages may fetch the same file at once (two
/// download stages over overlapping objects); the second gets a file of its own.
static CLAIMED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// A partial file claimed by one fetch; released (the file itself stays) when dropped.
struct Partial(PathBuf);

impl Drop for Partial {
    fn drop(&mut self) {
        CLAIMED.lock().expect("not poisoned").remove(&self.0);
    }
}

/// Where the partial download of a URL waits. Not under `tmp/` (cleared when a run
/// starts): a killed run's partial files are resumed by the next.
fn partial_path(ctx: &ExecCtx, url: &str) -> std::io::Result<Partial> {
    let dir = ctx.store.partial_dir();
    std::fs::create_dir_all(&dir)?;
    let name = blake3::hash(url.as_bytes()).to_hex();
    let mut claimed = CLAIMED.lock().expect("not poisoned");
    let mut path = dir.join(format!("{name}.part"));
    let mut n = 1;
    while !claimed.insert(path.clone()) {
        path = dir.join(format!("{name}.{n}.part"));
        n += 1;
    }
    Ok(Partial(path))
}

/// Fetches `path` of the dataset into output `name`.
pub async fn fetch_output(
    ctx: &ExecCtx,
    config: &DownloadConfig,
    path: &str,
    name: String,
    check: Check,
) -> TaskOutcome {
    let started_ms = now_ms();
    let clock = Instant::now();
    let client = match config.client() {
        Ok(c) => c,
        Err(e) => return TaskOutcome::Aborted(e),
    };
    let url = client.url(path);
    let claim = match partial_path(ctx, &url) {
        Ok(p) => p,
        Err(e) => return TaskOutcome::Aborted(format!("creating a partial file: {e}")),
    };
    let partial = claim.0.clone();
    let mut checks_failed = 0;
    loop {
        match client
            .fetch_url_to_file(&url, &partial, &ctx.meter, &ctx.kill)
            .await
        {
            Ok(_) => {}
            Err(FetchError::Permanent(error) | FetchError::NotFound(error)) => {
                crate::hf::forget_partial(&partial);
                return TaskOutcome::Failed {
                    error,
                    stderr: None,
                };
            }
            Err(FetchError::Transient(error)) => return TaskOutcome::Aborted(error),
            Err(FetchError::Cancelled) => return TaskOutcome::Cancelled,
        }
        let store = ctx.store.clone();
        let file = partial.clone();
        let what = format!("{path} from {url}");
        let output_name = name.clone();
        let stored = blocking_if(true, move || {
            check(&file, &what)?;
            output_from_file(&store, output_name, &file)
        })
        .await;
        match stored {
            Ok(output) => {
                crate::hf::forget_partial(&partial);
                return TaskOutcome::Success {
                    outputs: vec![output],
                    stdout: None,
                    stderr: None,
                    started_ms,
                    duration_ms: clock.elapsed().as_millis() as u64,
                };
            }
            Err(error) => {
                // A whole response that is not what it should be: fetch it afresh.
                crate::hf::forget_partial(&partial);
                checks_failed += 1;
                if checks_failed > CONTENT_RETRIES {
                    // Not recorded as the item's failure: the file is fine on a good
                    // mirror, and the key does not name the mirror.
                    return TaskOutcome::Aborted(error);
                }
                tracing::debug!("{error}; fetching it again");
            }
        }
    }
}

/// A gzip-compressed JSON object (`object-paths.json.gz`, metadata shards).
pub fn check_json_gz(file: &Path, what: &str) -> Result<(), String> {
    super::objaverse::check_json_gz_file(file, what).map_err(|e| format!("{e:#}"))
}

/// A binary glTF: magic `glTF`, version 2, and a length field equal to the file's size.
pub fn check_glb(file: &Path, what: &str) -> Result<(), String> {
    use std::io::Read;
    let mut header = [0u8; 12];
    let mut f =
        std::fs::File::open(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    let size = f.metadata().map_err(|e| e.to_string())?.len();
    if size < 12 || f.read_exact(&mut header).is_err() || &header[..4] != b"glTF" {
        let start = String::from_utf8_lossy(&header[..(size as usize).min(12)]).to_string();
        return Err(format!(
            "{what} is not a binary glTF (GLB) file: it starts `{}`",
            start.escape_debug()
        ));
    }
    let version = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let length = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes")) as u64;
    if version != 2 {
        return Err(format!("{what} is glTF version {version}, not 2"));
    }
    if length != size {
        return Err(format!(
            "{what} says it is {length} bytes long but {size} bytes arrived"
        ));
    }
    Ok(())
}
