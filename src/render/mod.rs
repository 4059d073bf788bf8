//! Rendering GLB objects from a grid of cameras.
//!
//! - [`camera`]: view specs, their stable ids, intrinsics and poses (OpenCV convention);
//! - [`model`]: reading and checking a GLB from the outside before any backend sees it;
//! - [`scene`]: a GLB as normalised world-space triangles (Z up, longest side 1, centred);
//! - [`raster`]: the built-in CPU renderer;
//! - [`blender`]: the pool of Blender processes running `workers/blender/render.py`;
//! - [`display`]: the virtual X display (Xvfb) the pool starts for OpenGL engines.
//!
//! The `render` stage kind drives both backends; they share the camera and normalisation
//! conventions.

pub mod blender;
pub mod camera;
pub mod display;
pub mod model;
pub mod raster;
pub mod scene;

/// Makes a child of a render backend (Blender, Xvfb) die with mvc: killed when dropped, and
/// sent SIGKILL by the kernel when mvc itself dies, however it dies. It gets a process group
/// of its own, as tasks do: a terminal's Ctrl-C reaches mvc alone, which decides (a Blender
/// killed by it mid-object looked like a crash on that object).
pub(crate) fn dies_with_mvc(cmd: &mut tokio::process::Command) {
    cmd.kill_on_drop(true);
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe, as code between fork and exec must be.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}
