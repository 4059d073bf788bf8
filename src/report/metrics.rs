//! The study's evaluation metrics and what it lacked, on host memory.
//!
//! Definitions (the study's names are swapped; both are reported):
//! - same-object ("inter" in the study): cosine of every ordered pair (i ≠ j) of views of the
//!   same object, pooled over objects: mean and std of all those entries;
//! - cross-object ("intra"): cosine of every pair of images of different objects, pooled;
//! - text-to-image: cosine of each object's text with each of its own images;
//! - retrieval: for each image, whether its nearest other image (top-1), or any of its 5
//!   nearest (top-5), is a view of the same object;
//! - per view pair: the V x V similarity averaged over objects, and its std over objects
//!   (the study's heatmaps), and from it similarity by azimuth and elevation difference;
//! - per ring (views with the same polar angle): the same metrics restricted to the ring,
//!   and similarity by azimuth difference within the ring (the same azimuth step is a
//!   smaller change of view near the pole than at the equator, so rings are not pooled);
//! - by view angle: same-object similarity against the true angle between the two cameras'
//!   directions from the object's centre, in bins of [`VIEW_ANGLE_BIN`] degrees.
//!
//! Stds are population stds (divided by the count). The cross-object terms and retrieval
//! need every image against every image: computed in row blocks of the similarity matrix,
//! each at most `block_bytes`, never the whole matrix.

use super::coverage::Coverage;
use crate::heads::HeadConfig;
use crate::heads::train::Term;
use anyhow::Result;
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Items per parallel chunk in the metrics' sums: fixed, so that the sums' grouping (and so
/// their rounding) does not depend on how the threads shared the work.
const DETERMINISTIC_CHUNK: usize = 16;

/// Mean and std of a pooled set of values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub mean: f64,
    pub std: f64,
    pub count: u64,
}

/// Running sums for [`Stats`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Acc {
    n: u64,
    sum: f64,
    sum_sq: f64,
}

impl Acc {
    pub fn add(&mut self, x: f64) {
        self.n += 1;
        self.sum += x;
        self.sum_sq += x * x;
    }
    pub fn merge(&mut self, o: &Acc) {
        self.n += o.n;
        self.sum += o.sum;
        self.sum_sq += o.sum_sq;
    }
    pub fn stats(&self) -> Stats {
        if self.n == 0 {
            return Stats::default();
        }
        let mean = self.sum / self.n as f64;
        let var = (self.sum_sq / self.n as f64 - mean * mean).max(0.0);
        Stats {
            mean,
            std: var.sqrt(),
            count: self.n,
        }
    }
}

/// Where a view's camera was (parsed from its id), when known.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ViewInfo {
    pub id: String,
    pub azimuth: Option<f64>,
    /// Degrees from +Z.
    pub polar: Option<f64>,
}

/// The metrics of one ring of views.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RingMetrics {
    pub polar: Option<f64>,
    pub elevation: Option<f64>,
    pub views: usize,
    pub same_object: Stats,
    pub cross_object: Stats,
    pub text_to_image: Stats,
    /// Queries from this ring, searched among all images.
    pub retrieval_top1: f64,
    pub retrieval_top5: f64,
}

/// The width in degrees of the bins of [`Metrics::by_view_angle`].
pub const VIEW_ANGLE_BIN: f64 = 10.0;

/// Same-object similarity by azimuth difference among the views of one ring.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RingCurve {
    pub polar: Option<f64>,
    pub points: Vec<ByAngle>,
}

/// Similarity of same-object view pairs grouped by an angle difference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ByAngle {
    pub difference: f64,
    pub similarity: Stats,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub objects: usize,
    pub views: usize,
    pub same_object: Stats,
    pub cross_object: Stats,
    pub text_to_image: Stats,
    pub reconstruction_mse: Option<f64>,
    pub retrieval_top1: f64,
    pub retrieval_top5: f64,
    /// Pooled over every pair of views, whatever their rings (its 0° group holds only pairs
    /// on different rings); `by_azimuth_within_ring` is the one to read.
    pub by_azimuth_difference: Vec<ByAngle>,
    /// Per ring, by azimuth difference between two views of that ring.
    #[serde(default)]
    pub by_azimuth_within_ring: Vec<RingCurve>,
    /// By the angle between the two cameras' directions, binned ([`VIEW_ANGLE_BIN`] wide,
    /// `difference` the bin's centre).
    #[serde(default)]
    pub by_view_angle: Vec<ByAngle>,
    pub by_elevation_difference: Vec<ByAngle>,
    pub rings: Vec<RingMetrics>,
    /// V x V, row-major: mean over objects of each view pair's cosine.
    pub view_pair_mean: Vec<f64>,
    /// V x V: its std over objects.
    pub view_pair_std: Vec<f64>,
}

