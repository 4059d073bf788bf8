//! The CPU kernels of the CLIP forward pass: fixed-shape matrix products with fused
//! epilogues, layer norm, attention and an exponential, all multi-threaded over rows.
//!
//! Why fixed shapes: a matrix library picks its blocking, its kernel and even its algorithm
//! (a matrix-vector path for one row) from the shapes it is given, and each choice rounds
//! differently. Every product here is cut into tiles of exactly [`ROW_TILE`] rows (the last
//! one padded with zeros) and fixed column chunks per layer, so `gemm` sees the same shapes
//! whatever the batch, and an image's rows are computed by the same instructions whether
//! they share a tile with other images or not. The other kernels work row by row (layer norm,
//! the epilogues) or sequence by sequence (attention), each in a fixed order. Together: an
//! image's (or caption's) features are the same bytes whatever batch it is in.

use rayon::prelude::*;

/// Rows per product tile. A multiple of the kernel's register block, small enough that a
/// single image (50 rows for ViT-B/32) wastes little padding.
pub const ROW_TILE: usize = 64;

/// Columns per product chunk: the unit of parallel work along the output features.
const COL_TILE: usize = 128;

/// Layer norm's epsilon (CLIP's, checked against `config.json` when the model loads).
pub const LAYER_NORM_EPS: f32 = 1e-5;

/// A linear layer's weight laid out once at load for the product kernel: transposed to
/// `[in, out]` row-major (the output features contiguous), with its bias.
pub struct Linear {
    /// `[in, out]`, row-major.
    weight_t: Vec<f32>,
    /// `[out]`; a layer without one (the patch embedding, the projections) holds -0.0, the
    /// exact identity of addition (x + -0.0 == x, also for x = -0.0), so the epilogues need
    /// no second form.
    bias: Vec<f32>,
    pub inputs: usize,
    pub outputs: usize,
}

/// What is done with a tile's product before it is written.
#[derive(Clone, Copy)]
pub enum Epilogue {
    /// `out = x·Wᵀ + b`
    Bias,
    /// `out = quick_gelu(x·Wᵀ + b)`
    BiasQuickGelu,
    /// `out += x·Wᵀ + b` (a residual connection)
    BiasResidual,
}

/// A raw pointer the parallel tasks write through, each to its own rows and columns.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: every task writes a disjoint (tile, column chunk) block of the output.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// `len` values from `offset`. A method, so that closures capture the whole (Send)
    /// wrapper rather than its raw pointer.
    ///
    /// SAFETY: the caller writes a block no other task touches, inside the output.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, offset: usize, len: usize) -> &mut [f32] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(offset), len) }
    }
}

impl Linear {
    /// From a weight `[out, in]` row-major (PyTorch's layout) and an optional bias `[out]`.
    pub fn new(weight: &[f32], bias: Option<Vec<f32>>, outputs: usize, inputs: usize) -> Linear {
        assert_eq!(weight.len(), outputs * inputs, "weight shape");
        let mut weight_t = vec![0f32; inputs * outputs];
        for o in 0..outputs {
            for i in 0..inputs {
                weight_t[i * outputs + o] = weight[o * inputs + i];
            }
        }
        let bias = bias.unwrap_or_else(|| vec![-0.0; outputs]);
        assert_eq!(bias.len(), outputs, "bias shape");
        Linear {
            weight_t,
            bias,
            inputs,
            outputs,
        }
    }

