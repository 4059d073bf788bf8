//! The four graph stages of a download stage, as stage kinds.

use super::fetch::{check_glb, check_json_gz, fetch_output};
use super::objaverse::{
    Manifest, OBJECT_PATHS, SHARDS, read_cap3d, read_object_paths, shard_name, shard_of, shard_path,
};
use super::select::select;
use super::{Cap3dSource, DownloadConfig};
use crate::exec::blocking_if;
use crate::exec::workdir::{InputData, output_from_bytes};
use crate::resources::Resources;
use crate::stages::{
    Binding, ExecCtx, ExpandCtx, Expansion, ParamCtx, PlannedItem, StageKind, StageOutputs,
    TaskOutcome, UnitTask,
};
use crate::store::Store;
use crate::store::records::Output;
use crate::store::records::now_ms;
use crate::task::ParamSlice;
use anyhow::{Context, Result, anyhow};
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Instant;

/// Bumped when a kind's outputs change for the same inputs.
const PATHS_VERSION: u32 = 1;
const METADATA_VERSION: u32 = 1;
const SELECT_VERSION: u32 = 1;
const OBJECTS_VERSION: u32 = 1;

/// The item of the selection task.
pub const SELECTION_ITEM: &str = "selection";
pub const MANIFEST: &str = "manifest.json";
pub const METADATA: &str = "metadata.json";

const NET: Resources = Resources {
    cpu: 0,
    gpu: 0,
    blender: 0,
    net: 1,
};

/// What identifies a file of the dataset: which dataset, at which revision (never the
/// endpoint: a mirror serves the same files).
fn dataset_params(config: &DownloadConfig) -> ParamSlice {
    ParamSlice::from([
        ("dataset".to_string(), config.dataset.clone()),
        ("revision".to_string(), config.revision.clone()),
    ])
}

fn item(id: &str) -> PlannedItem {
    PlannedItem {
        id: Arc::from(id),
        params: Default::default(),
        bytes: None,
        source: None,
    }
}

/// The bytes of output `name` of item `item` of an upstream stage's results.
fn upstream_output(
    store: &Store,
    outputs: Option<&StageOutputs>,
    item: &str,
    name: &str,
) -> Result<Vec<u8>> {
    let outputs = outputs
        .and_then(|o| o.get(item))
        .ok_or_else(|| anyhow!("internal: upstream item `{item}` has no result"))?;
    let output = outputs
        .iter()
        .find(|o| o.name == name)
        .ok_or_else(|| anyhow!("upstream item `{item}` has no output `{name}`"))?;
    Ok(store.read_output(output)?)
}

/// The selection's manifest, from the results of a `NAME.select` stage.
pub fn read_selection(store: &Store, outputs: Option<&StageOutputs>) -> Result<Manifest> {
    let bytes = upstream_output(store, outputs, SELECTION_ITEM, MANIFEST)?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("reading the {MANIFEST} of the selection"))
}

/// `object-paths.json.gz`.
#[derive(Debug)]
pub struct PathsKind(pub Arc<DownloadConfig>);

#[async_trait::async_trait]
impl StageKind for PathsKind {
    fn kind(&self) -> &'static str {
        "download.paths"
    }
    fn version(&self) -> u32 {
        PATHS_VERSION
    }
    fn resources(&self) -> Resources {
        NET
    }
    fn shared_params(&self, _: &ParamCtx) -> Result<ParamSlice> {
        Ok(dataset_params(&self.0))
    }
    fn expand(&self, _: &ExpandCtx) -> Result<Expansion> {
        Ok(Expansion {
            items: vec![item(OBJECT_PATHS)],
            bindings: vec![],
        })
    }
    async fn execute(&self, ctx: &ExecCtx, unit: Vec<UnitTask>) -> Vec<TaskOutcome> {
        let mut outcomes = Vec::with_capacity(unit.len());
        for _ in &unit {
            outcomes.push(
                fetch_output(
                    ctx,
                    &self.0,
                    OBJECT_PATHS,
                    OBJECT_PATHS.into(),
                    check_json_gz,
                )
                .await,
            );
        }
        outcomes
    }
}

/// The metadata shards: all of them to select by category, those of the listed uids
/// otherwise.
#[derive(Debug)]
pub struct MetadataKind(pub Arc<DownloadConfig>);

