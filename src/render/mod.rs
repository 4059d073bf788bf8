//! Rendering GLB objects from a grid of cameras.
//!
//! - [`camera`]: view specs, their stable ids, intrinsics and poses (OpenCV convention);
//! - [`model`]: reading and checking a GLB from the outside before any backend sees it;
//! - [`scene`]: a GLB as normalised world-space triangles (Z up, longest side 1, centred);
//! - [`raster`]: the built-in CPU renderer;
//! - [`blender`]: the pool of Blender processes running `workers/blender/render.py`.
//!
//! The `render` stage kind drives both backends; they share the camera and normalisation
//! conventions.

pub mod blender;
pub mod camera;
pub mod model;
pub mod raster;
pub mod scene;
