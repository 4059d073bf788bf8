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

/// Object head: −(mean cosine over same-object pairs, text included).
/// `images` `[B, D, d]` (head outputs), `texts` `[B, d]` (raw).
pub fn object_loss(images: &Tensor, texts: &Tensor) -> Result<Tensor> {
    let (sim, _) = text_image_terms(images, texts, Normaliser::TrueMean)?;
    sim.neg()
}

/// Contrastive head (the study's): (1 − w)·dissim − w·sim over texts and images.
pub fn contrastive_loss(
    images: &Tensor,
    texts: &Tensor,
    weight_similarity: f64,
    normaliser: Normaliser,
) -> Result<Tensor> {
    let (sim, dissim) = text_image_terms(images, texts, normaliser)?;
    weigh(&sim, &dissim, weight_similarity)
}

/// (1 − w)·dissim − w·sim.
fn weigh(sim: &Tensor, dissim: &Tensor, w: f64) -> Result<Tensor> {
    (dissim * (1.0 - w))? - (sim * w)?
}

/// Contrastive head (`variant = "fixed"`): InfoNCE of each image against every object's
/// text, the image's own text being the positive; cosine logits divided by `temperature`.
pub fn info_nce_loss(images: &Tensor, texts: &Tensor, temperature: f64) -> Result<Tensor> {
    let (b, d, dim) = images.dims3()?;
    let u = unit(images)?; // [B, D, dim]
    let t = unit(texts)?; // [B, dim]
    let logits = (u.reshape((b * d, dim))?.matmul(&t.t()?)? / temperature)?; // [B·D, B]
    // −log softmax at the own text = logsumexp over texts − the own text's logit; the own
    // logits are row-wise dot products, with no [B·D, B] mask.
    let own = (u.broadcast_mul(&t.unsqueeze(1)?)?.sum_all()? / temperature)?;
    let lse = super::fused::row_log_sum_exp(&logits)?.sum_all()?;
    (lse - own)? / (b * d) as f64
}

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
) -> Result<Tensor> {
    let rec = reconstruction_distance(x, decoded)?;
    let (b, m, _) = codes.dims3()?;
    let (group_sums, self_dots) = super::fused::unit_group_sums(codes)?;
    let (sim, dissim) = terms_from_sums(pair_sums_of(&group_sums, &self_dots)?, b, m, normaliser)?;
    let similarity = weigh(&sim, &dissim, weight_similarity)?;
    (rec * weight_autoencoder)? + (similarity * (1.0 - weight_autoencoder))?
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
