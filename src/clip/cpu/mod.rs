//! CLIP's encoders on the CPU: the same transformer as candle-transformers' (and Hugging
//! Face's) with the same weights, computed by this module's kernels instead of candle's ops.
//!
//! Why not candle's ops on the CPU: candle runs its elementwise ops, softmax and layer norm
//! on one thread, makes a pass over the activations per op (quick-GELU alone is five), and
//! its matrix products round an image differently depending on how many rows its batch has,
//! so the same image embedded twice could give different bytes (see [`kernels`]). Here every
//! product has a fixed shape, every other op is fused into the product's epilogue or done row
//! by row in parallel, and the weights are laid out once at load. Candle still loads the
//! weights (a `VarBuilder` over the memory-mapped safetensors), and its CLIP is the CUDA path.

pub mod kernels;

use super::config::ModelConfig;
use anyhow::{Result, bail};
use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use kernels::{Epilogue, Linear};
use rayon::prelude::*;
use std::time::{Duration, Instant};

/// Where a forward pass's time went, op by op (for `MVC_BENCH_BREAKDOWN`).
#[derive(Default)]
pub struct Profile {
    pub ops: Vec<(&'static str, Duration)>,
}

impl Profile {
    fn add(&mut self, op: &'static str, took: Duration) {
        match self.ops.iter_mut().find(|(o, _)| *o == op) {
            Some((_, total)) => *total += took,
            None => self.ops.push((op, took)),
        }
    }
}

/// Runs `f`, adding its time to `profile` under `op` when there is one.
fn timed<T>(profile: &mut Option<&mut Profile>, op: &'static str, f: impl FnOnce() -> T) -> T {
    match profile {
        None => f(),
        Some(p) => {
            let start = Instant::now();
            let out = f();
            p.add(op, start.elapsed());
            out
        }
    }
}

/// One tensor of the checkpoint as f32 values, checked against its expected shape.
fn values(vb: &VarBuilder, dims: &[usize], name: &str) -> Result<Vec<f32>> {
    let t: Tensor = vb.get(dims, name)?;
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
}

fn linear(vb: &VarBuilder, outputs: usize, inputs: usize, bias: bool) -> Result<Linear> {
    let w = values(vb, &[outputs, inputs], "weight")?;
    let b = if bias {
        Some(values(vb, &[outputs], "bias")?)
    } else {
        None
    };
    Ok(Linear::new(&w, b, outputs, inputs))
}

struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Norm {
    fn load(vb: &VarBuilder, width: usize) -> Result<Norm> {
        Ok(Norm {
            weight: values(vb, &[width], "weight")?,
            bias: values(vb, &[width], "bias")?,
        })
    }
    fn apply(&self, x: &[f32], out: &mut [f32]) {
        kernels::layer_norm(x, out, self.weight.len(), &self.weight, &self.bias);
    }
}

/// One encoder layer; q, k and v are one product (their weights stacked at load).
struct Layer {
    norm1: Norm,
    qkv: Linear,
    out_proj: Linear,
    norm2: Norm,
    fc1: Linear,
    fc2: Linear,
}

impl Layer {
    fn load(vb: &VarBuilder, width: usize, intermediate: usize) -> Result<Layer> {
        let attn = vb.pp("self_attn");
        let mut w = Vec::with_capacity(3 * width * width);
        let mut b = Vec::with_capacity(3 * width);
        for name in ["q_proj", "k_proj", "v_proj"] {
            w.extend(values(&attn.pp(name), &[width, width], "weight")?);
            b.extend(values(&attn.pp(name), &[width], "bias")?);
        }
        Ok(Layer {
            norm1: Norm::load(&vb.pp("layer_norm1"), width)?,
            qkv: Linear::new(&w, Some(b), 3 * width, width),
            out_proj: linear(&attn.pp("out_proj"), width, width, true)?,
            norm2: Norm::load(&vb.pp("layer_norm2"), width)?,
            fc1: linear(&vb.pp("mlp").pp("fc1"), intermediate, width, true)?,
            fc2: linear(&vb.pp("mlp").pp("fc2"), width, intermediate, true)?,
        })
    }
}

/// The transformer both encoders share, with its scratch sizes.
struct Encoder {
    layers: Vec<Layer>,
    width: usize,
    intermediate: usize,
    heads: usize,
}

impl Encoder {
    fn load(
        vb: &VarBuilder,
        width: usize,
        intermediate: usize,
        heads: usize,
        depth: usize,
    ) -> Result<Encoder> {
        if heads == 0 || !width.is_multiple_of(heads) {
            bail!("the width {width} is not a multiple of the {heads} attention heads");
        }
        let vb = vb.pp("encoder").pp("layers");
        let layers = (0..depth)
            .map(|i| Layer::load(&vb.pp(i.to_string()), width, intermediate))
            .collect::<Result<_>>()?;
        Ok(Encoder {
            layers,
            width,
            intermediate,
            heads,
        })
    }

