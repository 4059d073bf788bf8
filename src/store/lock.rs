//! The cache lock: one orchestrator process at a time.
//!
//! sled takes its own exclusive lock, but its error ("could not acquire lock") does not say
//! who holds it. We take an advisory lock on `LOCK` first and write our pid and command line
//! into it, so a second process can name the holder. The kernel releases the lock when the
//! holder dies, even by SIGKILL, so a stale `LOCK` file never blocks anyone.

use anyhow::{Context, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

#[derive(Debug)]
pub struct CacheLock {
    file: File,
}

impl CacheLock {
    pub fn acquire(cache_dir: &Path) -> Result<CacheLock> {
        let path = cache_dir.join("LOCK");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening the cache lock {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut contents = String::new();
                let _ = file.read_to_string(&mut contents);
                return Err(CacheInUse {
                    dir: cache_dir.to_path_buf(),
                    holder: describe_holder(&contents),
                    page: contents
                        .lines()
                        .find_map(|l| l.strip_prefix("page "))
                        .map(|u| u.trim().to_string()),
                }
                .into());
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        let argv: Vec<String> = std::env::args().collect();
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        writeln!(file, "pid {}", std::process::id())?;
        writeln!(file, "command {}", argv.join(" "))?;
        file.flush()?;
        Ok(CacheLock { file })
    }
}

impl CacheLock {
    /// Says, in the lock file, where the holder's page is: `mvc ui` on a held cache points
    /// there.
    pub fn announce_page(&self, url: &str) -> Result<()> {
        let mut file = &self.file;
        file.seek(SeekFrom::End(0))?;
        writeln!(file, "page {url}")?;
        file.flush()?;
        Ok(())
    }
}

/// Another mvc process holds the cache: who, and where its page is if it serves one.
#[derive(Debug, thiserror::Error)]
#[error(
    "the cache {} is in use by another mvc process ({holder}); wait for it to finish, stop it, \
     or pass --cache DIR to use another cache (a run started with --listen answers `mvc status \
     --connect URL` while it runs)",
    dir.display()
)]
pub struct CacheInUse {
    pub dir: std::path::PathBuf,
    pub holder: String,
    /// The holder's page (`mvc run --ui`, a coordinator), from its `page URL` line.
    pub page: Option<String>,
}

fn describe_holder(contents: &str) -> String {
    let pid = contents
        .lines()
        .find_map(|l| l.strip_prefix("pid "))
        .map(str::trim);
    let command = contents
        .lines()
        .find_map(|l| l.strip_prefix("command "))
        .map(str::trim);
    match (pid, command) {
        (Some(pid), Some(cmd)) => format!("pid {pid}: {cmd}"),
        (Some(pid), None) => format!("pid {pid}"),
        // The holder has locked but not yet written its pid.
        _ => "pid unknown: it is just starting".to_string(),
    }
}
