//! The study's losses, on candle tensors of any float dtype (f32 to train, f64 for gradient
//! checks).
//!
//! The study's similarity terms are linear in cosines, so every pair sum reduces to norms of
//! sums of unit vectors: over a set of unit rows, sum_{i<j} u_i·u_j = (|sum u|² − sum |u_i|²)/2.
//! Each term costs O(n d), never the n x n matrix (`pair_sums_agree_with_the_matrix` in the
//! tests checks both ways).

use candle_core::{D, Result, Tensor};

use super::fused::NORM_EPS;
/// Unit rows are computed next to the fused kernels that use them.
pub use super::fused::unit;

/// Pair sums from each group's sum of unit vectors (`[G, d]`) and the sum of every member's
/// squared length.
fn pair_sums_of(group_sums: &Tensor, self_dots: &Tensor) -> Result<PairSums> {
    let within2 = group_sums.sqr()?.sum_all()?; // sum_g |sum_m u|²
    let all2 = group_sums.sum(0)?.sqr()?.sum_all()?; // |sum u|²
    // sum_{i<j} within group g = (|S_g|² − sum |u|²)/2; all pairs = (|S|² − sum |u|²)/2.
    let within = ((&within2 - self_dots)? * 0.5)?;
    let across = ((all2 - within2)? * 0.5)?;
    Ok(PairSums { within, across })
}

/// Pair sums of unit vectors grouped as `[groups, members, d]`.
pub struct PairSums {
    /// Sum of cosines over unordered pairs within each group, summed over groups.
    pub within: Tensor,
    /// Sum of cosines over unordered pairs whose members are in different groups.
    pub across: Tensor,
}

/// Both pair sums of `u` (`[G, M, d]`, rows already unit) in O(G M d).
pub fn pair_sums(u: &Tensor) -> Result<PairSums> {
    pair_sums_of(&u.sum(1)?, &u.sqr()?.sum_all()?)
}

/// How the study's dissimilarity terms divide the cross-object cosine sum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Normaliser {
    /// The study's divisors: D(D+1)·B(B−1)/2 with texts (7/6 of the true mean for D = 6),
    /// D(D−1)·B(B−1)/2 without (6/5 of it).
    Study,
    /// The true number of cross-object pairs: a mean.
    TrueMean,
}

/// Mean same-object cosine and the cross-object term of `members` (`[B, M, d]`, unit): each
/// object's M members (its D images, and its text first when texts take part).
pub fn similarity_terms(members: &Tensor, normaliser: Normaliser) -> Result<(Tensor, Tensor)> {
    let (b, m, _) = members.dims3()?;
    terms_from_sums(pair_sums(members)?, b, m, normaliser)
}

/// sim and dissim from the pair sums of `b` objects of `m` members each.
fn terms_from_sums(
    sums: PairSums,
    b: usize,
    m: usize,
    normaliser: Normaliser,
) -> Result<(Tensor, Tensor)> {
    let same_pairs = (b * m * (m - 1) / 2) as f64;
    let sim = (sums.within / same_pairs)?;
    let objects = (b * b.saturating_sub(1) / 2) as f64;
    let cross_pairs = match normaliser {
        Normaliser::TrueMean => (m * m) as f64 * objects,
        // With the text, M = D + 1 and the study divides by D(D+1); without, M = D and it
        // divides by D(D−1). Both are M(M−1): the same-object pair count per object, twice.
        Normaliser::Study => (m * (m - 1)) as f64 * objects,
    };
    let dissim = (sums.across / cross_pairs.max(1.0))?;
    Ok((sim, dissim))
}

