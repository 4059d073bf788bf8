//! Stage kind `embed`: CLIP features of every image of its image input (a render stage's
//! views) and of every caption of its caption input (a download stage's selection). One task
//! per image and one per caption, keyed by the model's digests, the preprocessing settings
//! and the input's digest (an image's bytes, a caption's text); executed a few batches per
//! unit by one loaded model, with the next batch decoded and preprocessed while the current
//! one runs through the model. Each feature vector (raw, unnormalised, float32) is a small
//! output stored inline in the index; `mvc export` writes the stage as one safetensors file.

use crate::diag::at;
use super::{
    Binding, Columns, ExecCtx, ExpandCtx, Expansion, ExportedItem, NotYetAvailable, ParamCtx,
    PlannedItem, StageKind, TaskOutcome, UnitTask,
};
use crate::clip::config::{self, Preprocess, parse_colour};
use crate::clip::model::select_device;
use crate::clip::tensors_file::{self, NamedTensor};
use crate::clip::{
    Clip, ClipEncoder, DeviceChoice, ModelFiles, ModelSource, Precision, preprocess,
};
use crate::exec::blocking_if;
use crate::exec::workdir::output_from_bytes;
use crate::resources::Resources;
use crate::store::Store;
use crate::store::records::{Output, now_ms};
use crate::task::ParamSlice;
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use toml::Spanned;

/// The `kind` of its tables in pipeline files (and of its key records).
pub const KIND: &str = "embed";

/// Bump when this kind's outputs change for the same model, settings and inputs. 2: f32 on
/// the CPU runs on mvc's kernels, which round differently from candle's ops.
const VERSION: u32 = 2;

/// The one output of every task: `dim` little-endian float32 values.
pub const EMBEDDING: &str = "embedding.f32";

/// Ends the id of a caption's item: `<uid>#caption`.
pub const CAPTION_SUFFIX: &str = "#caption";

/// The output holding an object's caption (UTF-8) in a stage that gives captions other than
/// a download's selection (a `command` stage that declares it in `outputs`).
pub const CAPTION_FILE: &str = "caption.txt";

/// Batches per unit: enough for preprocessing to overlap the model, few enough that progress
/// and Ctrl-C are not held up.
const BATCHES_PER_UNIT: usize = 4;

/// The `[stage.NAME]` table of an `embed` stage, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedParams {
    pub kind: String,
    /// A render stage (images) and/or a download stage (captions).
    #[serde(default)]
    pub inputs: Vec<Spanned<String>>,
    /// A Hugging Face model folder, or a hub repo id.
    pub model: Spanned<String>,
    /// The hub revision of a repo id (default `main`).
    pub revision: Option<String>,
    /// Images or captions per forward pass (default 64).
    pub batch: Option<usize>,
    /// `auto` (default), `cpu` or `cuda`.
    pub device: Option<Spanned<String>>,
    /// `f32` (default), `f16` or `bf16` (GPU only).
    pub dtype: Option<Spanned<String>>,
    /// The colour transparent pixels are composited onto (default white, as the study).
    pub background: Option<Spanned<String>>,
}

/// What an input of an embed stage gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputRole {
    /// Items whose outputs hold one image each (a render stage's views).
    Images,
    /// A download stage's selection (`NAME.select`): one caption per object.
    Captions,
}

/// A loaded model, shared by the stage's units.
struct Loaded {
    clip: Clip,
    device: String,
    /// One forward pass at a time: the model uses every core (or the GPU) by itself.
    forward: Mutex<()>,
}

pub struct EmbedStage {
    stage: String,
    source: ModelSource,
    batch: usize,
    device: DeviceChoice,
    precision: Precision,
    background: [u8; 3],
    roles: Vec<InputRole>,
    /// Resolved when first needed (a hub model is downloaded then).
    files: OnceLock<Result<ModelFiles, ModelUnavailable>>,
    /// Loaded on the first unit and kept for the rest of the run.
    loaded: OnceLock<Result<Arc<Loaded>, String>>,
}

