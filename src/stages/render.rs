//! Stage kind `render`: every object of the input stage from a grid of cameras. One task per
//! (object, view), keyed by the view's camera spec (never its place in a list), so changing
//! the grid renders only the new views; all missing views of one object run as one unit.
//!
//! Backends: `blender` (a pool of persistent Blender processes running
//! `workers/blender/render.py`, one object per job) and `builtin` (the CPU rasterizer of
//! `crate::render::raster`); `auto` takes Blender when it is installed.

use super::{
    Binding, ExecCtx, ExpandCtx, Expansion, ParamCtx, PlannedItem, StageKind, TaskOutcome, UnitTask,
};
use crate::diag::AtSpan;
use crate::exec::workdir::output_from_bytes;
use crate::render::blender::{
    BlenderPool, Job, JobError, JobView, SCRIPT, blender_version, check_engine, find_blender,
};
use crate::render::camera::{ViewSpec, study_fov};
use crate::render::model::{DRACO, Model, Purpose};
use crate::render::raster::{self, LightRig, RasterSettings};
use crate::render::scene::Scene;
use crate::resources::Resources;
use crate::store::records::{Output, now_ms};
use crate::task::ParamSlice;
use anyhow::{Result, bail};
use serde::Deserialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use toml::Spanned;

/// The `kind` of its tables in pipeline files (and of its key records).
pub const KIND: &str = "render";

/// Bump when this kind's outputs change for the same inputs (the rasterizer has its own
/// version, also in every key). 2: text chunks are stripped from Blender's PNGs. 3: every
/// view's JSON says what produced its pixels (`produced_by`).
const VERSION: u32 = 3;

/// Separates the object from the view in an item id: `<uid>@<view id>`.
pub const VIEW_SEPARATOR: char = '@';

/// The `[stage.NAME]` table of a `render` stage, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenderParams {
    pub kind: String,
    #[serde(default)]
    pub inputs: Vec<Spanned<String>>,
    /// `builtin`, `blender` or `auto` (default).
    pub backend: Option<Spanned<String>>,
    /// Degrees: a list, or `{ start, step, count }`. Default: 0 to 330 in steps of 30.
    pub azimuths: Option<Spanned<Angles>>,
    /// Degrees from +Z (the study's convention). Give this or `elevations`.
    pub polar: Option<Spanned<Angles>>,
    /// Degrees above the horizon. Give this or `polar`.
    pub elevations: Option<Spanned<Angles>>,
    /// Camera distance from the object's centre (the object's longest side is 1).
    pub distance: Option<f64>,
    /// Field of view in degrees (default: the study's 35 mm lens on a 32 mm sensor).
    pub fov: Option<f64>,
    /// Image width and height in pixels (default 224).
    pub resolution: Option<u32>,
    /// `study` (default) or `four-sun`.
    pub lights: Option<Spanned<String>>,
    /// Built-in renderer: samples per pixel along each axis (default 2).
    pub supersample: Option<u32>,
    /// Blender: the executable (default: `blender` on PATH).
    pub blender_path: Option<String>,
    /// Blender: `CYCLES` (default), `BLENDER_EEVEE` or `BLENDER_WORKBENCH`.
    pub engine: Option<Spanned<String>>,
    /// Blender: render samples (default 64 for EEVEE, as the study; 32 for Cycles).
    pub samples: Option<u32>,
    /// Seconds one object may take (its check and all its views) before it is stopped and
    /// fails; both backends (default 600).
    pub timeout: Option<f64>,
}

/// Which renderer a stage uses.
#[derive(Debug)]
enum Backend {
    Builtin,
    Blender {
        path: std::path::PathBuf,
        engine: String,
        samples: u32,
        /// `blender --version`, asked once.
        version: std::sync::OnceLock<Result<String, String>>,
        /// Started on first use (a plan starts no Blender).
        pool: std::sync::OnceLock<Result<Arc<BlenderPool>, String>>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a list of angles in degrees, or { start = .., step = .., count = .. }"
)]
pub enum Angles {
    List(Vec<f64>),
    Range { start: f64, step: f64, count: u32 },
}

