//! The Blender backend: a pool of persistent Blender processes running
//! `workers/blender/render.py`, each taking one object (a GLB and its views) per job, so
//! that Blender's start-up and the model's import are paid once per object, not per view.
//!
//! A process that outlives its job's timeout is killed and replaced; the object it was
//! rendering fails with Blender's last lines of stderr. A process that dies is replaced too,
//! and the pool says how it died (the signal: SIGKILL from the OOM killer is the machine's
//! doing, not the object's), so that the render stage can try the object once more in a
//! new process before it records anything.

use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio_util::sync::CancellationToken;

/// The worker script, built into mvc so that the binary is all a machine needs.
pub const SCRIPT: &str = include_str!("../../workers/blender/render.py");

/// Lines of stderr kept per process, for failure messages.
const STDERR_TAIL: usize = 15;

/// How long a fresh Blender may take to say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The marker of the worker's answer lines (Blender prints its own lines on stdout too).
const RESULT_MARKER: &str = "MVC-RESULT ";

/// `blender` on PATH, or the given path when it names an executable file.
pub fn find_blender(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return p.is_file().then(|| p.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("blender"))
        .find(|p| p.is_file())
}

/// The first line of `blender --version` (e.g. `Blender 3.4.1`): part of every key.
pub fn blender_version(blender: &Path) -> Result<String> {
    let out = std::process::Command::new(blender)
        .arg("--version")
        .env("HOME", std::env::temp_dir())
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {} --version", blender.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("Blender"))
        .with_context(|| {
            format!(
                "{} --version did not print a version (is it Blender?)",
                blender.display()
            )
        })?;
    Ok(line.trim().to_string())
}

/// One view of a job.
#[derive(Clone, Debug, Serialize)]
pub struct JobView {
    pub id: String,
    pub azimuth: f64,
    pub polar: f64,
    pub distance: f64,
    pub fov: f64,
}

impl From<&crate::render::camera::ViewSpec> for JobView {
    fn from(v: &crate::render::camera::ViewSpec) -> JobView {
        JobView {
            id: v.id(),
            azimuth: v.azimuth,
            polar: v.polar,
            distance: v.distance,
            fov: v.fov,
        }
    }
}

/// One object to render.
#[derive(Clone, Debug, Serialize)]
pub struct Job {
    /// The object's item id (for Blender's log, and the test hook `MVC_TEST_CRASH_ON`).
    pub object: String,
    pub glb: PathBuf,
    pub out: PathBuf,
    pub resolution: u32,
    pub engine: String,
    pub samples: u32,
    pub lights: String,
    /// Keep Cycles' scene data between the job's views (same pixels, faster). The render
    /// stage always sets it; the render benchmark clears it to time the study's way.
    pub persistent_data: bool,
    pub views: Vec<JobView>,
}

/// What a job did.
#[derive(Debug)]
pub struct JobDone {
    pub views: Vec<String>,
    /// Blender's own time: resetting, importing and normalising the model.
    pub import_seconds: f64,
    /// Blender's own time rendering and writing the views.
    pub render_seconds: f64,
    /// What made the pixels: Blender's version, engine and colour management (view
    /// transform, look…), as the worker read them from the scene.
    pub produced_by: serde_json::Value,
}