/// Why a stage's model files are not at hand: the network (the stage waits for a later run:
/// [`NotYetAvailable`]) or the model itself (a plain error).
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
struct ModelUnavailable {
    message: String,
    network: bool,
}

impl ModelUnavailable {
    /// The error keying gives: "not yet" for the network, so the stage waits.
    fn into_error(self) -> anyhow::Error {
        match self.network {
            true => anyhow::Error::new(NotYetAvailable(self.message)),
            false => anyhow::Error::msg(self.message),
        }
    }
}

impl std::fmt::Debug for EmbedStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbedStage")
            .field("stage", &self.stage)
            .field("source", &self.source)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}


impl EmbedStage {
    /// `roles` says what each input (already rewritten: a download stage to its `.select`)
    /// gives.
    pub fn new(stage: &str, p: EmbedParams, roles: Vec<InputRole>) -> Result<EmbedStage> {
        let images = roles.iter().filter(|r| **r == InputRole::Images).count();
        let captions = roles.iter().filter(|r| **r == InputRole::Captions).count();
        if images + captions == 0 {
            bail!(
                "stage `{stage}`: an embed stage reads a render stage (images) and/or a download \
                 stage (captions), e.g. inputs = [\"views\", \"objects\"]"
            );
        }
        if images > 1 || captions > 1 {
            bail!(
                "stage `{stage}`: an embed stage reads at most one image stage and one caption \
                 stage; use one embed stage per pair"
            );
        }
        let source = ModelSource::parse(p.model.get_ref(), p.revision.as_deref())
            .or_else(|e| at(p.model.span(), format!("stage `{stage}`: {e:#}")))?;
        let batch = p.batch.unwrap_or(64);
        if !(1..=4096).contains(&batch) {
            bail!("stage `{stage}`: `batch` must be between 1 and 4096");
        }
        let device = super::device_param(stage, &p.device)?;
        let precision = match &p.dtype {
            None => Precision::F32,
            Some(d) => d
                .get_ref()
                .parse()
                .or_else(|e: String| at(d.span(), format!("stage `{stage}`: {e}")))?,
        };
        if precision != Precision::F32 && device == DeviceChoice::Cpu {
            let span = p.dtype.as_ref().expect("given").span();
            return at(
                span,
                format!(
                    "stage `{stage}`: dtype = \"{}\" is for GPU inference; with device = \"cpu\" \
                     use dtype = \"f32\"",
                    precision.name()
                ),
            );
        }
        let background = match &p.background {
            None => [255, 255, 255],
            Some(b) => parse_colour(b.get_ref())
                .or_else(|e| at(b.span(), format!("stage `{stage}`: {e}")))?,
        };
        Ok(EmbedStage {
            stage: stage.to_string(),
            source,
            batch,
            device,
            precision,
            background,
            roles,
            files: OnceLock::new(),
            loaded: OnceLock::new(),
        })
    }

    fn files(&self, store: &Store) -> Result<ModelFiles, ModelUnavailable> {
        self.files
            .get_or_init(|| {
                crate::models::model_files(&self.source, || Ok(store)).map_err(|e| {
                    ModelUnavailable {
                        network: e.downcast_ref::<NotYetAvailable>().is_some(),
                        message: format!("stage `{}`: {e:#}", self.stage),
                    }
                })
            })
            .clone()
    }

    fn load(&self, store: &Store) -> Result<Arc<Loaded>, String> {
        self.loaded
            .get_or_init(|| {
                let files = self.files(store).map_err(|e| e.message)?;
                let (device, line) = select_device(self.device)
                    .map_err(|e| format!("stage `{}`: {e:#}", self.stage))?;
                let mut clip = Clip::load(&files, &device, self.precision)
                    .map_err(|e| format!("stage `{}`: {e:#}", self.stage))?;
                clip.preprocess.background = self.background;
                if cfg!(feature = "cuda") && !device.is_cuda() {
                    // A GPU build that ends up on the CPU is worth a word without -v.
                    tracing::warn!("{}: CLIP on {line}", self.stage);
                } else {
                    tracing::info!("{}: CLIP on {line}", self.stage);
                }
                Ok(Arc::new(Loaded {
                    clip,
                    device: line,
                    forward: Mutex::new(()),
                }))
            })
            .clone()
    }