impl Angles {
    fn values(&self) -> Vec<f64> {
        match self {
            Angles::List(v) => v.clone(),
            Angles::Range { start, step, count } => {
                (0..*count).map(|i| start + step * i as f64).collect()
            }
        }
    }
}

#[derive(Debug)]
pub struct RenderStage {
    stage: String,
    backend: Arc<Backend>,
    /// How long one object may take, with either backend.
    timeout: std::time::Duration,
    views: Vec<ViewSpec>,
    resolution: u32,
    lights: LightRig,
    supersample: u32,
}

fn at<T>(span: std::ops::Range<usize>, message: String) -> Result<T> {
    Err(AtSpan { span, message }.into())
}

/// Blender's render engine (default `CYCLES`), checked.
fn engine(stage: &str, p: &RenderParams) -> Result<String> {
    let engine = p
        .engine
        .as_ref()
        .map(|e| e.get_ref().clone())
        .unwrap_or_else(|| "CYCLES".into());
    if let (Some(e), Err(err)) = (&p.engine, check_engine(&engine)) {
        return at(e.span(), format!("stage `{stage}`: {err}"));
    }
    Ok(engine)
}

/// Blender's samples when the stage names none: EEVEE's own default (64, what the study
/// rendered with), and 32 for Cycles (on a CPU, where 64 doubles the time for little).
fn default_samples(engine: &str) -> u32 {
    if engine == "BLENDER_EEVEE" { 64 } else { 32 }
}

/// The renderer a stage asks for: Blender (found on PATH or at `blender_path`) or the
/// built-in one; `auto` falls back to the built-in one with a warning.
fn backend(stage: &str, p: &RenderParams, engine: String) -> Result<Backend> {
    let explicit = p.blender_path.as_ref().map(std::path::PathBuf::from);
    let found = find_blender(explicit.as_deref());
    let blender = |path: std::path::PathBuf| Backend::Blender {
        path,
        engine: engine.clone(),
        samples: p.samples.unwrap_or(default_samples(&engine)),
        version: std::sync::OnceLock::new(),
        pool: std::sync::OnceLock::new(),
    };
    Ok(match p.backend.as_ref().map(|b| b.get_ref().as_str()) {
        Some("builtin") => Backend::Builtin,
        None | Some("auto") => match found {
            Some(path) => blender(path),
            None => {
                tracing::warn!(
                    "stage `{stage}`: Blender is not installed; rendering with the built-in \
                     renderer (install Blender with `apt-get install blender \
                     python3-numpy`, or set backend = \"builtin\" to silence this)"
                );
                Backend::Builtin
            }
        },
        Some("blender") => match found {
            Some(path) => blender(path),
            None => {
                let span = p.backend.as_ref().expect("given").span();
                let looked = match &explicit {
                    Some(path) => format!("`blender_path` {} is not a file", path.display()),
                    None => "there is no `blender` on PATH".to_string(),
                };
                return at(
                    span,
                    format!(
                        "stage `{stage}`: backend = \"blender\", but {looked}; install it \
                         (`apt-get install blender python3-numpy` on Debian and Ubuntu), \
                         set `blender_path`, or use backend = \"builtin\""
                    ),
                );
            }
        },
        Some(other) => {
            let span = p.backend.as_ref().expect("given").span();
            return at(
                span,
                format!(
                    "stage `{stage}`: unknown backend `{other}`; use \"builtin\", \
                     \"blender\" or \"auto\""
                ),
            );
        }
    })
}

/// The azimuths of a stage, in degrees (default 0 to 330 in steps of 30).
fn azimuths(stage: &str, azimuths: &Option<Spanned<Angles>>) -> Result<Vec<f64>> {
    Ok(match azimuths {
        None => (0..12).map(|i| i as f64 * 30.0).collect(),
        Some(a) => {
            let values = a.get_ref().values();
            if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
                return at(
                    a.span(),
                    format!("stage `{stage}`: `azimuths` must hold at least one finite angle"),
                );
            }
            values
        }
    })
}

