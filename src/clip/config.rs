//! A CLIP model's sizes and preprocessing, read from its Hugging Face `config.json` and
//! `preprocessor_config.json`: every size comes from the files (no preset), and what candle's
//! CLIP cannot run is refused here with the field that says so.

use anyhow::{Context, Result, bail};
use candle_transformers::models::clip::{
    ClipConfig, text_model::Activation, text_model::ClipTextConfig, vision_model::ClipVisionConfig,
};
use serde::Deserialize;
use std::path::Path;

/// The `text_config` / `vision_config` fields mvc reads.
#[derive(Debug, Deserialize)]
struct EncoderJson {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default = "quick_gelu")]
    hidden_act: String,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    // text only
    vocab_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    eos_token_id: Option<u32>,
    // vision only
    image_size: Option<usize>,
    patch_size: Option<usize>,
    num_channels: Option<usize>,
}

fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn default_eps() -> f64 {
    1e-5
}

#[derive(Debug, Deserialize)]
struct ConfigJson {
    projection_dim: usize,
    #[serde(default)]
    logit_scale_init_value: Option<f32>,
    text_config: EncoderJson,
    vision_config: EncoderJson,
}

/// A model's architecture, as candle's CLIP takes it, plus what mvc needs around it.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub clip: ClipConfig,
    pub projection_dim: usize,
    /// Tokens per caption (the text encoder's positions).
    pub max_tokens: usize,
    /// How the text encoder finds the pooled token: `None` takes the first position of the
    /// largest id (what Hugging Face does when `eos_token_id` is the legacy 2, and what the
    /// OpenAI checkpoints need), `Some(id)` the first position of that id.
    pub eos_token_id: Option<u32>,
}

/// Reads and checks `config.json`.
pub fn read_model_config(path: &Path) -> Result<ModelConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_model_config(&text).with_context(|| format!("{}", path.display()))
}

pub fn parse_model_config(text: &str) -> Result<ModelConfig> {
    let c: ConfigJson = serde_json::from_str(text)
        .context("not a CLIP config.json (needs projection_dim, text_config and vision_config)")?;
    for (name, e) in [
        ("text_config", &c.text_config),
        ("vision_config", &c.vision_config),
    ] {
        if e.hidden_act != "quick_gelu" {
            bail!(
                "{name}.hidden_act is `{}`, but candle's CLIP implements only `quick_gelu` (the \
                 OpenAI CLIP models); this model cannot run in mvc",
                e.hidden_act
            );
        }
        if (e.layer_norm_eps - 1e-5).abs() > 1e-12 {
            bail!(
                "{name}.layer_norm_eps is {}, but candle's CLIP uses 1e-5; this model cannot \
                 run in mvc",
                e.layer_norm_eps
            );
        }
        if e.num_attention_heads == 0 || e.hidden_size % e.num_attention_heads != 0 {
            bail!(
                "{name}: hidden_size {} is not a multiple of num_attention_heads {}",
                e.hidden_size,
                e.num_attention_heads
            );
        }
        if e.num_hidden_layers == 0 || e.intermediate_size == 0 {
            bail!("{name}: num_hidden_layers and intermediate_size must be positive");
        }
    }
    let t = &c.text_config;
    let v = &c.vision_config;
    let vocab_size = t.vocab_size.context("text_config.vocab_size is missing")?;
    let max_tokens = t.max_position_embeddings.unwrap_or(77);
    let image_size = v
        .image_size
        .context("vision_config.image_size is missing")?;
    let patch_size = v
        .patch_size
        .context("vision_config.patch_size is missing")?;
    if patch_size == 0 || image_size % patch_size != 0 {
        bail!(
            "vision_config: image_size {image_size} is not a multiple of patch_size {patch_size}"
        );
    }
    let num_channels = v.num_channels.unwrap_or(3);
    if num_channels != 3 {
        bail!("vision_config.num_channels is {num_channels}; mvc embeds RGB images (3 channels)");
    }
    if c.projection_dim == 0 {
        bail!("projection_dim must be positive");
    }
    let clip = ClipConfig {
        text_config: ClipTextConfig {
            vocab_size,
            embed_dim: t.hidden_size,
            activation: Activation::QuickGelu,
            intermediate_size: t.intermediate_size,
            max_position_embeddings: max_tokens,
            pad_with: None,
            num_hidden_layers: t.num_hidden_layers,
            num_attention_heads: t.num_attention_heads,
            projection_dim: c.projection_dim,
        },
        vision_config: ClipVisionConfig {
            embed_dim: v.hidden_size,
            activation: Activation::QuickGelu,
            intermediate_size: v.intermediate_size,
            num_hidden_layers: v.num_hidden_layers,
            num_attention_heads: v.num_attention_heads,
            projection_dim: c.projection_dim,
            num_channels,
            image_size,
            patch_size,
        },
        logit_scale_init_value: c.logit_scale_init_value.unwrap_or(2.6592),
        image_size,
    };
    Ok(ModelConfig {
        clip,
        projection_dim: c.projection_dim,
        max_tokens,
        eos_token_id: t.eos_token_id.filter(|&id| id != 2),
    })
}

