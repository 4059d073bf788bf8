//! The CLIP encoders: weights memory-mapped from `model.safetensors` by candle, raw
//! (unnormalised) projected features as `get_image_features` / `get_text_features` give them.
//!
//! In f32 on the CPU the features come from mvc's kernels ([`super::cpu`]: faster than
//! candle's CPU ops and the same bytes whatever the batch); elsewhere (CUDA, f16, bf16) from
//! candle-transformers' encoders, with the projections and the text pooling done here.
//! Pooling picks the pooled token's position on the host (the first end token, as Hugging
//! Face does) instead of candle's `argmax` on the device, whose choice among equal maxima
//! (the padding is the end token too) is not specified on CUDA.

use super::config::ModelConfig;
use super::cpu::CpuClip;
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
    use a GPU; build one with scripts/build-cuda.sh (see \"GPU build\" in docs/install.md), or use \
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

/// Candle's encoders: the CUDA path (and any non-f32 model).
struct CandleTowers {
    text: ClipTextTransformer,
    vision: ClipVisionTransformer,
    text_projection: Linear,
    visual_projection: Linear,
}

/// Which implementation computes the features.
enum Towers {
    Candle(Box<CandleTowers>),
    /// f32 on the CPU: mvc's kernels (fast, and the same bytes whatever the batch).
    Cpu(Box<CpuClip>),
}

pub struct ClipEncoder {
    towers: Towers,
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
        let towers = if uses_cpu_kernels(&vb) {
            // Straight to mvc's kernels: candle's towers would copy every weight once more.
            CpuClip::load(&vb, &config).map(|c| Towers::Cpu(Box::new(c)))
        } else {
            candle_towers(&vb, &config).map(|c| Towers::Candle(Box::new(c)))
        }
        .with_context(|| format!("{}: the weights do not fit config.json", weights.display()))?;
        Ok(ClipEncoder {
            towers,
            device: device.clone(),
            dtype: vb.dtype(),
            config,
        })
    }

    /// Builds the encoders from any variable source (a benchmark uses random weights: candle's
    /// towers are built first, which gives a `VarMap` its initial values).
    pub fn from_var_builder(vb: VarBuilder, config: ModelConfig) -> Result<ClipEncoder> {
        let candle = candle_towers(&vb, &config)?;
        let towers = if uses_cpu_kernels(&vb) {
            Towers::Cpu(Box::new(CpuClip::load(&vb, &config)?))
        } else {
            Towers::Candle(Box::new(candle))
        };
        Ok(ClipEncoder {
            towers,
            device: vb.device().clone(),
            dtype: vb.dtype(),
            config,
        })
    }

    /// mvc's CPU model, when it is the one that runs.
    pub fn cpu(&self) -> Option<&CpuClip> {
        match &self.towers {
            Towers::Cpu(c) => Some(c),
            Towers::Candle(_) => None,
        }
    }

    /// Which implementation runs: "mvc CPU kernels" or "candle".
    pub fn implementation(&self) -> &'static str {
        match self.towers {
            Towers::Cpu(_) => "mvc CPU kernels",
            Towers::Candle(_) => "candle",
        }
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
        let candle = match &self.towers {
            Towers::Cpu(cpu) => return Ok(cpu.image_features(pixels, n)),
            Towers::Candle(c) => c,
        };
        let x = Tensor::from_slice(pixels, (n, 3, s, s), &self.device)?.to_dtype(self.dtype)?;
        let pooled = candle.vision.forward(&x)?;
        let features = candle.visual_projection.forward(&pooled)?;
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
        let pooled_at: Vec<usize> = ids.chunks(t).map(|seq| self.pooled_position(seq)).collect();
        let candle = match &self.towers {
            Towers::Cpu(cpu) => return cpu.text_features(ids, n, t, &pooled_at),
            Towers::Candle(c) => c,
        };
        let positions: Vec<u32> = pooled_at
            .iter()
            .enumerate()
            .map(|(row, p)| (row * t + p) as u32)
            .collect();
        let x = Tensor::from_slice(ids, (n, t), &self.device)?;
        let hidden = candle.text.forward_with_mask(&x, usize::MAX)?; // [n, t, width]
        let width = hidden.dim(2)?;
        let rows = Tensor::from_vec(positions, n, &self.device)?;
        let pooled = hidden.reshape((n * t, width))?.index_select(&rows, 0)?;
        let features = candle.text_projection.forward(&pooled)?;
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

/// f32 on the CPU runs on mvc's kernels; everything else on candle's CLIP.
fn uses_cpu_kernels(vb: &VarBuilder) -> bool {
    vb.device().is_cpu() && vb.dtype() == DType::F32
}

fn candle_towers(vb: &VarBuilder, config: &ModelConfig) -> Result<CandleTowers> {
    let c = &config.clip;
    Ok(CandleTowers {
        text: ClipTextTransformer::new(vb.pp("text_model"), &c.text_config)?,
        vision: ClipVisionTransformer::new(vb.pp("vision_model"), &c.vision_config)?,
        visual_projection: candle_nn::linear_no_bias(
            c.vision_config.embed_dim,
            config.projection_dim,
            vb.pp("visual_projection"),
        )?,
        text_projection: candle_nn::linear_no_bias(
            c.text_config.embed_dim,
            config.projection_dim,
            vb.pp("text_projection"),
        )?,
    })
}