/// The rings' polar angles (degrees from +Z), from `polar` or from `elevations`.
fn polar_angles(
    stage: &str,
    polar: &Option<Spanned<Angles>>,
    elevations: &Option<Spanned<Angles>>,
) -> Result<Vec<f64>> {
    Ok(match (polar, elevations) {
        (Some(_), Some(e)) => {
            return at(
                e.span(),
                format!(
                    "stage `{stage}`: give either `polar` (degrees from +Z, the study's \
                     convention) or `elevations` (degrees above the horizon), not both"
                ),
            );
        }
        (Some(pol), None) => {
            let values = pol.get_ref().values();
            if let Some(bad) = values.iter().find(|v| !(0.0..=180.0).contains(*v)) {
                return at(
                    pol.span(),
                    format!(
                        "stage `{stage}`: polar angle {bad} is outside [0, 180] (degrees \
                         from +Z: 0 looks straight down, 90 level, 180 up from below)"
                    ),
                );
            }
            values
        }
        (None, Some(e)) => {
            let values = e.get_ref().values();
            if let Some(bad) = values.iter().find(|v| !(-90.0..=90.0).contains(*v)) {
                return at(
                    e.span(),
                    format!("stage `{stage}`: elevation {bad} is outside [-90, 90]"),
                );
            }
            values.iter().map(|e| 90.0 - e).collect()
        }
        (None, None) => {
            bail!(
                "stage `{stage}`: give the camera rings as `polar = [20, 50, 80]` (degrees \
                 from +Z, the study's convention) or `elevations = [70, 40, 10]` (degrees \
                 above the horizon)"
            )
        }
    })
}

/// The light rig: `study` (default) or `four-sun`.
fn lights(stage: &str, lights: &Option<Spanned<String>>) -> Result<LightRig> {
    Ok(match lights.as_ref().map(|l| l.get_ref().as_str()) {
        None | Some("study") => LightRig::Study,
        Some("four-sun") => LightRig::FourSun,
        Some(other) => {
            let span = lights.as_ref().expect("given").span();
            return at(
                span,
                format!("stage `{stage}`: unknown lights `{other}`; use \"study\" or \"four-sun\""),
            );
        }
    })
}

/// Angles with duplicates removed (first kept), warning about each.
fn dedup(stage: &str, what: &str, angles: Vec<f64>) -> Vec<f64> {
    let mut out: Vec<f64> = Vec::with_capacity(angles.len());
    for a in angles {
        if out.iter().any(|b| (a - b).abs() < 1e-9) {
            tracing::warn!("stage `{stage}`: `{what}` lists {a} twice; rendering it once");
        } else {
            out.push(a);
        }
    }
    out
}

impl RenderStage {
    pub fn new(stage: &str, p: RenderParams) -> Result<RenderStage> {
        if p.inputs.len() != 1 {
            bail!(
                "stage `{stage}`: a render stage reads one input, the stage that holds the \
                 GLB files (e.g. inputs = [\"objects\"])"
            );
        }
        // Checked in the order they always were: the engine, the timeout, then the backend.
        let engine = engine(stage, &p)?;
        let timeout = p.timeout.unwrap_or(600.0);
        if !(timeout > 0.0 && timeout.is_finite()) {
            bail!("stage `{stage}`: `timeout` must be a positive number of seconds");
        }
        let backend = backend(stage, &p, engine)?;
        let azimuths = azimuths(stage, &p.azimuths)?;
        let azimuths = dedup(stage, "azimuths", azimuths);
        let polar = polar_angles(stage, &p.polar, &p.elevations)?;
        if polar.is_empty() {
            bail!("stage `{stage}`: the list of rings is empty");
        }
        let polar = dedup(stage, "polar", polar);
        let distance = p.distance.unwrap_or(1.5);
        if !(distance > 0.0 && distance.is_finite()) {
            bail!("stage `{stage}`: `distance` must be a positive number");
        }
        let fov = p.fov.unwrap_or_else(study_fov);
        if !(fov > 0.0 && fov < 180.0) {
            bail!("stage `{stage}`: `fov` must be between 0 and 180 degrees");
        }
        let resolution = p.resolution.unwrap_or(224);
        if !(8..=8192).contains(&resolution) {
            bail!("stage `{stage}`: `resolution` must be between 8 and 8192 pixels");
        }
        let lights = lights(stage, &p.lights)?;
        let supersample = p.supersample.unwrap_or(2);
        if !(1..=8).contains(&supersample) {
            bail!("stage `{stage}`: `supersample` must be between 1 and 8");
        }
        if matches!(backend, Backend::Builtin)
            && resolution * supersample > raster::MAX_SAMPLES_PER_SIDE
        {
            bail!(
                "stage `{stage}`: the built-in renderer draws resolution x supersample = {} \
                 samples a side, more than its {}: lower `resolution` or `supersample`",
                resolution * supersample,
                raster::MAX_SAMPLES_PER_SIDE
            );
        }
        // Views in the study's order: ring by ring, azimuths within a ring.
        let views = polar
            .iter()
            .flat_map(|&polar| {
                azimuths.iter().map(move |&azimuth| ViewSpec {
                    azimuth,
                    polar,
                    distance,
                    fov,
                })
            })
            .collect();
        Ok(RenderStage {
            stage: stage.to_string(),
            backend: Arc::new(backend),
            timeout: std::time::Duration::from_secs_f64(timeout),
            views,
            resolution,
            lights,
            supersample,
        })
    }