    /// An image item's own parameters. The background is one: changing it re-embeds the
    /// images, not the captions.
    fn image_params(&self) -> Arc<ParamSlice> {
        Arc::new(ParamSlice::from([(
            "background".to_string(),
            config::colour_text(self.background),
        )]))
    }

    fn role_index(&self, role: InputRole) -> Option<usize> {
        self.roles.iter().position(|r| *r == role)
    }
}

/// One task's work, read off the scheduler.
enum Job {
    /// Read, decoded and preprocessed on the preprocessing thread.
    Image {
        source: ImageSource,
    },
    Text {
        caption: String,
    },
    Done(TaskOutcome),
}

/// Where an image task's image is: an upstream item's output.
struct ImageSource {
    output: Output,
    stage: String,
    item: String,
}

impl ImageSource {
    /// The image's pixel values, or the task's outcome when they cannot be had.
    fn pixel_values(&self, store: &Store, pre: &Preprocess) -> Result<Vec<f32>, TaskOutcome> {
        let bytes = store
            .read_output(&self.output)
            .map_err(|e| TaskOutcome::InputCorrupt {
                stage: self.stage.clone(),
                item: self.item.clone(),
                error: e.to_string(),
            })?;
        let what = format!("{}/{}/{}", self.stage, self.item, self.output.name);
        preprocess::decode(&bytes, &what)
            .and_then(|img| preprocess::pixel_values(&img, pre).with_context(|| what.clone()))
            .map_err(|e| TaskOutcome::Failed {
                error: format!("{e:#}"),
                stderr: None,
            })
    }
}

/// The image among an input item's outputs.
fn image_output<'a>(outputs: &'a [Output], what: &str) -> Result<&'a Output, String> {
    let images: Vec<&Output> = outputs
        .iter()
        .filter(|o| {
            let n = o.name.to_ascii_lowercase();
            n.ends_with(".png") || n.ends_with(".jpg") || n.ends_with(".jpeg")
        })
        .collect();
    match images.as_slice() {
        [one] => Ok(one),
        [] => Err(format!("{what} has no image output (.png, .jpg)")),
        _ => Err(format!(
            "{what} has {} image outputs; an embed stage needs one per item",
            images.len()
        )),
    }
}

fn embedding_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn success(store: &Store, values: &[f32], started_ms: u64, duration_ms: u64) -> TaskOutcome {
    match output_from_bytes(store, EMBEDDING.into(), embedding_bytes(values)) {
        Ok(output) => TaskOutcome::Success {
            outputs: vec![output],
            stdout: None,
            stderr: None,
            started_ms,
            duration_ms,
        },
        Err(e) => TaskOutcome::Aborted(e),
    }
}

/// Runs one batch of `rows` through the model (one forward pass at a time across units) and
/// records each row's outcome: its features, or the model's error for all of them.
fn forward_batch(
    model: &Loaded,
    store: &Store,
    rows: Vec<usize>,
    outcomes: &mut [Option<TaskOutcome>],
    forward: impl FnOnce(&ClipEncoder, usize) -> Result<Vec<f32>>,
) {
    let dim = model.clip.encoder.dim();
    let started_ms = now_ms();
    let clock = Instant::now();
    let result = {
        let _one = model.forward.lock().expect("not poisoned");
        forward(&model.clip.encoder, rows.len())
    };
    let each = clock.elapsed().as_millis() as u64 / rows.len().max(1) as u64;
    match result {
        Ok(features) => {
            for (k, i) in rows.into_iter().enumerate() {
                let values = &features[k * dim..(k + 1) * dim];
                outcomes[i] = Some(success(store, values, started_ms, each));
            }
        }
        Err(e) => {
            for i in rows {
                outcomes[i] = Some(TaskOutcome::Aborted(format!("the model failed: {e:#}")));
            }
        }
    }
}