/// Rows scaled to unit length (a zero row stays zero).
pub fn unit_rows(x: &[f32], dim: usize) -> Vec<f32> {
    let mut out = x.to_vec();
    out.par_chunks_mut(dim).for_each(|row| {
        let norm = row
            .iter()
            .map(|v| (*v as f64) * (*v as f64))
            .sum::<f64>()
            .sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v = (*v as f64 / norm) as f32);
        }
    });
    out
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64) * (*y as f64))
        .sum()
}

/// The input of [`evaluate`]: head outputs `[objects, views, dim]` and the raw texts
/// `[objects, dim]`, object-major.
pub struct EvalInput<'a> {
    pub images: &'a [f32],
    pub texts: &'a [f32],
    pub objects: usize,
    pub views: &'a [ViewInfo],
    pub dim: usize,
}

/// Rings: the distinct polar angles (views without one form one ring), in increasing order;
/// returns each view's ring index and the ring angles.
fn rings_of(views: &[ViewInfo]) -> (Vec<usize>, Vec<Option<f64>>) {
    let mut angles: Vec<Option<f64>> = Vec::new();
    for v in views {
        if !angles.contains(&v.polar) {
            angles.push(v.polar);
        }
    }
    angles.sort_by(|a, b| a.partial_cmp(b).expect("angles are finite"));
    let index = views
        .iter()
        .map(|v| angles.iter().position(|a| *a == v.polar).expect("listed"))
        .collect();
    (index, angles)
}

