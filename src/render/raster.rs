//! The built-in renderer: a deterministic CPU rasterizer. Z-buffer, near-plane clipping,
//! perspective-correct texture coordinates, flat Lambert shading under fixed lights,
//! supersampled anti-aliasing, straight-alpha RGBA out (RGB 0 where nothing was drawn, as
//! Blender writes transparent pixels). It is not meant to look like Cycles; it is meant to
//! run anywhere, fast, and to give the same bytes every time.

use super::camera::ViewSpec;
use super::scene::Scene;
use image::RgbaImage;

/// Bump when the same scene and settings would give different pixels (the golden-image
/// tests fail until it is bumped together with their digests), or when the same GLB would
/// give a different scene. 2: textures are decoded one by one (one that cannot be decoded no
/// longer costs the others) and 16-bit textures are read; strips and fans are drawn.
pub const VERSION: u32 = 2;

/// Which fixed lights shade the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LightRig {
    /// The study's single area light above the object, as a light from +Z.
    Study,
    /// Key, fill, rim and bottom lights.
    FourSun,
}

impl LightRig {
    /// (direction towards the light, intensity), and the ambient term.
    fn lights(self) -> (Vec<([f32; 3], f32)>, f32) {
        let n = |v: [f32; 3]| {
            let l = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
            [v[0] / l, v[1] / l, v[2] / l]
        };
        match self {
            LightRig::Study => (vec![(n([0.0, 0.0, 1.0]), 0.85)], 0.25),
            LightRig::FourSun => (
                vec![
                    (n([1.0, -1.0, 1.2]), 0.75),
                    (n([-1.0, -0.4, 0.5]), 0.35),
                    (n([0.0, 1.0, 0.8]), 0.45),
                    (n([0.0, 0.0, -1.0]), 0.2),
                ],
                0.15,
            ),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct RasterSettings {
    /// Output width and height in pixels.
    pub size: u32,
    /// Samples per pixel along each axis (2 gives 4 samples a pixel).
    pub supersample: u32,
    pub lights: LightRig,
}

const NEAR: f32 = 1e-3;

/// A vertex in camera space (OpenCV: z forward) with its texture coordinates.
#[derive(Clone, Copy, Debug)]
struct CamVertex {
    p: [f32; 3],
    uv: [f32; 2],
}

fn lerp_vertex(a: CamVertex, b: CamVertex, t: f32) -> CamVertex {
    CamVertex {
        p: [0, 1, 2].map(|k| a.p[k] + (b.p[k] - a.p[k]) * t),
        uv: [0, 1].map(|k| a.uv[k] + (b.uv[k] - a.uv[k]) * t),
    }
}

/// Clips a triangle to z >= NEAR (Sutherland-Hodgman against one plane).
fn clip_near(tri: [CamVertex; 3]) -> Vec<CamVertex> {
    let mut out = Vec::with_capacity(4);
    for i in 0..3 {
        let a = tri[i];
        let b = tri[(i + 1) % 3];
        let a_in = a.p[2] >= NEAR;
        let b_in = b.p[2] >= NEAR;
        if a_in {
            out.push(a);
        }
        if a_in != b_in {
            let t = (NEAR - a.p[2]) / (b.p[2] - a.p[2]);
            out.push(lerp_vertex(a, b, t));
        }
    }
    out
}

fn linear_to_srgb8(c: f32) -> u8 {
    let c = c.clamp(0.0, 1.0);
    let s = if c <= 0.003_130_8 {
        c * 12.92
    } else {
        1.055 * c.powf(1.0 / 2.4) - 0.055
    };
    (s * 255.0 + 0.5) as u8
}

/// The most samples along a side (resolution x supersample): the sample buffers take 16
/// bytes a sample, so 8192 is 1 GiB.
pub const MAX_SAMPLES_PER_SIDE: u32 = 8192;

/// Renders one view of a normalised scene.
pub fn render(scene: &Scene, view: &ViewSpec, settings: &RasterSettings) -> RgbaImage {
    render_until(scene, view, settings, &|| false).expect("never stopped")
}

/// Renders one view, checking `stop` between triangles (and every few rows of a large
/// one): `None` when it said to stop. A unit past its timeout, or abandoned, ends here.
pub fn render_until(
    scene: &Scene,
    view: &ViewSpec,
    settings: &RasterSettings,
    stop: &dyn Fn() -> bool,
) -> Option<RgbaImage> {
    let ss = settings.supersample.max(1);
    let size = settings.size * ss;
    let k = view.intrinsics(size);
    let (f, c) = (k[0][0] as f32, k[0][2] as f32);
    let w2c = view
        .world_to_camera_opencv()
        .map(|row| row.map(|x| x as f32));
    let eye = view.position().map(|x| x as f32);
    let (lights, ambient) = settings.lights.lights();
    let mut samples = Samples::new(size);
    for tri in &scene.triangles {
        if stop() {
            return None;
        }
        let material = &scene.materials[tri.material];
        let paint = Paint {
            base_color: material.base_color,
            texture: material.texture.and_then(|t| scene.textures.get(t)),
            shade: match flat_shade(tri, eye, &lights, ambient) {
                Some(shade) => shade,
                None => continue,
            },
        };
        let cam: [CamVertex; 3] = [0, 1, 2].map(|i| {
            let p = tri.positions[i];
            CamVertex {
                p: [0, 1, 2]
                    .map(|r| w2c[r][0] * p[0] + w2c[r][1] * p[1] + w2c[r][2] * p[2] + w2c[r][3]),
                uv: tri.uvs[i],
            }
        });
        let polygon = clip_near(cam);
        for i in 1..polygon.len().saturating_sub(1) {
            let verts = [polygon[0], polygon[i], polygon[i + 1]];
            // Screen position, 1/z, and uv/z of each vertex.
            let s: [ScreenVertex; 3] = verts.map(|v| {
                let iz = 1.0 / v.p[2];
                (
                    [f * v.p[0] * iz + c, f * v.p[1] * iz + c],
                    iz,
                    [v.uv[0] * iz, v.uv[1] * iz],
                )
            });
            if !samples.fill(&s, &paint, stop) {
                return None;
            }
        }
    }
    Some(samples.downsample(settings.size, ss))
}

/// A vertex on screen: its position, 1/z, and uv/z.
type ScreenVertex = ([f32; 2], f32, [f32; 2]);

/// How a triangle's samples are coloured.
struct Paint<'a> {
    base_color: [f32; 4],
    texture: Option<&'a crate::render::scene::Texture>,
    shade: f32,
}

/// Flat shading from the face normal, turned to face the camera (two-sided); `None` for a
/// degenerate triangle.
fn flat_shade(
    tri: &crate::render::scene::Triangle,
    eye: [f32; 3],
    lights: &[([f32; 3], f32)],
    ambient: f32,
) -> Option<f32> {
    let [a, b, cc] = tri.positions;
    let e1 = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
    let e2 = [cc[0] - a[0], cc[1] - a[1], cc[2] - a[2]];
    let mut normal = [
        e1[1] * e2[2] - e1[2] * e2[1],
        e1[2] * e2[0] - e1[0] * e2[2],
        e1[0] * e2[1] - e1[1] * e2[0],
    ];
    let len = (normal[0] * normal[0] + normal[1] * normal[1] + normal[2] * normal[2]).sqrt();
    if len == 0.0 || !len.is_finite() {
        return None;
    }
    normal = normal.map(|x| x / len);
    let to_eye = [eye[0] - a[0], eye[1] - a[1], eye[2] - a[2]];
    if normal[0] * to_eye[0] + normal[1] * to_eye[1] + normal[2] * to_eye[2] < 0.0 {
        normal = normal.map(|x| -x);
    }
    let mut shade = ambient;
    for (dir, intensity) in lights {
        let d = normal[0] * dir[0] + normal[1] * dir[1] + normal[2] * dir[2];
        shade += intensity * d.max(0.0);
    }
    Some(shade)
}

/// The sample buffers of one view: depth as 1/z (larger is nearer; 0 means empty) and
/// linear colour, `size` x `size`.
struct Samples {
    size: u32,
    depth: Vec<f32>,
    color: Vec<[f32; 3]>,
}

impl Samples {
    fn new(size: u32) -> Samples {
        let n = size as usize * size as usize;
        Samples {
            size,
            depth: vec![0.0f32; n],
            color: vec![[0.0f32; 3]; n],
        }
    }

    /// Draws one screen triangle with a depth test; false when `stop` said to stop
    /// (checked every 64 rows).
    fn fill(&mut self, s: &[ScreenVertex; 3], paint: &Paint, stop: &dyn Fn() -> bool) -> bool {
        let size = self.size;
        let area = (s[1].0[0] - s[0].0[0]) * (s[2].0[1] - s[0].0[1])
            - (s[2].0[0] - s[0].0[0]) * (s[1].0[1] - s[0].0[1]);
        if area == 0.0 || !area.is_finite() {
            return true;
        }
        let min_x = s.iter().map(|v| v.0[0]).fold(f32::INFINITY, f32::min);
        let max_x = s.iter().map(|v| v.0[0]).fold(f32::NEG_INFINITY, f32::max);
        let min_y = s.iter().map(|v| v.0[1]).fold(f32::INFINITY, f32::min);
        let max_y = s.iter().map(|v| v.0[1]).fold(f32::NEG_INFINITY, f32::max);
        let x0 = (min_x - 0.5).ceil().max(0.0) as i64;
        let x1 = ((max_x - 0.5).floor() as i64).min(size as i64 - 1);
        let y0 = (min_y - 0.5).ceil().max(0.0) as i64;
        let y1 = ((max_y - 0.5).floor() as i64).min(size as i64 - 1);
        for y in y0..=y1 {
            if (y - y0) % 64 == 63 && stop() {
                return false;
            }
            let py = y as f32 + 0.5;
            for x in x0..=x1 {
                let px = x as f32 + 0.5;
                // Barycentric weights by edge functions; samples exactly on an edge count
                // for the triangle on its left (ties broken the same way always).
                let edge = |a: [f32; 2], b: [f32; 2]| {
                    (b[0] - a[0]) * (py - a[1]) - (b[1] - a[1]) * (px - a[0])
                };
                let w0 = edge(s[1].0, s[2].0) / area;
                let w1 = edge(s[2].0, s[0].0) / area;
                let w2 = edge(s[0].0, s[1].0) / area;
                if w0 < 0.0 || w1 < 0.0 || w2 < 0.0 {
                    continue;
                }
                let iz = w0 * s[0].1 + w1 * s[1].1 + w2 * s[2].1;
                let idx = y as usize * size as usize + x as usize;
                if iz <= self.depth[idx] {
                    continue;
                }
                let mut base = paint.base_color;
                if let Some(tex) = paint.texture {
                    let u = (w0 * s[0].2[0] + w1 * s[1].2[0] + w2 * s[2].2[0]) / iz;
                    let v = (w0 * s[0].2[1] + w1 * s[1].2[1] + w2 * s[2].2[1]) / iz;
                    let t = tex.sample(u, v);
                    for k in 0..4 {
                        base[k] *= t[k];
                    }
                }
                let shade = paint.shade;
                self.depth[idx] = iz;
                self.color[idx] = [base[0] * shade, base[1] * shade, base[2] * shade];
            }
        }
        true
    }

    /// Box-filters the samples down to `out_size` pixels (`ss` x `ss` samples each): alpha
    /// is the covered fraction, colour the mean of the covered samples.
    fn downsample(&self, out_size: u32, ss: u32) -> RgbaImage {
        let size = self.size;
        let mut image = RgbaImage::new(out_size, out_size);
        for (ox, oy, pixel) in image.enumerate_pixels_mut() {
            let mut sum = [0.0f32; 3];
            let mut covered = 0u32;
            for sy in 0..ss {
                for sx in 0..ss {
                    let idx = ((oy * ss + sy) * size + ox * ss + sx) as usize;
                    if self.depth[idx] > 0.0 {
                        covered += 1;
                        for (total, c) in sum.iter_mut().zip(self.color[idx]) {
                            *total += c;
                        }
                    }
                }
            }
            if covered == 0 {
                *pixel = image::Rgba([0, 0, 0, 0]);
                continue;
            }
            let mean = sum.map(|v| v / covered as f32);
            *pixel = image::Rgba([
                linear_to_srgb8(mean[0]),
                linear_to_srgb8(mean[1]),
                linear_to_srgb8(mean[2]),
                ((covered as f32 / (ss * ss) as f32) * 255.0 + 0.5) as u8,
            ]);
        }
        image
    }
}
