//! Whether a failure is a full file system: the machine's state, not the item's.
//!
//! A task that fails while the cache's file system is full (its outputs, its log capture or
//! the store ran out of room) must not be recorded against its item: the next run, with room
//! again, would skip it for ever. Two signs are read: what the failure says ("No space left
//! on device", "Disk quota exceeded", errno 28 or 122), and the file system itself, which a
//! failed task leaves all but full (its partial output is still there when this is asked).

use std::path::{Path, PathBuf};

/// A file system with less free space than this (or than [`FULL_FRACTION`] of its size,
/// whichever is larger, up to [`FULL_CAP`]) counts as full when a task fails on it.
const FULL_FLOOR: u64 = 64 << 10;
const FULL_FRACTION: f64 = 0.01;
const FULL_CAP: u64 = 256 << 20;

/// Where a path's file system is mounted, what it is, and its space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    pub mount: PathBuf,
    /// `ext4`, `tmpfs`… when `/proc/self/mountinfo` says.
    pub fs_type: Option<String>,
    /// Bytes an unprivileged writer may still use.
    pub free: u64,
    pub total: u64,
}

impl Usage {
    /// Whether a failure on this file system is likely its lack of room.
    pub fn nearly_full(&self) -> bool {
        nearly_full(self.free, self.total)
    }
}

fn nearly_full(free: u64, total: u64) -> bool {
    let margin = ((total as f64 * FULL_FRACTION) as u64).clamp(FULL_FLOOR, FULL_CAP);
    free < margin
}

/// The usage of the file system holding `path` (or its nearest existing ancestor).
pub fn usage(path: &Path) -> std::io::Result<Usage> {
    let path = std::path::absolute(path)?;
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    let (free, total) = space(&existing)?;
    let mount = mount_point(&existing);
    Ok(Usage {
        fs_type: fs_type(&mount),
        mount,
        free,
        total,
    })
}

fn space(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("a path with a NUL byte"))?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let unit = stat.f_frsize as u64;
    Ok((stat.f_bavail as u64 * unit, stat.f_blocks as u64 * unit))
}

/// The topmost ancestor of `path` on the same device: its mount point.
fn mount_point(path: &Path) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let Ok(dev) = std::fs::metadata(path).map(|m| m.dev()) else {
        return path.to_path_buf();
    };
    let mut mount = path.to_path_buf();
    for ancestor in path.ancestors().skip(1) {
        match std::fs::metadata(ancestor) {
            Ok(m) if m.dev() == dev => mount = ancestor.to_path_buf(),
            _ => break,
        }
    }
    mount
}

/// The type of the file system mounted at `mount`, from `/proc/self/mountinfo` (its last
/// line for that mount point: the one on top).
fn fs_type(mount: &Path) -> Option<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let wanted = mount.to_str()?;
    table.lines().rev().find_map(|line| {
        let mut fields = line.split(' ');
        let point = fields.nth(4)?;
        let rest = line.split(" - ").nth(1)?;
        (unescape(point) == wanted).then(|| rest.split(' ').next().map(str::to_string))?
    })
}

/// mountinfo writes a space, tab, newline and backslash as an octal escape (`\040`).
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let digits: String = (0..3).filter_map(|_| chars.next()).collect();
            match u8::from_str_radix(&digits, 8) {
                Ok(byte) => out.push(byte as char),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&digits);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether an error's words say the disk (or a quota) is full.
pub fn says_full(text: &str) -> bool {
    const SIGNS: [&str; 6] = [
        "No space left on device",
        "Disk quota exceeded",
        "os error 28)",
        "os error 122)",
        "ENOSPC",
        "EDQUOT",
    ];
    SIGNS.iter().any(|s| text.contains(s))
}

/// When a task failed with `error` and the file system of `path` is full (by the error's
/// words or by its free space), the message that says so: which file system, how much is
/// free, that nothing is recorded against the item, and what the task said. `None` when the
/// disk is not why.
pub fn full_disk(path: &Path, error: &str) -> Option<String> {
    // One statvfs for every failure; the mount point and type only for a full disk.
    let roomy = || {
        let at = path
            .ancestors()
            .find(|p| p.exists())
            .unwrap_or(Path::new("/"));
        // A file system whose space cannot be read is not taken for a full one.
        space(at).map_or(true, |(free, total)| !nearly_full(free, total))
    };
    if !says_full(error) && roomy() {
        return None;
    }
    Some(format!(
        "{} (it said: {error})",
        full_message(path, usage(path).ok().as_ref())
    ))
}

/// "the file system holding PATH (tmpfs at /mnt) is full: 12.0 KiB free of 6.0 MiB; …"
fn full_message(path: &Path, usage: Option<&Usage>) -> String {
    let place = match usage {
        Some(u) => format!(
            "the file system holding {} ({}{}) is full: {} free of {}",
            path.display(),
            u.fs_type
                .as_deref()
                .map(|t| format!("{t} at "))
                .unwrap_or_default(),
            u.mount.display(),
            crate::text::human_bytes(u.free),
            crate::text::human_bytes(u.total)
        ),
        None => format!("the file system holding {} is full", path.display()),
    };
    format!(
        "{place}; make room there (or give the cache more: --cache DIR) and run again: nothing \
         is recorded against the item, the next run tries it again"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_words_of_a_full_disk_are_recognised() {
        assert!(says_full(
            "head: error writing 'standard output': No space left on device"
        ));
        assert!(says_full(
            "writing blob: Disk quota exceeded (os error 122)"
        ));
        assert!(says_full(
            "IO error: failed to write whole buffer (os error 28)"
        ));
        assert!(!says_full("exit status 1: no such mesh"));
        assert!(!says_full("os error 2)"));
    }

    #[test]
    fn the_root_file_system_has_a_mount_point_and_space() {
        let u = usage(Path::new("/")).unwrap();
        assert_eq!(u.mount, Path::new("/"));
        assert!(u.total > 0 && u.free <= u.total, "{u:?}");
        let here = usage(&std::env::temp_dir().join("does/not/exist/yet")).unwrap();
        assert!(here.total > 0);
    }

    #[test]
    fn nearly_full_scales_with_the_file_system() {
        let fs = |free, total| Usage {
            mount: PathBuf::from("/x"),
            fs_type: None,
            free,
            total,
        };
        assert!(fs(0, 6 << 20).nearly_full());
        assert!(!fs(1 << 20, 6 << 20).nearly_full());
        assert!(fs(100 << 20, 1 << 40).nearly_full());
        assert!(!fs(300 << 20, 1 << 40).nearly_full());
        assert_eq!(unescape(r"/mnt/my\040disk"), "/mnt/my disk");
    }
}