    fn lights_name(&self) -> &'static str {
        match self.lights {
            LightRig::Study => "study",
            LightRig::FourSun => "four-sun",
        }
    }

    /// One object's views in one Blender job.
    #[allow(clippy::too_many_arguments)]
    async fn render_with_blender(
        &self,
        ctx: &ExecCtx,
        pool: &BlenderPool,
        object: &str,
        glb: &[u8],
        views: &[ViewSpec],
        engine: &str,
        samples: u32,
        timeout: std::time::Duration,
        draco: bool,
    ) -> Vec<TaskOutcome> {
        let all = |outcome: &dyn Fn() -> TaskOutcome| views.iter().map(|_| outcome()).collect();
        let work = match tempfile::Builder::new()
            .prefix("render-")
            .tempdir_in(ctx.store.tmp_dir())
        {
            Ok(w) => w,
            Err(e) => {
                return all(&|| TaskOutcome::Aborted(format!("creating a work directory: {e}")));
            }
        };
        let glb_path = work.path().join("model.glb");
        let out = work.path().join("out");
        if let Err(e) = std::fs::write(&glb_path, glb).and_then(|_| std::fs::create_dir(&out)) {
            return all(&|| TaskOutcome::Aborted(format!("writing the model for Blender: {e}")));
        }
        let job = Job {
            object: object.to_string(),
            glb: glb_path,
            out: out.clone(),
            resolution: self.resolution,
            engine: engine.to_string(),
            samples,
            lights: self.lights_name().to_string(),
            persistent_data: true,
            views: views.iter().map(JobView::from).collect(),
        };
        let started_ms = now_ms();
        let clock = Instant::now();
        let outcomes = match run_with_second_chance(pool, &job, timeout, &ctx.kill).await {
            Ok(done) => {
                tracing::info!(
                    "blender: {object}: {} views, import {:.3}s, render {:.3}s",
                    done.views.len(),
                    done.import_seconds,
                    done.render_seconds
                );
                let per_view = clock.elapsed().as_millis() as u64 / views.len().max(1) as u64;
                views
                    .iter()
                    .map(|view| {
                        let path = out.join(format!("{}.png", view.id()));
                        let png = match std::fs::read(&path) {
                            Ok(png) => png,
                            Err(e) => {
                                return TaskOutcome::Failed {
                                    error: format!("Blender wrote no image for this view: {e}"),
                                    stderr: None,
                                };
                            }
                        };
                        let png = crate::render::blender::strip_png_text(png);
                        match view_outputs(
                            &ctx.store,
                            self.resolution,
                            view,
                            &done.produced_by,
                            png,
                        ) {
                            Ok(outputs) => TaskOutcome::Success {
                                outputs,
                                stdout: None,
                                stderr: None,
                                started_ms,
                                duration_ms: per_view,
                            },
                            Err(error) => TaskOutcome::Aborted(error),
                        }
                    })
                    .collect()
            }
            Err(JobError::Object(error)) => {
                fail_all(views.len(), &explain_blender_error(error, draco))
            }
            Err(JobError::Died { how, last_lines }) => {
                fail_all(views.len(), &format!("{how}. {}", useful_lines(&last_lines)))
            }
            Err(JobError::TimedOut(error)) => fail_all(views.len(), &error),
            Err(JobError::Start(error)) => all(&|| TaskOutcome::Aborted(error.clone())),
            Err(JobError::Cancelled) => all(&|| TaskOutcome::Cancelled),
        };
        // Asked before the work directory goes: a full disk is not the object's failure.
        outcomes
            .into_iter()
            .map(|o| super::unless_disk_full(ctx.store.tmp_dir(), o))
            .collect()
    }
}

