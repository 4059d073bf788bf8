//! Whether real Blender (and Debian's assimp-testmodels) is here to test with.

use std::path::Path;

/// Debian's assimp-testmodels: real glTF models.
pub const MODELS: &str = "/usr/share/assimp/models/glTF2";

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
