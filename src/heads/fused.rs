//! `relu(z + b)` as one operation on the CPU, forward and backward in parallel.
//!
//! Why: candle's CPU elementwise ops run on one thread, and its autograd turns a bias add and
//! a ReLU into about nine passes over the activations (the ReLU's backward alone builds two
//! zero tensors, a comparison, a cast and a product). At the study's full batch (12,000 rows
//! x 512) those passes cost as much as the matrix products. Fused, the forward pass is one
//! parallel pass and the backward pass one parallel pass plus the bias's column sum
//! (`benches/train.rs`, BENCHMARKS.md). Other devices use candle's own ops.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, WithDType, bail};
use rayon::prelude::*;

/// Rows per parallel chunk.
const CHUNK_ROWS: usize = 64;

/// Added under the square root when normalising, so a zero vector (a ReLU code that died)
/// has cosine 0 with everything instead of NaN.
pub const NORM_EPS: f64 = 1e-12;

/// Rows scaled to unit length along the last dimension.
pub fn unit(x: &Tensor) -> Result<Tensor> {
    unit_eps(x, NORM_EPS)
}

/// Rows divided by `sqrt(|x|² + eps)`.
pub fn unit_eps(x: &Tensor, eps: f64) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(candle_core::D::Minus1)?
        .affine(1.0, eps)?
        .sqrt()?;
    x.broadcast_div(&norm)
}

/// The contiguous slice of a storage, or an error naming the op.
fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => bail!("{op}: a contiguous input is needed"),
    }
}

/// Evaluates `$body` with `$t` the storage's float type (f32 or f64) and wraps the vector it
/// gives in that storage variant; other dtypes are an error naming `$op`. Inputs of another
/// dtype than the first fail in `slice`.
macro_rules! for_float {
    ($op:expr, $first:expr, $t:ident => $body:expr) => {
        match $first {
            CpuStorage::F32(_) => {
                type $t = f32;
                CpuStorage::F32($body)
            }
            CpuStorage::F64(_) => {
                type $t = f64;
                CpuStorage::F64($body)
            }
            other => bail!("{}: f32 or f64 is needed, not {:?}", $op, other.dtype()),
        }
    };
}

/// `relu(z + b)` for `z` `[rows, n]` and `b` `[n]`.
struct BiasRelu;

fn bias_relu_typed<T: WithDType + PartialOrd>(z: &[T], b: &[T]) -> Vec<T> {
    let n = b.len();
    let mut out = vec![T::zero(); z.len()];
    out.par_chunks_mut(n * CHUNK_ROWS)
        .zip(z.par_chunks(n * CHUNK_ROWS))
        .for_each(|(o, z)| {
            for (orow, zrow) in o.chunks_mut(n).zip(z.chunks(n)) {
                for ((o, z), b) in orow.iter_mut().zip(zrow).zip(b) {
                    let v = *z + *b;
                    *o = if v > T::zero() { v } else { T::zero() };
                }
            }
        });
    out
}

impl CustomOp2 for BiasRelu {
    fn name(&self) -> &'static str {
        "bias-relu"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, n) = l1.shape().dims2()?;
        if l2.shape().dims() != [n] {
            bail!(
                "bias-relu: the bias has shape {:?}, not [{n}]",
                l2.shape().dims()
            );
        }
        let out = for_float!(self.name(), s1, T => bias_relu_typed(
            slice::<T>(s1, l1, self.name())?,
            slice::<T>(s2, l2, self.name())?,
        ));
        Ok((out, l1.shape().clone()))
    }
    fn bwd(
        &self,
        _z: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // d relu(v)/dv is 1 where the output is positive, else 0 (PyTorch's choice at 0).
        let grad_z = res.apply_op2_no_bwd(&grad_res.contiguous()?, &PositiveMask)?;
        let grad_b = grad_z.sum(0)?;
        Ok((Some(grad_z), Some(grad_b)))
    }
}

/// `grad` where `res > 0`, else 0 (same shapes).
struct PositiveMask;

