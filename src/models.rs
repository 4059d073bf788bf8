//! Models from the Hugging Face hub (or the mirror `HF_ENDPOINT` names): each file is
//! downloaded once into the cache's blob store, and `cache/models/<owner>--<name>@<revision>.json`
//! remembers which blob is which file.
//! (This sits above `store`, which it fills, and below the kinds and commands that load
//! models; `clip` itself reads only files.) Later runs read the blobs without asking the hub, so a
//! moving revision such as `main` is resolved once per cache; pin a commit to be exact.

use crate::clip::{ModelFiles, ModelSource, PREPROCESSOR_FILE, REQUIRED_FILES};
use crate::diag::NotYetAvailable;
use crate::hf::{FetchError, HubClient, RetryPolicy};
use crate::meter::ByteMeter;
use crate::store::Store;
use crate::task::Digest;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A model's files: a folder's own, or a hub model's blobs in the cache `store` opens
/// (downloaded first when missing; only a hub model opens it).
pub fn model_files<S: std::borrow::Borrow<Store>>(
    source: &ModelSource,
    store: impl FnOnce() -> Result<S>,
) -> Result<ModelFiles> {
    match source {
        ModelSource::Dir(dir) => ModelFiles::in_dir(dir),
        ModelSource::Hub { repo, revision } => fetch_model(store()?.borrow(), repo, revision),
    }
}

/// The blobs of one model at one revision.
#[derive(Debug, Serialize, Deserialize)]
pub struct ModelManifest {
    pub repo: String,
    pub revision: String,
    /// File name → (blob digest, size).
    pub files: BTreeMap<String, (Digest, u64)>,
}

/// Where the cache keeps its model manifests (gc keeps their blobs).
pub fn manifests_dir(store: &Store) -> PathBuf {
    store.dir().join("models")
}

fn manifest_path(store: &Store, repo: &str, revision: &str) -> PathBuf {
    manifests_dir(store).join(format!(
        "{}@{}.json",
        repo.replace('/', "--"),
        revision.replace('/', "--")
    ))
}

/// Every blob the cache's model manifests name.
pub fn manifest_blobs(store: &Store) -> Result<Vec<Digest>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(manifests_dir(store)) else {
        return Ok(out);
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read(&path)?;
            let manifest: ModelManifest = serde_json::from_slice(&text)
                .with_context(|| format!("reading {}", path.display()))?;
            out.extend(manifest.files.values().map(|(d, _)| *d));
        }
    }
    Ok(out)
}

impl ModelManifest {
    fn files(&self, store: &Store) -> Option<ModelFiles> {
        let path = |name: &str| {
            let (digest, size) = self.files.get(name)?;
            (store.blobs().size(digest) == Some(*size)).then(|| store.blobs().path(digest))
        };
        Some(ModelFiles {
            config: path("config.json")?,
            weights: path("model.safetensors")?,
            tokenizer: path("tokenizer.json")?,
            preprocessor: match self.files.get(PREPROCESSOR_FILE) {
                Some(_) => Some(path(PREPROCESSOR_FILE)?),
                None => None,
            },
        })
    }
}

/// The files of `repo` at `revision`, downloaded into the cache unless already there.
pub fn fetch_model(store: &Store, repo: &str, revision: &str) -> Result<ModelFiles> {
    let manifest_file = manifest_path(store, repo, revision);
    if let Ok(bytes) = std::fs::read(&manifest_file)
        && let Ok(manifest) = serde_json::from_slice::<ModelManifest>(&bytes)
        && let Some(files) = manifest.files(store)
    {
        return Ok(files);
    }
    // Fewer retries than for objects: a model that cannot be reached defers its stage, and
    // the rest of the pipeline should not wait long for that.
    let policy = RetryPolicy {
        retries: 3,
        ..RetryPolicy::default()
    };
    let client = HubClient::from_env(repo, revision, policy)?;
    // The download is async; this may be called from inside the runtime (planning), so it
    // runs on a thread of its own with a runtime of its own.
    let files = std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<BTreeMap<String, (Digest, u64)>> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(download_all(store, &client, repo, revision))
            })
            .join()
            .unwrap_or_else(|_| bail!("the model download thread panicked"))
    })?;
    let manifest = ModelManifest {
        repo: repo.to_string(),
        revision: revision.to_string(),
        files,
    };
    std::fs::create_dir_all(manifests_dir(store))?;
    // Written whole, then renamed: a reader never sees half a manifest.
    let mut tmp = tempfile::NamedTempFile::new_in(store.tmp_dir())?;
    std::io::Write::write_all(&mut tmp, &serde_json::to_vec_pretty(&manifest)?)?;
    tmp.persist(&manifest_file)
        .with_context(|| format!("writing {}", manifest_file.display()))?;
    manifest
        .files(store)
        .context("the downloaded model's blobs vanished from the cache")
}

async fn download_all(
    store: &Store,
    client: &HubClient,
    repo: &str,
    revision: &str,
) -> Result<BTreeMap<String, (Digest, u64)>> {
    let meter = ByteMeter::default();
    let kill = tokio_util::sync::CancellationToken::new();
    let mut files = BTreeMap::new();
    for (name, required) in REQUIRED_FILES
        .iter()
        .map(|n| (*n, true))
        .chain([(PREPROCESSOR_FILE, false)])
    {
        let url = client.url(name);
        let dest = store
            .tmp_dir()
            .join(format!("model-{}-{name}", fastrand::u64(..)));
        tracing::info!("downloading {url}");
        match client.fetch_url_to_file(&url, &dest, &meter, &kill).await {
            Ok(_) => {}
            Err(FetchError::NotFound(_)) if !required => {
                crate::hf::forget_partial(&dest);
                continue;
            }
            Err(FetchError::Transient(e)) => {
                crate::hf::forget_partial(&dest);
                // The network, not the model: worth trying again in a later run.
                return Err(NotYetAvailable(format!(
                    "the model {repo} at revision {revision} is not in the cache and could not \
                     be downloaded ({name}: {e}); the next run tries again"
                ))
                .into());
            }
            Err(e) => {
                crate::hf::forget_partial(&dest);
                bail!(
                    "downloading {name} of the model {repo} at revision {revision}: {e} (no \
                     local folder named {repo} exists either)"
                );
            }
        }
        let stored = store.blobs().put_file(&dest);
        crate::hf::forget_partial(&dest);
        let (digest, size) = stored.with_context(|| format!("storing {name} in the cache"))?;
        files.insert(name.to_string(), (digest, size));
    }
    Ok(files)
}
