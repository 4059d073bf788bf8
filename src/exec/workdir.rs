//! A task's work directory: inputs materialised from the cache, outputs moved into it.

use crate::exec::kind::Binding;
use crate::store::Store;
use crate::store::blobs::BlobError;
use crate::store::records::{INLINE_MAX, Output};
use crate::task::Digest;
use std::fs;
use std::path::{Component, Path, PathBuf};

/// What a task reads from an input is part of the kinds' API.
pub use super::kind::{InputData, LeftOut};

/// An input blob that failed verification (or vanished) while being materialised.
#[derive(Debug)]
pub struct CorruptInput {
    pub stage: String,
    pub item: String,
    pub error: BlobError,
}

/// Writes an input's files under `dir`: the item's outputs directly for a per-item input,
/// one sub-directory per upstream item for an all-at-once input.
pub fn materialize_input(store: &Store, dir: &Path, input: &InputData) -> Result<(), CorruptInput> {
    for (item, result) in &input.items {
        let base = match input.binding {
            Binding::Item | Binding::ItemIfPresent => dir.to_path_buf(),
            Binding::All | Binding::Expansion => {
                // Ids are checked when tasks are resolved; a result recorded before that
                // check with an id that is not a plain name is not written anywhere.
                if let Err(why) = crate::task::validate_item_id(item) {
                    tracing::warn!("{}: not given to the task: {why}", input.stage);
                    continue;
                }
                dir.join(item)
            }
        };
        for output in &result.outputs {
            let dest = base.join(safe_relative(&output.name).ok_or_else(|| CorruptInput {
                stage: input.stage.clone(),
                item: item.clone(),
                error: BlobError::Io {
                    digest: output.digest,
                    source: std::io::Error::other(format!(
                        "output name `{}` is not a plain relative path",
                        output.name
                    )),
                },
            })?);
            store
                .materialize_output(output, &dest)
                .map_err(|error| CorruptInput {
                    stage: input.stage.clone(),
                    item: item.clone(),
                    error,
                })?;
        }
        if result.outputs.is_empty() && input.binding == Binding::All {
            let _ = fs::create_dir_all(&base);
        }
    }
    Ok(())
}

/// A relative path with no `..`, root or prefix components.
pub fn safe_relative(name: &str) -> Option<PathBuf> {
    let path = Path::new(name);
    let ok = !name.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
    ok.then(|| path.to_path_buf())
}

/// Moves every file under `out_dir` into the store (small ones inline), sorted by name.
pub fn ingest_outputs(store: &Store, out_dir: &Path) -> Result<Vec<Output>, String> {
    let mut files = Vec::new();
    collect_files(out_dir, out_dir, &mut files)?;
    files.sort();
    let mut outputs = Vec::with_capacity(files.len());
    for (name, path) in files {
        outputs.push(output_from_file(store, name, &path)?);
    }
    Ok(outputs)
}

/// An output made of a file: moved into the store, or kept inline when small.
pub fn output_from_file(store: &Store, name: String, path: &Path) -> Result<Output, String> {
    let size = fs::metadata(path)
        .map_err(|e| format!("reading output `{name}`: {e}"))?
        .len();
    if size <= INLINE_MAX {
        let bytes = fs::read(path).map_err(|e| format!("reading output `{name}`: {e}"))?;
        let _ = fs::remove_file(path);
        return output_from_bytes(store, name, bytes);
    }
    let (digest, size) = store
        .blobs()
        .put_file(path)
        .map_err(|e| format!("storing output `{name}`: {e}"))?;
    Ok(Output {
        name,
        digest,
        size,
        inline: None,
    })
}

/// An output made in memory: kept inline when small, else written to the store.
pub fn output_from_bytes(store: &Store, name: String, bytes: Vec<u8>) -> Result<Output, String> {
    if bytes.len() as u64 <= INLINE_MAX {
        return Ok(Output {
            name,
            digest: Digest::of(&bytes),
            size: bytes.len() as u64,
            inline: Some(bytes),
        });
    }
    let digest = store
        .blobs()
        .put_bytes(&bytes)
        .map_err(|e| format!("storing output `{name}`: {e}"))?;
    Ok(Output {
        name,
        digest,
        size: bytes.len() as u64,
        inline: None,
    })
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<(), String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("listing {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("listing {}: {e}", dir.display()))?;
        let path = entry.path();
        let rel = path.strip_prefix(root).expect("walk stays under its root");
        let name = rel
            .to_str()
            .ok_or_else(|| format!("output file name {rel:?} is not UTF-8; rename it"))?
            .to_string();
        let kind = entry
            .file_type()
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        if kind.is_symlink() {
            return Err(format!(
                "output `{name}` is a symbolic link; copy the file into $MVC_OUT instead"
            ));
        } else if kind.is_dir() {
            collect_files(root, &path, out)?;
        } else if kind.is_file() {
            out.push((name, path));
        } else {
            return Err(format!("output `{name}` is not a regular file"));
        }
    }
    Ok(())
}