#[async_trait::async_trait]
impl StageKind for MetadataKind {
    fn kind(&self) -> &'static str {
        "download.metadata"
    }
    fn version(&self) -> u32 {
        METADATA_VERSION
    }
    fn resources(&self) -> Resources {
        NET
    }
    fn shared_params(&self, _: &ParamCtx) -> Result<ParamSlice> {
        Ok(dataset_params(&self.0))
    }
    fn expands_from_outputs(&self) -> bool {
        true
    }
    fn expand(&self, ctx: &ExpandCtx) -> Result<Expansion> {
        let shards: Vec<String> = match &self.0.uids {
            None => (0..SHARDS).map(shard_name).collect(),
            Some(uids) => {
                let bytes = upstream_output(ctx.store, ctx.outputs[0], OBJECT_PATHS, OBJECT_PATHS)?;
                let wanted: HashSet<&str> = uids.iter().map(String::as_str).collect();
                let paths = read_object_paths(&bytes, OBJECT_PATHS, &|u| wanted.contains(u))?;
                let shards: BTreeSet<String> = paths
                    .values()
                    .filter_map(|p| shard_of(p).map(str::to_string))
                    .collect();
                shards.into_iter().collect()
            }
        };
        Ok(Expansion {
            items: shards.iter().map(|s| item(s)).collect(),
            bindings: vec![Binding::Expansion],
        })
    }
    async fn execute(&self, ctx: &ExecCtx, unit: Vec<UnitTask>) -> Vec<TaskOutcome> {
        let mut outcomes = Vec::with_capacity(unit.len());
        for task in &unit {
            outcomes.push(
                fetch_output(
                    ctx,
                    &self.0,
                    &shard_path(&task.item),
                    format!("{}.json.gz", task.item),
                    check_json_gz,
                )
                .await,
            );
        }
        outcomes
    }
}

/// The selection's inputs: `object-paths.json.gz` (read whole) and the metadata shards
/// (read one by one while selecting).
struct SelectInputs {
    object_paths: Vec<u8>,
    shards: Vec<(String, Output)>,
    shard_stage: String,
}

/// A metadata shard whose blob failed verification while the selection read it.
#[derive(Debug, thiserror::Error)]
#[error("{stage}/{item}: {error}")]
struct CorruptShard {
    stage: String,
    item: String,
    error: String,
}

/// The selection and captions.
#[derive(Debug)]
pub struct SelectKind(pub Arc<DownloadConfig>);

impl SelectKind {
    /// Reads `object-paths.json.gz`; a corrupt blob names its producer, so it runs again.
    fn read_inputs(store: &Store, inputs: &[InputData]) -> Result<SelectInputs, TaskOutcome> {
        let corrupt = |input: &InputData, item: &str, e: crate::store::blobs::BlobError| {
            TaskOutcome::InputCorrupt {
                stage: input.stage.clone(),
                item: item.to_string(),
                error: e.to_string(),
            }
        };
        let paths_input = &inputs[0];
        let (item, result) = paths_input
            .items
            .first()
            .ok_or_else(|| TaskOutcome::Failed {
                error: format!("{OBJECT_PATHS} is missing from the inputs"),
                stderr: None,
            })?;
        let output = result.outputs.first().ok_or_else(|| TaskOutcome::Failed {
            error: format!("{OBJECT_PATHS} has no output"),
            stderr: None,
        })?;
        let object_paths = store
            .read_output(output)
            .map_err(|e| corrupt(paths_input, item, e))?;
        let shards = inputs[1]
            .items
            .iter()
            .filter_map(|(item, r)| r.outputs.first().map(|o| (item.clone(), o.clone())))
            .collect();
        Ok(SelectInputs {
            object_paths,
            shards,
            shard_stage: inputs[1].stage.clone(),
        })
    }

