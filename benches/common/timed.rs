//! Shared by the benchmarks: running a program with its wall time and peak memory, a
//! process's resident memory now, Blender's own time in a `mvc run -v` log, numbers with
//! thousands separators, and bytes on disk.

// Each benchmark that includes this module uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Timed {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub wall: Duration,
    pub peak_rss_kb: u64,
}

/// Runs a program (mvc, snakemake) and measures its wall time and peak resident memory
/// (from wait4's rusage).
// The child is reaped by wait4 directly (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
pub fn timed(program: impl AsRef<std::ffi::OsStr>, dir: &Path, args: &[&str]) -> Timed {
    let started = Instant::now();
    let child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the program");
    let pid = child.id() as libc::pid_t;
    let out_reader = {
        let mut stdout = child.stdout.unwrap();
        std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
            s
        })
    };
    let err_reader = {
        let mut stderr = child.stderr.unwrap();
        std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut stderr, &mut s).unwrap();
            s
        })
    };
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe {
        libc::wait4(pid, &mut status, 0, &mut usage);
    }
    let wall = started.elapsed();
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Timed {
        code,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
        wall,
        peak_rss_kb: usage.ru_maxrss as u64,
    }
}

/// The benchmark's folder: `MVC_BENCH_DIR` (kept afterwards, to plan its cache again
/// later), else a temporary one, removed when the returned guard is dropped.
pub fn bench_dir() -> (std::path::PathBuf, Option<tempfile::TempDir>) {
    let (dir, guard) = match std::env::var("MVC_BENCH_DIR") {
        Ok(d) => (std::path::PathBuf::from(d), None),
        Err(_) => {
            let temp = tempfile::tempdir().expect("temp dir");
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    std::fs::create_dir_all(&dir).unwrap();
    (dir, guard)
}

/// 1234567 as "1,234,567".
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Blender's own import and render seconds, summed over the `blender: OBJECT: N views, import
/// Xs, render Ys` lines that `mvc run -v` logs for each object.
pub fn blender_seconds(log: &str) -> f64 {
    let mut own = 0.0;
    for line in log.lines().filter(|l| l.contains("blender: ")) {
        for part in ["import ", "render "] {
            if let Some(rest) = line.split(part).nth(1) {
                own += rest
                    .split('s')
                    .next()
                    .unwrap()
                    .parse::<f64>()
                    .unwrap_or(0.0);
            }
        }
    }
    own
}

/// Bytes of the files under `path` (their allocated blocks, as `du`).
pub fn du(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_dir() {
        std::fs::read_dir(path)
            .unwrap()
            .map(|e| du(&e.unwrap().path()))
            .sum()
    } else {
        meta.blocks() * 512
    }
}

/// The resident memory of a process now, in MB (0 once it is gone): `process` is a pid, or
/// `self`.
pub fn resident_mb(process: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{process}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}
