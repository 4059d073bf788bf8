//! Reading a GLB from the outside world, before any backend sees it.
//!
//! The rule: refuse what would make a backend hang, crash or draw garbage (a file that is not
//! glTF, references to things that do not exist, vertex indices out of range, coordinates
//! that are not finite, a node hierarchy with a cycle, no geometry at all), and let through
//! what a strict validator dislikes but renderers ignore (a missing optional `min`/`max`, a
//! broken material on a sound mesh). Blender reads the file itself, so for it this module only
//! checks ([`Purpose::Check`]); the built-in renderer takes the geometry from here
//! ([`Purpose::Render`]).
//!
//! The file is hostile until proven otherwise: the node hierarchy is walked without
//! recursion (a chain 20,000 nodes deep is valid glTF) and each node at most once, accessor
//! types are checked before the `gltf` crate's readers see them (they assert on mismatches),
//! and a panic inside the crate is turned into the object's failure.

use anyhow::{Context, Result, bail};
use std::collections::HashMap;

pub type Mat4 = [[f32; 4]; 4];

/// Draco-compressed meshes: their vertices are inside the compressed stream, not in the
/// accessors, so only a backend with a Draco decoder can draw them.
pub const DRACO: &str = "KHR_draco_mesh_compression";

/// The most triangles the built-in renderer takes in one object.
pub const MAX_TRIANGLES: usize = 20_000_000;

/// The most vertices (or indices) read from one primitive: 720 MB of positions.
pub const MAX_VERTICES: usize = 60_000_000;

/// Required extensions the built-in renderer can ignore without drawing garbage: they change
/// materials, lights or texture placement, never where the triangles are.
const HARMLESS_EXTENSIONS: &[&str] = &[
    "KHR_materials_",
    "KHR_texture_transform",
    "KHR_lights_punctual",
    "KHR_texture_basisu",
    "EXT_texture_webp",
];

/// What the model is read for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Only checked: another program (Blender) reads the file itself.
    Check,
    /// Checked, and its geometry kept for the built-in renderer.
    Render,
}

/// One drawable primitive, in world space (Z up, not yet normalised).
pub struct Geometry {
    pub positions: Vec<[f32; 3]>,
    /// Empty when the primitive has no usable texture coordinates.
    pub uvs: Vec<[f32; 2]>,
    pub triangles: Vec<[u32; 3]>,
    /// The glTF material index.
    pub material: Option<usize>,
}

pub struct Model {
    pub document: gltf::Document,
    pub buffers: Vec<gltf::buffer::Data>,
    /// Empty for [`Purpose::Check`].
    pub geometry: Vec<Geometry>,
    /// Triangles found (strips and fans counted as the triangles they make).
    pub triangles: usize,
    /// Draco-compressed primitives, which mvc cannot read.
    pub draco_primitives: usize,
    /// Extensions the file declares it cannot be read without.
    pub required_extensions: Vec<String>,
    /// What was ignored or left out, for the log.
    pub warnings: Vec<String>,
}

impl Model {
    /// Reads and checks `bytes` (a GLB, or a glTF JSON with embedded buffers).
    pub fn read(bytes: &[u8], purpose: Purpose) -> Result<Model> {
        // The `gltf` crate asserts on some malformed inputs; a hostile file costs its
        // object, never the process.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(bytes, purpose))) {
            Ok(result) => result,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".into());
                bail!("not a readable glTF 2.0 file: the glTF reader stopped on it ({what})")
            }
        }
    }

    /// Whether the built-in renderer can draw it: `Err` names what it lacks and what would
    /// render the object instead.
    pub fn builtin_can_draw(&self) -> Result<()> {
        if self.draco_primitives > 0 || self.required_extensions.iter().any(|e| e == DRACO) {
            bail!(
                "its meshes are Draco-compressed ({DRACO}); the built-in renderer has no Draco \
                 decoder: render it with Blender (backend = \"blender\"), a build that has \
                 its Draco library (Blender from blender.org does; Debian's package does not)"
            );
        }
        if let Some(ext) = self.required_extensions.iter().find(|e| {
            !HARMLESS_EXTENSIONS
                .iter()
                .any(|harmless| e.starts_with(harmless))
        }) {
            bail!(
                "it requires the glTF extension {ext}, which the built-in renderer does not \
                 support: render it with Blender (backend = \"blender\")"
            );
        }
        Ok(())
    }
}