fn positive_mask_typed<T: WithDType + PartialOrd>(res: &[T], grad: &[T]) -> Vec<T> {
    let mut out = vec![T::zero(); res.len()];
    out.par_chunks_mut(4096)
        .zip(res.par_chunks(4096).zip(grad.par_chunks(4096)))
        .for_each(|(o, (r, g))| {
            for ((o, r), g) in o.iter_mut().zip(r).zip(g) {
                *o = if *r > T::zero() { *g } else { T::zero() };
            }
        });
    out
}

impl CustomOp2 for PositiveMask {
    fn name(&self) -> &'static str {
        "positive-mask"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            bail!("positive-mask: shapes differ");
        }
        let out = for_float!(self.name(), s1, T => positive_mask_typed(
            slice::<T>(s1, l1, self.name())?,
            slice::<T>(s2, l2, self.name())?,
        ));
        Ok((out, l1.shape().clone()))
    }
}

/// `relu(z + b)`: fused on the CPU, candle's ops elsewhere.
pub fn bias_relu(z: &Tensor, b: &Tensor) -> Result<Tensor> {
    if z.device().is_cpu() && z.rank() == 2 {
        z.contiguous()?.apply_op2(&b.contiguous()?, BiasRelu)
    } else {
        z.broadcast_add(b)?.relu()
    }
}

/// For `x` `[G, M, d]`: each group's sum of its unit rows, `u = x / sqrt(|x|² + eps)`, and in
/// a last column the group's sum of `|u|²`. Output `[G, d + 1]`.
struct UnitGroupSums {
    /// Added under the square root.
    eps: f64,
}

fn unit_group_sums_typed<T: WithDType>(x: &[T], m: usize, d: usize, eps: f64) -> Vec<T> {
    let mut out = vec![T::zero(); x.len() / (m * d) * (d + 1)];
    out.par_chunks_mut(d + 1)
        .zip(x.par_chunks(m * d))
        .for_each(|(o, group)| {
            let mut self_dots = 0f64;
            for row in group.chunks(d) {
                let s: f64 = row.iter().map(|v| v.to_f64() * v.to_f64()).sum();
                let p = s + eps;
                let inv = 1.0 / p.sqrt();
                for (o, v) in o.iter_mut().zip(row) {
                    *o = T::from_f64(o.to_f64() + v.to_f64() * inv);
                }
                self_dots += s / p;
            }
            o[d] = T::from_f64(self_dots);
        });
    out
}

/// The gradient of [`UnitGroupSums`] for `x` given the output's gradient `[G, d + 1]`.
struct UnitGroupSumsGrad {
    members: usize,
    eps: f64,
}

fn unit_group_sums_grad_typed<T: WithDType>(
    x: &[T],
    grad: &[T],
    m: usize,
    d: usize,
    eps: f64,
) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(m * d)
        .zip(x.par_chunks(m * d).zip(grad.par_chunks(d + 1)))
        .for_each(|(o, (group, g))| {
            let q = g[d].to_f64();
            for (orow, row) in o.chunks_mut(d).zip(group.chunks(d)) {
                let s: f64 = row.iter().map(|v| v.to_f64() * v.to_f64()).sum();
                let p = s + eps;
                let n = p.sqrt();
                let xg: f64 = row
                    .iter()
                    .zip(g)
                    .map(|(v, g)| v.to_f64() * g.to_f64())
                    .sum();
                // d(x/n)/dx = I/n − x xᵀ/n³; d(s/p)/dx = 2·eps·x/p².
                let along = xg / (n * n * n) - 2.0 * eps * q / (p * p);
                for ((o, v), g) in orow.iter_mut().zip(row).zip(g) {
                    *o = T::from_f64(g.to_f64() / n - v.to_f64() * along);
                }
            }
        });
    out
}

impl candle_core::CustomOp1 for UnitGroupSums {
    fn name(&self) -> &'static str {
        "unit-group-sums"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, m, d) = l.shape().dims3()?;
        let out = for_float!(self.name(), s, T => unit_group_sums_typed(
            slice::<T>(s, l, self.name())?,
            m,
            d,
            self.eps,
        ));
        Ok((out, Shape::from((g, d + 1))))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (_, m, _) = x.dims3()?;
        Ok(Some(x.apply_op2_no_bwd(
            &grad_res.contiguous()?,
            &UnitGroupSumsGrad {
                members: m,
                eps: self.eps,
            },
        )?))
    }
}

