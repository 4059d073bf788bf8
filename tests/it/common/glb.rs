//! Small binary glTF files for render tests: a textured cube placed off-centre and scaled
//! (so normalisation shows), and broken files of the kinds Objaverse holds.
#![allow(dead_code)]

use serde_json::json;

/// Packs a glTF JSON document and its binary buffer into a GLB.
pub fn glb(mut json: serde_json::Value, bin: &[u8]) -> Vec<u8> {
    let mut bin = bin.to_vec();
    while !bin.len().is_multiple_of(4) {
        bin.push(0);
    }
    if json.get("buffers").is_none() && !bin.is_empty() {
        json["buffers"] = json!([{ "byteLength": bin.len() }]);
    }
    let mut text = serde_json::to_vec(&json).unwrap();
    while !text.len().is_multiple_of(4) {
        text.push(b' ');
    }
    let total = 12 + 8 + text.len() + if bin.is_empty() { 0 } else { 8 + bin.len() };
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(b"glTF");
    out.extend_from_slice(&2u32.to_le_bytes());
    out.extend_from_slice(&(total as u32).to_le_bytes());
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(b"JSON");
    out.extend_from_slice(&text);
    if !bin.is_empty() {
        out.extend_from_slice(&(bin.len() as u32).to_le_bytes());
        out.extend_from_slice(b"BIN\0");
        out.extend_from_slice(&bin);
    }
    out
}

/// A 4x4 red and white checker with one blue corner (so that no two views of a box are
/// alike), as PNG bytes.
fn checker_png() -> Vec<u8> {
    let img = image::RgbaImage::from_fn(4, 4, |x, y| {
        if (x, y) == (0, 0) {
            image::Rgba([30, 60, 220, 255])
        } else if (x + y) % 2 == 0 {
            image::Rgba([220, 30, 30, 255])
        } else {
            image::Rgba([240, 240, 240, 255])
        }
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// An axis-aligned box with half-sizes `half`, 24 vertices (4 per face, with UVs), 36
/// indices. Returns (positions, uvs, indices).
fn box_mesh(half: [f32; 3]) -> (Vec<[f32; 3]>, Vec<[f32; 2]>, Vec<u16>) {
    let mut positions = Vec::new();
    let mut uvs = Vec::new();
    let mut indices = Vec::new();
    // (axis, sign) of each face.
    for axis in 0..3 {
        for sign in [-1.0f32, 1.0] {
            let (u_axis, v_axis) = ((axis + 1) % 3, (axis + 2) % 3);
            let base = positions.len() as u16;
            for (du, dv) in [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)] {
                let mut p = [0.0f32; 3];
                p[axis] = sign * half[axis];
                p[u_axis] = du * half[u_axis];
                p[v_axis] = dv * half[v_axis];
                positions.push(p);
                uvs.push([(du + 1.0) / 2.0, (dv + 1.0) / 2.0]);
            }
            indices.extend_from_slice(&[base, base + 1, base + 2, base, base + 2, base + 3]);
        }
    }
    (positions, uvs, indices)
}

/// Positions, then texture coordinates, then u16 indices, padded to 4 bytes: the binary
/// chunk, the byte offset of the coordinates and of the indices.
fn mesh_bin(positions: &[[f32; 3]], uvs: &[[f32; 2]], indices: &[u16]) -> (Vec<u8>, usize, usize) {
    let mut bin = Vec::new();
    for c in positions.iter().flatten() {
        bin.extend_from_slice(&c.to_le_bytes());
    }
    let uv_offset = bin.len();
    for c in uvs.iter().flatten() {
        bin.extend_from_slice(&c.to_le_bytes());
    }
    let index_offset = bin.len();
    for i in indices {
        bin.extend_from_slice(&i.to_le_bytes());
    }
    while !bin.len().is_multiple_of(4) {
        bin.push(0);
    }
    (bin, uv_offset, index_offset)
}

/// A textured box with half-sizes `half`, its node translated by `offset` and scaled by
/// `scale`, so a renderer must normalise it to see it whole.
pub fn box_glb(half: [f32; 3], offset: [f32; 3], scale: f32) -> Vec<u8> {
    let (positions, uvs, indices) = box_mesh(half);
    let (mut bin, uv_offset, index_offset) = mesh_bin(&positions, &uvs, &indices);
    let png = checker_png();
    let png_offset = bin.len();
    bin.extend_from_slice(&png);
    let min = [-half[0], -half[1], -half[2]];
    glb(
        json!({
            "asset": {"version": "2.0"},
            "scene": 0,
            "scenes": [{"nodes": [0]}],
            "nodes": [{"children": [1], "translation": offset}, {"mesh": 0, "scale": [scale, scale, scale]}],
            "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "TEXCOORD_0": 1}, "indices": 2, "material": 0}]}],
            "materials": [{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}, "baseColorFactor": [1, 1, 1, 1]}}],
            "textures": [{"source": 0, "sampler": 0}],
            "samplers": [{"magFilter": 9728, "minFilter": 9728}],
            "images": [{"bufferView": 3, "mimeType": "image/png"}],
            "accessors": [
                {"bufferView": 0, "componentType": 5126, "count": positions.len(), "type": "VEC3", "min": min, "max": half},
                {"bufferView": 1, "componentType": 5126, "count": uvs.len(), "type": "VEC2"},
                {"bufferView": 2, "componentType": 5123, "count": indices.len(), "type": "SCALAR"}
            ],
            "bufferViews": [
                {"buffer": 0, "byteOffset": 0, "byteLength": uv_offset},
                {"buffer": 0, "byteOffset": uv_offset, "byteLength": index_offset - uv_offset},
                {"buffer": 0, "byteOffset": index_offset, "byteLength": indices.len() * 2},
                {"buffer": 0, "byteOffset": png_offset, "byteLength": png.len()}
            ]
        }),
        &bin,
    )
}