/// glTF's Y-up to Blender's Z-up: (x, y, z) -> (x, -z, y), as Blender's importer does.
pub const TO_Z_UP: Mat4 = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
    [0.0, -1.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
];

/// Column-major 4x4 product (glTF's layout): `a * b`.
pub fn mul(a: &Mat4, b: &Mat4) -> Mat4 {
    let mut m = [[0.0f32; 4]; 4];
    for (c, col) in m.iter_mut().enumerate() {
        for (r, cell) in col.iter_mut().enumerate() {
            *cell = (0..4).map(|k| a[k][r] * b[c][k]).sum();
        }
    }
    m
}

pub fn apply(m: &Mat4, p: [f32; 3]) -> [f32; 3] {
    let mut out = [0.0f32; 3];
    for (r, o) in out.iter_mut().enumerate() {
        *o = m[0][r] * p[0] + m[1][r] * p[1] + m[2][r] * p[2] + m[3][r];
    }
    out
}

/// The document, its binary chunk, and what was left out to read it.
fn parse(bytes: &[u8]) -> Result<(gltf::Document, Option<Vec<u8>>, Vec<String>)> {
    match gltf::Gltf::from_slice_without_validation(bytes) {
        Ok(g) => Ok((g.document, g.blob, Vec::new())),
        Err(gltf::Error::Deserialize(error)) => {
            // A field of the wrong type somewhere fails the whole document in the `gltf`
            // crate, while Blender's importer reads the mesh and skips what it cannot use.
            // Materials, textures and animations are what such files break; without them
            // the geometry can still be checked.
            let (json, blob) = split(bytes).context("not a readable glTF 2.0 file")?;
            let mut value: serde_json::Value = serde_json::from_slice(&json)
                .map_err(|e| anyhow::anyhow!("not a readable glTF 2.0 file: {e}"))?;
            let Some(root) = value.as_object_mut() else {
                bail!("not a readable glTF 2.0 file: its JSON is not an object");
            };
            for field in [
                "materials",
                "textures",
                "images",
                "samplers",
                "animations",
                "skins",
                "cameras",
            ] {
                root.remove(field);
            }
            for mesh in root
                .get_mut("meshes")
                .and_then(|m| m.as_array_mut())
                .into_iter()
                .flatten()
            {
                for primitive in mesh
                    .get_mut("primitives")
                    .and_then(|p| p.as_array_mut())
                    .into_iter()
                    .flatten()
                {
                    if let Some(p) = primitive.as_object_mut() {
                        p.remove("material");
                    }
                }
            }
            for node in root
                .get_mut("nodes")
                .and_then(|n| n.as_array_mut())
                .into_iter()
                .flatten()
            {
                if let Some(n) = node.as_object_mut() {
                    n.remove("skin");
                    n.remove("camera");
                }
            }
            let text = serde_json::to_vec(&value).expect("JSON values serialise");
            let g = gltf::Gltf::from_slice_without_validation(&text).map_err(|e| {
                anyhow::anyhow!("not a readable glTF 2.0 file: {error}; without its materials: {e}")
            })?;
            Ok((
                g.document,
                blob,
                vec![format!("materials and textures left out: {error}")],
            ))
        }
        Err(e) => bail!("not a readable glTF 2.0 file: {e}"),
    }
}

/// The JSON and binary chunks of a GLB, or the bytes themselves as JSON.
fn split(bytes: &[u8]) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
    if bytes.starts_with(b"glTF") {
        let glb = gltf::binary::Glb::from_slice(bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok((glb.json.into_owned(), glb.bin.map(|b| b.into_owned())))
    } else {
        Ok((bytes.to_vec(), None))
    }
}

