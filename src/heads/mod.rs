//! The trainable heads of the study, on candle: architectures (`Head`), losses (`loss`) and
//! the training loop (`train`). Settings and formulas: the study as described in the
//! project's reference notes; `variant = "study"` keeps its quirks, `"fixed"` corrects them.

pub mod fused;
pub mod loss;
pub mod train;

use crate::clip::tensors_file::NamedTensor;
use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor, Var};
use loss::Normaliser;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    /// The raw CLIP embeddings: the baseline.
    Identity,
    Object,
    Contrastive,
    Autoencoder,
}

pub const HEAD_NAMES: &[&str] = &["identity", "object", "contrastive", "autoencoder"];

impl std::str::FromStr for HeadKind {
    type Err = String;
    fn from_str(s: &str) -> Result<HeadKind, String> {
        match s {
            "identity" => Ok(HeadKind::Identity),
            "object" => Ok(HeadKind::Object),
            "contrastive" => Ok(HeadKind::Contrastive),
            "autoencoder" => Ok(HeadKind::Autoencoder),
            other => {
                let mut msg = format!("unknown head `{other}`; heads: {}", HEAD_NAMES.join(", "));
                if let Some(c) = crate::diag::closest(other, HEAD_NAMES) {
                    msg.push_str(&format!(" (did you mean `{c}`?)"));
                }
                Err(msg)
            }
        }
    }
}

impl HeadKind {
    pub fn name(self) -> &'static str {
        HEAD_NAMES[self as usize]
    }
}

/// The study's formulas with their quirks, or corrected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// As the study's code: dissimilarity divided by D(D+1)·B(B−1)/2 (contrastive) or
    /// D(D−1)·B(B−1)/2 (autoencoder), ReLU after the autoencoder's last layers.
    Study,
    /// True means, no ReLU on the autoencoder's last layers, InfoNCE for the contrastive head.
    Fixed,
}

impl std::str::FromStr for Variant {
    type Err = String;
    fn from_str(s: &str) -> Result<Variant, String> {
        match s {
            "study" => Ok(Variant::Study),
            "fixed" => Ok(Variant::Fixed),
            other => Err(format!(
                "unknown variant `{other}`; use \"study\" (the study's formulas) or \"fixed\" \
                 (true means, no final ReLU, InfoNCE for the contrastive head)"
            )),
        }
    }
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Study => "study",
            Variant::Fixed => "fixed",
        }
    }
    pub fn normaliser(self) -> Normaliser {
        match self {
            Variant::Study => Normaliser::Study,
            Variant::Fixed => Normaliser::TrueMean,
        }
    }
    /// How the autoencoder's dead codes enter its cosines.
    pub fn dead_codes(self) -> loss::DeadCodes {
        match self {
            Variant::Study => loss::DeadCodes::Study,
            Variant::Fixed => loss::DeadCodes::Zero,
        }
    }
}

/// Everything that shapes a head and its loss (saved next to its weights as `head.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    pub head: HeadKind,
    pub variant: Variant,
    /// The embedding width (512 for ViT-B/32).
    pub dim: usize,
    /// Hidden width of the MLPs (the study: 512).
    pub hidden: usize,
    /// The autoencoder's code width (the study: 128).
    pub code: usize,
    /// w in (1 − w)·dissim − w·sim (the study: 0.5).
    pub weight_similarity: f64,
    /// The autoencoder's weight on reconstruction (the study: 0.5).
    pub weight_autoencoder: f64,
    /// InfoNCE temperature (`fixed` contrastive only).
    pub temperature: f64,
}

/// `y = x Wᵀ + b`, initialised as PyTorch's `nn.Linear`: U(−1/√in, 1/√in) for both.
pub struct Linear {
    pub weight: Var,
    pub bias: Var,
}