/// Runs the jobs of one unit: images in batches (the next batch read and preprocessed on
/// another thread while this one runs through the model), then captions.
fn run_jobs(
    model: &Loaded,
    store: &Store,
    jobs: Vec<Job>,
    batch: usize,
    kill: &CancellationToken,
) -> Vec<TaskOutcome> {
    let mut outcomes: Vec<Option<TaskOutcome>> = Vec::with_capacity(jobs.len());
    let mut images = Vec::new();
    let mut texts = Vec::new();
    for (i, job) in jobs.into_iter().enumerate() {
        match job {
            Job::Done(outcome) => outcomes.push(Some(outcome)),
            Job::Image { source } => {
                outcomes.push(None);
                images.push((i, source));
            }
            Job::Text { caption } => {
                outcomes.push(None);
                texts.push((i, caption));
            }
        }
    }
    let todo = Todo {
        model,
        store,
        batch,
        kill,
    };
    todo.images(images, &mut outcomes);
    todo.captions(&texts, &mut outcomes);
    outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| TaskOutcome::Aborted("internal: a task got no outcome".into()))
        })
        .collect()
}

/// What the batches of one unit's jobs run with.
struct Todo<'a> {
    model: &'a Loaded,
    store: &'a Store,
    batch: usize,
    kill: &'a CancellationToken,
}

impl Todo<'_> {
    /// Embeds the images: a preprocessing thread feeds prepared batches through a channel
    /// of one, so decoding the next batch overlaps the model's work on this one.
    fn images(&self, images: Vec<(usize, ImageSource)>, outcomes: &mut [Option<TaskOutcome>]) {
        let (model, store, batch, kill) = (self.model, self.store, self.batch, self.kill);
        let encoder = &model.clip.encoder;
        let pre = &model.clip.preprocess;
        let per_image = 3 * encoder.image_size() * encoder.image_size();

        // Images: a preprocessing thread feeds prepared batches through a channel of one.
        std::thread::scope(|scope| {
            let (send, receive) = std::sync::mpsc::sync_channel::<(Vec<usize>, Vec<f32>)>(1);
            let mut failed: Vec<(usize, TaskOutcome)> = Vec::new();
            let producer = scope.spawn(move || {
                let mut failed = Vec::new();
                let mut chunks = images.into_iter().peekable();
                while chunks.peek().is_some() {
                    let mut rows = Vec::with_capacity(batch);
                    let mut pixels = Vec::with_capacity(batch * per_image);
                    for (i, source) in chunks.by_ref().take(batch) {
                        match source.pixel_values(store, pre) {
                            Ok(values) => {
                                rows.push(i);
                                pixels.extend(values);
                            }
                            Err(outcome) => failed.push((i, outcome)),
                        }
                    }
                    if !rows.is_empty() && send.send((rows, pixels)).is_err() {
                        break;
                    }
                }
                failed
            });
            for (rows, pixels) in receive {
                if kill.is_cancelled() {
                    for i in rows {
                        outcomes[i] = Some(TaskOutcome::Cancelled);
                    }
                    continue;
                }
                forward_batch(model, store, rows, outcomes, |e, n| {
                    e.image_features(&pixels, n)
                });
            }
            failed.extend(producer.join().expect("preprocessing does not panic"));
            for (i, outcome) in failed {
                outcomes[i] = Some(outcome);
            }
        });

    }

    /// Embeds the captions (tokenising is cheap next to the model).
    fn captions(&self, texts: &[(usize, String)], outcomes: &mut [Option<TaskOutcome>]) {
        let (model, store, batch, kill) = (self.model, self.store, self.batch, self.kill);
        // Captions: tokenising is cheap next to the model.
        let tokens = model.clip.tokenizer.max_tokens;
        for chunk in texts.chunks(batch) {
            if kill.is_cancelled() {
                for (i, _) in chunk {
                    outcomes[*i] = Some(TaskOutcome::Cancelled);
                }
                continue;
            }
            let mut rows = Vec::with_capacity(chunk.len());
            let mut ids = Vec::with_capacity(chunk.len() * tokens);
            for (i, caption) in chunk {
                match model.clip.tokenizer.encode(caption) {
                    Ok(t) => {
                        rows.push(*i);
                        ids.extend(t);
                    }
                    Err(e) => {
                        outcomes[*i] = Some(TaskOutcome::Failed {
                            error: format!("{e:#}"),
                            stderr: None,
                        })
                    }
                }
            }
            if rows.is_empty() {
                continue;
            }
            forward_batch(model, store, rows, outcomes, |e, n| {
                e.text_features(&ids, n)
            });
        }
    }
}