    /// Cap3D's captions, read. A local file that is wrong is the pipeline's failure (it is
    /// recorded; a fixed file has another digest and so another key). What arrives from a URL
    /// and does not read (an HTML page from a proxy or a login wall, a cut-off file) is a
    /// damaged arrival, as is a file this machine cannot write or read back: it fails this
    /// run only, and the next run fetches it again.
    async fn cap3d(&self, ctx: &ExecCtx) -> Result<Option<std::collections::HashMap<String, String>>, TaskOutcome> {
        let (bytes, what, from_url) = match &self.0.cap3d {
            None => return Ok(None),
            Some(Cap3dSource::File(path)) => {
                let bytes = std::fs::read(path).map_err(|e| TaskOutcome::Failed {
                    error: format!("cannot read cap3d_csv `{}`: {e}", path.display()),
                    stderr: None,
                })?;
                (bytes, path.display().to_string(), false)
            }
            Some(Cap3dSource::Url(url)) => {
                let dest = ctx.store.tmp_dir().join(format!(
                    "cap3d-{}.csv",
                    blake3::hash(url.as_bytes()).to_hex()
                ));
                let client = self.0.client().map_err(TaskOutcome::Aborted)?;
                match client
                    .fetch_url_to_file(url, &dest, &ctx.meter, &ctx.kill)
                    .await
                {
                    Ok(_) => {}
                    Err(
                        crate::hf::FetchError::Permanent(error) | crate::hf::FetchError::NotFound(error),
                    ) => {
                        return Err(TaskOutcome::Failed {
                            error: format!("cap3d_csv: {error}"),
                            stderr: None,
                        });
                    }
                    Err(crate::hf::FetchError::Transient(error)) => {
                        return Err(TaskOutcome::Aborted(format!("cap3d_csv: {error}")));
                    }
                    Err(crate::hf::FetchError::Cancelled) => return Err(TaskOutcome::Cancelled),
                }
                let bytes = std::fs::read(&dest).map_err(|e| {
                    TaskOutcome::Aborted(format!(
                        "cap3d_csv: reading {} back: {e}; free disk space or make the cache \
                         readable, then run again (nothing was recorded as failed)",
                        dest.display()
                    ))
                })?;
                crate::hf::forget_partial(&dest);
                (bytes, url.clone(), true)
            }
        };
        let looks_html = bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|&b| b == b'<');
        if from_url && looks_html {
            return Err(TaskOutcome::Aborted(format!(
                "cap3d_csv {what} answered with an HTML page, not Cap3D's CSV (a login page, \
                 a proxy or an error page?): check the URL; nothing was recorded as failed, \
                 and the next run fetches it again"
            )));
        }
        let parsed = blocking_if(true, move || read_cap3d(&bytes, &what)).await;
        match parsed {
            Ok(captions) => Ok(Some(captions)),
            Err(e) if from_url => Err(TaskOutcome::Aborted(format!(
                "{e:#}; the file may have arrived damaged: nothing was recorded as failed, and \
                 the next run fetches it again"
            ))),
            Err(e) => Err(TaskOutcome::Failed {
                error: format!("{e:#}"),
                stderr: None,
            }),
        }
    }

    async fn run(&self, ctx: &ExecCtx, task: &UnitTask) -> TaskOutcome {
        let started_ms = now_ms();
        let clock = Instant::now();
        let inputs = match Self::read_inputs(&ctx.store, &task.inputs) {
            Ok(x) => x,
            Err(outcome) => return outcome,
        };
        let cap3d = match self.cap3d(ctx).await {
            Ok(c) => c,
            Err(outcome) => return outcome,
        };
        let config = self.0.clone();
        let store = ctx.store.clone();
        let made = blocking_if(true, move || -> Result<_> {
            let names: Vec<String> = inputs.shards.iter().map(|(n, _)| n.clone()).collect();
            let read = |name: &str| -> Result<Vec<u8>> {
                let (_, output) = inputs
                    .shards
                    .iter()
                    .find(|(n, _)| n == name)
                    .expect("only listed shards are read");
                store.read_output(output).map_err(|e| {
                    CorruptShard {
                        stage: inputs.shard_stage.clone(),
                        item: name.to_string(),
                        error: e.to_string(),
                    }
                    .into()
                })
            };
            let (manifest, metadata) =
                select(&config, &inputs.object_paths, &names, &read, cap3d.as_ref())?;
            let manifest = serde_json::to_vec_pretty(&manifest)?;
            let outputs = vec![
                output_from_bytes(&store, MANIFEST.into(), manifest).map_err(|e| anyhow!(e))?,
                output_from_bytes(&store, METADATA.into(), metadata).map_err(|e| anyhow!(e))?,
            ];
            Ok(outputs)
        })
        .await;
        match made {
            Ok(outputs) => TaskOutcome::Success {
                outputs,
                stdout: None,
                stderr: None,
                started_ms,
                duration_ms: clock.elapsed().as_millis() as u64,
            },
            Err(e) => match e.downcast_ref::<CorruptShard>() {
                Some(c) => TaskOutcome::InputCorrupt {
                    stage: c.stage.clone(),
                    item: c.item.clone(),
                    error: c.error.clone(),
                },
                None => TaskOutcome::Failed {
                    error: format!("{e:#}"),
                    stderr: None,
                },
            },
        }
    }
}

