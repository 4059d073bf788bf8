//! Writing safetensors files that numpy (`safetensors.numpy.load_file`) and PyTorch load
//! directly: written to a temporary file next to the destination, then renamed, so a reader
//! never sees half a file.

use anyhow::{Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// One tensor: name, shape, and its little-endian data.
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    pub data: Vec<u8>,
}

impl NamedTensor {
    pub fn f32(name: &str, shape: Vec<usize>, values: &[f32]) -> NamedTensor {
        NamedTensor {
            name: name.to_string(),
            shape,
            dtype: Dtype::F32,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
    pub fn i64(name: &str, shape: Vec<usize>, values: &[i64]) -> NamedTensor {
        NamedTensor {
            name: name.to_string(),
            shape,
            dtype: Dtype::I64,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

pub fn write(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|t| {
            TensorView::new(t.dtype, t.shape.clone(), &t.data)
                .map(|v| (t.name.as_str(), v))
                .with_context(|| format!("internal: tensor {} does not fit its shape", t.name))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::tensor::serialize(views, Some(metadata))
        .context("encoding the safetensors file")?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("writing into {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, &bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