    /// Runs every layer over `h` (`[sequences·len, width]`), in place.
    fn forward(
        &self,
        h: &mut [f32],
        sequences: usize,
        len: usize,
        causal: bool,
        mut profile: Option<&mut Profile>,
    ) {
        let p = &mut profile;
        let rows = sequences * len;
        let width = self.width;
        let scale = 1.0 / ((width / self.heads) as f32).sqrt();
        let mut normed = vec![0f32; rows * width];
        let mut qkv = vec![0f32; rows * 3 * width];
        let mut attended = vec![0f32; rows * width];
        let mut hidden = vec![0f32; rows * self.intermediate];
        for layer in &self.layers {
            timed(p, "layer norm", || layer.norm1.apply(h, &mut normed));
            timed(p, "q, k, v product + bias", || {
                layer.qkv.forward(&normed, rows, &mut qkv, Epilogue::Bias)
            });
            timed(p, "attention (scores, softmax, weighted values)", || {
                kernels::attention(
                    &qkv,
                    &mut attended,
                    kernels::Attention {
                        sequences,
                        len,
                        width,
                        heads: self.heads,
                        scale,
                        causal,
                    },
                )
            });
            timed(p, "out product + bias + residual", || {
                layer
                    .out_proj
                    .forward(&attended, rows, h, Epilogue::BiasResidual)
            });
            timed(p, "layer norm", || layer.norm2.apply(h, &mut normed));
            timed(p, "fc1 product + bias + quick-GELU", || {
                layer
                    .fc1
                    .forward(&normed, rows, &mut hidden, Epilogue::BiasQuickGelu)
            });
            timed(p, "fc2 product + bias + residual", || {
                layer.fc2.forward(&hidden, rows, h, Epilogue::BiasResidual)
            });
        }
    }
}

/// The vision tower and its projection.
struct Vision {
    /// The patch embedding (a convolution with stride = kernel) as a product over patches.
    patch: Linear,
    class_embedding: Vec<f32>,
    /// `[patches + 1, width]`.
    positions: Vec<f32>,
    pre_norm: Norm,
    encoder: Encoder,
    post_norm: Norm,
    projection: Linear,
    image_size: usize,
    patch_size: usize,
    channels: usize,
}

/// The text tower and its projection.
struct Text {
    /// `[vocab, width]`.
    tokens: Vec<f32>,
    /// `[max_positions, width]`.
    positions: Vec<f32>,
    encoder: Encoder,
    final_norm: Norm,
    projection: Linear,
}

/// CLIP on the CPU, f32.
pub struct CpuClip {
    vision: Vision,
    text: Text,
}

impl CpuClip {
    /// The model's tensors from `vb` (a `VarBuilder` in f32 on the CPU).
    pub fn load(vb: &VarBuilder, config: &ModelConfig) -> Result<CpuClip> {
        let v = &config.clip.vision_config;
        let t = &config.clip.text_config;
        let vv = vb.pp("vision_model");
        let emb = vv.pp("embeddings");
        let patches = (v.image_size / v.patch_size).pow(2);
        let patch_inputs = v.num_channels * v.patch_size * v.patch_size;
        let conv = values(
            &emb.pp("patch_embedding"),
            &[v.embed_dim, v.num_channels, v.patch_size, v.patch_size],
            "weight",
        )?;
        let vision = Vision {
            patch: Linear::new(&conv, None, v.embed_dim, patch_inputs),
            class_embedding: values(&emb, &[v.embed_dim], "class_embedding")?,
            positions: values(
                &emb.pp("position_embedding"),
                &[patches + 1, v.embed_dim],
                "weight",
            )?,
            pre_norm: Norm::load(&vv.pp("pre_layrnorm"), v.embed_dim)?,
            encoder: Encoder::load(
                &vv,
                v.embed_dim,
                v.intermediate_size,
                v.num_attention_heads,
                v.num_hidden_layers,
            )?,
            post_norm: Norm::load(&vv.pp("post_layernorm"), v.embed_dim)?,
            projection: linear(
                &vb.pp("visual_projection"),
                config.projection_dim,
                v.embed_dim,
                false,
            )?,
            image_size: v.image_size,
            patch_size: v.patch_size,
            channels: v.num_channels,
        };
        let tv = vb.pp("text_model");
        let temb = tv.pp("embeddings");
        let text = Text {
            tokens: values(
                &temb.pp("token_embedding"),
                &[t.vocab_size, t.embed_dim],
                "weight",
            )?,
            positions: values(
                &temb.pp("position_embedding"),
                &[t.max_position_embeddings, t.embed_dim],
                "weight",
            )?,
            encoder: Encoder::load(
                &tv,
                t.embed_dim,
                t.intermediate_size,
                t.num_attention_heads,
                t.num_hidden_layers,
            )?,
            final_norm: Norm::load(&tv.pp("final_layer_norm"), t.embed_dim)?,
            projection: linear(
                &vb.pp("text_projection"),
                config.projection_dim,
                t.embed_dim,
                false,
            )?,
        };
        Ok(CpuClip { vision, text })
    }

