//! CLIP on candle, equal to the Hugging Face reference the study used: the model's sizes from
//! its `config.json` ([`config`]), weights ([`model`]), CLIP's tokenizer ([`tokenize`]) and
//! `CLIPImageProcessor`'s preprocessing ([`preprocess`]). Models come from a local Hugging
//! Face folder or from the hub (fetched into the cache by [`crate::models`]).

pub mod config;
pub mod cpu;
pub mod model;
pub mod preprocess;
pub mod resample;
pub mod tensors_file;
pub mod tokenize;

use anyhow::{Result, bail};
use candle_core::Device;
use std::path::{Path, PathBuf};

pub use config::{ModelConfig, Preprocess};
pub use model::{ClipEncoder, DeviceChoice, Precision};
pub use tokenize::ClipTokenizer;

/// The files of a model in the Hugging Face layout.
#[derive(Clone, Debug)]
pub struct ModelFiles {
    pub config: PathBuf,
    pub weights: PathBuf,
    pub tokenizer: PathBuf,
    /// `preprocessor_config.json`, when the model has one (the OpenAI settings otherwise).
    pub preprocessor: Option<PathBuf>,
}

/// The files a model folder must hold, and the optional one.
pub const REQUIRED_FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];
pub const PREPROCESSOR_FILE: &str = "preprocessor_config.json";

impl ModelFiles {
    /// The files of a local model folder; a missing one is named.
    pub fn in_dir(dir: &Path) -> Result<ModelFiles> {
        if !dir.is_dir() {
            bail!(
                "model folder {} does not exist; give a folder in the Hugging Face layout \
                 ({}) or a hub repository id such as openai/clip-vit-base-patch32",
                dir.display(),
                REQUIRED_FILES.join(", ")
            );
        }
        for name in REQUIRED_FILES {
            if !dir.join(name).is_file() {
                bail!(
                    "model folder {} has no {name}; a CLIP model folder holds {} (and \
                     optionally {PREPROCESSOR_FILE}), as Hugging Face's save_pretrained writes \
                     them",
                    dir.display(),
                    REQUIRED_FILES.join(", ")
                );
            }
        }
        let pre = dir.join(PREPROCESSOR_FILE);
        Ok(ModelFiles {
            config: dir.join("config.json"),
            weights: dir.join("model.safetensors"),
            tokenizer: dir.join("tokenizer.json"),
            preprocessor: pre.is_file().then_some(pre),
        })
    }
}

/// Where a model comes from, as a pipeline or `mvc embed --model` names it.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelSource {
    Dir(PathBuf),
    Hub { repo: String, revision: String },
}

impl ModelSource {
    /// A folder when `spec` is one (or looks like a path), else a hub repo id `owner/name`.
    pub fn parse(spec: &str, revision: Option<&str>) -> Result<ModelSource> {
        let path = Path::new(spec);
        let looks_like_path = spec.starts_with('.')
            || spec.starts_with('/')
            || spec.starts_with('~')
            || spec.matches('/').count() != 1;
        if path.is_dir() || looks_like_path {
            if revision.is_some() {
                bail!("`revision` applies to hub models; {spec} is a local folder");
            }
            return Ok(ModelSource::Dir(path.to_path_buf()));
        }
        let valid = spec
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        if !valid || spec.contains("..") {
            bail!(
                "model `{spec}` is neither a folder nor a hub repository id (owner/name, letters, \
                 digits, - _ .)"
            );
        }
        Ok(ModelSource::Hub {
            repo: spec.to_string(),
            revision: revision.unwrap_or("main").to_string(),
        })
    }
}

/// A loaded model with its tokenizer and preprocessing.
pub struct Clip {
    pub encoder: ClipEncoder,
    pub tokenizer: ClipTokenizer,
    pub preprocess: Preprocess,
}

impl Clip {
    pub fn load(files: &ModelFiles, device: &Device, precision: Precision) -> Result<Clip> {
        let config = config::read_model_config(&files.config)?;
        let preprocess = config::read_preprocess(
            files.preprocessor.as_deref(),
            config.clip.vision_config.image_size as u32,
        )?;
        let tokenizer = ClipTokenizer::from_file(&files.tokenizer, config.max_tokens)?;
        let vocab = config.clip.text_config.vocab_size as u32;
        if tokenizer.eos_id >= vocab {
            bail!(
                "{}: the end token's id {} is outside the model's vocabulary of {vocab} \
                 (config.json); the tokenizer does not belong to this model",
                files.tokenizer.display(),
                tokenizer.eos_id
            );
        }
        let encoder = ClipEncoder::load(&files.weights, config, device, precision)?;
        Ok(Clip {
            encoder,
            tokenizer,
            preprocess,
        })
    }
}
