//! `mvc embed`: CLIP embeddings of images and captions into one safetensors file, outside any
//! pipeline. A tool for users, and the interface the parity tests use.

use crate::clip::model::select_device;
use crate::clip::tensors_file::{self, NamedTensor};
use crate::clip::{Clip, DeviceChoice, ModelSource, Precision, preprocess};
use crate::store::Store;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::path::PathBuf;

pub struct EmbedRequest {
    pub model: String,
    pub revision: Option<String>,
    pub out: PathBuf,
    pub images: Vec<PathBuf>,
    pub texts: Vec<String>,
    pub device: DeviceChoice,
    pub dtype: Precision,
    pub background: [u8; 3],
    pub batch: usize,
    pub dump_inputs: bool,
    /// The cache a hub model is downloaded into.
    pub cache: PathBuf,
}

#[derive(Debug, serde::Serialize)]
pub struct EmbedSummary {
    pub images: usize,
    pub texts: usize,
    pub dim: usize,
    pub device: String,
}

pub fn embed(req: &EmbedRequest) -> Result<EmbedSummary> {
    // A hub model is downloaded into the cache.
    let source = ModelSource::parse(&req.model, req.revision.as_deref())?;
    let files = crate::models::model_files(&source, || Store::open(&req.cache))?;
    let (device, device_line) = select_device(req.device)?;
    eprintln!("mvc embed: running on {device_line}");
    let mut clip = Clip::load(&files, &device, req.dtype)?;
    clip.preprocess.background = req.background;
    let batch = req.batch.max(1);
    let dim = clip.encoder.dim();
    let size = clip.encoder.image_size();

    let mut pixels = Vec::with_capacity(req.images.len() * 3 * size * size);
    for path in &req.images {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let image = preprocess::decode(&bytes, &path.display().to_string())?;
        let values = preprocess::pixel_values(&image, &clip.preprocess)
            .with_context(|| format!("{}", path.display()))?;
        pixels.extend(values);
    }
    let per_image = 3 * size * size;
    let mut image_embeds = Vec::with_capacity(req.images.len() * dim);
    for chunk in pixels.chunks(batch * per_image) {
        image_embeds.extend(
            clip.encoder
                .image_features(chunk, chunk.len() / per_image)?,
        );
    }

    let tokens = clip.tokenizer.max_tokens;
    let mut ids = Vec::with_capacity(req.texts.len() * tokens);
    for text in &req.texts {
        ids.extend(clip.tokenizer.encode(text)?);
    }
    let mut text_embeds = Vec::with_capacity(req.texts.len() * dim);
    for chunk in ids.chunks(batch * tokens) {
        text_embeds.extend(clip.encoder.text_features(chunk, chunk.len() / tokens)?);
    }

    let mut tensors = vec![
        NamedTensor::f32("image_embeds", vec![req.images.len(), dim], &image_embeds),
        NamedTensor::f32("text_embeds", vec![req.texts.len(), dim], &text_embeds),
    ];
    if req.dump_inputs {
        tensors.push(NamedTensor::f32(
            "pixel_values",
            vec![req.images.len(), 3, size, size],
            &pixels,
        ));
        let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        tensors.push(NamedTensor::i64(
            "input_ids",
            vec![req.texts.len(), tokens],
            &ids,
        ));
    }
    let metadata = HashMap::from([
        ("model".to_string(), req.model.clone()),
        ("device".to_string(), device_line.clone()),
        ("dtype".to_string(), req.dtype.name().to_string()),
    ]);
    tensors_file::write(&req.out, &tensors, metadata)?;
    Ok(EmbedSummary {
        images: req.images.len(),
        texts: req.texts.len(),
        dim,
        device: device_line,
    })
}

#[derive(clap::Args, Debug)]
pub struct EmbedArgs {
    /// A Hugging Face model folder, or a hub repo id (downloaded into the cache).
    #[arg(long, value_name = "PATH_OR_REPO")]
    pub model: String,
    /// The hub revision (branch, tag or commit) of a repo id.
    #[arg(long)]
    pub revision: Option<String>,
    #[arg(long, value_name = "FILE.safetensors")]
    pub out: PathBuf,
    /// An image to embed (PNG or JPEG); repeat for more.
    #[arg(long = "image", value_name = "IMG")]
    pub images: Vec<PathBuf>,
    /// A caption to embed; repeat for more.
    #[arg(long = "text", value_name = "TEXT")]
    pub texts: Vec<String>,
    /// auto: CUDA when this build has it and a GPU answers, else the CPU.
    #[arg(long, default_value = "auto", value_name = "auto|cpu|cuda")]
    pub device: DeviceChoice,
    /// Numeric type on the GPU (f32 is the reference).
    #[arg(long, default_value = "f32", value_name = "f32|f16|bf16")]
    pub dtype: Precision,
    /// The colour transparent pixels are composited onto.
    #[arg(long, default_value = "white", value_name = "white|#rrggbb", value_parser = crate::clip::config::parse_colour)]
    pub background: [u8; 3],
    /// Images or captions per forward pass.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub batch: u32,
    /// Also write the model's inputs: `pixel_values` and `input_ids` (int64).
    #[arg(long)]
    pub dump_inputs: bool,
}

pub fn run(args: EmbedArgs, global: &super::Global) -> Result<super::Output> {
    let background = args.background;
    let request = EmbedRequest {
        model: args.model,
        revision: args.revision,
        out: args.out.clone(),
        images: args.images,
        texts: args.texts,
        device: args.device,
        dtype: args.dtype,
        background,
        batch: args.batch as usize,
        dump_inputs: args.dump_inputs,
        cache: global
            .cache
            .clone()
            .unwrap_or_else(|| PathBuf::from("cache")),
    };
    let summary = embed(&request)?;
    let text = format!(
        "wrote {} image and {} text embedding(s) of {} dimensions to {} (on {})\n",
        summary.images,
        summary.texts,
        summary.dim,
        args.out.display(),
        summary.device
    );
    #[derive(serde::Serialize)]
    struct Json<'a> {
        out: String,
        #[serde(flatten)]
        summary: &'a EmbedSummary,
    }
    let json = Json {
        out: args.out.display().to_string(),
        summary: &summary,
    };
    Ok(super::Output::new(text, &json))
}