/// Why a job gave no images.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The worker reported an error for this object (import failed, no mesh…).
    #[error("{0}")]
    Object(String),
    /// The process died while rendering this object: `how` (killed by SIGKILL…, exited
    /// with status N), and Blender's last lines.
    #[error("Blender {how}")]
    Died { how: String, last_lines: String },
    /// The process ran past the timeout on this object and was stopped.
    #[error("{0}")]
    TimedOut(String),
    /// Blender could not be started at all.
    #[error("{0}")]
    Start(String),
    #[error("cancelled")]
    Cancelled,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Worker {
    fn stderr_tail(&self) -> String {
        let lines = self.stderr.lock().expect("not poisoned");
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// The next answer line, skipping Blender's own output.
    async fn answer(&mut self) -> Result<serde_json::Value, String> {
        loop {
            match self.stdout.next_line().await {
                Ok(Some(line)) => {
                    if let Some(answer) = answer_in(&line) {
                        return answer;
                    }
                }
                Ok(None) => return Err("Blender exited".into()),
                Err(e) => return Err(format!("reading from Blender: {e}")),
            }
        }
    }
}

/// The worker's answer in a line of Blender's stdout, if it holds one. The marker is looked
/// for anywhere in the line, not only at its start: when an operator fails with a long
/// message, Blender prints a report cut with "... truncated" and no newline, so the answer
/// that follows shares its line (waiting for a line that starts with the marker hung every
/// such object until its timeout).
fn answer_in(line: &str) -> Option<Result<serde_json::Value, String>> {
    let at = line.find(RESULT_MARKER)?;
    Some(
        serde_json::from_str(&line[at + RESULT_MARKER.len()..])
            .map_err(|e| format!("unreadable answer from Blender: {e}")),
    )
}

/// Persistent Blender processes, started on demand, at most as many as run at once.
pub struct BlenderPool {
    blender: PathBuf,
    /// Xvfb, when the engine draws with OpenGL and no display is set: one virtual display,
    /// started with the first process, serves them all (and is started again if it dies).
    xvfb: Option<PathBuf>,
    display: tokio::sync::Mutex<Option<super::display::VirtualDisplay>>,
    /// Where the script is written and where Blender gets its own HOME.
    dir: tempfile::TempDir,
    idle: Mutex<Vec<Worker>>,
    /// Jobs sent, processes started: what tests and benchmarks count.
    pub jobs: AtomicU64,
    pub starts: AtomicU64,
}

impl std::fmt::Debug for BlenderPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlenderPool")
            .field("blender", &self.blender)
            .finish()
    }
}

impl BlenderPool {
    /// A pool running `blender` for `engine`. An OpenGL engine (EEVEE, Workbench) on a
    /// machine with no display gets a virtual one (Xvfb), or an error saying what to install.
    pub fn new(blender: PathBuf, engine: &str) -> Result<BlenderPool> {
        use super::display::{display_is_set, find_xvfb, xvfb_to_start};
        let xvfb = xvfb_to_start(engine, display_is_set(), find_xvfb)?;
        let dir = tempfile::Builder::new()
            .prefix("mvc-blender-")
            .tempdir()
            .context("creating a directory for the Blender workers")?;
        std::fs::write(dir.path().join("render.py"), SCRIPT)?;
        std::fs::create_dir_all(dir.path().join("home"))?;
        Ok(BlenderPool {
            blender,
            xvfb,
            display: tokio::sync::Mutex::new(None),
            dir,
            idle: Mutex::new(Vec::new()),
            jobs: AtomicU64::new(0),
            starts: AtomicU64::new(0),
        })
    }

    /// The virtual display's `DISPLAY` and `XAUTHORITY`, started on first use; `None` when
    /// Blender needs none or the machine has its own.
    async fn display(&self) -> Result<Option<(String, PathBuf)>, String> {
        let Some(xvfb) = &self.xvfb else {
            return Ok(None);
        };
        let mut display = self.display.lock().await;
        // A server that died (killed from outside) would fail every Blender started on it.
        if display.as_mut().is_none_or(|d| !d.is_running()) {
            let started = super::display::VirtualDisplay::start(xvfb, self.dir.path())
                .await
                .map_err(|e| format!("starting a virtual display for Blender: {e}"))?;
            tracing::info!(
                "blender: OpenGL on the virtual display {} (Xvfb, started by mvc)",
                started.display
            );
            *display = Some(started);
        }
        let d = display.as_ref().expect("started above");
        Ok(Some((d.display.clone(), d.authority.clone())))
    }

