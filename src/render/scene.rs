//! A GLB as triangles in world space, ready to render: node transforms applied, glTF's Y-up
//! turned to Blender's Z-up, and the whole object normalised as the study's renderer does
//! (longest bounding-box side 1, bounding-box centre at the origin). Reading and checking the
//! file is [`super::model`]'s.

use super::model::{Model, Purpose, image_bytes, material_slots};
use anyhow::{Result, bail};

/// A decoded texture, linear RGB(A) in 0..1.
#[derive(Debug)]
pub struct Texture {
    pub width: u32,
    pub height: u32,
    /// Row-major, 4 floats per texel (RGB linear, A as stored).
    pub texels: Vec<[f32; 4]>,
}

impl Texture {
    /// Bilinear sample with repeat wrapping.
    pub fn sample(&self, u: f32, v: f32) -> [f32; 4] {
        let (w, h) = (self.width as f32, self.height as f32);
        let x = (u - u.floor()) * w - 0.5;
        let y = (v - v.floor()) * h - 0.5;
        let (x0, y0) = (x.floor(), y.floor());
        let (fx, fy) = (x - x0, y - y0);
        let at = |xi: f32, yi: f32| {
            let xi = (xi as i64).rem_euclid(self.width as i64) as usize;
            let yi = (yi as i64).rem_euclid(self.height as i64) as usize;
            self.texels[yi * self.width as usize + xi]
        };
        let (a, b, c, d) = (
            at(x0, y0),
            at(x0 + 1.0, y0),
            at(x0, y0 + 1.0),
            at(x0 + 1.0, y0 + 1.0),
        );
        let mut out = [0.0; 4];
        for i in 0..4 {
            let top = a[i] + (b[i] - a[i]) * fx;
            let bottom = c[i] + (d[i] - c[i]) * fx;
            out[i] = top + (bottom - top) * fy;
        }
        out
    }
}

/// What a triangle is made of.
#[derive(Debug)]
pub struct Material {
    /// Linear RGBA.
    pub base_color: [f32; 4],
    pub texture: Option<usize>,
}

/// One triangle: world positions, texture coordinates, material.
#[derive(Clone, Copy, Debug)]
pub struct Triangle {
    pub positions: [[f32; 3]; 3],
    pub uvs: [[f32; 2]; 3],
    pub material: usize,
}

#[derive(Debug)]
pub struct Scene {
    pub triangles: Vec<Triangle>,
    pub materials: Vec<Material>,
    pub textures: Vec<Texture>,
    /// What was left out and why (textures that could not be loaded).
    pub warnings: Vec<String>,
}

fn srgb_to_linear(c: f32) -> f32 {
    if c <= 0.04045 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

/// The largest texture decoded (pixels a side): a bigger one is left out with a warning,
/// so that a small PNG that inflates to gigabytes cannot exhaust memory.
pub const MAX_TEXTURE_SIDE: u32 = 8192;

/// Decodes an embedded PNG or JPEG to linear RGBA, within [`MAX_TEXTURE_SIDE`].
fn decode_texture(encoded: &[u8]) -> Result<Texture> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(encoded))
        .with_guessed_format()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_TEXTURE_SIDE);
    limits.max_image_height = Some(MAX_TEXTURE_SIDE);
    limits.max_alloc = Some(1 << 30);
    reader.limits(limits);
    let rgba = reader
        .decode()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .into_rgba8();
    let lut: Vec<f32> = (0..256).map(|i| srgb_to_linear(i as f32 / 255.0)).collect();
    let texels = rgba
        .pixels()
        .map(|p| {
            [
                lut[p[0] as usize],
                lut[p[1] as usize],
                lut[p[2] as usize],
                p[3] as f32 / 255.0,
            ]
        })
        .collect();
    Ok(Texture {
        width: rgba.width(),
        height: rgba.height(),
        texels,
    })
}

impl Scene {
    /// Reads a GLB (or a glTF with embedded buffers), checks it (see [`super::model`]) and
    /// normalises it.
    pub fn from_glb(bytes: &[u8]) -> Result<Scene> {
        let model = Model::read(bytes, Purpose::Render)?;
        model.builtin_can_draw()?;
        Scene::from_model(model)
    }

    fn from_model(mut model: Model) -> Result<Scene> {
        let mut warnings = std::mem::take(&mut model.warnings);
        // A texture that cannot be loaded (an external file not shipped with the GLB, an
        // undecodable image) costs the texture, not the object, as in Blender's importer.
        let mut left_out = Vec::new();
        let mut textures = Vec::new();
        // glTF image index → index in `textures`, for the images that decoded.
        let mut texture_of_image = std::collections::HashMap::new();
        for image in model.document.images() {
            match image_bytes(&model, &image).and_then(|bytes| decode_texture(&bytes)) {
                Ok(t) => {
                    texture_of_image.insert(image.index(), textures.len());
                    textures.push(t);
                }
                Err(e) => left_out.push(format!("image {}: {e:#}", image.index())),
            }
        }
        if !left_out.is_empty() {
            warnings.push(format!("textures left out: {}", left_out.join("; ")));
        }
        let mut materials = vec![Material {
            base_color: [0.8, 0.8, 0.8, 1.0],
            texture: None,
        }];
        for m in model.document.materials() {
            let pbr = m.pbr_metallic_roughness();
            let texture = pbr
                .base_color_texture()
                .and_then(|t| texture_of_image.get(&t.texture().source().index()).copied());
            materials.push(Material {
                base_color: pbr.base_color_factor(),
                texture,
            });
        }
        let slots = material_slots(&model.document);
        let mut triangles = Vec::with_capacity(model.triangles);
        for g in &model.geometry {
            let material = g.material.and_then(|i| slots.get(&i).copied()).unwrap_or(0);
            for t in &g.triangles {
                let v = t.map(|i| i as usize);
                triangles.push(Triangle {
                    positions: v.map(|i| g.positions[i]),
                    uvs: v.map(|i| g.uvs.get(i).copied().unwrap_or([0.0, 0.0])),
                    material,
                });
            }
        }
        if triangles.is_empty() {
            bail!("the scene has no triangles to render");
        }
        let mut scene = Scene {
            triangles,
            materials,
            textures,
            warnings,
        };
        scene.normalize();
        Ok(scene)
    }

    /// Longest bounding-box side 1, bounding-box centre at the origin.
    fn normalize(&mut self) {
        let (lo, hi) = self.bounds();
        let centre = [0, 1, 2].map(|k| (lo[k] + hi[k]) / 2.0);
        let side = (0..3).map(|k| hi[k] - lo[k]).fold(0.0f32, f32::max);
        let scale = if side > 0.0 { 1.0 / side } else { 1.0 };
        for t in &mut self.triangles {
            for p in &mut t.positions {
                for k in 0..3 {
                    p[k] = (p[k] - centre[k]) * scale;
                }
            }
        }
    }

    /// The bounding box (min, max) of every vertex.
    pub fn bounds(&self) -> ([f32; 3], [f32; 3]) {
        let mut lo = [f32::INFINITY; 3];
        let mut hi = [f32::NEG_INFINITY; 3];
        for t in &self.triangles {
            for p in &t.positions {
                for k in 0..3 {
                    lo[k] = lo[k].min(p[k]);
                    hi[k] = hi[k].max(p[k]);
                }
            }
        }
        (lo, hi)
    }
}
