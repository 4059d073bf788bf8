//! The table of a `render` stage and its checks: backend, engine, cameras, lights, limits.

use super::{Backend, RenderStage};
use crate::diag::at;
use crate::render::blender::{check_engine, find_blender};
use crate::render::camera::{ViewSpec, study_fov};
use crate::render::raster::{self, LightRig};
use anyhow::{Result, bail};
use serde::Deserialize;
use std::sync::Arc;
use toml::Spanned;

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
}

impl crate::stages::table::StageTable for RenderParams {
    fn inputs(&self) -> &[Spanned<String>] {
        &self.inputs
    }
    fn build(
        self: Box<Self>,
        name: &str,
        inputs: Vec<String>,
        _around: &crate::stages::table::Around,
    ) -> Result<Vec<crate::stages::table::Built>> {
        Ok(crate::stages::table::Built::one(
            name,
            inputs,
            RenderStage::new(name, *self)?,
        ))
    }
}
