//! Rendering GLB objects from a grid of cameras.
//!
//! - [`camera`]: view specs, their stable ids, intrinsics and poses (OpenCV convention);
//! - [`scene`]: a GLB as normalised world-space triangles (Z up, longest side 1, centred);
//! - [`raster`]: the built-in CPU renderer.
//!
//! The `render` stage kind and the Blender backend (`workers/blender/render.py`) build on
//! these; both use the same camera and normalisation conventions.

pub mod camera;
pub mod raster;
pub mod scene;