/// Validation findings that would make a reader follow a reference into nothing, or read a
/// value that is not one, fail the object; a missing `min`/`max` (which renderers ignore)
/// and extensions the `gltf` crate does not know (the backend decides) do not.
fn check_references(document: &gltf::Document) -> Result<()> {
    use gltf::json::validation::{Error, Validate};
    let root = document.as_json();
    let mut fatal: Vec<String> = Vec::new();
    root.validate(root, gltf::json::Path::new, &mut |path, error| {
        let path = path().to_string();
        let ignored = match error {
            // An accessor without a buffer view is zeros (or sparse, or Draco-compressed):
            // legal, and read below as what it is.
            Error::Missing => {
                path.ends_with(".min") || path.ends_with(".max") || path.ends_with(".bufferView")
            }
            Error::Unsupported => true,
            Error::IndexOutOfBounds | Error::Invalid | Error::Oversize => false,
        };
        if !ignored {
            fatal.push(format!(
                "{path}: {}",
                match error {
                    Error::IndexOutOfBounds => "refers to something the file does not have",
                    Error::Invalid => "invalid value",
                    Error::Missing => "required and missing",
                    Error::Oversize => "too large",
                    Error::Unsupported => "unsupported",
                }
            ));
        }
    });
    if let Some(first) = fatal.first() {
        bail!(
            "not a readable glTF 2.0 file: {first}{}",
            match fatal.len() {
                1 => String::new(),
                n => format!(" (and {} more problems)", n - 1),
            }
        );
    }
    Ok(())
}