/// One object's job, tried once more in a new Blender when the first one dies: a process
/// killed from outside (the OOM killer, a scheduler, a neighbour's `kill`) is not the
/// object's doing, and nothing is recorded. A second death on the same object is: its
/// failure says how both ended and what to check.
async fn run_with_second_chance(
    pool: &BlenderPool,
    job: &Job,
    timeout: std::time::Duration,
    kill: &tokio_util::sync::CancellationToken,
) -> Result<crate::render::blender::JobDone, JobError> {
    let first = match pool.run(job, timeout, kill, false).await {
        Err(JobError::Died { how, .. }) if !kill.is_cancelled() => how,
        other => return other,
    };
    tracing::warn!(
        "blender: {}: Blender {first} while rendering it; trying it again in a new Blender \
         (nothing is recorded unless it dies again)",
        job.object
    );
    match pool.run(job, timeout, kill, true).await {
        Err(JobError::Died { how, last_lines }) => {
            let oom = [&first, &how].iter().any(|h| h.contains("SIGKILL"));
            let advice = if oom {
                "An object that needs more memory than this machine has is a property of the \
                 object: render it on a machine with more (a worker), then run with \
                 --retry-failed; if another job took the memory, just run with --retry-failed"
            } else {
                "Run with --retry-failed to try it again"
            };
            let how = if how == first {
                format!("Blender {how}, twice on this object, each time in a new process. {advice}")
            } else {
                format!(
                    "Blender died twice on this object, each time in a new process: first \
                     {first}; then {how}. {advice}"
                )
            };
            Err(JobError::Died { how, last_lines })
        }
        other => other,
    }
}

/// Blender's last lines for a failure message, without Python's warnings (a NumPy
/// FutureWarning and its source line said nothing about why Blender died).
fn useful_lines(lines: &str) -> String {
    let mut kept = Vec::new();
    let mut skip_source = false;
    for line in lines.lines() {
        if skip_source && line.starts_with(char::is_whitespace) {
            skip_source = false;
            continue;
        }
        skip_source = line.contains("Warning: ");
        if !skip_source && !line.trim().is_empty() {
            kept.push(line);
        }
    }
    match kept.is_empty() {
        true => "Blender printed nothing before it ended".to_string(),
        false => format!("Blender's last lines:\n{}", kept.join("\n")),
    }
}

/// Blender's failure on an object, said plainly: a Python traceback (its importer's error
/// can be a thousand frames long) is cut to the exception it ended with, and a Draco mesh
/// in a Blender without the Draco library is named as such.
fn explain_blender_error(error: String, draco: bool) -> String {
    let meaningful: Vec<&str> = error
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Location:"))
        .collect();
    let last = meaningful.last().copied().unwrap_or("");
    if draco && error.to_ascii_lowercase().contains("draco") {
        return format!(
            "its meshes are Draco-compressed ({DRACO}) and this Blender has no Draco library \
             (Debian's package ships without libextern_draco.so): a Blender from blender.org \
             decodes them (set `blender_path`); the built-in renderer cannot. Blender said: \
             {last}"
        );
    }
    if error.contains("Traceback (most recent call last)") {
        let first = meaningful.first().copied().unwrap_or("");
        let what = first.split(": Error: Python").next().unwrap_or(first);
        return format!("Blender could not import it ({what}): {last}");
    }
    let error = error.trim();
    if error.len() > 2000 {
        let cut: String = error.chars().take(2000).collect();
        return format!("{cut}…");
    }
    error.to_string()
}