/// A triangle whose indices point past its vertices.
pub fn out_of_range_glb() -> Vec<u8> {
    let mut bin = Vec::new();
    for c in [0.0f32, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0] {
        bin.extend_from_slice(&c.to_le_bytes());
    }
    for i in [0u16, 1, 7, 0] {
        bin.extend_from_slice(&i.to_le_bytes());
    }
    glb(
        json!({
            "asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
            "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1}]}],
            "accessors": [
                {"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3", "min": [0, 0, 0], "max": [1, 1, 0]},
                {"bufferView": 1, "componentType": 5123, "count": 3, "type": "SCALAR"}
            ],
            "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": 36}, {"buffer": 0, "byteOffset": 36, "byteLength": 6}]
        }),
        &bin,
    )
}

/// A triangle with an infinite coordinate.
pub fn infinite_glb() -> Vec<u8> {
    let mut bin = Vec::new();
    for c in [0.0f32, 0.0, 0.0, f32::INFINITY, 0.0, 0.0, 0.0, 1.0, 0.0] {
        bin.extend_from_slice(&c.to_le_bytes());
    }
    glb(
        json!({
            "asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
            "meshes": [{"primitives": [{"attributes": {"POSITION": 0}}]}],
            "accessors": [{"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3", "min": [0, 0, 0], "max": [1, 1, 0]}],
            "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": 36}]
        }),
        &bin,
    )
}