impl Linear {
    fn init(
        inputs: usize,
        outputs: usize,
        rng: &mut fastrand::Rng,
        device: &Device,
    ) -> Result<Linear> {
        let bound = 1.0 / (inputs as f32).sqrt();
        let mut draw =
            |n: usize| -> Vec<f32> { (0..n).map(|_| (rng.f32() * 2.0 - 1.0) * bound).collect() };
        let weight = Tensor::from_vec(draw(outputs * inputs), (outputs, inputs), device)?;
        let bias = Tensor::from_vec(draw(outputs), outputs, device)?;
        Ok(Linear {
            weight: Var::from_tensor(&weight)?,
            bias: Var::from_tensor(&bias)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)
    }
}

/// Linear layers with ReLU between them, and after the last when `relu_last`.
pub struct Mlp {
    pub layers: Vec<Linear>,
    pub relu_last: bool,
}

impl Mlp {
    fn init(
        widths: &[usize],
        relu_last: bool,
        rng: &mut fastrand::Rng,
        device: &Device,
    ) -> Result<Mlp> {
        let layers = widths
            .windows(2)
            .map(|w| Linear::init(w[0], w[1], rng, device))
            .collect::<Result<_>>()?;
        Ok(Mlp { layers, relu_last })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        let last = self.layers.len() - 1;
        for (k, layer) in self.layers.iter().enumerate() {
            h = if k < last || self.relu_last {
                fused::bias_relu(&h.matmul(&layer.weight.t()?)?, &layer.bias)?
            } else {
                layer.forward(&h)?
            };
        }
        Ok(h)
    }
}

/// A head with its weights.
pub struct Head {
    pub config: HeadConfig,
    /// Named networks: `mlp`, or the autoencoder's `vi_enc`, `vd_enc`, `vi_dec`, `vd_dec`.
    pub nets: Vec<(String, Mlp)>,
}

impl Head {
    /// A head with weights drawn from `seed` (the same seed gives the same weights).
    pub fn init(config: HeadConfig, seed: u64, device: &Device) -> Result<Head> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let c = &config;
        if c.hidden < 2 || c.code < 1 || c.dim < 1 {
            bail!("hidden must be at least 2 and code at least 1");
        }
        let nets = match c.head {
            HeadKind::Identity => Vec::new(),
            HeadKind::Object | HeadKind::Contrastive => vec![(
                "mlp".to_string(),
                Mlp::init(&[c.dim, c.hidden, c.hidden, c.dim], false, &mut rng, device)?,
            )],
            HeadKind::Autoencoder => {
                // The study: ReLU after every Linear, the last included.
                let relu_last = c.variant == Variant::Study;
                let enc = [c.dim, c.hidden, c.hidden / 2, c.code];
                let dec = [c.code, c.hidden / 2, c.hidden, c.dim];
                let mut nets = Vec::new();
                for (name, widths) in [
                    ("vi_enc", enc),
                    ("vd_enc", enc),
                    ("vi_dec", dec),
                    ("vd_dec", dec),
                ] {
                    nets.push((
                        name.to_string(),
                        Mlp::init(&widths, relu_last, &mut rng, device)?,
                    ));
                }
                nets
            }
        };
        Ok(Head { config, nets })
    }

    fn net(&self, name: &str) -> &Mlp {
        &self
            .nets
            .iter()
            .find(|(n, _)| n == name)
            .expect("built with it")
            .1
    }

    /// Every trainable variable.
    pub fn vars(&self) -> Vec<Var> {
        self.nets
            .iter()
            .flat_map(|(_, m)| m.layers.iter())
            .flat_map(|l| [l.weight.clone(), l.bias.clone()])
            .collect()
    }

    /// What the head makes of embeddings `[N, d]` for evaluation: themselves (identity), the
    /// MLP's output, or the autoencoder's view-independent decoding alone.
    pub fn project(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.config.head {
            HeadKind::Identity => Ok(x.clone()),
            HeadKind::Object | HeadKind::Contrastive => self.net("mlp").forward(x),
            HeadKind::Autoencoder => self.net("vi_dec").forward(&self.net("vi_enc").forward(x)?),
        }
    }

    /// The autoencoder's full decoding (view-independent plus view-dependent) of `[N, d]`.
    pub fn reconstruct(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let vi = self
            .net("vi_dec")
            .forward(&self.net("vi_enc").forward(x)?)?;
        let vd = self
            .net("vd_dec")
            .forward(&self.net("vd_enc").forward(x)?)?;
        vi + vd
    }