/// Refuses a node hierarchy with a cycle (a node that is its own ancestor), which glTF
/// forbids and which sends a naive walk round for ever. Iterative: depth is unbounded.
fn check_no_cycle(document: &gltf::Document) -> Result<()> {
    let nodes = &document.as_json().nodes;
    // 0: not seen, 1: on the current path, 2: done.
    let mut state = vec![0u8; nodes.len()];
    let children = |n: usize| -> Vec<usize> {
        nodes[n]
            .children
            .iter()
            .flatten()
            .map(|c| c.value())
            .collect()
    };
    for start in 0..nodes.len() {
        if state[start] != 0 {
            continue;
        }
        // (node, its children, next child to visit)
        let mut stack: Vec<(usize, Vec<usize>, usize)> = vec![(start, children(start), 0)];
        state[start] = 1;
        while let Some((node, kids, next)) = stack.last_mut() {
            if *next == kids.len() {
                state[*node] = 2;
                stack.pop();
                continue;
            }
            let child = kids[*next];
            *next += 1;
            match state.get(child) {
                Some(0) => {
                    state[child] = 1;
                    stack.push((child, children(child), 0));
                }
                Some(1) => {
                    let from = stack.iter().position(|(n, _, _)| *n == child).unwrap_or(0);
                    let mut path: Vec<String> = stack[from..]
                        .iter()
                        .map(|(n, _, _)| n.to_string())
                        .collect();
                    path.push(child.to_string());
                    bail!(
                        "its node hierarchy has a cycle (node {}), which glTF forbids: the \
                         file is broken",
                        path.join(" → node ")
                    );
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The nodes of the scene to draw with their world transforms (Z up), each node once, found
/// without recursion.
fn placed_nodes<'a>(
    scene: &gltf::Scene<'a>,
    warnings: &mut Vec<String>,
) -> Result<Vec<(gltf::Node<'a>, Mat4)>> {
    let mut seen = std::collections::HashSet::new();
    let mut placed = Vec::new();
    let mut stack: Vec<(gltf::Node, Mat4)> = scene.nodes().map(|n| (n, TO_Z_UP)).collect();
    let mut shared = 0usize;
    while let Some((node, parent)) = stack.pop() {
        if !seen.insert(node.index()) {
            // A node with two parents (glTF forbids it): drawn once, as Blender's importer
            // keeps one parent. Walking it again could multiply work exponentially.
            shared += 1;
            continue;
        }
        let local = node.transform().matrix();
        if local.iter().flatten().any(|x| !x.is_finite()) {
            bail!(
                "node {} has a transform that is not finite numbers",
                node.index()
            );
        }
        let world = mul(&parent, &local);
        stack.extend(node.children().map(|c| (c, world)));
        placed.push((node, world));
    }
    if shared > 0 {
        warnings.push(format!(
            "{shared} node(s) have more than one parent (glTF forbids it); each is drawn once"
        ));
    }
    Ok(placed)
}

fn read(bytes: &[u8], purpose: Purpose) -> Result<Model> {
    let (document, blob, mut warnings) = parse(bytes)?;
    check_references(&document)?;
    let buffers = gltf::import_buffers(&document, None, blob).map_err(|e| match e {
        gltf::Error::ExternalReferenceInSliceImport => anyhow::anyhow!(
            "its buffers are in separate files that did not come with it (an incomplete \
             glTF): the object cannot be read"
        ),
        e => anyhow::anyhow!("not a readable glTF 2.0 file: {e}"),
    })?;
    check_no_cycle(&document)?;
    let required_extensions: Vec<String> =
        document.extensions_required().map(str::to_string).collect();
    let scene = document
        .default_scene()
        .or_else(|| document.scenes().next())
        .context("the file has no scene: nothing to render")?;
    let placed = placed_nodes(&scene, &mut warnings)?;

    let mut geometry = Vec::new();
    let mut triangles = 0usize;
    let mut draco_primitives = 0usize;
    let mut points_and_lines = 0usize;
    for (node, world) in &placed {
        let Some(mesh) = node.mesh() else { continue };
        for primitive in mesh.primitives() {
            let name = || {
                format!(
                    "mesh {} primitive {}",
                    mesh.name().unwrap_or(&mesh.index().to_string()),
                    primitive.index()
                )
            };
            if primitive.extension_value(DRACO).is_some() {
                draco_primitives += 1;
                continue;
            }
            match read_primitive(&primitive, &buffers, world, purpose).with_context(name)? {
                Primitive::PointsOrLines => points_and_lines += 1,
                Primitive::NoPositions => warnings.push(format!("{}: no positions", name())),
                Primitive::Triangles(count, g) => {
                    triangles += count;
                    geometry.extend(g);
                    // Nodes may place one mesh many times: bound what the built-in renderer
                    // holds (about 70 bytes a triangle).
                    if purpose == Purpose::Render && triangles > MAX_TRIANGLES {
                        bail!(
                            "it has more than {MAX_TRIANGLES} triangles once its nodes place \
                             its meshes; the built-in renderer refuses it: render it with \
                             Blender (backend = \"blender\")"
                        );
                    }
                }
            }
        }
    }
    drop(placed);
    if triangles == 0 && draco_primitives == 0 {
        if points_and_lines > 0 {
            bail!("the scene has only points and lines: no triangles to render");
        }
        bail!("the scene has no triangles to render");
    }
    Ok(Model {
        document,
        buffers,
        geometry,
        triangles,
        draco_primitives,
        required_extensions,
        warnings,
    })
}

enum Primitive {
    PointsOrLines,
    NoPositions,
    /// How many triangles, and the geometry when it is kept.
    Triangles(usize, Option<Geometry>),
}

/// The triangles of a list, a strip or a fan, as vertex index triples.
fn triangulate(mode: gltf::mesh::Mode, indices: &[u32]) -> Vec<[u32; 3]> {
    use gltf::mesh::Mode;
    let n = indices.len();
    match mode {
        Mode::Triangles => indices
            .chunks_exact(3)
            .map(|t| [t[0], t[1], t[2]])
            .collect(),
        // Every three consecutive vertices, every other one turned round to keep the winding.
        Mode::TriangleStrip => (0..n.saturating_sub(2))
            .map(|i| {
                if i % 2 == 0 {
                    [indices[i], indices[i + 1], indices[i + 2]]
                } else {
                    [indices[i + 1], indices[i], indices[i + 2]]
                }
            })
            .collect(),
        Mode::TriangleFan => (1..n.saturating_sub(1))
            .map(|i| [indices[0], indices[i], indices[i + 1]])
            .collect(),
        _ => Vec::new(),
    }
}

fn read_primitive(
    primitive: &gltf::Primitive,
    buffers: &[gltf::buffer::Data],
    world: &Mat4,
    purpose: Purpose,
) -> Result<Primitive> {
    use gltf::mesh::Mode;
    if !matches!(
        primitive.mode(),
        Mode::Triangles | Mode::TriangleStrip | Mode::TriangleFan
    ) {
        return Ok(Primitive::PointsOrLines);
    }
    let Some(position) = primitive.get(&gltf::Semantic::Positions) else {
        return Ok(Primitive::NoPositions);
    };
    let vertices = position.count();
    if vertices == 0 || (position.view().is_none() && position.sparse().is_none()) {
        return Ok(Primitive::NoPositions);
    }
    check_counts(primitive, vertices)?;
    let positions = read_positions(primitive, &position, buffers, purpose)?;
    let indices = read_indices(primitive, buffers, vertices)?;
    let n = indices.as_ref().map_or(vertices, Vec::len);
    if primitive.mode() == Mode::Triangles && !n.is_multiple_of(3) {
        bail!(
            "its triangle list has {n} {}, not a multiple of 3 (a truncated mesh)",
            if indices.is_some() {
                "indices"
            } else {
                "vertices"
            }
        );
    }
    let count = match primitive.mode() {
        Mode::Triangles => n / 3,
        _ => n.saturating_sub(2),
    };
    if purpose == Purpose::Check {
        return Ok(Primitive::Triangles(count, None));
    }
    let Some(positions) = positions else {
        unreachable!("the built-in renderer's positions were read above")
    };
    let indices = indices.unwrap_or_else(|| (0..vertices as u32).collect());
    let geometry = geometry(primitive, buffers, world, &positions, &indices)?;
    Ok(Primitive::Triangles(count, Some(geometry)))
}

/// What a primitive declares, checked before anything is allocated for it: a sparse
/// accessor can declare billions of vertices in a few bytes, and attributes of one primitive
/// that disagree on the number of vertices make Blender's importer fail or hang, and
/// readers index past the shorter ones.
fn check_counts(primitive: &gltf::Primitive, vertices: usize) -> Result<()> {
    let declared = primitive.indices().map_or(0, |a| a.count()).max(vertices);
    if declared > MAX_VERTICES {
        bail!(
            "it declares {declared} vertices or indices in one primitive, more than mvc reads \
             ({MAX_VERTICES})"
        );
    }
    if let Some((semantic, other)) = primitive.attributes().find(|(_, a)| a.count() != vertices) {
        bail!(
            "its attributes disagree on the number of vertices (POSITION has {vertices}, \
             {semantic:?} has {})",
            other.count()
        );
    }
    Ok(())
}

/// The float positions of a primitive, checked finite. Quantized positions
/// (KHR_mesh_quantization) are integers, so finite; Blender reads them (`None` here), the
/// built-in renderer reads float positions only.
fn read_positions(
    primitive: &gltf::Primitive,
    position: &gltf::Accessor,
    buffers: &[gltf::buffer::Data],
    purpose: Purpose,
) -> Result<Option<Vec<[f32; 3]>>> {
    use gltf::accessor::{DataType, Dimensions};
    let float_positions =
        position.data_type() == DataType::F32 && position.dimensions() == Dimensions::Vec3;
    if float_positions {
        let reader = primitive.reader(|b| buffers.get(b.index()).map(|d| &d.0[..]));
        let p: Vec<[f32; 3]> = reader
            .read_positions()
            .context("its positions lie outside its buffers")?
            .collect();
        if p.iter().flatten().any(|c| !c.is_finite()) {
            bail!("it has coordinates that are not finite numbers");
        }
        return Ok(Some(p));
    }
    if purpose == Purpose::Render {
        bail!(
            "its positions are stored as {:?} {:?} (KHR_mesh_quantization); the built-in \
             renderer reads float positions only: render it with Blender (backend = \"blender\")",
            position.dimensions(),
            position.data_type()
        );
    }
    Ok(None)
}

/// A primitive's indices, when the file has them, each checked against its `vertices`. A
/// primitive without them is its vertices in order, and its declared count is not trusted
/// with an allocation before its positions have been read from the buffer.
fn read_indices(
    primitive: &gltf::Primitive,
    buffers: &[gltf::buffer::Data],
    vertices: usize,
) -> Result<Option<Vec<u32>>> {
    use gltf::accessor::{DataType, Dimensions};
    let Some(accessor) = primitive.indices() else {
        return Ok(None);
    };
    if !matches!(
        accessor.data_type(),
        DataType::U8 | DataType::U16 | DataType::U32
    ) || accessor.dimensions() != Dimensions::Scalar
    {
        bail!(
            "its indices are stored as {:?} {:?}, not unsigned integers",
            accessor.dimensions(),
            accessor.data_type()
        );
    }
    let indices: Vec<u32> = if accessor.count() == 0 {
        Vec::new()
    } else {
        let reader = primitive.reader(|b| buffers.get(b.index()).map(|d| &d.0[..]));
        reader
            .read_indices()
            .context("its indices lie outside its buffers")?
            .into_u32()
            .collect()
    };
    if let Some(bad) = indices.iter().find(|&&i| i as usize >= vertices) {
        bail!("index {bad} is out of range: the primitive has {vertices} vertices");
    }
    Ok(Some(indices))
}

/// The triangles of a primitive placed in the world, with their texture coordinates (when
/// the first set is one the renderer reads).
fn geometry(
    primitive: &gltf::Primitive,
    buffers: &[gltf::buffer::Data],
    world: &Mat4,
    positions: &[[f32; 3]],
    indices: &[u32],
) -> Result<Geometry> {
    use gltf::accessor::{DataType, Dimensions};
    let vertices = positions.len();
    let triangles = triangulate(primitive.mode(), indices);
    let world_positions: Vec<[f32; 3]> = positions.iter().map(|p| apply(world, *p)).collect();
    if world_positions.iter().flatten().any(|c| !c.is_finite()) {
        bail!("its coordinates, placed by its nodes, are not finite numbers");
    }
    let reader = primitive.reader(|b| buffers.get(b.index()).map(|d| &d.0[..]));
    let uvs: Vec<[f32; 2]> = match primitive.get(&gltf::Semantic::TexCoords(0)) {
        Some(a)
            if a.count() == vertices
                && a.dimensions() == Dimensions::Vec2
                && matches!(a.data_type(), DataType::U8 | DataType::U16 | DataType::F32) =>
        {
            reader
                .read_tex_coords(0)
                .map(|t| t.into_f32().collect())
                .unwrap_or_default()
        }
        _ => Vec::new(),
    };
    Ok(Geometry {
        positions: world_positions,
        uvs,
        triangles,
        material: primitive.material().index(),
    })
}

/// The encoded bytes of an image stored in the file: in its buffers, or in a `data:` URI.
/// Images named by any other URI are not read: a relative URI would name a file on this
/// machine, and a GLB from the outside must not make mvc read local files.
pub fn image_bytes<'m>(
    model: &'m Model,
    image: &gltf::Image,
) -> Result<std::borrow::Cow<'m, [u8]>> {
    use base64::Engine as _;
    match image.source() {
        gltf::image::Source::View { view, .. } => {
            let buffer = model
                .buffers
                .get(view.buffer().index())
                .context("its buffer is missing")?;
            buffer
                .0
                .get(view.offset()..view.offset().saturating_add(view.length()))
                .map(std::borrow::Cow::Borrowed)
                .context("its bytes lie outside its buffer")
        }
        gltf::image::Source::Uri { uri, .. } => match uri
            .strip_prefix("data:")
            .and_then(|rest| rest.split_once(";base64,"))
        {
            Some((_, data)) => base64::engine::general_purpose::STANDARD
                .decode(data)
                .map(std::borrow::Cow::Owned)
                .map_err(|e| anyhow::anyhow!("its data URI is not base64: {e}")),
            None => {
                let shown: String = uri.chars().take(60).collect();
                bail!("it is a separate file (`{shown}`) that did not come with the model")
            }
        },
    }
}

/// glTF material index → the index it gets in a list where 0 is the default material.
pub fn material_slots(document: &gltf::Document) -> HashMap<usize, usize> {
    document
        .materials()
        .filter_map(|m| m.index())
        .enumerate()
        .map(|(k, i)| (i, k + 1))
        .collect()
}
