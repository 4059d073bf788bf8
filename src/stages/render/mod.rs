//! Stage kind `render`: every object of the input stage from a grid of cameras. One task per
//! (object, view), keyed by the view's camera spec (never its place in a list), so changing
//! the grid renders only the new views; all missing views of one object run as one unit.
//!
//! Backends: `blender` (a pool of persistent Blender processes running
//! `workers/blender/render.py`, one object per job) and `builtin` (the CPU rasterizer of
//! `crate::render::raster`); `auto` takes Blender when it is installed.
//!
//! `params.rs` reads and checks the stage's table, `blender.rs` renders an object in a Blender
//! job, `builtin.rs` with mvc's own rasterizer; this file is the kind itself.

mod blender;
mod builtin;
mod params;

pub use params::{Angles, RenderParams};

use super::{
    Binding, Columns, ExecCtx, ExpandCtx, Expansion, ParamCtx, PlannedItem, StageKind, TaskOutcome,
    UnitTask,
};
use crate::exec::workdir::output_from_bytes;
use crate::render::blender::{BlenderPool, SCRIPT, blender_version};
use crate::render::camera::ViewSpec;
use crate::render::raster::{self, LightRig};
use crate::resources::Resources;
use crate::store::records::Output;
use crate::task::ParamSlice;
use anyhow::Result;
use std::sync::Arc;

/// The `kind` of its tables in pipeline files (and of its key records).
pub const KIND: &str = "render";

/// Bump when this kind's outputs change for the same inputs (the rasterizer has its own
/// version, also in every key). 2: text chunks are stripped from Blender's PNGs. 3: every
/// view's JSON says what produced its pixels (`produced_by`).
const VERSION: u32 = 3;

/// Separates the object from the view in an item id: `<uid>@<view id>`.
pub const VIEW_SEPARATOR: char = '@';

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

impl RenderStage {
    fn lights_name(&self) -> &'static str {
        match self.lights {
            LightRig::Study => "study",
            LightRig::FourSun => "four-sun",
        }
    }
}

/// One object's unit, read: the object, its GLB's bytes, and the views its tasks ask for
/// (in the unit's order).
struct ObjectViews {
    object: String,
    glb: Vec<u8>,
    views: Vec<ViewSpec>,
}

/// Reads a unit's object; a unit that cannot be rendered gets its outcomes instead (the same
/// failure for every view, or `InputCorrupt` when the GLB's blob cannot be read).
fn read_unit(ctx: &ExecCtx, unit: &[UnitTask]) -> Result<ObjectViews, Vec<TaskOutcome>> {
    let glb = match unit.first().map(glb_of) {
        Some(Ok(output)) => output.clone(),
        Some(Err(error)) => return Err(fail_all(unit.len(), &error)),
        None => return Err(Vec::new()),
    };
    let input = &unit[0].inputs[0];
    let bytes = ctx.store.read_output(&glb).map_err(|e| {
        unit.iter()
            .map(|_| TaskOutcome::InputCorrupt {
                stage: input.stage.clone(),
                item: input.items[0].0.clone(),
                error: e.to_string(),
            })
            .collect::<Vec<_>>()
    })?;
    Ok(ObjectViews {
        object: input.items[0].0.clone(),
        glb: bytes,
        views: unit.iter().map(view_of).collect(),
    })
}

/// The camera a task asks for, from its item's parameters (NaN where one is missing, which
/// the camera model refuses).
fn view_of(task: &UnitTask) -> ViewSpec {
    let get = |k: &str| {
        task.item_params
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
    fn columns(&self) -> Columns {
        // Each view's id and camera once, shared by every object's view.
        Columns::Own(
            self.views
                .iter()
                .map(|view| {
                    let camera = ParamSlice::from([
                        ("azimuth".to_string(), view.azimuth.to_string()),
                        ("polar".to_string(), view.polar.to_string()),
                        ("distance".to_string(), view.distance.to_string()),
                        ("fov".to_string(), view.fov.to_string()),
                    ]);
                    (view.id(), Arc::new(camera))
                })
                .collect(),
        )
    }
    fn expand(&self, ctx: &ExpandCtx) -> Result<Expansion> {
        let (_, objects) = ctx.inputs[0];
        // Exactly as the columns say: a plan after a new ring keys the new views from them.
        let Columns::Own(views) = self.columns() else {
            unreachable!("a render stage's items are its views")
        };
        let mut items = Vec::with_capacity(objects.len() * views.len());
        for object in objects {
            for (id, camera) in &views {
                let mut item = PlannedItem::new(Columns::item(object, id));
                item.source = Some(object.clone());
                item.params = camera.clone();
                items.push(item);
            }
        }
        Ok(Expansion {
            items,
            bindings: vec![Binding::Item],
        })
    }
    fn unit_group<'a>(&self, item: &'a str) -> Option<&'a str> {
        // All views of one object: one scene load (one Blender call, with that backend).
        item.rsplit_once(VIEW_SEPARATOR).map(|(object, _)| object)
    }
    fn export_dir(&self, item: &str) -> String {
        // `<uid>/<view>.png`: the views of an object together.
        self.unit_group(item).unwrap_or(item).to_string()
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
        let object = match read_unit(ctx, &unit) {
            Ok(object) => object,
            Err(outcomes) => return outcomes,
        };
        tracing::info!(
            "render: {} views of {} in one unit",
            object.views.len(),
            object.object
        );
        // Everything from here on is bounded by the stage's `timeout`, the check of the model
        // included: a file that sends a reader round for ever costs its object, not the run.
        // The kill of Ctrl-C is not listened to here: the executor abandons a unit that does
        // not end after it, which drops this future and so stops the thread (StopOnDrop).
        match &*self.backend {
            Backend::Blender { .. } => self.execute_blender(ctx, object).await,
            Backend::Builtin => self.execute_builtin(ctx, object).await,
        }
    }
}