    /// The training loss of a batch and its terms: `images` `[B, D, d]` (raw embeddings of D
    /// views of B objects), `texts` `[B, d]` (raw, never through the head).
    pub fn loss(&self, images: &Tensor, texts: &Tensor) -> candle_core::Result<loss::Loss> {
        let c = &self.config;
        let (b, d, dim) = images.dims3()?;
        let flat = images.reshape((b * d, dim))?;
        match c.head {
            HeadKind::Identity => candle_core::bail!("the identity head has nothing to train"),
            HeadKind::Object => {
                loss::object_loss(&self.project(&flat)?.reshape((b, d, dim))?, texts)
            }
            HeadKind::Contrastive => {
                let out = self.project(&flat)?.reshape((b, d, dim))?;
                match c.variant {
                    Variant::Study => {
                        loss::contrastive_loss(&out, texts, c.weight_similarity, Normaliser::Study)
                    }
                    Variant::Fixed => loss::info_nce_loss(&out, texts, c.temperature),
                }
            }
            HeadKind::Autoencoder => {
                let codes = self.net("vi_enc").forward(&flat)?;
                let decoded = (self.net("vi_dec").forward(&codes)?
                    + self
                        .net("vd_dec")
                        .forward(&self.net("vd_enc").forward(&flat)?)?)?;
                loss::autoencoder_loss(
                    &flat,
                    &decoded,
                    &codes.reshape((b, d, c.code))?,
                    c.weight_autoencoder,
                    c.weight_similarity,
                    c.variant.normaliser(),
                    c.variant.dead_codes(),
                )
            }
        }
    }

    /// Deep copies of every variable's value (a checkpoint).
    pub fn snapshot(&self) -> Result<Vec<Tensor>> {
        Ok(self
            .vars()
            .iter()
            .map(|v| v.as_tensor().copy())
            .collect::<candle_core::Result<_>>()?)
    }

    /// Sets every variable from a checkpoint taken by [`Head::snapshot`].
    pub fn restore(&self, checkpoint: &[Tensor]) -> Result<()> {
        for (v, t) in self.vars().iter().zip(checkpoint) {
            v.set(t)?;
        }
        Ok(())
    }

    /// The weights as named tensors: `<net>.<layer>.weight` / `.bias`, as float32.
    pub fn tensors(&self) -> Result<Vec<NamedTensor>> {
        let mut out = Vec::new();
        for (name, mlp) in &self.nets {
            for (k, layer) in mlp.layers.iter().enumerate() {
                for (part, var) in [("weight", &layer.weight), ("bias", &layer.bias)] {
                    let t = var.as_tensor().to_dtype(DType::F32)?;
                    let values = t.flatten_all()?.to_vec1::<f32>()?;
                    out.push(NamedTensor::f32(
                        &format!("{name}.{k}.{part}"),
                        t.dims().to_vec(),
                        &values,
                    ));
                }
            }
        }
        Ok(out)
    }

    /// A head of `config` with the weights of a safetensors file written from
    /// [`Head::tensors`].
    pub fn from_safetensors(config: HeadConfig, bytes: &[u8], device: &Device) -> Result<Head> {
        let head = Head::init(config, 0, device)?;
        let file = safetensors::SafeTensors::deserialize(bytes)
            .context("the head's weights are not a safetensors file")?;
        let mut found: HashMap<String, Tensor> = HashMap::new();
        for (name, view) in file.tensors() {
            if view.dtype() != safetensors::Dtype::F32 {
                bail!("{name}: float32 expected");
            }
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect();
            found.insert(
                name.to_string(),
                Tensor::from_vec(values, view.shape(), device)?,
            );
        }
        for (name, mlp) in &head.nets {
            for (k, layer) in mlp.layers.iter().enumerate() {
                for (part, var) in [("weight", &layer.weight), ("bias", &layer.bias)] {
                    let key = format!("{name}.{k}.{part}");
                    let t = found
                        .get(&key)
                        .with_context(|| format!("the head's weights lack {key}"))?;
                    if t.dims() != var.dims() {
                        bail!(
                            "{key} has shape {:?}; this head needs {:?}",
                            t.dims(),
                            var.dims()
                        );
                    }
                    var.set(t)?;
                }
            }
        }
        Ok(head)
    }
}
