//! Whether real Blender (and Debian's assimp-testmodels) is here to test with, and the real
//! models the end-to-end test and the render benchmark use.

use std::path::Path;

/// Debian's assimp-testmodels: real glTF models.
pub const MODELS: &str = "/usr/share/assimp/models/glTF2";

/// Six real models (paths under [`MODELS`]) with captions: three GLBs as shipped, three
/// `.gltf` with external buffers and textures.
pub const REAL_MODELS: [(&str, &str); 6] = [
    ("BoxTextured-glTF-Binary/BoxTextured.glb", "a textured box"),
    (
        "2CylinderEngine-glTF-Binary/2CylinderEngine.glb",
        "a two-cylinder engine",
    ),
    ("BoxBadNormals-glTF-Binary/BoxBadNormals.glb", "a plain box"),
    (
        "glTF-Sample-Models/AnimatedMorphCube-glTF/AnimatedMorphCube.gltf",
        "a morphing cube",
    ),
    (
        "BoxTexcoords-glTF/boxTexcoords.gltf",
        "a box with texture coordinates",
    ),
    (
        "textureTransform/TextureTransformTest.gltf",
        "a board of arrows",
    ),
];

/// One of [`REAL_MODELS`] as GLB bytes (a `.gltf` packed into one).
pub fn real_model_glb(file: &str) -> Vec<u8> {
    let path = Path::new(MODELS).join(file);
    if file.ends_with(".glb") {
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    } else {
        super::glb::gltf_to_glb(&path)
    }
}

/// True when Blender (and, with `models`, the test models) is installed. Otherwise the test
/// says so and is skipped, unless MVC_REQUIRE_BLENDER=1 (which `.ci/run` sets), which makes
/// it fail instead.
pub fn have_blender(models: bool) -> bool {
    let blender = mvc::render::blender::find_blender(None).is_some();
    let have_models = !models || Path::new(MODELS).is_dir();
    if blender && have_models {
        return true;
    }
    let missing = if blender {
        "assimp-testmodels (apt-get install assimp-testmodels)"
    } else {
        "Blender (apt-get install blender python3-numpy)"
    };
    if std::env::var("MVC_REQUIRE_BLENDER").as_deref() == Ok("1") {
        panic!("MVC_REQUIRE_BLENDER=1 but {missing} is not installed");
    }
    eprintln!("SKIPPED: {missing} is not installed; this test needs it");
    false
}