    /// Applies the layer to `rows` rows of `x` (`[rows, in]`) into `out` (`[rows, out]`).
    pub fn forward(&self, x: &[f32], rows: usize, out: &mut [f32], epilogue: Epilogue) {
        let (k, n) = (self.inputs, self.outputs);
        assert_eq!(x.len(), rows * k, "input shape");
        assert_eq!(out.len(), rows * n, "output shape");
        if rows == 0 {
            return;
        }
        let tiles = rows.div_ceil(ROW_TILE);
        let chunks = n.div_ceil(COL_TILE);
        // The last tile, padded with zero rows, so that every product has ROW_TILE rows.
        let last_rows = rows - (tiles - 1) * ROW_TILE;
        let padded_last: Option<Vec<f32>> = (last_rows < ROW_TILE).then(|| {
            let mut p = vec![0f32; ROW_TILE * k];
            p[..last_rows * k].copy_from_slice(&x[(tiles - 1) * ROW_TILE * k..]);
            p
        });
        let shared = SharedOut(out.as_mut_ptr());
        // Chunk-major: a thread's consecutive tasks share a weight chunk, which stays in its
        // cache while the tiles go by.
        (0..tiles * chunks).into_par_iter().for_each(|task| {
            let (chunk, tile) = (task / tiles, task % tiles);
            let c0 = chunk * COL_TILE;
            let width = COL_TILE.min(n - c0);
            let valid = if tile + 1 == tiles {
                last_rows
            } else {
                ROW_TILE
            };
            let lhs = match (&padded_last, tile + 1 == tiles) {
                (Some(p), true) => p.as_slice(),
                _ => &x[tile * ROW_TILE * k..(tile + 1) * ROW_TILE * k],
            };
            let mut acc = vec![0f32; ROW_TILE * width];
            // SAFETY: `lhs` holds ROW_TILE rows of k values; `weight_t` holds k rows of n
            // values of which columns c0..c0+width are read; `acc` is ROW_TILE x width.
            unsafe {
                gemm::gemm(
                    ROW_TILE,
                    width,
                    k,
                    acc.as_mut_ptr(),
                    1,
                    width as isize,
                    false,
                    lhs.as_ptr(),
                    1,
                    k as isize,
                    self.weight_t.as_ptr().add(c0),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            let bias = &self.bias[c0..c0 + width];
            for r in 0..valid {
                let row = tile * ROW_TILE + r;
                let a = &acc[r * width..(r + 1) * width];
                // SAFETY: row < rows and c0 + width <= n; no other task writes this block.
                let o = unsafe { shared.slice(row * n + c0, width) };
                apply_epilogue(o, a, bias, epilogue);
            }
        });
    }
}

fn apply_epilogue(out: &mut [f32], acc: &[f32], bias: &[f32], epilogue: Epilogue) {
    // Each arm a plain zip over slices, so that it vectorises.
    match epilogue {
        Epilogue::Bias => {
            for ((o, a), b) in out.iter_mut().zip(acc).zip(bias) {
                *o = a + b;
            }
        }
        Epilogue::BiasQuickGelu => {
            for ((o, a), b) in out.iter_mut().zip(acc).zip(bias) {
                *o = quick_gelu(a + b);
            }
        }
        Epilogue::BiasResidual => {
            for ((o, a), b) in out.iter_mut().zip(acc).zip(bias) {
                *o += a + b;
            }
        }
    }
}

/// CLIP's activation, `x·σ(1.702x)`.
#[inline]
pub fn quick_gelu(x: f32) -> f32 {
    x / (1.0 + exp(-1.702 * x))
}

/// `eˣ` in f32 to about one ulp (Cephes' `expf`): a range reduction to `r ∈ [-ln2/2, ln2/2]`,
/// a degree-7 polynomial, and the power of two put into the exponent bits. Only adds,
/// multiplies and bit operations (the rounding too: adding 1.5·2²³ leaves `round(x·log2 e)`
/// in the low mantissa bits), so loops over it vectorise, where the C library's `expf` and
/// even `floor` are calls; and the same bytes on every machine. `x` is clamped to
/// [-87, 88], far beyond what softmax and quick-GELU can tell apart from 0 and infinity.
#[inline]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const SHIFTER: f32 = 12_582_912.0; // 1.5 · 2²³
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + SHIFTER;
    let n = t - SHIFTER;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5e-1;
    let y = p * r * r + r + 1.0;
    // t's low bits hold n (two's complement); shifted into the exponent with its bias, the
    // high bits of t fall off the top.
    let two_n = f32::from_bits(t.to_bits().wrapping_add(127) << 23);
    y * two_n
}

/// Layer norm of each row of `x` (`[rows, width]`) into `out`, with weight and bias.
pub fn layer_norm(x: &[f32], out: &mut [f32], width: usize, weight: &[f32], bias: &[f32]) {
    assert_eq!(x.len(), out.len());
    out.par_chunks_mut(width * 8)
        .zip(x.par_chunks(width * 8))
        .for_each(|(o, x)| {
            for (o, x) in o.chunks_mut(width).zip(x.chunks(width)) {
                layer_norm_row(x, o, weight, bias);
            }
        });
}

/// One row: mean and variance in f32 over eight interleaved partial sums (a fixed order).
fn layer_norm_row(x: &[f32], out: &mut [f32], weight: &[f32], bias: &[f32]) {
    let n = x.len() as f32;
    let mean = lanes_sum(x, |v| v) / n;
    let var = lanes_sum(x, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + LAYER_NORM_EPS).sqrt();
    for (((o, x), w), b) in out.iter_mut().zip(x).zip(weight).zip(bias) {
        *o = (x - mean) * inv * w + b;
    }
}

/// The sum of `f(v)` over `x`, in eight interleaved partial sums (so it vectorises), added
/// in a fixed order.
#[inline]
fn lanes_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in chunks.by_ref() {
        for l in 0..8 {
            acc[l] += f(c[l]);
        }
    }
    let mut tail = 0f32;
    for &v in chunks.remainder() {
        tail += f(v);
    }
    let pairs = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    (pairs[0] + pairs[2]) + (pairs[1] + pairs[3]) + tail
}

/// Multi-head self-attention of `sequences` sequences of `len` tokens, read from the fused
/// projection `qkv` (`[sequences·len, 3·width]`: queries, keys, values side by side) into
/// `out` (`[sequences·len, width]`, heads side by side). Queries are scaled by `scale`;
/// `causal` lets a token see only itself and earlier tokens (the text encoder). Parallel over
/// sequences and heads; each is computed in place from the projection, no transposes.
/// The shape of an attention: `sequences` of `len` tokens of `width` values in `heads` heads.
#[derive(Clone, Copy)]
pub struct Attention {
    pub sequences: usize,
    pub len: usize,
    pub width: usize,
    pub heads: usize,
    pub scale: f32,
    pub causal: bool,
}