/// Azimuth difference on the circle, in [0, 180].
fn azimuth_difference(a: f64, b: f64) -> f64 {
    let d = (a - b).rem_euclid(360.0);
    round4(d.min(360.0 - d))
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// Per-row sums of the blocked pass.
#[derive(Clone, Default)]
struct RowSums {
    cross: Acc,
    ring_cross: Vec<Acc>,
    top1: u64,
    top5: u64,
    ring_top1: Vec<u64>,
    ring_top5: Vec<u64>,
}

impl RowSums {
    fn new(rings: usize) -> RowSums {
        RowSums {
            ring_cross: vec![Acc::default(); rings],
            ring_top1: vec![0; rings],
            ring_top5: vec![0; rings],
            ..Default::default()
        }
    }
    fn merge(mut self, o: RowSums) -> RowSums {
        self.cross.merge(&o.cross);
        for (a, b) in self.ring_cross.iter_mut().zip(&o.ring_cross) {
            a.merge(b);
        }
        self.top1 += o.top1;
        self.top5 += o.top5;
        for (a, b) in self.ring_top1.iter_mut().zip(&o.ring_top1) {
            *a += b;
        }
        for (a, b) in self.ring_top5.iter_mut().zip(&o.ring_top5) {
            *a += b;
        }
        self
    }
}

/// All metrics of `input`; the similarity matrix is computed `block_bytes` at a time.
pub fn evaluate(input: &EvalInput, block_bytes: usize) -> Result<Metrics> {
    let (o_n, v_n, dim) = (input.objects, input.views.len(), input.dim);
    let n = o_n * v_n;
    anyhow::ensure!(input.images.len() == n * dim, "internal: image array size");
    anyhow::ensure!(input.texts.len() == o_n * dim, "internal: text array size");
    let u = unit_rows(input.images, dim);
    let t = unit_rows(input.texts, dim);
    let (ring, ring_angles) = rings_of(input.views);
    let rings = ring_angles.len();

    let per = per_object(&u, &t, o_n, v_n, dim, &ring, rings);
    let objects = o_n as f64;
    let view_pair_mean: Vec<f64> = per.pair_sum.iter().map(|s| s / objects).collect();
    let view_pair_std: Vec<f64> = per
        .pair_sq
        .iter()
        .zip(&view_pair_mean)
        .map(|(sq, m)| (sq / objects - m * m).max(0.0).sqrt())
        .collect();
    let pools = same_object_pools(input.views, &per, o_n, &ring, rings);
    let sums = all_pairs(&u, n, dim, v_n, &ring, rings, block_bytes)?;
    let views_in_ring: Vec<usize> = (0..rings)
        .map(|r| ring.iter().filter(|x| **x == r).count())
        .collect();
    let ring_metrics = (0..rings)
        .map(|r| {
            let queries = (views_in_ring[r] * o_n).max(1) as f64;
            RingMetrics {
                polar: ring_angles[r],
                elevation: ring_angles[r].map(|p| 90.0 - p),
                views: views_in_ring[r],
                same_object: pools.ring_same[r].stats(),
                cross_object: sums.ring_cross[r].stats(),
                text_to_image: per.ring_text[r].stats(),
                retrieval_top1: sums.ring_top1[r] as f64 / queries,
                retrieval_top5: sums.ring_top5[r] as f64 / queries,
            }
        })
        .collect();
    Ok(Metrics {
        objects: o_n,
        views: v_n,
        same_object: pools.same.stats(),
        cross_object: sums.cross.stats(),
        text_to_image: per.text.stats(),
        reconstruction_mse: None,
        retrieval_top1: sums.top1 as f64 / n.max(1) as f64,
        retrieval_top5: sums.top5 as f64 / n.max(1) as f64,
        by_azimuth_difference: by_angle(pools.by_azimuth),
        by_azimuth_within_ring: pools
            .by_azimuth_in_ring
            .into_iter()
            .enumerate()
            .filter(|(_, groups)| !groups.is_empty())
            .map(|(r, groups)| RingCurve {
                polar: ring_angles[r],
                points: by_angle(groups),
            })
            .collect(),
        by_view_angle: by_angle(pools.by_view_angle),
        by_elevation_difference: by_angle(pools.by_elevation),
        rings: ring_metrics,
        view_pair_mean,
        view_pair_std,
    })
}

/// Per object summed over objects: its V x V cosines (sum and sum of squares per view pair)
/// and its text against each view, overall and per ring.
struct PerObject {
    pair_sum: Vec<f64>,
    pair_sq: Vec<f64>,
    text: Acc,
    ring_text: Vec<Acc>,
}

/// One parallel pass over objects: each object's views against each other and its text.
fn per_object(
    u: &[f32],
    t: &[f32],
    o_n: usize,
    v_n: usize,
    dim: usize,
    ring: &[usize],
    rings: usize,
) -> PerObject {
    let zero = || PerObject {
        pair_sum: vec![0.0; v_n * v_n],
        pair_sq: vec![0.0; v_n * v_n],
        text: Acc::default(),
        ring_text: vec![Acc::default(); rings],
    };
    // Fixed chunks folded in parallel, then merged in order: rayon's fold/reduce groups the
    // f64 sums by how work was stolen, so the same inputs could give metrics a few ulps
    // apart from one run to the next.
    (0..o_n)
        .into_par_iter()
        .fold_chunks(DETERMINISTIC_CHUNK, zero, |mut acc, o| {
            let rows = &u[o * v_n * dim..(o + 1) * v_n * dim];
            for i in 0..v_n {
                for j in 0..v_n {
                    let c = dot(&rows[i * dim..(i + 1) * dim], &rows[j * dim..(j + 1) * dim]);
                    acc.pair_sum[i * v_n + j] += c;
                    acc.pair_sq[i * v_n + j] += c * c;
                }
                let c = dot(&t[o * dim..(o + 1) * dim], &rows[i * dim..(i + 1) * dim]);
                acc.text.add(c);
                acc.ring_text[ring[i]].add(c);
            }
            acc
        })
        .collect::<Vec<_>>()
        .into_iter()
        .fold(zero(), |mut a, b| {
            a.pair_sum
                .iter_mut()
                .zip(&b.pair_sum)
                .for_each(|(x, y)| *x += y);
            a.pair_sq
                .iter_mut()
                .zip(&b.pair_sq)
                .for_each(|(x, y)| *x += y);
            a.text.merge(&b.text);
            a.ring_text
                .iter_mut()
                .zip(&b.ring_text)
                .for_each(|(x, y)| x.merge(y));
            a
        })
}

/// Same-object similarity pooled overall, per ring and per angle difference.
struct SameObjectPools {
    same: Acc,
    ring_same: Vec<Acc>,
    by_azimuth: Vec<(f64, Acc)>,
    by_azimuth_in_ring: Vec<Vec<(f64, Acc)>>,
    by_view_angle: Vec<(f64, Acc)>,
    by_elevation: Vec<(f64, Acc)>,
}

/// The unit direction from the object's centre to a camera at `azimuth`, `polar` (degrees).
fn direction(azimuth: f64, polar: f64) -> [f64; 3] {
    let (a, p) = (azimuth.to_radians(), polar.to_radians());
    [p.sin() * a.cos(), p.sin() * a.sin(), p.cos()]
}

/// The angle in degrees between two cameras' directions.
fn view_angle(a: &ViewInfo, b: &ViewInfo) -> Option<f64> {
    let (x, y) = (
        direction(a.azimuth?, a.polar?),
        direction(b.azimuth?, b.polar?),
    );
    let cos: f64 = x.iter().zip(&y).map(|(p, q)| p * q).sum();
    Some(cos.clamp(-1.0, 1.0).acos().to_degrees())
}

/// The centre of `angle`'s bin of [`VIEW_ANGLE_BIN`] degrees (180° goes in the last bin).
fn view_angle_bin(angle: f64) -> f64 {
    let last = (180.0 / VIEW_ANGLE_BIN).ceil() - 1.0;
    // Rounded first, so that an angle on a bin's edge (30° computed as 29.9999…) lands in
    // the bin it is on the edge of.
    let k = (round4(angle) / VIEW_ANGLE_BIN).floor().min(last);
    round4((k + 0.5) * VIEW_ANGLE_BIN)
}

fn same_object_pools(
    views: &[ViewInfo],
    per: &PerObject,
    o_n: usize,
    ring: &[usize],
    rings: usize,
) -> SameObjectPools {
    let v_n = views.len();
    let pair_acc = |i: usize, j: usize| Acc {
        n: o_n as u64,
        sum: per.pair_sum[i * v_n + j],
        sum_sq: per.pair_sq[i * v_n + j],
    };
    let mut same = Acc::default();
    let mut ring_same = vec![Acc::default(); rings];
    let mut by_az: Vec<(f64, Acc)> = Vec::new();
    let mut by_el: Vec<(f64, Acc)> = Vec::new();
    let mut by_az_ring: Vec<Vec<(f64, Acc)>> = vec![Vec::new(); rings];
    let mut by_view: Vec<(f64, Acc)> = Vec::new();
    let add_group = |groups: &mut Vec<(f64, Acc)>, key: f64, acc: &Acc| match groups
        .iter_mut()
        .find(|(k, _)| *k == key)
    {
        Some((_, a)) => a.merge(acc),
        None => groups.push((key, *acc)),
    };
    for i in 0..v_n {
        for j in 0..v_n {
            if i == j {
                continue;
            }
            let acc = pair_acc(i, j);
            same.merge(&acc);
            if ring[i] == ring[j] {
                ring_same[ring[i]].merge(&acc);
            }
            let (vi, vj) = (&views[i], &views[j]);
            if let (Some(a), Some(b)) = (vi.azimuth, vj.azimuth) {
                add_group(&mut by_az, azimuth_difference(a, b), &acc);
                if ring[i] == ring[j] {
                    add_group(&mut by_az_ring[ring[i]], azimuth_difference(a, b), &acc);
                }
            }
            if let Some(angle) = view_angle(vi, vj) {
                add_group(&mut by_view, view_angle_bin(angle), &acc);
            }
            if let (Some(a), Some(b)) = (vi.polar, vj.polar) {
                add_group(&mut by_el, round4((a - b).abs()), &acc);
            }
        }
    }
    SameObjectPools {
        same,
        ring_same,
        by_azimuth: by_az,
        by_azimuth_in_ring: by_az_ring,
        by_view_angle: by_view,
        by_elevation: by_el,
    }
}

/// Groups by angle difference, in increasing order.
fn by_angle(mut groups: Vec<(f64, Acc)>) -> Vec<ByAngle> {
    groups.sort_by(|a, b| a.0.partial_cmp(&b.0).expect("finite"));
    groups
        .into_iter()
        .map(|(difference, acc)| ByAngle {
            difference,
            similarity: acc.stats(),
        })
        .collect()
}

/// Every image against every image, a block of rows of the similarity matrix at a time
/// (each at most `block_bytes`): cross-object similarity and retrieval, overall and per ring.
fn all_pairs(
    u: &[f32],
    n: usize,
    dim: usize,
    v_n: usize,
    ring: &[usize],
    rings: usize,
    block_bytes: usize,
) -> Result<RowSums> {
    let object_of: Vec<usize> = (0..n).map(|r| r / v_n).collect();
    let ring_of: Vec<usize> = (0..n).map(|r| ring[r % v_n]).collect();
    let all = Tensor::from_slice(u, (n, dim), &Device::Cpu)?;
    let all_t = all.t()?;
    let block = (block_bytes / (n.max(1) * 4 * 2)).clamp(1, n.max(1));
    let mut sums = RowSums::new(rings);
    let mut start = 0;
    while start < n {
        let rows = block.min(n - start);
        let sims = all.narrow(0, start, rows)?.matmul(&all_t)?;
        let sims: Vec<f32> = sims.flatten_all()?.to_vec1()?;
        let part = sims
            .par_chunks(n)
            .enumerate()
            .fold_chunks(
                DETERMINISTIC_CHUNK,
                || RowSums::new(rings),
                |mut acc, (k, row)| {
                    let i = start + k;
                    let (oi, ri) = (object_of[i], ring_of[i]);
                    // The five nearest other images, best first.
                    let mut best: [(f32, usize); 5] = [(f32::NEG_INFINITY, usize::MAX); 5];
                    for (j, &s) in row.iter().enumerate() {
                        if j == i {
                            continue;
                        }
                        if object_of[j] != oi {
                            acc.cross.add(s as f64);
                            if ring_of[j] == ri {
                                acc.ring_cross[ri].add(s as f64);
                            }
                        }
                        if s > best[4].0 {
                            let mut p = 4;
                            while p > 0 && s > best[p - 1].0 {
                                best[p] = best[p - 1];
                                p -= 1;
                            }
                            best[p] = (s, j);
                        }
                    }
                    let hit = |b: &(f32, usize)| b.1 != usize::MAX && object_of[b.1] == oi;
                    if hit(&best[0]) {
                        acc.top1 += 1;
                        acc.ring_top1[ri] += 1;
                    }
                    if best.iter().any(hit) {
                        acc.top5 += 1;
                        acc.ring_top5[ri] += 1;
                    }
                    acc
                },
            )
            .collect::<Vec<_>>()
            .into_iter()
            .fold(RowSums::new(rings), RowSums::merge);
        sums = sums.merge(part);
        start += rows;
    }
    Ok(sums)
}

/// The similarity matrix of all texts followed by all images (object-major), diagonal zeroed,
/// sampled at `size` evenly spaced rows and columns when it has more (nearest row, no
/// averaging). Returns (the matrix row-major, its side, the side of the full matrix).
pub fn similarity_matrix(input: &EvalInput, max_side: usize) -> (Vec<f32>, usize, usize) {
    let dim = input.dim;
    let mut rows = unit_rows(input.texts, dim);
    rows.extend(unit_rows(input.images, dim));
    let full = rows.len() / dim.max(1);
    let side = full.min(max_side);
    let pick: Vec<usize> = (0..side).map(|k| k * full / side.max(1)).collect();
    let mut out = vec![0f32; side * side];
    out.par_chunks_mut(side.max(1))
        .enumerate()
        .for_each(|(a, line)| {
            let i = pick[a];
            for (b, cell) in line.iter_mut().enumerate() {
                let j = pick[b];
                *cell = if i == j {
                    0.0
                } else {
                    dot(&rows[i * dim..(i + 1) * dim], &rows[j * dim..(j + 1) * dim]) as f32
                };
            }
        });
    (out, side, full)
}

/// A loss on the test split: `total` = Σ coefficient · value over the terms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestLoss {
    pub total: f32,
    pub terms: Vec<Term>,
    /// Each term's value, in `terms` order.
    pub values: Vec<f32>,
    /// Views per object the loss was taken over (all of them).
    pub views: usize,
}

/// `metrics.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub head: HeadConfig,
    /// The training step whose weights were evaluated.
    pub chosen_step: u32,
    /// The test objects evaluated (the complete ones).
    pub test_objects: Vec<String>,
    /// Each part of the split: its objects, how many were used, and those left out with
    /// why (training and validation as the head was trained, then test).
    #[serde(default)]
    pub parts: Vec<Coverage>,
    /// The head's loss on the test objects with every view, and its terms (the study logged
    /// its test loss); none for the baseline, which has no loss.
    #[serde(default)]
    pub test_loss: Option<TestLoss>,
    /// The study's name for same-object similarity.
    pub inter_object_similarity: Stats,
    /// The study's name for cross-object similarity.
    pub intra_object_similarity: Stats,
    #[serde(flatten)]
    pub metrics: Metrics,
}
