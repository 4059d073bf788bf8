//! A GLB as triangles in world space, ready to render: node transforms applied, glTF's Y-up
//! turned to Blender's Z-up, and the whole object normalised as the study's renderer does
//! (longest bounding-box side 1, bounding-box centre at the origin).

use anyhow::{Context, Result, bail};

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

fn decode_texture(image: &gltf::image::Data) -> Result<Texture> {
    use gltf::image::Format;
    let channels = match image.format {
        Format::R8 => 1,
        Format::R8G8 => 2,
        Format::R8G8B8 => 3,
        Format::R8G8B8A8 => 4,
        other => bail!("texture format {other:?} is not supported"),
    };
    let lut: Vec<f32> = (0..256).map(|i| srgb_to_linear(i as f32 / 255.0)).collect();
    let texels = image
        .pixels
        .chunks_exact(channels)
        .map(|p| match channels {
            1 | 2 => {
                let l = lut[p[0] as usize];
                [
                    l,
                    l,
                    l,
                    if channels == 2 {
                        p[1] as f32 / 255.0
                    } else {
                        1.0
                    },
                ]
            }
            3 => [
                lut[p[0] as usize],
                lut[p[1] as usize],
                lut[p[2] as usize],
                1.0,
            ],
            _ => [
                lut[p[0] as usize],
                lut[p[1] as usize],
                lut[p[2] as usize],
                p[3] as f32 / 255.0,
            ],
        })
        .collect();
    Ok(Texture {
        width: image.width,
        height: image.height,
        texels,
    })
}

type Mat4 = [[f32; 4]; 4];

/// Column-major 4x4 product (glTF's layout): `a * b`.
fn mul(a: &Mat4, b: &Mat4) -> Mat4 {
    let mut m = [[0.0f32; 4]; 4];
    for (c, col) in m.iter_mut().enumerate() {
        for (r, cell) in col.iter_mut().enumerate() {
            *cell = (0..4).map(|k| a[k][r] * b[c][k]).sum();
        }
    }
    m
}

fn apply(m: &Mat4, p: [f32; 3]) -> [f32; 3] {
    let mut out = [0.0f32; 3];
    for (r, o) in out.iter_mut().enumerate() {
        *o = m[0][r] * p[0] + m[1][r] * p[1] + m[2][r] * p[2] + m[3][r];
    }
    out
}

impl Scene {
    /// Loads a GLB (or a glTF with embedded buffers) and normalises it.
    pub fn from_glb(bytes: &[u8]) -> Result<Scene> {
        let mut warnings = Vec::new();
        let (document, buffers, images) = match gltf::import_slice(bytes) {
            Ok(imported) => imported,
            Err(error) => {
                // A texture that cannot be loaded (an external file not shipped with the
                // GLB, an undecodable image) costs the texture, not the object, as in
                // Blender's importer.
                let gltf = gltf::Gltf::from_slice(bytes).context("not a readable glTF 2.0 file")?;
                let buffers = gltf::import_buffers(&gltf.document, None, gltf.blob)
                    .context("not a readable glTF 2.0 file")?;
                warnings.push(format!("textures left out: {error}"));
                (gltf.document, buffers, Vec::new())
            }
        };
        let mut textures = Vec::with_capacity(images.len());
        for (i, image) in images.iter().enumerate() {
            textures.push(decode_texture(image).with_context(|| format!("image {i}"))?);
        }
        let mut scene = Scene {
            triangles: Vec::new(),
            materials: vec![Material {
                base_color: [0.8, 0.8, 0.8, 1.0],
                texture: None,
            }],
            textures,
            warnings,
        };
        let mut material_index = std::collections::HashMap::new();
        for m in document.materials() {
            let pbr = m.pbr_metallic_roughness();
            let texture = pbr
                .base_color_texture()
                .map(|t| t.texture().source().index());
            if let Some(i) = m.index() {
                material_index.insert(i, scene.materials.len());
            }
            scene.materials.push(Material {
                base_color: pbr.base_color_factor(),
                texture,
            });
        }
        let root = document
            .default_scene()
            .or_else(|| document.scenes().next())
            .context("the file has no scene")?;
        // glTF Y-up to Blender Z-up: (x, y, z) -> (x, -z, y), as Blender's importer does.
        let to_z_up: Mat4 = [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, -1.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let mut stack: Vec<(gltf::Node, Mat4)> = root.nodes().map(|n| (n, to_z_up)).collect();
        while let Some((node, parent)) = stack.pop() {
            let world = mul(&parent, &node.transform().matrix());
            if let Some(mesh) = node.mesh() {
                for primitive in mesh.primitives() {
                    scene
                        .add_primitive(&primitive, &buffers, &world, &material_index)
                        .with_context(|| {
                            format!(
                                "mesh {} primitive {}",
                                mesh.name().unwrap_or(&mesh.index().to_string()),
                                primitive.index()
                            )
                        })?;
                }
            }
            stack.extend(node.children().map(|c| (c, world)));
        }
        if scene.triangles.is_empty() {
            bail!("the scene has no triangles to render");
        }
        scene.normalize();
        Ok(scene)
    }

    fn add_primitive(
        &mut self,
        primitive: &gltf::Primitive,
        buffers: &[gltf::buffer::Data],
        world: &Mat4,
        material_index: &std::collections::HashMap<usize, usize>,
    ) -> Result<()> {
        if primitive.mode() != gltf::mesh::Mode::Triangles {
            // Points, lines and strips are rare in Objaverse and have no surface to shade.
            return Ok(());
        }
        let reader = primitive.reader(|b| buffers.get(b.index()).map(|d| &d.0[..]));
        let positions: Vec<[f32; 3]> = match reader.read_positions() {
            Some(p) => p.collect(),
            None => return Ok(()),
        };
        if positions.iter().flatten().any(|c| !c.is_finite()) {
            bail!("it has coordinates that are not finite numbers");
        }
        let uvs: Vec<[f32; 2]> = reader
            .read_tex_coords(0)
            .map(|t| t.into_f32().collect())
            .unwrap_or_default();
        let indices: Vec<u32> = match reader.read_indices() {
            Some(i) => i.into_u32().collect(),
            None => (0..positions.len() as u32).collect(),
        };
        if let Some(bad) = indices.iter().find(|&&i| i as usize >= positions.len()) {
            bail!(
                "index {bad} is out of range: the primitive has {} vertices",
                positions.len()
            );
        }
        let material = primitive
            .material()
            .index()
            .and_then(|i| material_index.get(&i).copied())
            .unwrap_or(0);
        let world_positions: Vec<[f32; 3]> = positions.iter().map(|p| apply(world, *p)).collect();
        for tri in indices.chunks_exact(3) {
            let v = [tri[0] as usize, tri[1] as usize, tri[2] as usize];
            self.triangles.push(Triangle {
                positions: v.map(|i| world_positions[i]),
                uvs: v.map(|i| uvs.get(i).copied().unwrap_or([0.0, 0.0])),
                material,
            });
        }
        Ok(())
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