pub fn attention(qkv: &[f32], out: &mut [f32], shape: Attention) {
    let Attention {
        sequences,
        len,
        width,
        heads,
        scale,
        causal,
    } = shape;
    let head_dim = width / heads;
    assert_eq!(qkv.len(), sequences * len * 3 * width);
    assert_eq!(out.len(), sequences * len * width);
    let shared = SharedOut(out.as_mut_ptr());
    (0..sequences * heads).into_par_iter().for_each(|task| {
        let (s, h) = (task / heads, task % heads);
        let row = |t: usize| &qkv[(s * len + t) * 3 * width..(s * len + t + 1) * 3 * width];
        // This head's keys transposed ([head_dim, len]), so that a query's scores are sums of
        // rows scaled by its values: loops along the tokens, which vectorise.
        let mut keys_t = vec![0f32; head_dim * len];
        for j in 0..len {
            let key = &row(j)[width + h * head_dim..width + (h + 1) * head_dim];
            for (d, k) in key.iter().enumerate() {
                keys_t[d * len + j] = *k;
            }
        }
        let mut scores = vec![0f32; len];
        let mut acc = vec![0f32; head_dim];
        for i in 0..len {
            let q = &row(i)[h * head_dim..(h + 1) * head_dim];
            let seen = if causal { i + 1 } else { len };
            let scores = &mut scores[..seen];
            scores.iter_mut().for_each(|x| *x = 0.0);
            for (d, &qd) in q.iter().enumerate() {
                let qd = qd * scale;
                for (x, k) in scores.iter_mut().zip(&keys_t[d * len..d * len + seen]) {
                    *x += qd * k;
                }
            }
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for x in scores.iter_mut() {
                *x = exp(*x - max);
            }
            let inv = 1.0 / lanes_sum(scores, |v| v);
            acc.iter_mut().for_each(|a| *a = 0.0);
            for (j, score) in scores.iter().enumerate() {
                let p = score * inv;
                let value = &row(j)[2 * width + h * head_dim..2 * width + (h + 1) * head_dim];
                for (a, v) in acc.iter_mut().zip(value) {
                    *a += p * v;
                }
            }
            // SAFETY: (s, i, h) names head_dim values no other task writes.
            let o = unsafe { shared.slice((s * len + i) * width + h * head_dim, head_dim) };
            o.copy_from_slice(&acc);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulps_of_the_c_library() {
        let mut worst = 0f32;
        let mut x = -86.9f32;
        while x < 88.0 {
            let want = x.exp();
            let got = exp(x);
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-200.0) > 0.0 && exp(-200.0) < 1e-37);
        assert!(exp(200.0).is_finite() && exp(200.0) > 1e38);
    }

    #[test]
    fn a_product_matches_the_naive_one_and_ignores_its_company() {
        let (k, n) = (40, 300);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
            .collect();
        let b: Vec<f32> = (0..n).map(|i| i as f32 * 1e-3).collect();
        let lin = Linear::new(&w, Some(b.clone()), n, k);
        let rows = 150;
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 104729) % 89) as f32 / 89.0 - 0.5)
            .collect();
        let mut all = vec![0f32; rows * n];
        lin.forward(&x, rows, &mut all, Epilogue::Bias);
        for r in [0, 63, 64, 149] {
            for o in [0, COL_TILE - 1, COL_TILE, n - 1] {
                let want: f64 = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[o * k + i] as f64)
                    .sum::<f64>()
                    + b[o] as f64;
                assert!(
                    (all[r * n + o] as f64 - want).abs() < 1e-4,
                    "row {r} col {o}"
                );
            }
        }
        // Each row alone, and rows 70..77 as a batch of their own, give the same bytes.
        for r in [0, 63, 64, 149] {
            let mut one = vec![0f32; n];
            lin.forward(&x[r * k..(r + 1) * k], 1, &mut one, Epilogue::Bias);
            assert_eq!(one, all[r * n..(r + 1) * n], "row {r} alone");
        }
        let mut some = vec![0f32; 7 * n];
        lin.forward(&x[70 * k..77 * k], 7, &mut some, Epilogue::Bias);
        assert_eq!(some, all[70 * n..77 * n]);
    }

    #[test]
    fn causal_attention_of_the_first_token_is_its_own_value() {
        let (len, width, heads) = (5, 8, 2);
        let qkv: Vec<f32> = (0..len * 3 * width)
            .map(|i| (i % 11) as f32 * 0.1)
            .collect();
        let mut out = vec![0f32; len * width];
        let shape = Attention {
            sequences: 1,
            len,
            width,
            heads,
            scale: 0.5,
            causal: true,
        };
        attention(&qkv, &mut out, shape);
        assert_eq!(&out[..width], &qkv[2 * width..3 * width]);
        // Without the mask the first token sees every value: a weighted mean, not its own.
        attention(
            &qkv,
            &mut out,
            Attention {
                causal: false,
                ..shape
            },
        );
        assert_ne!(&out[..width], &qkv[2 * width..3 * width]);
    }
}