/// A scene with a node and no mesh.
pub fn empty_glb() -> Vec<u8> {
    glb(
        json!({"asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"name": "nothing"}]}),
        &[],
    )
}

/// An untextured UV sphere of radius 0.5 with `rings` x `segments` quads (2 triangles
/// each): a mesh of the size of an average Objaverse object at rings = 50, segments = 50.
pub fn sphere_glb(rings: u32, segments: u32) -> Vec<u8> {
    let mut positions = Vec::new();
    for r in 0..=rings {
        let theta = std::f32::consts::PI * r as f32 / rings as f32;
        for s in 0..=segments {
            let phi = 2.0 * std::f32::consts::PI * s as f32 / segments as f32;
            positions.push([
                0.5 * theta.sin() * phi.cos(),
                0.5 * theta.cos(),
                0.5 * theta.sin() * phi.sin(),
            ]);
        }
    }
    let mut indices: Vec<u32> = Vec::new();
    let row = segments + 1;
    for r in 0..rings {
        for s in 0..segments {
            let (a, b) = (r * row + s, (r + 1) * row + s);
            indices.extend_from_slice(&[a, b, a + 1, a + 1, b, b + 1]);
        }
    }
    let mut bin = Vec::new();
    for p in &positions {
        for c in p {
            bin.extend_from_slice(&c.to_le_bytes());
        }
    }
    let index_offset = bin.len();
    for i in &indices {
        bin.extend_from_slice(&i.to_le_bytes());
    }
    glb(
        json!({
            "asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
            "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1, "material": 0}]}],
            "materials": [{"pbrMetallicRoughness": {"baseColorFactor": [0.9, 0.6, 0.2, 1.0]}}],
            "accessors": [
                {"bufferView": 0, "componentType": 5126, "count": positions.len(), "type": "VEC3",
                 "min": [-0.5, -0.5, -0.5], "max": [0.5, 0.5, 0.5]},
                {"bufferView": 1, "componentType": 5125, "count": indices.len(), "type": "SCALAR"}
            ],
            "bufferViews": [
                {"buffer": 0, "byteOffset": 0, "byteLength": index_offset},
                {"buffer": 0, "byteOffset": index_offset, "byteLength": indices.len() * 4}
            ]
        }),
        &bin,
    )
}

/// Three objects made by a command stage (each writes its GLB), rendered by a render stage.
/// (The GLB files are written into `dir`, where mvc runs.)
pub fn render_pipeline(dir: &std::path::Path, rings: &str, azimuths: &str) -> String {
    for (name, half) in [
        ("a", [0.5, 0.2, 0.3]),
        ("b", [0.3, 0.3, 0.3]),
        ("c", [0.1, 0.4, 0.2]),
    ] {
        std::fs::write(
            dir.join(format!("{name}.glb")),
            box_glb(half, [0.0; 3], 1.0),
        )
        .unwrap();
    }
    format!(
        r#"
[stage.objects]
kind = "command"
items = ["a", "b", "c"]
files = {{ a = "a.glb", b = "b.glb", c = "c.glb" }}
cmd = 'eval cp "\$MVC_FILE_$(echo "$MVC_ITEM" | tr a-z A-Z)" "$MVC_OUT/model.glb"'

[stage.views]
kind = "render"
inputs = ["objects"]
backend = "builtin"
azimuths = {azimuths}
{rings}
resolution = 64
"#
    )
}

/// A textured box whose image is an external file that is not there.
pub fn missing_texture_glb() -> Vec<u8> {
    let good = box_glb([0.5, 0.5, 0.5], [0.0; 3], 1.0);
    // Re-point the image from the buffer view to a file.
    let json_len = u32::from_le_bytes(good[12..16].try_into().unwrap()) as usize;
    let mut json: serde_json::Value = serde_json::from_slice(&good[20..20 + json_len]).unwrap();
    json["images"] = json!([{"uri": "missing-texture.png"}]);
    let bin_start = 20 + json_len + 8;
    glb(json, &good[bin_start..])
}

/// Packs a `.gltf` with external buffers and images (files beside it) into one GLB: the
/// buffers are concatenated into the binary chunk, each image becomes a buffer view of it.
pub fn gltf_to_glb(path: &std::path::Path) -> Vec<u8> {
    pack_gltf(path).unwrap_or_else(|| panic!("{} cannot be packed", path.display()))
}

/// A model file as the bytes a download would give: a `.glb` as it is; a `.gltf` packed
/// into a GLB when its buffers are files beside it, else (buffers in `data:` URIs or
/// missing, JSON that is not a glTF object) the `.gltf` text itself, broken as it is.
pub fn model_file_bytes(path: &std::path::Path) -> Vec<u8> {
    let raw = std::fs::read(path).unwrap();
    if path.extension().is_some_and(|e| e == "glb") {
        return raw;
    }
    pack_gltf(path).unwrap_or(raw)
}

/// `None` when the file is not a glTF JSON object whose buffers all lie beside it.
fn pack_gltf(path: &std::path::Path) -> Option<Vec<u8>> {
    let dir = path.parent()?;
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let mut bin: Vec<u8> = Vec::new();
    let mut starts = Vec::new();
    let align = |bin: &mut Vec<u8>| {
        while !bin.len().is_multiple_of(4) {
            bin.push(0);
        }
    };
    let buffers = json.get("buffers")?.as_array()?.clone();
    if buffers.is_empty() {
        return None;
    }
    for buffer in buffers {
        let uri = buffer.get("uri")?.as_str()?;
        let bytes = std::fs::read(dir.join(uri)).ok()?;
        align(&mut bin);
        starts.push(bin.len());
        bin.extend(bytes);
    }
    for view in json.get_mut("bufferViews")?.as_array_mut()? {
        let b = view["buffer"].as_u64().unwrap_or(0) as usize;
        let offset = view["byteOffset"].as_u64().unwrap_or(0) as usize;
        view["buffer"] = json!(0);
        view["byteOffset"] = json!(starts.get(b)? + offset);
    }
    let images = json["images"].as_array().cloned().unwrap_or_default();
    for (k, image) in images.iter().enumerate() {
        let Some(uri) = image["uri"].as_str() else {
            continue;
        };
        // An image that is not beside the file stays a reference (a texture left out).
        let Ok(bytes) = std::fs::read(dir.join(uri)) else {
            continue;
        };
        align(&mut bin);
        let view = json["bufferViews"].as_array().unwrap().len();
        json["bufferViews"]
            .as_array_mut()
            .unwrap()
            .push(json!({ "buffer": 0, "byteOffset": bin.len(), "byteLength": bytes.len() }));
        bin.extend(bytes);
        let mime = if uri.ends_with(".png") {
            "image/png"
        } else {
            "image/jpeg"
        };
        json["images"][k] = json!({ "bufferView": view, "mimeType": mime });
    }
    align(&mut bin);
    json["buffers"] = json!([{ "byteLength": bin.len() }]);
    Some(glb(json, &bin))
}

/// A triangle's positions as a GLB buffer and accessor, shared by the hierarchy tests.
fn triangle_json(nodes: serde_json::Value, roots: &[usize]) -> Vec<u8> {
    let mut bin = Vec::new();
    for c in [0.0f32, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0] {
        bin.extend_from_slice(&c.to_le_bytes());
    }
    glb(
        json!({
            "asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": roots}], "nodes": nodes,
            "meshes": [{"primitives": [{"attributes": {"POSITION": 0}}]}],
            "accessors": [{"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3", "min": [0, 0, 0], "max": [1, 1, 0]}],
            "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": 36}]
        }),
        &bin,
    )
}

