//! Objaverse-XL's shape, shared by `xl` and `xl_coordinator`: objects → render 36 views each
//! → embed each view, with a pipeline file for it and for the same with a seventh ring.

// Each benchmark that includes this module uses part of it.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

/// Tasks per object: the object, 36 renders, 36 embeddings.
pub const TASKS_PER_OBJECT: u64 = 1 + 2 * VIEWS;
pub const VIEWS: u64 = 36;
/// The rings' polar angles: 6 azimuths on each, 36 views per object.
pub const RINGS: [u32; 6] = [10, 25, 40, 55, 70, 85];
/// The ring `p-ring.toml` adds: 6 new views per object (17% more).
pub const NEW_RING: u32 = 5;

/// Writes `objects.txt` (`objects` ids), `p.toml` and `p-ring.toml` (with [`NEW_RING`]).
pub fn write_pipelines(dir: &Path, objects: u64) {
    let mut ids = std::io::BufWriter::new(std::fs::File::create(dir.join("objects.txt")).unwrap());
    for i in 0..objects {
        // Objaverse-XL's ids are 32 hex digits (sha256 prefixes of their URLs).
        writeln!(ids, "{}", object_id(i)).unwrap();
    }
    ids.flush().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/clip-tiny");
    let pipeline = |rings: &[u32]| -> String {
        let rings: Vec<String> = rings.iter().map(|r| r.to_string()).collect();
        format!(
            r#"[pipeline]
name = "xl"
cache = "cache"

[stage.objects]
kind = "command"
items_file = "objects.txt"
cmd = 'echo "$MVC_ITEM" > "$MVC_OUT/model.glb"'
outputs = ["model.glb"]

[stage.views]
kind = "render"
inputs = ["objects"]
backend = "builtin"
azimuths = {{ start = 0, step = 60, count = 6 }}
polar = [{}]
distance = 1.5
resolution = 64

[stage.embed]
kind = "embed"
inputs = ["views"]
model = "{}"
device = "cpu"
"#,
            rings.join(", "),
            model.display()
        )
    };
    std::fs::write(dir.join("p.toml"), pipeline(&RINGS)).unwrap();
    let mut ring = RINGS.to_vec();
    ring.insert(0, NEW_RING);
    std::fs::write(dir.join("p-ring.toml"), pipeline(&ring)).unwrap();
}

pub fn object_id(i: u64) -> String {
    let d = blake3::hash(&i.to_le_bytes());
    mvc::text::hex(&d.as_bytes()[..16])
}

/// What a task "makes": 8 bytes of the digest of its stage and item.
pub fn made(stage: &str, item: &str) -> [u8; 8] {
    let mut h = blake3::Hasher::new();
    h.update(stage.as_bytes());
    h.update(item.as_bytes());
    h.finalize().as_bytes()[..8].try_into().unwrap()
}
