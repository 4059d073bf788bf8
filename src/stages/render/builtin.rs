//! Rendering an object with mvc's own rasterizer, on the blocking pool and bounded by the
//! stage's timeout; also the bound that the Blender path uses for its check of the model.

use super::{Backend, ObjectViews, RenderStage, fail_all, view_outputs};
use crate::exec::kind::{ExecCtx, TaskOutcome};
use crate::render::camera::ViewSpec;
use crate::render::raster::{self, RasterSettings};
use crate::render::scene::Scene;
use crate::store::records::now_ms;
use anyhow::Result;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

impl RenderStage {
    /// One object with the built-in renderer: its scene read and its views drawn on the
    /// blocking pool, all within the stage's timeout.
    pub(super) async fn execute_builtin(
        &self,
        ctx: &ExecCtx,
        object: ObjectViews,
    ) -> Vec<TaskOutcome> {
        debug_assert!(matches!(*self.backend, Backend::Builtin));
        let ObjectViews {
            object,
            glb: bytes,
            views,
        } = object;
        let n = views.len();
        let stop = Arc::new(AtomicBool::new(false));
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
            Ok(Ok(_)) => (0..n).map(|_| TaskOutcome::Cancelled).collect(),
            Ok(Err(e)) | Err(e) => fail_all(n, &e),
        }
    }
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
pub(super) async fn bounded<T: Send + 'static>(
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