/// (uid, caption) of every object of caption input `k`: a download's selection, or the
/// `caption.txt` of each item of another stage.
fn captions(ctx: &ExpandCtx, k: usize) -> Result<Vec<(String, String)>> {
    let (name, _) = ctx.inputs[k];
    if name.ends_with(&format!(".{}", super::download::SELECT)) {
        let manifest = super::download::read_selection(ctx.store, ctx.outputs[k])?;
        return Ok(manifest
            .objects
            .into_iter()
            .map(|o| (o.uid, o.caption))
            .collect());
    }
    let outputs = ctx.outputs[k].context("internal: the caption input was not resolved")?;
    outputs
        .items
        .iter()
        .map(|(item, outs)| {
            let file = outs
                .iter()
                .find(|o| o.name == CAPTION_FILE)
                .with_context(|| format!("{name}/{item} has no {CAPTION_FILE}"))?;
            let bytes = ctx
                .store
                .read_output(file)
                .with_context(|| format!("reading {name}/{item}/{CAPTION_FILE}"))?;
            let text = String::from_utf8(bytes)
                .with_context(|| format!("{name}/{item}/{CAPTION_FILE} is not UTF-8"))?;
            Ok((
                item.to_string(),
                text.trim_end_matches(['\n', '\r']).to_string(),
            ))
        })
        .collect()
}

/// The uid and view of an image item `<uid>@<view>` (a render view), or the item alone.
fn split_view(item: &str) -> (&str, Option<&str>) {
    match item.rsplit_once(super::render::VIEW_SEPARATOR) {
        Some((uid, view)) => (uid, Some(view)),
        None => (item, None),
    }
}

#[derive(serde::Serialize)]
struct ImageRow<'a> {
    row: usize,
    item: &'a str,
    uid: &'a str,
    view: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct TextRow<'a> {
    row: usize,
    item: &'a str,
    uid: &'a str,
    caption: &'a str,
}