    async fn start(&self) -> Result<Worker, String> {
        let display = self.display().await?;
        let mut cmd = Command::new(&self.blender);
        if let Some((display, authority)) = display {
            cmd.env("DISPLAY", display).env("XAUTHORITY", authority);
        }
        cmd.args([
            "-b",
            "--factory-startup",
            "-noaudio",
            "--python-exit-code",
            "1",
        ])
        .arg("--python")
        .arg(self.dir.path().join("render.py"))
        .env("HOME", self.dir.path().join("home"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        super::dies_with_mvc(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.blender.display()))?;
        self.starts.fetch_add(1, Ordering::Relaxed);
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
        let stderr_lines = Arc::new(Mutex::new(VecDeque::new()));
        let tail = stderr_lines.clone();
        let mut stderr = BufReader::new(child.stderr.take().expect("piped")).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                let mut t = tail.lock().expect("not poisoned");
                if t.len() == STDERR_TAIL {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        let mut worker = Worker {
            child,
            stdin,
            stdout,
            stderr: stderr_lines,
        };
        match tokio::time::timeout(START_TIMEOUT, worker.answer()).await {
            Ok(Ok(ready)) if ready["ready"] == true => Ok(worker),
            Ok(Ok(other)) => Err(format!("Blender's worker did not start: {other}")),
            Ok(Err(e)) => Err(format!(
                "Blender's worker did not start ({e}); its last lines:\n{}",
                worker.stderr_tail()
            )),
            Err(_) => Err(format!(
                "Blender's worker was not ready after {}s",
                START_TIMEOUT.as_secs()
            )),
        }
    }

    /// Renders one object; returns the ids of the views written into `job.out`, and the
    /// time Blender spent importing and rendering. `new_process` starts a Blender for it
    /// alone instead of taking one that rendered other objects (a second try after a death).
    pub async fn run(
        &self,
        job: &Job,
        timeout: Duration,
        kill: &CancellationToken,
        new_process: bool,
    ) -> Result<JobDone, JobError> {
        let idle = match new_process {
            true => None,
            false => self.idle.lock().expect("not poisoned").pop(),
        };
        let mut worker = match idle {
            Some(w) => w,
            None => self.start().await.map_err(JobError::Start)?,
        };
        self.jobs.fetch_add(1, Ordering::Relaxed);
        let line = serde_json::to_string(job).expect("jobs serialise") + "\n";
        let exchange = async {
            worker
                .stdin
                .write_all(line.as_bytes())
                .await
                .map_err(|e| format!("writing to Blender: {e}"))?;
            worker
                .stdin
                .flush()
                .await
                .map_err(|e| format!("writing to Blender: {e}"))?;
            worker.answer().await
        };
        let answer = tokio::select! {
            a = tokio::time::timeout(timeout, exchange) => a,
            _ = kill.cancelled() => {
                let _ = worker.child.start_kill();
                return Err(JobError::Cancelled);
            }
        };
        match answer {
            Ok(Ok(answer)) => {
                // The process is fine whatever the object did: keep it.
                self.idle.lock().expect("not poisoned").push(worker);
                if answer["ok"] == true {
                    let views = answer["views"]
                        .as_array()
                        .map(|v| {
                            v.iter()
                                .filter_map(|x| x.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default();
                    let seconds = |k: &str| answer["seconds"][k].as_f64().unwrap_or(0.0);
                    Ok(JobDone {
                        views,
                        import_seconds: seconds("import"),
                        render_seconds: seconds("render"),
                        produced_by: answer["produced_by"].clone(),
                    })
                } else {
                    Err(JobError::Object(
                        answer["error"]
                            .as_str()
                            .unwrap_or("Blender reported an error")
                            .to_string(),
                    ))
                }
            }
            Ok(Err(e)) => {
                // How it ended: a process that died has its status (a signal, or an exit
                // code) a moment after its pipes close; one that is alive is killed.
                let status =
                    tokio::time::timeout(Duration::from_secs(2), worker.child.wait()).await;
                let how = match status {
                    Ok(Ok(status)) => exit_words(status),
                    _ => {
                        let _ = worker.child.start_kill();
                        format!("stopped answering ({e})")
                    }
                };
                // Let the stderr reader catch the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(JobError::Died {
                    how,
                    last_lines: worker.stderr_tail(),
                })
            }
            Err(_) => {
                let _ = worker.child.start_kill();
                Err(JobError::TimedOut(format!(
                    "Blender took longer than the timeout ({}s) on this object and was \
                     stopped; its last lines:\n{}",
                    timeout.as_secs(),
                    worker.stderr_tail()
                )))
            }
        }
    }
}

/// How a process ended, in words: "killed by SIGKILL: out of memory? …", "exited with
/// status 134".
fn exit_words(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.signal(), status.code()) {
        (Some(signal), _) => crate::signals::death(signal),
        (None, Some(code)) => format!("exited with status {code}"),
        (None, None) => "ended".to_string(),
    }
}

/// Refuses an engine name Blender does not have.
pub fn check_engine(engine: &str) -> Result<()> {
    match engine {
        "CYCLES" | "BLENDER_EEVEE" | "BLENDER_WORKBENCH" => Ok(()),
        other => bail!(
            "unknown engine `{other}`; use \"CYCLES\", \"BLENDER_EEVEE\" or \"BLENDER_WORKBENCH\""
        ),
    }
}

/// A PNG without its text and time chunks. Blender writes Cycles' render statistics
/// (`cycles.ViewLayer.render_time` …) into every file, and no setting turns them off: the
/// same pixels came out as different bytes on every run and every machine, so nothing
/// downstream of a re-rendered view could be a cache hit (early cutoff), and a view rendered
/// by a worker differed from the same view rendered here. Anything that is not a well-formed
/// PNG is returned unchanged (the embed stage reports it).
pub fn strip_png_text(png: Vec<u8>) -> Vec<u8> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if !png.starts_with(SIGNATURE) {
        return png;
    }
    let mut out = Vec::with_capacity(png.len());
    out.extend_from_slice(SIGNATURE);
    let mut at = SIGNATURE.len();
    while at + 12 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().expect("4 bytes")) as usize;
        let end = at + 12 + len;
        if end > png.len() {
            return png;
        }
        let kind = &png[at + 4..at + 8];
        if !matches!(kind, b"tEXt" | b"zTXt" | b"iTXt" | b"tIME") {
            out.extend_from_slice(&png[at..end]);
        }
        at = end;
    }
    if at != png.len() {
        return png;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_after_a_truncated_report_on_the_same_line_is_read() {
        // What Debian's Blender 3.4 prints when the glTF importer fails with a long error.
        let line = "  Fil... truncatedMVC-RESULT {\"ok\": false, \"error\": \"RuntimeError: x\"}";
        let answer = answer_in(line).expect("an answer").expect("JSON");
        assert_eq!(answer["ok"], false);
        assert_eq!(answer["error"], "RuntimeError: x");
        assert!(answer_in("Data are loaded, start creating Blender stuff").is_none());
        assert!(answer_in("MVC-RESULT {not json").unwrap().is_err());
    }

    #[test]
    fn text_chunks_are_stripped_and_pixels_kept() {
        let img = image::RgbaImage::from_pixel(3, 2, image::Rgba([10, 20, 30, 255]));
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        // A tEXt chunk after IHDR (13 data bytes: it ends at 8 + 8 + 13 + 4 = 33).
        let text = b"cycles.ViewLayer.render_time\x0000:00.01";
        let mut chunk = (text.len() as u32).to_be_bytes().to_vec();
        chunk.extend_from_slice(b"tEXt");
        chunk.extend_from_slice(text);
        chunk.extend_from_slice(&[0, 0, 0, 0]); // the stripper does not check CRCs
        let mut with_text = png[..33].to_vec();
        with_text.extend_from_slice(&chunk);
        with_text.extend_from_slice(&png[33..]);
        assert_eq!(strip_png_text(with_text), png);
        assert_eq!(strip_png_text(b"not a png".to_vec()), b"not a png");
        let truncated = png[..png.len() - 5].to_vec();
        assert_eq!(strip_png_text(truncated.clone()), truncated);
    }
}