    /// `get_image_features` of `n` images of pixel values `[n, 3, S, S]`.
    pub fn image_features(&self, pixels: &[f32], n: usize) -> Vec<f32> {
        self.image_features_profiled(pixels, n, None)
    }

    /// [`Self::image_features`], adding each op's time to `profile`.
    pub fn image_features_profiled(
        &self,
        pixels: &[f32],
        n: usize,
        mut profile: Option<&mut Profile>,
    ) -> Vec<f32> {
        let v = &self.vision;
        let (s, p, c) = (v.image_size, v.patch_size, v.channels);
        let side = s / p;
        let patches = side * side;
        let len = patches + 1;
        let width = v.encoder.width;
        // The patches as rows of (channel, y, x) values, the convolution weight's order.
        let per_patch = c * p * p;
        let mut unfolded = vec![0f32; n * patches * per_patch];
        let start = Instant::now();
        unfolded
            .par_chunks_mut(patches * per_patch)
            .zip(pixels.par_chunks(c * s * s))
            .for_each(|(rows, image)| {
                for (index, row) in rows.chunks_mut(per_patch).enumerate() {
                    let (py, px) = (index / side, index % side);
                    for ch in 0..c {
                        for y in 0..p {
                            let from = ch * s * s + (py * p + y) * s + px * p;
                            let to = (ch * p + y) * p;
                            row[to..to + p].copy_from_slice(&image[from..from + p]);
                        }
                    }
                }
            });
        let mut embedded = vec![0f32; n * patches * width];
        v.patch
            .forward(&unfolded, n * patches, &mut embedded, Epilogue::Bias);
        if let Some(prof) = profile.as_mut() {
            prof.add("patch embedding (unfold + product)", start.elapsed());
        }
        drop(unfolded);
        // [class, patches...] + positions, then the pre-norm.
        let mut tokens = vec![0f32; n * len * width];
        tokens
            .par_chunks_mut(len * width)
            .zip(embedded.par_chunks(patches * width))
            .for_each(|(seq, patches)| {
                seq[..width].copy_from_slice(&v.class_embedding);
                seq[width..].copy_from_slice(patches);
                for (x, pos) in seq.iter_mut().zip(&v.positions) {
                    *x += pos;
                }
            });
        drop(embedded);
        let mut h = vec![0f32; n * len * width];
        v.pre_norm.apply(&tokens, &mut h);
        drop(tokens);
        v.encoder.forward(&mut h, n, len, false, profile);
        // The class token of each image, post-normed and projected.
        let pooled: Vec<f32> = h
            .chunks(len * width)
            .flat_map(|seq| seq[..width].iter().copied())
            .collect();
        project(&pooled, n, &v.post_norm, &v.projection)
    }

    /// `get_text_features` of `n` id sequences of `len` tokens, pooled at `positions` (one
    /// per sequence, within it). Ids must be within the vocabulary (checked by the caller).
    pub fn text_features(
        &self,
        ids: &[u32],
        n: usize,
        len: usize,
        positions: &[usize],
    ) -> Result<Vec<f32>> {
        let t = &self.text;
        let width = t.encoder.width;
        if len * width > t.positions.len() {
            bail!(
                "{len} tokens per caption, but the model has {} positions",
                t.positions.len() / width
            );
        }
        let mut h = vec![0f32; n * len * width];
        h.par_chunks_mut(len * width)
            .zip(ids.par_chunks(len))
            .for_each(|(seq, ids)| {
                for (pos, (row, &id)) in seq.chunks_mut(width).zip(ids).enumerate() {
                    let token = &t.tokens[id as usize * width..(id as usize + 1) * width];
                    let position = &t.positions[pos * width..(pos + 1) * width];
                    for ((x, a), b) in row.iter_mut().zip(token).zip(position) {
                        *x = a + b;
                    }
                }
            });
        t.encoder.forward(&mut h, n, len, true, None);
        let pooled: Vec<f32> = positions
            .iter()
            .enumerate()
            .flat_map(|(s, &p)| {
                h[(s * len + p) * width..(s * len + p + 1) * width]
                    .iter()
                    .copied()
            })
            .collect();
        Ok(project(&pooled, n, &t.final_norm, &t.projection))
    }
}

/// Layer norm then the projection of `n` pooled rows.
fn project(pooled: &[f32], n: usize, norm: &Norm, projection: &Linear) -> Vec<f32> {
    let mut normed = vec![0f32; pooled.len()];
    norm.apply(pooled, &mut normed);
    let mut features = vec![0f32; n * projection.outputs];
    projection.forward(&normed, n, &mut features, Epilogue::Bias);
    features
}
