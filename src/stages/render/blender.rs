//! Rendering an object in a Blender job: the model checked for what would hang or mislead
//! Blender, the pool started on first use, one job for all the object's views (tried again in
//! a new Blender when the first dies), and Blender's failures said plainly.

use super::builtin::bounded;
use super::{Backend, ObjectViews, RenderStage, fail_all, view_outputs};
use crate::exec::kind::{ExecCtx, TaskOutcome};
use crate::render::blender::{BlenderPool, Job, JobDone, JobError, JobView};
use crate::render::camera::ViewSpec;
use crate::render::model::{DRACO, Model, Purpose};
use crate::store::records::now_ms;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

/// What one Blender job renders: an object's file, its views, and how.
struct BlenderJob<'a> {
    object: &'a str,
    glb: &'a [u8],
    views: &'a [ViewSpec],
    engine: &'a str,
    samples: u32,
    /// Whether the model has Draco-compressed meshes (named in Blender's failure).
    draco: bool,
}

impl RenderStage {
    /// One object with Blender. Blender reads the file itself; mvc checks only what would
    /// hang, crash or mislead it, so every model Blender can import reaches it.
    pub(super) async fn execute_blender(
        &self,
        ctx: &ExecCtx,
        object: ObjectViews,
    ) -> Vec<TaskOutcome> {
        let Backend::Blender {
            path,
            engine,
            samples,
            pool,
            ..
        } = &*self.backend
        else {
            unreachable!("execute_blender is called for Blender stages only")
        };
        let ObjectViews {
            object,
            glb: bytes,
            views,
        } = object;
        let n = views.len();
        let stop = Arc::new(AtomicBool::new(false));
        let checked = bounded(self.timeout, &stop, move || {
            let model = Model::read(&bytes, Purpose::Check);
            (bytes, model)
        })
        .await;
        let (bytes, model) = match checked {
            Ok((bytes, Ok(model))) => (bytes, model),
            Ok((_, Err(e))) => return fail_all(n, &format!("{e:#}")),
            Err(e) => return fail_all(n, &e),
        };
        for w in &model.warnings {
            tracing::warn!("{}/{object}: {w}", self.stage);
        }
        let started = pool.get_or_init(|| {
            BlenderPool::new(path.clone(), engine)
                .map(Arc::new)
                .map_err(|e| format!("{e:#}"))
        });
        let pool = match started.clone() {
            Ok(pool) => pool,
            Err(e) => return (0..n).map(|_| TaskOutcome::Aborted(e.clone())).collect(),
        };
        let job = BlenderJob {
            object: &object,
            glb: &bytes,
            views: &views,
            engine,
            samples: *samples,
            draco: model.draco_primitives > 0,
        };
        self.render_with_blender(ctx, &pool, job).await
    }

    /// One object's views in one Blender job.
    async fn render_with_blender(
        &self,
        ctx: &ExecCtx,
        pool: &BlenderPool,
        job: BlenderJob<'_>,
    ) -> Vec<TaskOutcome> {
        let views = job.views;
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
        if let Err(e) = std::fs::write(&glb_path, job.glb).and_then(|_| std::fs::create_dir(&out))
        {
            return all(&|| TaskOutcome::Aborted(format!("writing the model for Blender: {e}")));
        }
        let blender_job = Job {
            object: job.object.to_string(),
            glb: glb_path,
            out: out.clone(),
            resolution: self.resolution,
            engine: job.engine.to_string(),
            samples: job.samples,
            lights: self.lights_name().to_string(),
            persistent_data: true,
            views: views.iter().map(JobView::from).collect(),
        };
        let started_ms = now_ms();
        let clock = Instant::now();
        let outcomes = match run_with_second_chance(pool, &blender_job, self.timeout, &ctx.kill)
            .await
        {
            Ok(done) => {
                tracing::info!(
                    "blender: {}: {} views, import {:.3}s, render {:.3}s",
                    job.object,
                    done.views.len(),
                    done.import_seconds,
                    done.render_seconds
                );
                let per_view = clock.elapsed().as_millis() as u64 / views.len().max(1) as u64;
                let timing = (started_ms, per_view);
                self.views_blender_wrote(ctx, &out, views, &done, timing)
            }
            Err(JobError::Object(error)) => {
                fail_all(views.len(), &explain_blender_error(error, job.draco))
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
            .map(|o| crate::exec::kind::unless_disk_full(ctx.store.tmp_dir(), o))
            .collect()
    }

    /// The outcome of each view of a job that ended well: its PNG (without Blender's text
    /// chunks) and camera stored, or the failure of a view Blender wrote no image for.
    /// `timing` is when the job started (ms) and its time per view.
    fn views_blender_wrote(
        &self,
        ctx: &ExecCtx,
        out: &Path,
        views: &[ViewSpec],
        done: &JobDone,
        (started_ms, per_view): (u64, u64),
    ) -> Vec<TaskOutcome> {
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
                match view_outputs(&ctx.store, self.resolution, view, &done.produced_by, png) {
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
) -> Result<JobDone, JobError> {
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