#[async_trait::async_trait]
impl StageKind for EmbedStage {
    fn kind(&self) -> &'static str {
        KIND
    }
    fn version(&self) -> u32 {
        VERSION
    }
    fn resources(&self) -> Resources {
        super::device_resources(self.device)
    }
    fn shared_params(&self, ctx: &ParamCtx) -> Result<ParamSlice> {
        let files = self
            .files(ctx.store)
            .map_err(ModelUnavailable::into_error)?;
        let model_config = config::read_model_config(&files.config)?;
        let pre = config::read_preprocess(
            files.preprocessor.as_deref(),
            model_config.clip.vision_config.image_size as u32,
        )?;
        Ok(ParamSlice::from([
            (
                "weights".to_string(),
                ctx.file_digest(&files.weights)?.to_hex(),
            ),
            (
                "config".to_string(),
                ctx.file_digest(&files.config)?.to_hex(),
            ),
            (
                "tokenizer".to_string(),
                ctx.file_digest(&files.tokenizer)?.to_hex(),
            ),
            ("preprocess".to_string(), pre.key_text()),
            ("dtype".to_string(), self.precision.name().to_string()),
        ]))
    }
    fn expands_from_outputs(&self) -> bool {
        self.role_index(InputRole::Captions).is_some()
    }
    fn expands_from_outputs_of(&self, input: usize) -> bool {
        // Images are the render stage's planned views; only captions need outputs.
        self.roles.get(input) == Some(&InputRole::Captions)
    }
    fn columns(&self) -> Columns {
        // Images alone: an image item is its render view, with the same parameters each.
        match self.roles.as_slice() {
            [InputRole::Images] => Columns::Follow(self.image_params()),
            _ => Columns::None,
        }
    }
    fn expand(&self, ctx: &ExpandCtx) -> Result<Expansion> {
        let mut items = Vec::new();
        let mut bindings = Vec::with_capacity(self.roles.len());
        for (k, role) in self.roles.iter().enumerate() {
            match role {
                InputRole::Images => {
                    let (_, upstream) = ctx.inputs[k];
                    let background = self.image_params();
                    items.extend(upstream.iter().map(|id| {
                        let mut item = PlannedItem::new(id.clone());
                        item.params = background.clone();
                        item
                    }));
                    // Caption items have no view to read.
                    bindings.push(if self.roles.len() > 1 {
                        Binding::ItemIfPresent
                    } else {
                        Binding::Item
                    });
                }
                InputRole::Captions => {
                    for (uid, caption) in captions(ctx, k)? {
                        let mut item = PlannedItem::new(format!("{uid}{CAPTION_SUFFIX}"));
                        item.params = Arc::new(ParamSlice::from([("caption".to_string(), caption)]));
                        items.push(item);
                    }
                    bindings.push(Binding::Expansion);
                }
            }
        }
        items.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(w) = items.windows(2).find(|w| w[0].id == w[1].id) {
            bail!(
                "stage `{}`: item `{}` comes from two inputs; an image item may not end in \
                 {CAPTION_SUFFIX}",
                self.stage,
                w[0].id
            );
        }
        Ok(Expansion { items, bindings })
    }
    fn unit_group<'a>(&self, item: &'a str) -> Option<&'a str> {
        // Images batch with images, captions with captions.
        Some(if item.ends_with(CAPTION_SUFFIX) {
            "text"
        } else {
            "image"
        })
    }
    fn max_unit_tasks(&self) -> usize {
        self.batch * BATCHES_PER_UNIT
    }
    fn min_unit_tasks(&self) -> usize {
        self.batch
    }
    async fn execute(&self, ctx: &ExecCtx, unit: Vec<UnitTask>) -> Vec<TaskOutcome> {
        let store = ctx.store.clone();
        // The first unit loads the model (the weights are memory-mapped, a hub model was
        // downloaded while planning); the rest of the run reuses it.
        let model = self.load(&store);
        let model = match model {
            Ok(m) => m,
            Err(e) => {
                return unit
                    .iter()
                    .map(|_| TaskOutcome::Aborted(e.clone()))
                    .collect();
            }
        };
        let images = self.role_index(InputRole::Images);
        let jobs: Vec<Job> = unit
            .iter()
            .map(|task| {
                if task.item.ends_with(CAPTION_SUFFIX) {
                    return match task.item_params.get("caption") {
                        Some(c) => Job::Text { caption: c.clone() },
                        None => Job::Done(TaskOutcome::Failed {
                            error: "internal: a caption item without its caption".into(),
                            stderr: None,
                        }),
                    };
                }
                let Some(input) = images.and_then(|k| task.inputs.get(k)) else {
                    return Job::Done(TaskOutcome::Failed {
                        error: "internal: an image item without its image input".into(),
                        stderr: None,
                    });
                };
                let Some((item, result)) = input.items.first() else {
                    return Job::Done(TaskOutcome::Failed {
                        error: format!("{} has no item {}", input.stage, task.item),
                        stderr: None,
                    });
                };
                let what = format!("{}/{item}", input.stage);
                let output = match image_output(&result.outputs, &what) {
                    Ok(o) => o,
                    Err(error) => {
                        return Job::Done(TaskOutcome::Failed {
                            error,
                            stderr: None,
                        });
                    }
                };
                Job::Image {
                    source: ImageSource {
                        output: output.clone(),
                        stage: input.stage.clone(),
                        item: item.clone(),
                    },
                }
            })
            .collect();
        let batch = self.batch;
        let kill = ctx.kill.clone();
        tracing::debug!("{}: {} tasks on {}", self.stage, jobs.len(), model.device);
        blocking_if(true, move || run_jobs(&model, &store, jobs, batch, &kill)).await
    }
    fn exports_combined(&self) -> bool {
        true
    }
    fn export_combined(
        &self,
        store: &Store,
        items: &[ExportedItem],
        dir: &Path,
    ) -> Result<(u64, u64)> {
        export_embeddings(store, items, dir)
    }
}