/// How images become the model's input: `CLIPImageProcessor`'s settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    /// The shortest edge after resizing.
    pub shortest_edge: u32,
    /// (height, width) of the centre crop.
    pub crop: (u32, u32),
    pub rescale: f64,
    pub mean: [f64; 3],
    pub std: [f64; 3],
    /// The colour transparent pixels are composited onto (white, as the study).
    pub background: [u8; 3],
}

/// OpenAI CLIP's normalisation.
pub const OPENAI_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const OPENAI_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

impl Preprocess {
    /// The processor of the OpenAI models for an image size.
    pub fn openai(image_size: u32) -> Preprocess {
        Preprocess {
            shortest_edge: image_size,
            crop: (image_size, image_size),
            rescale: 1.0 / 255.0,
            mean: OPENAI_MEAN,
            std: OPENAI_STD,
            background: [255, 255, 255],
        }
    }

    /// A canonical description of the model's preprocessing, for task keys (the background
    /// is keyed separately: it concerns images only).
    pub fn key_text(&self) -> String {
        format!(
            "shortest_edge={} crop={}x{} rescale={} mean={:?} std={:?} resample=bicubic",
            self.shortest_edge, self.crop.0, self.crop.1, self.rescale, self.mean, self.std,
        )
    }
}

/// `#rrggbb`.
pub fn colour_text(c: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

#[derive(Debug, Deserialize)]
struct SizeJson {
    shortest_edge: Option<u32>,
    height: Option<u32>,
    width: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct PreprocessorJson {
    size: Option<SizeJson>,
    crop_size: Option<SizeJson>,
    image_mean: Option<[f64; 3]>,
    image_std: Option<[f64; 3]>,
    rescale_factor: Option<f64>,
    resample: Option<u32>,
    do_resize: Option<bool>,
    do_center_crop: Option<bool>,
    do_rescale: Option<bool>,
    do_normalize: Option<bool>,
}

/// Reads `preprocessor_config.json` when the model has one; the OpenAI settings otherwise.
pub fn read_preprocess(path: Option<&Path>, image_size: u32) -> Result<Preprocess> {
    let mut p = Preprocess::openai(image_size);
    let Some(path) = path else { return Ok(p) };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let j: PreprocessorJson = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a preprocessor config", path.display()))?;
    let unsupported = |what: &str| {
        anyhow::anyhow!(
            "{}: {what}; mvc implements CLIPImageProcessor's resize, centre crop, rescale and \
             normalise as the OpenAI models use them",
            path.display()
        )
    };
    for (flag, name) in [
        (j.do_resize, "do_resize"),
        (j.do_center_crop, "do_center_crop"),
        (j.do_rescale, "do_rescale"),
        (j.do_normalize, "do_normalize"),
    ] {
        if flag == Some(false) {
            return Err(unsupported(&format!("{name} is false")));
        }
    }
    if let Some(r) = j.resample
        && r != 3
    {
        return Err(unsupported(&format!("resample is {r}, not 3 (bicubic)")));
    }
    if let Some(size) = j.size {
        p.shortest_edge = size
            .shortest_edge
            .ok_or_else(|| unsupported("size has no shortest_edge"))?;
    }
    if let Some(crop) = j.crop_size {
        match (crop.height, crop.width) {
            (Some(h), Some(w)) => p.crop = (h, w),
            _ => return Err(unsupported("crop_size needs height and width")),
        }
    }
    if p.crop != (image_size, image_size) {
        bail!(
            "{}: crop_size {}x{} does not match the model's image_size {image_size}",
            path.display(),
            p.crop.0,
            p.crop.1
        );
    }
    if let Some(m) = j.image_mean {
        p.mean = m;
    }
    if let Some(s) = j.image_std {
        if s.iter().any(|v| *v <= 0.0) {
            bail!("{}: image_std must be positive", path.display());
        }
        p.std = s;
    }
    if let Some(r) = j.rescale_factor {
        p.rescale = r;
    }
    Ok(p)
}

/// A background colour: `white`, `black`, `gray`/`grey`, or `#rrggbb`.
pub fn parse_colour(text: &str) -> Result<[u8; 3], String> {
    match text.to_ascii_lowercase().as_str() {
        "white" => return Ok([255, 255, 255]),
        "black" => return Ok([0, 0, 0]),
        "gray" | "grey" => return Ok([128, 128, 128]),
        _ => {}
    }
    let hex = text.strip_prefix('#').unwrap_or("");
    if hex.len() == 6 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).expect("checked hex");
        return Ok([byte(0), byte(2), byte(4)]);
    }
    Err(format!(
        "background `{text}` is not a colour; use \"white\" (the study's), \"black\", \"gray\" or \
         \"#rrggbb\""
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = r#"{"projection_dim": 16,
      "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "hidden_act": "quick_gelu", "vocab_size": 49408,
        "max_position_embeddings": 77, "eos_token_id": 2},
      "vision_config": {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 2, "image_size": 224, "patch_size": 32}}"#;

    #[test]
    fn every_size_comes_from_the_file() {
        let c = parse_model_config(TINY).unwrap();
        assert_eq!(c.clip.text_config.embed_dim, 32);
        assert_eq!(c.clip.vision_config.embed_dim, 48);
        assert_eq!(c.clip.vision_config.patch_size, 32);
        assert_eq!(c.projection_dim, 16);
        assert_eq!(
            c.eos_token_id, None,
            "the legacy id 2 means: pool at the largest id"
        );
    }

    #[test]
    fn what_candle_cannot_run_is_refused_with_the_field() {
        let gelu = TINY.replacen("\"quick_gelu\"", "\"gelu\"", 1);
        let e = format!("{:#}", parse_model_config(&gelu).unwrap_err());
        assert!(e.contains("text_config.hidden_act is `gelu`"), "{e}");
        let heads = TINY.replacen(
            "\"num_attention_heads\": 2, \"image_size\"",
            "\"num_attention_heads\": 5, \"image_size\"",
            1,
        );
        let e = format!("{:#}", parse_model_config(&heads).unwrap_err());
        assert!(
            e.contains("vision_config: hidden_size 48 is not a multiple of num_attention_heads 5"),
            "{e}"
        );
        let patch = TINY.replace("\"patch_size\": 32", "\"patch_size\": 30");
        let e = format!("{:#}", parse_model_config(&patch).unwrap_err());
        assert!(
            e.contains("image_size 224 is not a multiple of patch_size 30"),
            "{e}"
        );
        let eps = TINY.replace("\"vocab_size\"", "\"layer_norm_eps\": 1e-6, \"vocab_size\"");
        let e = format!("{:#}", parse_model_config(&eps).unwrap_err());
        assert!(e.contains("layer_norm_eps"), "{e}");
    }
}