/// Two nodes, each the child of the other (as assimp-testmodels' RecursiveNodes), one
/// holding a triangle.
pub fn two_node_cycle_glb() -> Vec<u8> {
    triangle_json(
        json!([{"children": [1], "mesh": 0}, {"children": [0]}]),
        &[0],
    )
}

/// A node that is its own child.
pub fn self_cycle_glb() -> Vec<u8> {
    triangle_json(json!([{"children": [0], "mesh": 0}]), &[0])
}

/// A chain of `depth` nodes, each the only child of the one before, each moving its child
/// a little; the deepest holds a triangle. Valid glTF, too deep for a recursive walk.
pub fn deep_chain_glb(depth: usize) -> Vec<u8> {
    let mut nodes: Vec<serde_json::Value> = (0..depth - 1)
        .map(|i| json!({"children": [i + 1], "translation": [0.001, 0.0, 0.0]}))
        .collect();
    nodes.push(json!({"mesh": 0}));
    triangle_json(serde_json::Value::Array(nodes), &[0])
}

/// A unit quad (two triangles) drawn as `mode` (4 list, 5 strip, 6 fan) from `indices`
/// over the corners (0,0), (1,0), (0,1), (1,1), in the z = 0 plane.
pub fn quad_glb(mode: u32, indices: &[u16]) -> Vec<u8> {
    let mut bin = Vec::new();
    for c in [
        0.0f32, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0,
    ] {
        bin.extend_from_slice(&c.to_le_bytes());
    }
    for i in indices {
        bin.extend_from_slice(&i.to_le_bytes());
    }
    glb(
        json!({
            "asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
            "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1, "mode": mode}]}],
            "accessors": [
                {"bufferView": 0, "componentType": 5126, "count": 4, "type": "VEC3", "min": [0, 0, 0], "max": [1, 1, 0]},
                {"bufferView": 1, "componentType": 5123, "count": indices.len(), "type": "SCALAR"}
            ],
            "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": 48}, {"buffer": 0, "byteOffset": 48, "byteLength": indices.len() * 2}]
        }),
        &bin,
    )
}

