//! Shared by the benchmarks that start a coordinator (`mvc run --listen`): where it listens,
//! and how much CPU it used.

// Each benchmark that includes this module uses part of it.
#![allow(dead_code)]

use std::time::Duration;

/// Starts `mvc run p.toml --listen LISTEN --no-local` in `dir` (plus `extra` arguments), its
/// stderr piped for [`read_url`]; returns it and the URL and fingerprint it said.
pub fn start_coordinator(
    mvc: &str,
    dir: &std::path::Path,
    listen: &str,
    extra: &[&str],
) -> (std::process::Child, String, Option<String>) {
    let mut child = std::process::Command::new(mvc)
        .args([
            "run",
            "p.toml",
            "--json",
            "-q",
            "--listen",
            listen,
            "--no-local",
        ])
        .args(extra)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (url, fingerprint) = read_url(&mut child);
    (child, url, fingerprint)
}

/// The URL the coordinator serves, and its certificate's fingerprint when it has one.
pub fn read_url(child: &mut std::process::Child) -> (String, Option<String>) {
    use std::io::{BufRead, BufReader};
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let said = loop {
        let line = lines
            .next()
            .expect("the coordinator said where it listens")
            .unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(w) = words
            .iter()
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))
        {
            let fingerprint = words
                .iter()
                .position(|w| *w == "fingerprint")
                .and_then(|i| words.get(i + 1))
                .map(|f| f.to_string());
            break (w.to_string(), fingerprint);
        }
    };
    // Keep draining stderr so the coordinator never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    said
}

/// Waits for a child and returns its exit code and CPU time (user + system).
pub fn wait_child(child: std::process::Child) -> (i32, Duration) {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value to be overwritten.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child; the Child handle is forgotten so it is not waited
    // for twice.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    std::mem::forget(child);
    assert!(pid > 0, "wait4 failed");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (
        libc::WEXITSTATUS(status),
        tv(usage.ru_utime) + tv(usage.ru_stime),
    )
}