/// `DIR/embeddings.safetensors` (`image_embeds` [N, d], `text_embeds` [M, d]) and
/// `DIR/embeddings.json` (uid, view, caption of every row).
fn export_embeddings(store: &Store, items: &[ExportedItem], dir: &Path) -> Result<(u64, u64)> {
    let mut dim = None;
    let mut image_values = Vec::new();
    let mut text_values = Vec::new();
    let mut image_rows = Vec::new();
    let mut text_rows = Vec::new();
    for it in items {
        let output = it
            .outputs
            .iter()
            .find(|o| o.name == EMBEDDING)
            .with_context(|| format!("{} has no {EMBEDDING}", it.item))?;
        let bytes = store.read_output(output).with_context(|| {
            format!("{}: reading its embedding; run the pipeline again", it.item)
        })?;
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        match dim {
            None => dim = Some(values.len()),
            Some(d) if d != values.len() => bail!(
                "{} has {} values where the others have {d}",
                it.item,
                values.len()
            ),
            Some(_) => {}
        }
        if let Some(uid) = it.item.strip_suffix(CAPTION_SUFFIX) {
            text_rows.push(TextRow {
                row: text_rows.len(),
                item: it.item,
                uid,
                caption: it.params.get("caption").map(String::as_str).unwrap_or(""),
            });
            text_values.extend(values);
        } else {
            let (uid, view) = split_view(it.item);
            image_rows.push(ImageRow {
                row: image_rows.len(),
                item: it.item,
                uid,
                view,
            });
            image_values.extend(values);
        }
    }
    let dim = dim.unwrap_or(0);
    let tensors = [
        NamedTensor::f32("image_embeds", vec![image_rows.len(), dim], &image_values),
        NamedTensor::f32("text_embeds", vec![text_rows.len(), dim], &text_values),
    ];
    let st = dir.join("embeddings.safetensors");
    tensors_file::write(&st, &tensors, Default::default())?;
    let index = serde_json::json!({ "dim": dim, "images": image_rows, "texts": text_rows });
    let js = dir.join("embeddings.json");
    std::fs::write(&js, serde_json::to_vec_pretty(&index)?)
        .with_context(|| format!("writing {}", js.display()))?;
    let bytes = std::fs::metadata(&st)?.len() + std::fs::metadata(&js)?.len();
    Ok((2, bytes))
}

impl super::table::StageTable for EmbedParams {
    fn inputs(&self) -> &[Spanned<String>] {
        &self.inputs
    }
    fn build(
        self: Box<Self>,
        name: &str,
        inputs: Vec<String>,
        around: &super::table::Around,
    ) -> Result<Vec<super::table::Built>> {
        // Inputs that give captions (a download's selection, a command stage writing
        // `caption.txt`) are read for captions; every other input for images.
        let (inputs, roles): (Vec<String>, Vec<InputRole>) = inputs
            .into_iter()
            .map(|input| match around.captions_from(&input) {
                Some(captions) => (captions, InputRole::Captions),
                None => (input, InputRole::Images),
            })
            .unzip();
        let stage = EmbedStage::new(name, *self, roles)?;
        Ok(super::table::Built::one(name, inputs, stage))
    }
}
