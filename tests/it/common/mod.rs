//! Test helpers: a scratch directory with pipeline files, and the real `mvc` binary run in it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// The JSON object printed as the last line of stdout.
    pub fn json(&self) -> serde_json::Value {
        let last = self
            .stdout
            .lines()
            .last()
            .unwrap_or_else(|| panic!("no stdout; stderr:\n{}", self.stderr));
        serde_json::from_str(last).unwrap_or_else(|e| {
            panic!(
                "last stdout line is not JSON ({e}): {last}\nstderr:\n{}",
                self.stderr
            )
        })
    }

    /// `stages.NAME.FIELD` of a run or plan JSON summary.
    /// With `--json`, a failed command's stdout: exactly one line, `{"error": …}`; its
    /// `error` object.
    pub fn json_error(&self) -> serde_json::Value {
        let lines: Vec<&str> = self.stdout.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "one line of JSON on stdout: {:?}",
            self.stdout
        );
        self.json()["error"].clone()
    }

    pub fn count(&self, stage: &str, field: &str) -> u64 {
        let json = self.json();
        json["stages"][stage][field]
            .as_u64()
            .unwrap_or_else(|| panic!("no stages.{stage}.{field} in {json}"))
    }

    pub fn assert_ok(&self) -> &Ran {
        assert_eq!(
            self.code,
            Some(0),
            "mvc failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

impl From<Output> for Ran {
    fn from(o: Output) -> Ran {
        Ran {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join(name)).unwrap()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mvc"));
        cmd.args(args)
            .current_dir(self.path())
            .env_remove("MVC_LOG")
            // Tests never reach the real hub: download tests point HF_ENDPOINT at a mirror.
            .env_remove("HF_ENDPOINT")
            .env_remove("HF_TOKEN")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `mvc ARGS` to completion with extra environment variables.
    pub fn mvc_env(&self, args: &[&str], env: &[(&str, &str)]) -> Ran {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("running mvc").into()
    }

    /// Runs `mvc ARGS` to completion.
    pub fn mvc(&self, args: &[&str]) -> Ran {
        self.command(args).output().expect("running mvc").into()
    }

    /// `mvc run FILE` to its end, leaving exactly one item of `stage` failed for good: it
    /// exits 1 the first time, 0 once the failure is an earlier run's.
    pub fn run_with_one_failed(&self, file: &str, stage: &str) -> Ran {
        let ran = self.mvc(&["run", file, "--json", "-q"]);
        assert!(
            matches!(ran.code, Some(0 | 1)),
            "{}\n{}",
            ran.stdout,
            ran.stderr
        );
        assert_eq!(ran.json()["interrupted"], false, "{}", ran.stdout);
        assert_eq!(ran.count(stage, "failed"), 1, "{}", ran.stdout);
        ran
    }

    /// Starts `mvc ARGS` in the background, output captured.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting mvc")
    }

    /// Copies the files of a folder of the repository into the same place in the sandbox,
    /// as a clone would have them.
    pub fn copy_from_repo(&self, dir: &str) {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let dst = self.path().join(dir);
        std::fs::create_dir_all(&dst).unwrap();
        for entry in std::fs::read_dir(&src).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
            }
        }
    }

    pub fn cache(&self) -> PathBuf {
        self.path().join("cache")
    }
}

/// A sandbox with what `pipelines/offline.toml` reads, the study's other pipeline files and
/// the shipped experiments (`experiments/*.toml`), as a clone would have them.
pub fn offline_sandbox() -> Sandbox {
    let sb = Sandbox::new();
    sb.copy_from_repo("pipelines/offline/objects");
    sb.copy_from_repo("pipelines");
    sb.copy_from_repo("experiments");
    sb.copy_from_repo("tests/data/clip-tiny");
    sb
}

/// An `mvc` process in the background, killed when dropped: its stderr is collected as it
/// comes, and the URL it serves is read from it (a coordinator says where it listens).
pub struct Background {
    pub child: Option<Child>,
    pub url: Option<String>,
    /// The fingerprint of its self-signed certificate, when it serves one.
    pub fingerprint: Option<String>,
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Background {
    /// Starts `cmd`; with `listens`, waits until it says the URL it serves.
    pub fn start(cmd: &mut Command, listens: bool) -> Background {
        use std::io::{BufRead, BufReader};
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting mvc");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let seen = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let words: Vec<&str> = line.split_whitespace().collect();
                if let Some(url) = words
                    .iter()
                    .find(|w| w.starts_with("http://") || w.starts_with("https://"))
                {
                    let fingerprint = words
                        .iter()
                        .position(|w| *w == "fingerprint")
                        .and_then(|i| words.get(i + 1))
                        .map(|f| f.trim_end_matches(')').to_string());
                    let _ = tx.send((url.to_string(), fingerprint));
                }
                let mut s = seen.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let said = listens.then(|| {
            rx.recv_timeout(std::time::Duration::from_secs(60))
                .unwrap_or_else(|_| {
                    panic!(
                        "mvc did not say where it listens:\n{}",
                        stderr.lock().unwrap()
                    )
                })
        });
        let (url, fingerprint) = match said {
            Some((url, fingerprint)) => (Some(url), fingerprint),
            None => (None, None),
        };
        Background {
            child: Some(child),
            url,
            fingerprint,
            stderr,
        }
    }

    /// Kills it with SIGKILL and waits for it.
    pub fn kill9(&mut self) {
        let mut c = self.child.take().expect("running");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// Waits (at most `limit`) for it to end: its stdout and the stderr seen.
    pub fn finish(&mut self, limit: std::time::Duration) -> Ran {
        use std::io::Read;
        let mut child = self.child.take().expect("running");
        let deadline = std::time::Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "mvc did not end within {limit:?}:\n{}",
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let mut stdout = String::new();
        if let Some(mut out) = child.stdout.take() {
            out.read_to_string(&mut stdout).unwrap();
        }
        // The stderr reader ends with the process.
        std::thread::sleep(std::time::Duration::from_millis(100));
        Ran {
            code: status.code(),
            stdout,
            stderr: self.stderr.lock().unwrap().clone(),
        }
    }
}

/// Sends a signal to a process.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: plain kill(2) on a child we own.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}
/// A port free on 127.0.0.1 now (for a program that takes a port, not a listener).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One plain HTTP/1.1 request to a loopback `http://` URL, sent exactly as written (no
/// client normalises the path): (status, the whole reply, head and body, as text).
pub fn raw_http(url: &str, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    let mut tcp = std::net::TcpStream::connect(host).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    write!(
        tcp,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    // Bytes, not a string: an image's body is not UTF-8.
    let mut bytes = Vec::new();
    let _ = tcp.read_to_end(&mut bytes);
    let reply = String::from_utf8_lossy(&bytes).into_owned();
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, reply)
}

pub mod blender;
pub mod browser;
pub mod fixture;
pub mod glb;
pub mod mirror;
pub mod slurm;
pub mod tmpfs;