/// `n` overlapping triangles, each filling the whole view, a little apart in depth: every
/// one covers every sample, so the built-in renderer takes long on purpose (n x samples).
pub fn slow_glb(n: usize) -> Vec<u8> {
    let mut bin = Vec::new();
    for k in 0..n {
        let z = k as f32 * 1e-4;
        for c in [-50.0f32, -50.0, z, 50.0, -50.0, z, 0.0, 80.0, z] {
            bin.extend_from_slice(&c.to_le_bytes());
        }
    }
    // A small cube-ish extent so that normalisation keeps the big triangles big: the object
    // is 100 wide, and the camera sits inside its bounding box's scale.
    glb(
        json!({
            "asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
            "meshes": [{"primitives": [{"attributes": {"POSITION": 0}}]}],
            "accessors": [{"bufferView": 0, "componentType": 5126, "count": 3 * n, "type": "VEC3"}],
            "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": 36 * n}]
        }),
        &bin,
    )
}

/// Writes each `(name, GLB bytes)` into `dir` and returns a `command` stage `objects` whose
/// item `name` outputs that file as `model.glb`.
pub fn objects_stage(dir: &std::path::Path, objects: &[(&str, Vec<u8>)]) -> String {
    let mut items = Vec::new();
    let mut files = Vec::new();
    for (name, bytes) in objects {
        std::fs::write(dir.join(format!("{name}.glb")), bytes).unwrap();
        items.push(format!("\"{name}\""));
        files.push(format!("{name} = \"{name}.glb\""));
    }
    format!(
        "[stage.objects]\nkind = \"command\"\nitems = [{}]\nfiles = {{ {} }}\n\
         cmd = 'eval cp \"\\$MVC_FILE_$(echo \"$MVC_ITEM\" | tr a-z A-Z)\" \"$MVC_OUT/model.glb\"'\n",
        items.join(", "),
        files.join(", ")
    )
}

/// A triangle whose material's texture is `png` (embedded in the binary chunk).
pub fn textured_triangle_glb(png: &[u8]) -> Vec<u8> {
    let mut bin = Vec::new();
    for c in [0.0f32, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0] {
        bin.extend_from_slice(&c.to_le_bytes());
    }
    for c in [0.0f32, 0.0, 1.0, 0.0, 0.0, 1.0] {
        bin.extend_from_slice(&c.to_le_bytes());
    }
    let image_at = bin.len();
    bin.extend_from_slice(png);
    glb(
        json!({
            "asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
            "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "TEXCOORD_0": 1}, "material": 0}]}],
            "materials": [{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}}}],
            "textures": [{"source": 0}],
            "images": [{"bufferView": 2, "mimeType": "image/png"}],
            "accessors": [
                {"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3", "min": [0, 0, 0], "max": [1, 1, 0]},
                {"bufferView": 1, "componentType": 5126, "count": 3, "type": "VEC2"}
            ],
            "bufferViews": [
                {"buffer": 0, "byteOffset": 0, "byteLength": 36},
                {"buffer": 0, "byteOffset": 36, "byteLength": 24},
                {"buffer": 0, "byteOffset": image_at, "byteLength": png.len()}
            ]
        }),
        &bin,
    )
}