impl CustomOp2 for UnitGroupSumsGrad {
    fn name(&self) -> &'static str {
        "unit-group-sums-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, m, d) = l1.shape().dims3()?;
        if m != self.members || l2.shape().dims2()?.1 != d + 1 {
            bail!("unit-group-sums-grad: shapes do not match");
        }
        let out = for_float!(self.name(), s1, T => unit_group_sums_grad_typed(
            slice::<T>(s1, l1, self.name())?,
            slice::<T>(s2, l2, self.name())?,
            m,
            d,
            self.eps,
        ));
        Ok((out, l1.shape().clone()))
    }
}

/// For `x` `[G, M, d]`: (each group's sum of unit rows `[G, d]`, the sum over all rows of
/// `|u|²`, a scalar). One parallel pass each way on the CPU; candle's ops elsewhere.
pub fn unit_group_sums(x: &Tensor) -> Result<(Tensor, Tensor)> {
    unit_group_sums_eps(x, NORM_EPS)
}

/// [`unit_group_sums`] with `eps` under the square root instead of [`NORM_EPS`].
pub fn unit_group_sums_eps(x: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let (_, _, d) = x.dims3()?;
    if x.device().is_cpu() {
        let out = x.contiguous()?.apply_op1(UnitGroupSums { eps })?;
        Ok((out.narrow(1, 0, d)?, out.narrow(1, d, 1)?.sum_all()?))
    } else {
        let u = unit_eps(x, eps)?;
        Ok((u.sum(1)?, u.sqr()?.sum_all()?))
    }
}

/// log Σ_c exp(x[r, c]) for each row of `x` `[R, C]`: output `[R]`.
struct RowLogSumExp;

fn row_lse_typed<T: WithDType>(x: &[T], c: usize) -> Vec<T> {
    x.par_chunks(c)
        .map(|row| {
            let max = row
                .iter()
                .map(|v| v.to_f64())
                .fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = row.iter().map(|v| (v.to_f64() - max).exp()).sum();
            T::from_f64(max + sum.ln())
        })
        .collect()
}

/// The gradient of [`RowLogSumExp`]: softmax(x)[r, c] · grad[r], from x, the output and grad.
struct RowLogSumExpGrad;

fn row_lse_grad_typed<T: WithDType>(x: &[T], lse: &[T], grad: &[T], c: usize) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(c)
        .zip(x.par_chunks(c))
        .enumerate()
        .for_each(|(r, (o, row))| {
            let (l, g) = (lse[r].to_f64(), grad[r].to_f64());
            for (o, v) in o.iter_mut().zip(row) {
                *o = T::from_f64((v.to_f64() - l).exp() * g);
            }
        });
    out
}

impl candle_core::CustomOp1 for RowLogSumExp {
    fn name(&self) -> &'static str {
        "row-logsumexp"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (r, c) = l.shape().dims2()?;
        let out = for_float!(self.name(), s, T => row_lse_typed(
            slice::<T>(s, l, self.name())?,
            c,
        ));
        Ok((out, Shape::from(r)))
    }
    fn bwd(&self, x: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op3_no_bwd(
            res,
            &grad_res.contiguous()?,
            &RowLogSumExpGrad,
        )?))
    }
}

impl candle_core::CustomOp3 for RowLogSumExpGrad {
    fn name(&self) -> &'static str {
        "row-logsumexp-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c) = l1.shape().dims2()?;
        let out = for_float!(self.name(), s1, T => row_lse_grad_typed(
            slice::<T>(s1, l1, self.name())?,
            slice::<T>(s2, l2, self.name())?,
            slice::<T>(s3, l3, self.name())?,
            c,
        ));
        Ok((out, l1.shape().clone()))
    }
}

/// log Σ exp over the last dimension of `x` `[R, C]`: one parallel pass each way on the CPU,
/// candle's `log_sum_exp` elsewhere.
pub fn row_log_sum_exp(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?.apply_op1(RowLogSumExp)
    } else {
        x.log_sum_exp(candle_core::D::Minus1)
    }
}