/// Sets a flag when dropped: the work on another thread that reads it stops. A unit whose
/// future is dropped (abandoned after Ctrl-C, or past its timeout) stops its thread this way.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Runs `work` on the blocking pool for at most `timeout`; past it, `stop` is set and the
/// work is abandoned (its thread ends at its next check of `stop`).
async fn bounded<T: Send + 'static>(
    timeout: std::time::Duration,
    stop: &Arc<AtomicBool>,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let _guard = StopOnDrop(stop.clone());
    match tokio::time::timeout(timeout, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("mvc's renderer stopped on this object: {e}")),
        Err(_) => Err(format!(
            "this object took longer than the timeout ({}s) and was abandoned; raise the \
             stage's `timeout` for very heavy models, then run with --retry-failed",
            timeout.as_secs_f64()
        )),
    }
}

/// Renders one object's views with the built-in renderer; one outcome per view, in order
/// (none when `stop` was set).
fn render_builtin(
    store: &crate::store::Store,
    scene: &Scene,
    views: &[ViewSpec],
    settings: &RasterSettings,
    stop: &AtomicBool,
) -> Vec<TaskOutcome> {
    views
        .iter()
        .map_while(|view| {
            let started_ms = now_ms();
            let clock = Instant::now();
            let image =
                raster::render_until(scene, view, settings, &|| stop.load(Ordering::Relaxed))?;
            let mut png = std::io::Cursor::new(Vec::new());
            if let Err(e) = image.write_to(&mut png, image::ImageFormat::Png) {
                return Some(TaskOutcome::Failed {
                    error: format!("encoding the PNG: {e}"),
                    stderr: None,
                });
            }
            let produced_by = serde_json::json!({
                "renderer": "builtin",
                "version": raster::VERSION,
                "supersample": settings.supersample,
            });
            Some(
                match view_outputs(store, settings.size, view, &produced_by, png.into_inner()) {
                    Ok(outputs) => TaskOutcome::Success {
                        outputs,
                        stdout: None,
                        stderr: None,
                        started_ms,
                        duration_ms: clock.elapsed().as_millis() as u64,
                    },
                    Err(error) => TaskOutcome::Aborted(error),
                },
            )
        })
        .collect()
}

/// The outputs of one view: its camera JSON (from mvc's camera model, the same for every
/// backend, with what produced the pixels under `produced_by`) and its PNG.
fn view_outputs(
    store: &crate::store::Store,
    resolution: u32,
    view: &ViewSpec,
    produced_by: &serde_json::Value,
    png: Vec<u8>,
) -> Result<Vec<Output>, String> {
    let mut record =
        serde_json::to_value(view.record(resolution)).expect("camera records serialise");
    record["produced_by"] = produced_by.clone();
    let camera = serde_json::to_vec_pretty(&record).expect("camera records serialise");
    let id = view.id();
    [(format!("{id}.json"), camera), (format!("{id}.png"), png)]
        .into_iter()
        .map(|(name, bytes)| output_from_bytes(store, name, bytes))
        .collect()
}

/// The same failure for every task of a unit.
fn fail_all(n: usize, error: &str) -> Vec<TaskOutcome> {
    (0..n)
        .map(|_| TaskOutcome::Failed {
            error: error.to_string(),
            stderr: None,
        })
        .collect()
}