/// A PNG whose header claims `side` x `side` pixels (a few bytes that would decode to
/// gigabytes): a 1x1 image with its IHDR rewritten and its checksum fixed.
pub fn png_claiming(side: u32) -> Vec<u8> {
    let img = image::RgbaImage::from_pixel(1, 1, image::Rgba([200, 10, 10, 255]));
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let mut png = png.into_inner();
    // Signature (8), length (4), "IHDR" (4), width (4), height (4), ..., CRC after 13 bytes.
    png[16..20].copy_from_slice(&side.to_be_bytes());
    png[20..24].copy_from_slice(&side.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&png[12..29]);
    png[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    png
}

/// A triangle list whose positions are a sparse accessor declaring `count` vertices with
/// one stored value: a few bytes that claim gigabytes.
pub fn sparse_bomb_glb(count: u64) -> Vec<u8> {
    let mut bin = Vec::new();
    bin.extend_from_slice(&0u32.to_le_bytes());
    for c in [1.0f32, 1.0, 1.0] {
        bin.extend_from_slice(&c.to_le_bytes());
    }
    glb(
        json!({
            "asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
            "meshes": [{"primitives": [{"attributes": {"POSITION": 0}}]}],
            "accessors": [{
                "componentType": 5126, "count": count, "type": "VEC3",
                "sparse": {"count": 1,
                    "indices": {"bufferView": 0, "componentType": 5125},
                    "values": {"bufferView": 1}}
            }],
            "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": 4}, {"buffer": 0, "byteOffset": 4, "byteLength": 12}]
        }),
        &bin,
    )
}

/// A pipeline whose built-in render of `slow` takes minutes (20,000 triangles filling the
/// view at 1024 samples a side), beside a plain box `good` when `with_good`, with the
/// render stage's `timeout` in seconds: what the timeout and stuck-thread tests run.
pub fn slow_render_pipeline(dir: &std::path::Path, with_good: bool, timeout: u32) -> String {
    let mut objects = vec![("slow", slow_glb(20_000))];
    if with_good {
        objects.push(("good", box_glb([0.5, 0.2, 0.3], [0.0; 3], 1.0)));
    }
    format!(
        "[executor]\ncpu = 2\n\n{}\n[stage.views]\nkind = \"render\"\ninputs = [\"objects\"]\n\
         backend = \"builtin\"\nazimuths = [90]\npolar = [60]\nresolution = 128\n\
         supersample = 8\ntimeout = {timeout}\n",
        objects_stage(dir, &objects)
    )
}

/// A plain grey "table": a slab on a pillar (glTF is Y-up: the slab on top), one mesh, no
/// texture, double-sided (EEVEE culls the back faces of a single-sided glTF material, and
/// this mesh is not wound consistently). The slab's underside faces straight down, away
/// from the study's area light above, and the 80° ring's cameras (10° above the horizon,
/// under the slab's underside) see it: only the world's light reaches it.
pub fn slab_on_pillar_glb() -> Vec<u8> {
    let mut positions = Vec::new();
    let mut indices: Vec<u16> = Vec::new();
    for (half, centre) in [
        ([0.5f32, 0.05, 0.5], [0.0f32, 0.45, 0.0]),
        ([0.1, 0.45, 0.1], [0.0, -0.05, 0.0]),
    ] {
        let (p, _, i) = box_mesh(half);
        let base = positions.len() as u16;
        positions.extend(
            p.iter()
                .map(|v| [v[0] + centre[0], v[1] + centre[1], v[2] + centre[2]]),
        );
        indices.extend(i.iter().map(|k| k + base));
    }
    let (bin, _, index_offset) = mesh_bin(&positions, &[], &indices);
    glb(
        json!({
            "asset": {"version": "2.0"},
            "scene": 0,
            "scenes": [{"nodes": [0]}],
            "nodes": [{"mesh": 0}],
            "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1, "material": 0}]}],
            "materials": [{"pbrMetallicRoughness": {"baseColorFactor": [0.8, 0.8, 0.8, 1], "metallicFactor": 0}, "doubleSided": true}],
            "accessors": [
                {"bufferView": 0, "componentType": 5126, "count": positions.len(), "type": "VEC3", "min": [-0.5, -0.5, -0.5], "max": [0.5, 0.5, 0.5]},
                {"bufferView": 1, "componentType": 5123, "count": indices.len(), "type": "SCALAR"}
            ],
            "bufferViews": [
                {"buffer": 0, "byteOffset": 0, "byteLength": index_offset},
                {"buffer": 0, "byteOffset": index_offset, "byteLength": indices.len() * 2}
            ]
        }),
        &bin,
    )
}