#[async_trait::async_trait]
impl StageKind for SelectKind {
    fn kind(&self) -> &'static str {
        "download.select"
    }
    fn version(&self) -> u32 {
        SELECT_VERSION
    }
    fn resources(&self) -> Resources {
        Resources::ONE_CPU
    }
    fn shared_params(&self, ctx: &ParamCtx) -> Result<ParamSlice> {
        let c = &self.0;
        let mut slice = dataset_params(c);
        let list = |v: &[String]| v.join(",");
        if let Some(categories) = &c.categories {
            slice.insert("categories".into(), list(categories));
        }
        if let Some(uids) = &c.uids {
            // A short list reads well in `mvc why`; a long one goes in as its digest.
            let text = list(uids);
            let value = if uids.len() <= 16 {
                text
            } else {
                format!(
                    "{} uids, blake3 {}",
                    uids.len(),
                    blake3::hash(text.as_bytes())
                )
            };
            slice.insert("uids".into(), value);
        }
        if let Some(limit) = c.limit {
            slice.insert("limit".into(), limit.to_string());
        }
        if let Some(licenses) = &c.licenses {
            slice.insert("licenses".into(), list(licenses));
        }
        if let Some(max) = c.max_bytes {
            slice.insert("max_bytes".into(), max.to_string());
        }
        slice.insert("caption".into(), c.caption.as_str().into());
        match &c.cap3d {
            Some(Cap3dSource::File(path)) => {
                let digest = ctx.file_digest(path).with_context(|| {
                    format!(
                        "cap3d_csv `{}` (relative paths are from the directory mvc runs in)",
                        path.display()
                    )
                })?;
                slice.insert("cap3d_csv".into(), digest.to_string());
            }
            Some(Cap3dSource::Url(url)) => {
                slice.insert("cap3d_csv".into(), url.clone());
            }
            None => {}
        }
        Ok(slice)
    }
    fn needs_every_item(&self) -> bool {
        true
    }
    fn expand(&self, _: &ExpandCtx) -> Result<Expansion> {
        Ok(Expansion {
            items: vec![item(SELECTION_ITEM)],
            bindings: vec![Binding::All, Binding::All],
        })
    }
    async fn execute(&self, ctx: &ExecCtx, unit: Vec<UnitTask>) -> Vec<TaskOutcome> {
        let mut outcomes = Vec::with_capacity(unit.len());
        for task in &unit {
            outcomes.push(self.run(ctx, task).await);
        }
        outcomes
    }
}

/// One task per selected object: its GLB.
#[derive(Debug)]
pub struct ObjectsKind(pub Arc<DownloadConfig>);

#[async_trait::async_trait]
impl StageKind for ObjectsKind {
    fn kind(&self) -> &'static str {
        super::KIND
    }
    fn version(&self) -> u32 {
        OBJECTS_VERSION
    }
    fn resources(&self) -> Resources {
        NET
    }
    fn shared_params(&self, _: &ParamCtx) -> Result<ParamSlice> {
        Ok(dataset_params(&self.0))
    }
    fn expands_from_outputs(&self) -> bool {
        true
    }
    fn expand(&self, ctx: &ExpandCtx) -> Result<Expansion> {
        let bytes = upstream_output(ctx.store, ctx.outputs[0], SELECTION_ITEM, MANIFEST)?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .with_context(|| format!("reading the {MANIFEST} of the selection"))?;
        let mut items: Vec<PlannedItem> = manifest
            .objects
            .iter()
            .map(|o| PlannedItem {
                id: Arc::from(o.uid.as_str()),
                params: Arc::new(ParamSlice::from([("path".to_string(), o.path.clone())])),
                bytes: o.size,
                source: None,
            })
            .chain(manifest.missing.iter().map(|m| PlannedItem {
                id: Arc::from(m.uid.as_str()),
                params: Arc::new(ParamSlice::from([("missing".to_string(), m.reason.clone())])),
                bytes: None,
                source: None,
            }))
            .collect();
        items.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Expansion {
            items,
            bindings: vec![Binding::Expansion],
        })
    }
    async fn execute(&self, ctx: &ExecCtx, unit: Vec<UnitTask>) -> Vec<TaskOutcome> {
        let mut outcomes = Vec::with_capacity(unit.len());
        for task in &unit {
            let outcome = match (
                task.item_params.get("path"),
                task.item_params.get("missing"),
            ) {
                (Some(path), _) => {
                    fetch_output(ctx, &self.0, path, format!("{}.glb", task.item), check_glb).await
                }
                (None, Some(reason)) => TaskOutcome::Failed {
                    error: reason.clone(),
                    stderr: None,
                },
                (None, None) => TaskOutcome::Failed {
                    error: "internal: the object has neither a path nor a reason".into(),
                    stderr: None,
                },
            };
            outcomes.push(outcome);
        }
        outcomes
    }
}
