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

    /// Starts `mvc ARGS` in the background, output captured.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting mvc")
    }

    pub fn cache(&self) -> PathBuf {
        self.path().join("cache")
    }
}

/// Sends a signal to a process.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: plain kill(2) on a child we own.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}
pub mod fixture;
pub mod glb;
pub mod mirror;
pub mod slurm;
