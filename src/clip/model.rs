//! The CLIP encoders on candle: weights memory-mapped from `model.safetensors`, raw
//! (unnormalised) projected features as `get_image_features` / `get_text_features` give them.
//!
//! The encoders are candle-transformers' own; the projections and the text pooling are done
//! here. Pooling picks the pooled token's position on the host (the first end token, as
//! Hugging Face does) instead of candle's `argmax` on the device, whose choice among equal
//! maxima (the padding is the end token too) is not specified on CUDA.

use super::config::ModelConfig;
use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use candle_transformers::models::clip::{
    text_model::ClipTextTransformer, vision_model::ClipVisionTransformer,
};
use std::path::Path;

/// Where a model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// CUDA when this build has it and a GPU answers, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            other => Err(format!("unknown device `{other}`; use auto, cpu or cuda")),
        }
    }
}

/// The numeric type of GPU inference (the reference is f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!("unknown dtype `{other}`; use f32, f16 or bf16")),
        }
    }
}

/// How a build without the `cuda` feature answers a request for CUDA.
pub const NO_CUDA_BUILD: &str = "this mvc was built without the `cuda` feature, so it cannot \
    use a GPU; build one with scripts/build-cuda.sh (see \"GPU build\" in README.md), or use \
    device = \"cpu\"";

/// The device a choice gives, and a line saying which and why.
pub fn select_device(choice: DeviceChoice) -> Result<(Device, String)> {
    match choice {
        DeviceChoice::Cpu => Ok((Device::Cpu, "cpu".into())),
        DeviceChoice::Auto | DeviceChoice::Cuda => match cuda_device() {
            Ok(device) => Ok((device, "cuda:0".into())),
            Err(why) if choice == DeviceChoice::Auto => Ok((Device::Cpu, format!("cpu ({why})"))),
            Err(why) => bail!("device cuda: {why}"),
        },
    }
}

#[cfg(feature = "cuda")]
fn cuda_device() -> Result<Device, String> {
    // candle's `cuda_if_available` errors rather than falling back when no GPU answers;
    // ask for the device and report why it is not there.
    Device::new_cuda(0).map_err(|e| {
        // candle appends a backtrace to the message when RUST_BACKTRACE is set.
        let message = e.to_string();
        format!(
            "no GPU answers: {}",
            message.lines().next().unwrap_or_default()
        )
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda_device() -> Result<Device, String> {
    Err(NO_CUDA_BUILD.to_string())
}

pub struct ClipEncoder {
    text: ClipTextTransformer,
    vision: ClipVisionTransformer,
    text_projection: Linear,
    visual_projection: Linear,
    pub config: ModelConfig,
    device: Device,
    dtype: DType,
}

impl ClipEncoder {
    /// Loads `model.safetensors` (memory-mapped). Every tensor the model reads must be in the
    /// file: candle's CLIP would otherwise make up a random class embedding.
    pub fn load(
        weights: &Path,
        config: ModelConfig,
        device: &Device,
        precision: Precision,
    ) -> Result<ClipEncoder> {
        if precision != Precision::F32 && !device.is_cuda() {
            bail!(
                "dtype = \"{}\" is for GPU inference, but the model runs on the CPU; use dtype = \
                 \"f32\" there",
                precision.name()
            );
        }
        // SAFETY: the file is mapped read-only; mvc's blobs and model folders are not
        // modified in place while a run reads them.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[weights], precision.dtype(), device) }
                .with_context(|| {
                format!("{}: not a safetensors file mvc can read", weights.display())
            })?;
        for name in [
            "vision_model.embeddings.class_embedding",
            "text_model.embeddings.token_embedding.weight",
            "visual_projection.weight",
            "text_projection.weight",
        ] {
            if !vb.contains_tensor(name) {
                bail!(
                    "{}: the tensor `{name}` is missing; is this a CLIPModel checkpoint \
                     (`model.safetensors` of a Hugging Face CLIP model)?",
                    weights.display()
                );
            }
        }
        ClipEncoder::from_var_builder(vb, config)
            .with_context(|| format!("{}: the weights do not fit config.json", weights.display()))
    }

    /// Builds the encoders from any variable source (a benchmark uses random weights).
    pub fn from_var_builder(vb: VarBuilder, config: ModelConfig) -> Result<ClipEncoder> {
        let c = &config.clip;
        let text = ClipTextTransformer::new(vb.pp("text_model"), &c.text_config)?;
        let vision = ClipVisionTransformer::new(vb.pp("vision_model"), &c.vision_config)?;
        let visual_projection = candle_nn::linear_no_bias(
            c.vision_config.embed_dim,
            config.projection_dim,
            vb.pp("visual_projection"),
        )?;
        let text_projection = candle_nn::linear_no_bias(
            c.text_config.embed_dim,
            config.projection_dim,
            vb.pp("text_projection"),
        )?;
        Ok(ClipEncoder {
            text,
            vision,
            text_projection,
            visual_projection,
            device: vb.device().clone(),
            dtype: vb.dtype(),
            config,
        })
    }

    pub fn dim(&self) -> usize {
        self.config.projection_dim
    }

    pub fn image_size(&self) -> usize {
        self.config.clip.vision_config.image_size
    }

    /// `get_image_features` of `n` images of pixel values `[n, 3, S, S]` (row-major); returns
    /// `n × dim` features.
    pub fn image_features(&self, pixels: &[f32], n: usize) -> Result<Vec<f32>> {
        let s = self.image_size();
        if pixels.len() != n * 3 * s * s {
            bail!(
                "internal: {} pixel values for {n} images of {s}x{s}",
                pixels.len()
            );
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let x = Tensor::from_slice(pixels, (n, 3, s, s), &self.device)?.to_dtype(self.dtype)?;
        let pooled = self.vision.forward(&x)?;
        let features = self.visual_projection.forward(&pooled)?;
        Ok(features.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
    }

    /// `get_text_features` of `n` id sequences `[n, T]`; returns `n × dim` features.
    pub fn text_features(&self, ids: &[u32], n: usize) -> Result<Vec<f32>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let t = ids.len() / n;
        if ids.len() != n * t || t == 0 || t > self.config.max_tokens {
            bail!("internal: {} ids for {n} sequences", ids.len());
        }
        let vocab = self.config.clip.text_config.vocab_size as u32;
        if let Some(bad) = ids.iter().find(|&&id| id >= vocab) {
            bail!("token id {bad} is outside the model's vocabulary of {vocab}");
        }
        let positions: Vec<u32> = ids
            .chunks(t)
            .enumerate()
            .map(|(row, seq)| (row * t + self.pooled_position(seq)) as u32)
            .collect();
        let x = Tensor::from_slice(ids, (n, t), &self.device)?;
        let hidden = self.text.forward_with_mask(&x, usize::MAX)?; // [n, t, width]
        let width = hidden.dim(2)?;
        let rows = Tensor::from_vec(positions, n, &self.device)?;
        let pooled = hidden.reshape((n * t, width))?.index_select(&rows, 0)?;
        let features = self.text_projection.forward(&pooled)?;
        Ok(features.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
    }

    /// The position whose hidden state is the caption's: the first end token.
    fn pooled_position(&self, seq: &[u32]) -> usize {
        match self.config.eos_token_id {
            Some(eos) => seq
                .iter()
                .position(|&id| id == eos)
                .unwrap_or(seq.len() - 1),
            None => {
                // The first position of the largest id (torch's argmax).
                let mut best = 0;
                for (i, &id) in seq.iter().enumerate() {
                    if id > seq[best] {
                        best = i;
                    }
                }
                best
            }
        }
    }
}
