//! The stat cache: a file whose size, mtime, ctime and inode are unchanged since we last
//! hashed it is not hashed again. Planning over gigabytes of inputs then costs a `stat` each.

use super::index::{Index, Tree};
use super::records::{decode, encode, now_ms};
use crate::task::Digest;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct StatEntry {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    dev: u64,
    digest: Digest,
}

/// How a digest was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hashed {
    /// Read from the stat cache.
    Cached,
    /// The file was read and hashed.
    Read,
}

/// A file modified this recently (relative to when we hash it) might change again within the
/// same timestamp tick without its mtime moving; such entries are not cached ("racy" files).
const RACY_WINDOW_NS: i128 = 1_000_000_000;

pub fn file_digest(index: &dyn Index, path: &Path) -> Result<(Digest, Hashed)> {
    let abs = std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    let meta = std::fs::metadata(&abs).with_context(|| format!("reading {}", abs.display()))?;
    let key = abs.as_os_str().as_encoded_bytes();
    let stat = |digest| StatEntry {
        size: meta.len(),
        mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
        ino: meta.ino(),
        dev: meta.dev(),
        digest,
    };
    if let Some(bytes) = index.get(Tree::Stats, key)? {
        let entry: StatEntry = decode(&bytes, "stat cache entry")?;
        if entry == stat(entry.digest) {
            return Ok((entry.digest, Hashed::Cached));
        }
    }
    let mut file = File::open(&abs).with_context(|| format!("reading {}", abs.display()))?;
    let mut hasher = blake3::Hasher::new();
    io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", abs.display()))?;
    let digest = Digest::from_hasher(&hasher);
    let entry = stat(digest);
    let now_ns = now_ms() as i128 * 1_000_000;
    if now_ns - entry.mtime_ns.max(entry.ctime_ns) > RACY_WINDOW_NS {
        index.put(Tree::Stats, key, &encode(&entry))?;
    }
    Ok((digest, Hashed::Read))
}