/// The `.glb` among an input item's outputs.
fn glb_of(task: &UnitTask) -> Result<&Output, String> {
    let Some(input) = task.inputs.first() else {
        return Err("the task has no input".into());
    };
    let Some((item, result)) = input.items.first() else {
        return Err("the input item has no result".into());
    };
    let glbs: Vec<&Output> = result
        .outputs
        .iter()
        .filter(|o| o.name.to_ascii_lowercase().ends_with(".glb"))
        .collect();
    match glbs.as_slice() {
        [one] => Ok(one),
        [] => Err(format!(
            "{}/{item} has no .glb output (it has: {})",
            input.stage,
            result
                .outputs
                .iter()
                .map(|o| o.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        _ => Err(format!(
            "{}/{item} has {} .glb outputs; a render stage needs exactly one per item",
            input.stage,
            glbs.len()
        )),
    }
}

#[async_trait::async_trait]
impl StageKind for RenderStage {
    fn kind(&self) -> &'static str {
        KIND
    }
    fn version(&self) -> u32 {
        VERSION
    }
    fn resources(&self) -> Resources {
        match *self.backend {
            Backend::Builtin => Resources::ONE_CPU,
            Backend::Blender { .. } => Resources {
                cpu: 0,
                gpu: 0,
                blender: 1,
                net: 0,
            },
        }
    }
    fn shared_params(&self, _: &ParamCtx) -> Result<ParamSlice> {
        let mut slice = ParamSlice::from([
            ("resolution".to_string(), self.resolution.to_string()),
            ("lights".to_string(), self.lights_name().to_string()),
        ]);
        match &*self.backend {
            Backend::Builtin => {
                slice.insert("backend".into(), "builtin".into());
                slice.insert("renderer".into(), format!("builtin v{}", raster::VERSION));
                slice.insert("supersample".into(), self.supersample.to_string());
            }
            Backend::Blender {
                path,
                engine,
                samples,
                version,
                ..
            } => {
                let version = version
                    .get_or_init(|| blender_version(path).map_err(|e| format!("{e:#}")))
                    .clone()
                    .map_err(anyhow::Error::msg)?;
                slice.insert("backend".into(), "blender".into());
                // The renderer is Blender's version and the script's exact text.
                slice.insert(
                    "renderer".into(),
                    format!("{version}, render.py {}", blake3::hash(SCRIPT.as_bytes())),
                );
                slice.insert("engine".into(), engine.clone());
                slice.insert("samples".into(), samples.to_string());
            }
        }
        Ok(slice)
    }
    fn expand(&self, ctx: &ExpandCtx) -> Result<Expansion> {
        let (_, objects) = ctx.inputs[0];
        let mut items = Vec::with_capacity(objects.len() * self.views.len());
        for object in objects {
            for view in &self.views {
                let mut item = PlannedItem::new(format!("{object}{VIEW_SEPARATOR}{}", view.id()));
                item.source = Some(object.clone());
                item.params = ParamSlice::from([
                    ("azimuth".to_string(), view.azimuth.to_string()),
                    ("polar".to_string(), view.polar.to_string()),
                    ("distance".to_string(), view.distance.to_string()),
                    ("fov".to_string(), view.fov.to_string()),
                ]);
                items.push(item);
            }
        }
        Ok(Expansion {
            items,
            bindings: vec![Binding::Item],
        })
    }
    fn unit_group(&self, item: &str) -> Option<String> {
        // All views of one object: one scene load (one Blender call, with that backend).
        item.rsplit_once(VIEW_SEPARATOR)
            .map(|(object, _)| object.to_string())
    }
    fn export_dir(&self, item: &str) -> String {
        // `<uid>/<view>.png`: the views of an object together.
        self.unit_group(item).unwrap_or_else(|| item.to_string())
    }
    fn export_finish(&self, dir: &std::path::Path, items: &[&str]) -> Result<()> {
        // Per object, `cameras.json`: every exported view's camera, in view-id order.
        let mut by_object: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
        for item in items {
            if let Some((object, view)) = item.rsplit_once(VIEW_SEPARATOR) {
                by_object.entry(object.to_string()).or_default().push(view);
            }
        }
        for (object, mut views) in by_object {
            views.sort_unstable();
            let mut cameras = serde_json::Map::new();
            for view in views {
                let path = dir.join(&object).join(format!("{view}.json"));
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
                cameras.insert(view.to_string(), serde_json::from_str(&text)?);
            }
            std::fs::write(
                dir.join(&object).join("cameras.json"),
                serde_json::to_vec_pretty(&cameras)?,
            )?;
        }
        Ok(())
    }
    async fn execute(&self, ctx: &ExecCtx, unit: Vec<UnitTask>) -> Vec<TaskOutcome> {
        let glb = match unit.first().map(glb_of) {
            Some(Ok(output)) => output.clone(),
            Some(Err(error)) => return fail_all(unit.len(), &error),
            None => return Vec::new(),
        };
        let bytes = match ctx.store.read_output(&glb) {
            Ok(b) => b,
            Err(e) => {
                let input = &unit[0].inputs[0];
                return unit
                    .iter()
                    .map(|_| TaskOutcome::InputCorrupt {
                        stage: input.stage.clone(),
                        item: input.items[0].0.clone(),
                        error: e.to_string(),
                    })
                    .collect();
            }
        };
        let views: Vec<ViewSpec> = unit
            .iter()
            .map(|t| {
                let get = |k: &str| {
                    t.item_params
                        .get(k)
                        .and_then(|v| v.parse::<f64>().ok())
                        .unwrap_or(f64::NAN)
                };
                ViewSpec {
                    azimuth: get("azimuth"),
                    polar: get("polar"),
                    distance: get("distance"),
                    fov: get("fov"),
                }
            })
            .collect();
        let object = unit[0].inputs[0].items[0].0.clone();
        tracing::info!("render: {} views of {object} in one unit", views.len());
        // Everything from here on is bounded by the stage's `timeout`, the check of the model
        // included: a file that sends a reader round for ever costs its object, not the run.
        // The kill of Ctrl-C is not listened to here: the executor abandons a unit that does
        // not end after it, which drops this future and so stops the thread (StopOnDrop).
        let stop = Arc::new(AtomicBool::new(false));
        let n = unit.len();
        let fail = |e: &str| fail_all(n, e);
        if let Backend::Blender {
            engine,
            samples,
            pool,
            ..
        } = &*self.backend
        {
            // Blender reads the file itself; mvc checks only what would hang, crash or mislead
            // it, so every model Blender can import reaches it.
            let checked = bounded(self.timeout, &stop, move || {
                let model = Model::read(&bytes, Purpose::Check);
                (bytes, model)
            })
            .await;
            let (bytes, model) = match checked {
                Ok((bytes, Ok(model))) => (bytes, model),
                Ok((_, Err(e))) => return fail(&format!("{e:#}")),
                Err(e) => return fail(&e),
            };
            for w in &model.warnings {
                tracing::warn!("{}/{object}: {w}", self.stage);
            }
            let pool = match pool
                .get_or_init(|| {
                    let Backend::Blender { path, engine, .. } = &*self.backend else {
                        unreachable!()
                    };
                    BlenderPool::new(path.clone(), engine)
                        .map(Arc::new)
                        .map_err(|e| format!("{e:#}"))
                })
                .clone()
            {
                Ok(pool) => pool,
                Err(e) => {
                    return unit
                        .iter()
                        .map(|_| TaskOutcome::Aborted(e.clone()))
                        .collect();
                }
            };
            return self
                .render_with_blender(
                    ctx,
                    &pool,
                    &object,
                    &bytes,
                    &views,
                    engine,
                    *samples,
                    self.timeout,
                    model.draco_primitives > 0,
                )
                .await;
        }
        let settings = RasterSettings {
            size: self.resolution,
            supersample: self.supersample,
            lights: self.lights,
        };
        let (store, stage, flag) = (ctx.store.clone(), self.stage.clone(), stop.clone());
        let rendered = bounded(self.timeout, &stop, move || {
            let scene = Scene::from_glb(&bytes).map_err(|e| format!("{e:#}"))?;
            for w in &scene.warnings {
                tracing::warn!("{stage}/{object}: {w}");
            }
            Ok::<_, String>(render_builtin(&store, &scene, &views, &settings, &flag))
        })
        .await;
        match rendered {
            Ok(Ok(outcomes)) if outcomes.len() == n => outcomes,
            Ok(Ok(_)) => unit.iter().map(|_| TaskOutcome::Cancelled).collect(),
            Ok(Err(e)) | Err(e) => fail(&e),
        }
    }
}

impl super::table::StageTable for RenderParams {
    fn inputs(&self) -> &[Spanned<String>] {
        &self.inputs
    }
    fn build(
        self: Box<Self>,
        name: &str,
        inputs: Vec<String>,
        _around: &super::table::Around,
    ) -> Result<Vec<super::table::Built>> {
        Ok(super::table::Built::one(
            name,
            inputs,
            RenderStage::new(name, *self)?,
        ))
    }
}
