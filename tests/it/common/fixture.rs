//! The CLIP parity fixture in `tests/data/clip-tiny` (copied from the study's shared
//! fixtures: a tiny random CLIP and what Hugging Face transformers computed with it).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/clip-tiny")
}

/// The fixture's images, in the order of the reference tensors.
pub fn images() -> Vec<PathBuf> {
    inputs()["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| dir().join("images").join(n.as_str().unwrap()))
        .collect()
}

pub fn captions() -> Vec<String> {
    inputs()["captions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

fn inputs() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir().join("inputs.json")).unwrap()).unwrap()
}

/// A tensor of a safetensors file: (shape, values as f64).
pub fn tensor(path: &Path, name: &str) -> (Vec<usize>, Vec<f64>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = file
        .tensor(name)
        .unwrap_or_else(|_| panic!("{} has no tensor {name}", path.display()));
    let values = match t.dtype() {
        safetensors::Dtype::F32 => t
            .data()
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        safetensors::Dtype::I64 => t
            .data()
            .chunks(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        other => panic!("{name}: unexpected dtype {other:?}"),
    };
    (t.shape().to_vec(), values)
}

pub fn expected(name: &str) -> (Vec<usize>, Vec<f64>) {
    tensor(&dir().join("expected.safetensors"), name)
}

/// (max, mean) absolute difference.
pub fn diff(a: &[f64], b: &[f64]) -> (f64, f64) {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let mut max = 0f64;
    let mut sum = 0f64;
    for (x, y) in a.iter().zip(b) {
        let d = (x - y).abs();
        assert!(d.is_finite(), "non-finite value");
        max = max.max(d);
        sum += d;
    }
    (max, sum / a.len().max(1) as f64)
}