/// A loss and the terms it is made of: `total` = Σ coefficient · value over `terms`. The
/// terms are what the study logged per step (its `metrics.csv`) and what `curve.json` keeps.
pub struct Loss {
    pub total: Tensor,
    /// (name, coefficient, value): e.g. ("similarity", −w, mean same-object cosine).
    pub terms: Vec<(&'static str, f64, Tensor)>,
}

impl Loss {
    /// A loss of weighted terms, the total being their weighted sum.
    fn of(terms: Vec<(&'static str, f64, Tensor)>) -> Result<Loss> {
        let mut total: Option<Tensor> = None;
        for (_, coefficient, value) in &terms {
            let part = (value * *coefficient)?;
            total = Some(match total {
                None => part,
                Some(t) => (t + part)?,
            });
        }
        Ok(Loss {
            total: total.expect("every loss has a term"),
            terms,
        })
    }
}

/// Object head: −(mean cosine over same-object pairs, text included).
/// `images` `[B, D, d]` (head outputs), `texts` `[B, d]` (raw).
pub fn object_loss(images: &Tensor, texts: &Tensor) -> Result<Loss> {
    let (sim, _) = text_image_terms(images, texts, Normaliser::TrueMean)?;
    Loss::of(vec![("similarity", -1.0, sim)])
}

/// Contrastive head (the study's): (1 − w)·dissim − w·sim over texts and images.
pub fn contrastive_loss(
    images: &Tensor,
    texts: &Tensor,
    weight_similarity: f64,
    normaliser: Normaliser,
) -> Result<Loss> {
    let (sim, dissim) = text_image_terms(images, texts, normaliser)?;
    Loss::of(weighed(sim, dissim, weight_similarity, 1.0))
}

/// The terms of `scale`·((1 − w)·dissim − w·sim).
fn weighed(sim: Tensor, dissim: Tensor, w: f64, scale: f64) -> Vec<(&'static str, f64, Tensor)> {
    vec![
        ("similarity", -w * scale, sim),
        ("dissimilarity", (1.0 - w) * scale, dissim),
    ]
}

/// Contrastive head (`variant = "fixed"`): InfoNCE of each image against every object's
/// text, the image's own text being the positive; cosine logits divided by `temperature`.
pub fn info_nce_loss(images: &Tensor, texts: &Tensor, temperature: f64) -> Result<Loss> {
    let (b, d, dim) = images.dims3()?;
    let u = unit(images)?; // [B, D, dim]
    let t = unit(texts)?; // [B, dim]
    let logits = (u.reshape((b * d, dim))?.matmul(&t.t()?)? / temperature)?; // [B·D, B]
    // −log softmax at the own text = logsumexp over texts − the own text's logit; the own
    // logits are row-wise dot products, with no [B·D, B] mask.
    let own = (u.broadcast_mul(&t.unsqueeze(1)?)?.sum_all()? / temperature)?;
    let lse = super::fused::row_log_sum_exp(&logits)?.sum_all()?;
    Loss::of(vec![("info_nce", 1.0, ((lse - own)? / (b * d) as f64)?)])
}

/// How the autoencoder's similarity terms take the cosine of a dead (all-zero) code, common
/// after the study's last ReLU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadCodes {
    /// As the study: 1e-7 added to every code's components before the cosines, and rows
    /// scaled as PyTorch's `F.normalize` (the norm clamped at 1e-12, not 1e-12 added under
    /// the root): a dead code is a constant vector, cosine 1 with the other dead codes.
    Study,
    /// Cosine 0 with everything (1e-12 under the root, as every other cosine here).
    Zero,
}

/// What the study adds to every component of a view-independent code.
pub const STUDY_CODE_OFFSET: f64 = 1e-7;

/// PyTorch's `F.normalize` clamps the norm at 1e-12: the square of that under the root.
pub const TORCH_NORM_EPS: f64 = 1e-24;

/// The autoencoder's loss: a·mean_x |x − decoded|₂ + (1 − a)·((1 − w)·dissim − w·sim), the
/// similarity terms over the view-independent codes of images only.
/// `x`, `decoded` `[B·D, d]`; `codes` `[B, D, c]`.
pub fn autoencoder_loss(
    x: &Tensor,
    decoded: &Tensor,
    codes: &Tensor,
    weight_autoencoder: f64,
    weight_similarity: f64,
    normaliser: Normaliser,
    dead: DeadCodes,
) -> Result<Loss> {
    let rec = reconstruction_distance(x, decoded)?;
    let (b, m, _) = codes.dims3()?;
    let (group_sums, self_dots) = match dead {
        DeadCodes::Zero => super::fused::unit_group_sums(codes)?,
        DeadCodes::Study => {
            super::fused::unit_group_sums_eps(&(codes + STUDY_CODE_OFFSET)?, TORCH_NORM_EPS)?
        }
    };
    let (sim, dissim) = terms_from_sums(pair_sums_of(&group_sums, &self_dots)?, b, m, normaliser)?;
    let mut terms = vec![("reconstruction", weight_autoencoder, rec)];
    terms.extend(weighed(
        sim,
        dissim,
        weight_similarity,
        1.0 - weight_autoencoder,
    ));
    Loss::of(terms)
}

/// mean over rows of the L2 distance |x − y|₂ (the study's reconstruction term; not squared).
pub fn reconstruction_distance(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let rows = x.dim(0)? as f64;
    (x - y)?
        .sqr()?
        .sum(D::Minus1)?
        .affine(1.0, NORM_EPS)?
        .sqrt()?
        .sum_all()?
        / rows
}

/// sim and dissim over each object's text and images (`images` `[B, D, d]`, `texts` `[B, d]`),
/// without building the `[B, 1 + D, d]` member tensor.
fn text_image_terms(
    images: &Tensor,
    texts: &Tensor,
    normaliser: Normaliser,
) -> Result<(Tensor, Tensor)> {
    let (b, d, dim) = images.dims3()?;
    let (image_sums, image_dots) = super::fused::unit_group_sums(images)?;
    let (text_sums, text_dots) = super::fused::unit_group_sums(&texts.reshape((b, 1, dim))?)?;
    let sums = pair_sums_of(&(image_sums + text_sums)?, &(image_dots + text_dots)?)?;
    terms_from_sums(sums, b, d + 1, normaliser)
}
