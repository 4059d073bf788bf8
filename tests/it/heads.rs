//! The study's heads, losses and metrics: each metric against a direct computation on small
//! hand-made embeddings, each loss's value and gradient against finite differences, and a
//! synthetic space built like CLIP's on which the heads must show the study's outcomes.

use candle_core::{DType, Device, Tensor, Var};
use mvc::heads::loss::{self, DeadCodes, Normaliser};
use mvc::heads::train::{Embeddings, TrainSettings, train};
use mvc::heads::{Head, HeadConfig, HeadKind, Variant};
use mvc::report::metrics::{EvalInput, Metrics, ViewInfo, evaluate, similarity_matrix};

fn cos(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64;
    (m, var.sqrt())
}

fn rng_vec(rng: &mut fastrand::Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.f64() * 2.0 - 1.0).collect()
}

fn views(azimuths: &[f64], polars: &[f64]) -> Vec<ViewInfo> {
    polars
        .iter()
        .flat_map(|p| {
            azimuths.iter().map(move |a| ViewInfo {
                id: format!("az{a}-pol{p}"),
                azimuth: Some(*a),
                polar: Some(*p),
            })
        })
        .collect()
}

/// Per object, per view, a vector.
type PerView = Vec<Vec<Vec<f64>>>;

/// Hand-made embeddings: 3 objects x 4 views (2 azimuths x 2 rings) in 5 dimensions.
fn small_set() -> (PerView, Vec<Vec<f64>>, Vec<ViewInfo>) {
    let mut rng = fastrand::Rng::with_seed(7);
    let images: Vec<Vec<Vec<f64>>> = (0..3)
        .map(|_| (0..4).map(|_| rng_vec(&mut rng, 5)).collect())
        .collect();
    let texts: Vec<Vec<f64>> = (0..3).map(|_| rng_vec(&mut rng, 5)).collect();
    (images, texts, views(&[0.0, 90.0], &[20.0, 50.0]))
}

fn flat(images: &[Vec<Vec<f64>>]) -> Vec<f32> {
    images
        .iter()
        .flatten()
        .flatten()
        .map(|x| *x as f32)
        .collect()
}

#[test]
fn each_metric_matches_a_direct_computation() {
    let (images, texts, views) = small_set();
    let img = flat(&images);
    let txt: Vec<f32> = texts.iter().flatten().map(|x| *x as f32).collect();
    let input = EvalInput {
        images: &img,
        texts: &txt,
        objects: 3,
        views: &views,
        dim: 5,
    };
    // A block of one row at a time, so the blocked pass really is blocked.
    let m = evaluate(&input, 1).unwrap();
    check_pooled(&m, &images, &texts);
    check_heatmaps(&m, &images);
    check_curves(&m, &images);
    check_ring(&m, &images);

    // Blocks of any size give the same numbers.
    let whole = evaluate(&input, 1 << 30).unwrap();
    assert_eq!(whole.cross_object.count, m.cross_object.count);
    close(
        whole.cross_object.mean,
        m.cross_object.mean,
        "blocked vs whole",
    );
    assert_eq!(whole.retrieval_top1, m.retrieval_top1);

    // The texts-then-images matrix: diagonal zero, entry (text 1, image 0 of object 2).
    let (matrix, side, full) = similarity_matrix(&input, 2000);
    assert_eq!((side, full), (15, 15));
    assert_eq!(matrix[0], 0.0);
    close(
        matrix[3 + 8] as f64,
        cos(&texts[0], &images[2][0]),
        "matrix entry",
    );
    let (_, side, full) = similarity_matrix(&input, 4);
    assert_eq!((side, full), (4, 15));
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() < 1e-5, "{what}: {a} vs {b}");
}

/// Same-object similarity over the given view pairs, pooled over the objects.
fn pair_group(images: &PerView, pairs: &[(usize, usize)]) -> (f64, f64) {
    let v: Vec<f64> = (0..images.len())
        .flat_map(|o| pairs.iter().map(move |&(i, j)| (o, i, j)))
        .map(|(o, i, j)| cos(&images[o][i], &images[o][j]))
        .collect();
    mean_std(&v)
}

/// The pooled metrics (same-object, cross-object, text-to-image, retrieval) against every
/// pair computed directly.
fn check_pooled(m: &Metrics, images: &PerView, texts: &[Vec<f64>]) {
    let (o_n, v_n) = (3, 4);
    let mut same = Vec::new();
    let mut cross = Vec::new();
    let mut text = Vec::new();
    let mut top1 = 0;
    let mut top5 = 0;
    for o in 0..o_n {
        for i in 0..v_n {
            text.push(cos(&texts[o], &images[o][i]));
            let mut others = Vec::new();
            for p in 0..o_n {
                for j in 0..v_n {
                    if (o, i) == (p, j) {
                        continue;
                    }
                    let c = cos(&images[o][i], &images[p][j]);
                    if o == p {
                        same.push(c);
                    } else {
                        cross.push(c);
                    }
                    others.push((c, p));
                }
            }
            others.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
            top1 += (others[0].1 == o) as usize;
            top5 += others[..5].iter().any(|x| x.1 == o) as usize;
        }
    }
    let (sm, ss) = mean_std(&same);
    close(m.same_object.mean, sm, "same-object mean");
    close(m.same_object.std, ss, "same-object std");
    assert_eq!(m.same_object.count, same.len() as u64);
    let (cm, cs) = mean_std(&cross);
    close(m.cross_object.mean, cm, "cross-object mean");
    close(m.cross_object.std, cs, "cross-object std");
    let (tm, ts) = mean_std(&text);
    close(m.text_to_image.mean, tm, "text-to-image mean");
    close(m.text_to_image.std, ts, "text-to-image std");
    close(m.retrieval_top1, top1 as f64 / 12.0, "top-1");
    close(m.retrieval_top5, top5 as f64 / 12.0, "top-5");
}

/// The heatmaps: per view pair over objects.
fn check_heatmaps(m: &Metrics, images: &PerView) {
    let (o_n, v_n) = (3, 4);
    for i in 0..v_n {
        for j in 0..v_n {
            let per: Vec<f64> = (0..o_n)
                .map(|o| cos(&images[o][i], &images[o][j]))
                .collect();
            let (pm, ps) = mean_std(&per);
            close(m.view_pair_mean[i * v_n + j], pm, "heatmap mean");
            close(m.view_pair_std[i * v_n + j], ps, "heatmap std");
        }
    }
}

/// The curves: by azimuth difference (pooled and within rings), by elevation difference,
/// by the angle between the cameras.
fn check_curves(m: &Metrics, images: &PerView) {
    let o_n = images.len();
    // Azimuth difference 90: pairs (0,1), (2,3) and their reverses, plus (0,3), (1,2)...:
    // views are [az0 p20, az90 p20, az0 p50, az90 p50].
    let group = |pairs: &[(usize, usize)]| pair_group(images, pairs);
    let az90 = group(&[
        (0, 1),
        (1, 0),
        (2, 3),
        (3, 2),
        (0, 3),
        (3, 0),
        (1, 2),
        (2, 1),
    ]);
    let az0 = group(&[(0, 2), (2, 0), (1, 3), (3, 1)]);
    let by_az = &m.by_azimuth_difference;
    assert_eq!(by_az.len(), 2);
    assert_eq!((by_az[0].difference, by_az[1].difference), (0.0, 90.0));
    close(by_az[0].similarity.mean, az0.0, "azimuth 0");
    close(by_az[1].similarity.mean, az90.0, "azimuth 90");
    close(by_az[1].similarity.std, az90.1, "azimuth 90 std");
    let el30 = group(&[
        (0, 2),
        (2, 0),
        (1, 3),
        (3, 1),
        (0, 3),
        (3, 0),
        (1, 2),
        (2, 1),
    ]);
    let by_el = &m.by_elevation_difference;
    assert_eq!(by_el[1].difference, 30.0);
    close(by_el[1].similarity.mean, el30.0, "elevation 30");

    // Within rings, azimuth 90 only: a ring has no two views at the same azimuth, so no 0°
    // group (the pooled curve's 0° group is pairs on different rings).
    let within = &m.by_azimuth_within_ring;
    assert_eq!(within.len(), 2);
    for (ring, polar, pairs) in [(0, 20.0, [(0, 1), (1, 0)]), (1, 50.0, [(2, 3), (3, 2)])] {
        assert_eq!(within[ring].polar, Some(polar));
        assert_eq!(within[ring].points.len(), 1, "ring {ring}");
        assert_eq!(within[ring].points[0].difference, 90.0);
        let (mean, std) = group(&pairs);
        close(within[ring].points[0].similarity.mean, mean, "within ring");
        close(
            within[ring].points[0].similarity.std,
            std,
            "within ring std",
        );
    }
    // By the angle between the cameras (10° bins, named by their centres): at polar 20°,
    // azimuths 0° and 90° are 27.9° apart (cos = cos²20°); one ring apart at the same
    // azimuth, 30° (on a bin's edge: the 30–40 bin); across both, 52.8° (cos = cos 20° cos
    // 50°); at polar 50°, 65.6°.
    let by_view = &m.by_view_angle;
    let bins: Vec<f64> = by_view.iter().map(|g| g.difference).collect();
    assert_eq!(bins, [25.0, 35.0, 55.0, 65.0]);
    for (k, pairs) in [
        vec![(0, 1), (1, 0)],
        vec![(0, 2), (2, 0), (1, 3), (3, 1)],
        vec![(0, 3), (3, 0), (1, 2), (2, 1)],
        vec![(2, 3), (3, 2)],
    ]
    .iter()
    .enumerate()
    {
        let (mean, _) = group(pairs);
        close(by_view[k].similarity.mean, mean, "by view angle");
        assert_eq!(by_view[k].similarity.count, (pairs.len() * o_n) as u64);
    }
}

/// Per ring: ring 0 holds views 0 and 1.
fn check_ring(m: &Metrics, images: &PerView) {
    let o_n = images.len();
    let ring0 = &m.rings[0];
    assert_eq!(ring0.polar, Some(20.0));
    let same0: Vec<f64> = (0..o_n)
        .flat_map(|o| [(o, 0, 1), (o, 1, 0)])
        .map(|(o, i, j)| cos(&images[o][i], &images[o][j]))
        .collect();
    close(
        ring0.same_object.mean,
        mean_std(&same0).0,
        "ring same-object",
    );
    let mut cross0 = Vec::new();
    for o in 0..o_n {
        for p in 0..o_n {
            if o != p {
                for i in 0..2 {
                    for j in 0..2 {
                        cross0.push(cos(&images[o][i], &images[p][j]));
                    }
                }
            }
        }
    }
    close(
        ring0.cross_object.mean,
        mean_std(&cross0).0,
        "ring cross-object",
    );
    close(
        ring0.cross_object.std,
        mean_std(&cross0).1,
        "ring cross-object std",
    );
}

fn tensor3(v: &[Vec<Vec<f64>>]) -> Tensor {
    let (b, d, n) = (v.len(), v[0].len(), v[0][0].len());
    let flat: Vec<f64> = v.iter().flatten().flatten().copied().collect();
    Tensor::from_vec(flat, (b, d, n), &Device::Cpu).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// Objects of D views each with their text, as plain vectors.
fn direct_pairs(images: &[Vec<Vec<f64>>], texts: Option<&[Vec<f64>]>) -> (Vec<f64>, Vec<f64>) {
    let members: Vec<Vec<&Vec<f64>>> = images
        .iter()
        .enumerate()
        .map(|(o, views)| {
            let mut m: Vec<&Vec<f64>> = Vec::new();
            if let Some(t) = texts {
                m.push(&t[o]);
            }
            m.extend(views.iter());
            m
        })
        .collect();
    let mut same = Vec::new();
    let mut cross = Vec::new();
    for (o, mo) in members.iter().enumerate() {
        for i in 0..mo.len() {
            for j in i + 1..mo.len() {
                same.push(cos(mo[i], mo[j]));
            }
        }
        for mp in &members[o + 1..] {
            for a in mo {
                for b in mp {
                    cross.push(cos(a, b));
                }
            }
        }
    }
    (same, cross)
}

#[test]
fn pair_sums_agree_with_the_matrix_and_the_study_normalisers_are_7_6_and_6_5() {
    let mut rng = fastrand::Rng::with_seed(3);
    let (b, d, n) = (5, 6, 7);
    let images: Vec<Vec<Vec<f64>>> = (0..b)
        .map(|_| (0..d).map(|_| rng_vec(&mut rng, n)).collect())
        .collect();
    let texts: Vec<Vec<f64>> = (0..b).map(|_| rng_vec(&mut rng, n)).collect();
    let x = tensor3(&images);
    let t = Tensor::from_vec(texts.concat(), (b, n), &Device::Cpu).unwrap();

    // With texts (object and contrastive heads).
    let (same, cross) = direct_pairs(&images, Some(&texts));
    let members = Tensor::cat(
        &[
            &loss::unit(&t).unwrap().unsqueeze(1).unwrap(),
            &loss::unit(&x).unwrap(),
        ],
        1,
    )
    .unwrap();
    let sums = loss::pair_sums(&members).unwrap();
    assert!((scalar(&sums.within) - same.iter().sum::<f64>()).abs() < 1e-9);
    assert!((scalar(&sums.across) - cross.iter().sum::<f64>()).abs() < 1e-9);
    let true_cross = cross.iter().sum::<f64>() / cross.len() as f64;
    let (sim, dissim) = loss::similarity_terms(&members, Normaliser::Study).unwrap();
    assert!((scalar(&sim) - same.iter().sum::<f64>() / same.len() as f64).abs() < 1e-9);
    let ratio = scalar(&dissim) / true_cross;
    assert!(
        (ratio - 7.0 / 6.0).abs() < 1e-9,
        "study dissim / true mean = {ratio}"
    );
    let (_, dissim) = loss::similarity_terms(&members, Normaliser::TrueMean).unwrap();
    assert!((scalar(&dissim) - true_cross).abs() < 1e-9);

    // Images only (the autoencoder's codes).
    let (same, cross) = direct_pairs(&images, None);
    let u = loss::unit(&x).unwrap();
    let (sim, dissim) = loss::similarity_terms(&u, Normaliser::Study).unwrap();
    assert!((scalar(&sim) - same.iter().sum::<f64>() / same.len() as f64).abs() < 1e-9);
    let true_cross = cross.iter().sum::<f64>() / cross.len() as f64;
    let ratio = scalar(&dissim) / true_cross;
    assert!(
        (ratio - 6.0 / 5.0).abs() < 1e-9,
        "study dissim / true mean = {ratio}"
    );
    let (_, dissim) = loss::similarity_terms(&u, Normaliser::TrueMean).unwrap();
    assert!((scalar(&dissim) - true_cross).abs() < 1e-9);
}

/// Checks `f`'s gradient at `x` against central differences, entry by entry.
fn check_gradient(name: &str, x: &Tensor, f: &dyn Fn(&Tensor) -> Tensor) {
    let var = Var::from_tensor(x).unwrap();
    let value = f(var.as_tensor());
    let grads = value.backward().unwrap();
    let grad: Vec<f64> = grads
        .get(var.as_tensor())
        .expect("a gradient")
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let base: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
    let h = 1e-6;
    let mut worst = 0f64;
    for k in 0..base.len() {
        let at = |delta: f64| {
            let mut v = base.clone();
            v[k] += delta;
            scalar(&f(&Tensor::from_vec(v, x.dims(), &Device::Cpu).unwrap()))
        };
        let numeric = (at(h) - at(-h)) / (2.0 * h);
        worst = worst.max((numeric - grad[k]).abs() / (1.0 + numeric.abs()));
    }
    assert!(
        worst < 1e-6,
        "{name}: gradient differs from finite differences by {worst}"
    );
}

#[test]
fn each_loss_has_the_value_and_gradient_of_its_formula() {
    let mut rng = fastrand::Rng::with_seed(11);
    let (b, d, n) = (3, 4, 5);
    let images: Vec<Vec<Vec<f64>>> = (0..b)
        .map(|_| (0..d).map(|_| rng_vec(&mut rng, n)).collect())
        .collect();
    let texts: Vec<Vec<f64>> = (0..b).map(|_| rng_vec(&mut rng, n)).collect();
    let x = tensor3(&images);
    let t = Tensor::from_vec(texts.concat(), (b, n), &Device::Cpu).unwrap();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;

    // Values, from the direct pair lists.
    let (same_t, cross_t) = direct_pairs(&images, Some(&texts));
    let object = scalar(&loss::object_loss(&x, &t).unwrap().total);
    assert!((object + mean(&same_t)).abs() < 1e-9);
    let w = 0.3;
    let study_dissim = cross_t.iter().sum::<f64>() / (d * (d + 1) * b * (b - 1) / 2) as f64;
    let contrastive = scalar(
        &loss::contrastive_loss(&x, &t, w, Normaliser::Study)
            .unwrap()
            .total,
    );
    assert!((contrastive - ((1.0 - w) * study_dissim - w * mean(&same_t))).abs() < 1e-9);
    let fixed = scalar(
        &loss::contrastive_loss(&x, &t, w, Normaliser::TrueMean)
            .unwrap()
            .total,
    );
    assert!((fixed - ((1.0 - w) * mean(&cross_t) - w * mean(&same_t))).abs() < 1e-9);
    // InfoNCE: −mean over images of log softmax over texts at its own text.
    let tau = 0.5;
    let mut nll = 0.0;
    for (o, views) in images.iter().enumerate() {
        for image in views {
            let logits: Vec<f64> = (0..b).map(|p| cos(image, &texts[p]) / tau).collect();
            let lse = logits.iter().map(|l| l.exp()).sum::<f64>().ln();
            nll += lse - logits[o];
        }
    }
    let info = scalar(&loss::info_nce_loss(&x, &t, tau).unwrap().total);
    assert!((info - nll / (b * d) as f64).abs() < 1e-9);
    // The autoencoder: reconstruction distance and code similarity terms.
    let decoded: Vec<Vec<Vec<f64>>> = (0..b)
        .map(|_| (0..d).map(|_| rng_vec(&mut rng, n)).collect())
        .collect();
    let codes: Vec<Vec<Vec<f64>>> = (0..b)
        .map(|_| (0..d).map(|_| rng_vec(&mut rng, 3)).collect())
        .collect();
    let mut rec = 0.0;
    for o in 0..b {
        for v in 0..d {
            let s: f64 = (0..n)
                .map(|k| (images[o][v][k] - decoded[o][v][k]).powi(2))
                .sum();
            rec += s.sqrt();
        }
    }
    rec /= (b * d) as f64;
    let (same_c, cross_c) = direct_pairs(&codes, None);
    let (a, w) = (0.5, 0.5);
    let flat_x = x.reshape((b * d, n)).unwrap();
    let flat_dec = tensor3(&decoded).reshape((b * d, n)).unwrap();
    let ae = |normaliser, divisor: f64| {
        let got = scalar(
            &loss::autoencoder_loss(
                &flat_x,
                &flat_dec,
                &tensor3(&codes),
                a,
                w,
                normaliser,
                DeadCodes::Zero,
            )
            .unwrap()
            .total,
        );
        let dissim = cross_c.iter().sum::<f64>() / divisor;
        let want = a * rec + (1.0 - a) * ((1.0 - w) * dissim - w * mean(&same_c));
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
    };
    ae(Normaliser::Study, (d * (d - 1) * b * (b - 1) / 2) as f64);
    ae(Normaliser::TrueMean, cross_c.len() as f64);

    let codes = tensor3(&codes);
    check_loss_gradients(&x, &t, (&flat_x, &flat_dec, &codes), (a, w));
}

/// Each loss's gradient, by x (and by decoding and by code for the autoencoder), against
/// finite differences.
fn check_loss_gradients(
    x: &Tensor,
    t: &Tensor,
    (flat_x, flat_dec, codes): (&Tensor, &Tensor, &Tensor),
    (a, w): (f64, f64),
) {
    check_gradient("object", x, &|x| loss::object_loss(x, t).unwrap().total);
    check_gradient("contrastive (study)", x, &|x| {
        loss::contrastive_loss(x, t, 0.5, Normaliser::Study)
            .unwrap()
            .total
    });
    check_gradient("contrastive (InfoNCE)", x, &|x| {
        loss::info_nce_loss(x, t, 0.5).unwrap().total
    });
    check_gradient("autoencoder, by decoding", flat_dec, &|dec| {
        loss::autoencoder_loss(flat_x, dec, codes, a, w, Normaliser::Study, DeadCodes::Zero)
            .unwrap()
            .total
    });
    check_gradient("autoencoder, by code", codes, &|c| {
        loss::autoencoder_loss(
            flat_x,
            flat_dec,
            c,
            a,
            w,
            Normaliser::TrueMean,
            DeadCodes::Zero,
        )
        .unwrap()
        .total
    });
    // The study's cosines of codes (1e-7 added, PyTorch's norm clamp), by code: the fused
    // backward with its tiny epsilon.
    check_gradient("autoencoder, by code, as the study", codes, &|c| {
        loss::autoencoder_loss(
            flat_x,
            flat_dec,
            c,
            a,
            w,
            Normaliser::Study,
            DeadCodes::Study,
        )
        .unwrap()
        .total
    });
}

/// A space built like CLIP's: image = image offset + object vector + view vector + noise;
/// text = text offset + a smaller copy of the object vector. The parts sit in separate
/// coordinate ranges, so the cosines the construction implies can be written down.
struct Synthetic {
    images: Vec<f32>,
    texts: Vec<f32>,
    objects: usize,
    views: Vec<ViewInfo>,
    dim: usize,
}

const OBJECT_NORM: f64 = 0.8;
const VIEW_NORM: f64 = 0.5;
const NOISE_NORM: f64 = 0.2;
const TEXT_OBJECT: f64 = 0.3;

fn synthetic(objects: usize, seed: u64) -> Synthetic {
    let views = views(&[0., 60., 120., 180., 240., 300.], &[20., 50.]);
    let v_n = views.len();
    let (obj_dims, view_dims, noise_dims) = (48, v_n, 32);
    let dim = 2 + obj_dims + view_dims + noise_dims;
    let mut rng = fastrand::Rng::with_seed(seed);
    let scaled = |v: Vec<f64>, norm: f64| {
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.into_iter().map(|x| x * norm / n).collect::<Vec<f64>>()
    };
    let gauss = |rng: &mut fastrand::Rng, n: usize| -> Vec<f64> {
        (0..n)
            .map(|_| {
                let (u1, u2) = (rng.f64().max(1e-12), rng.f64());
                (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
            })
            .collect()
    };
    let mut images = Vec::new();
    let mut texts = Vec::new();
    for _ in 0..objects {
        let object = scaled(gauss(&mut rng, obj_dims), OBJECT_NORM);
        for v in 0..v_n {
            let mut x = vec![0f64; dim];
            x[0] = 1.0; // the image offset
            x[2..2 + obj_dims].copy_from_slice(&object);
            x[2 + obj_dims + v] = VIEW_NORM; // one orthogonal direction per view
            let noise = scaled(gauss(&mut rng, noise_dims), NOISE_NORM);
            x[2 + obj_dims + view_dims..].copy_from_slice(&noise);
            images.extend(x.iter().map(|v| *v as f32));
        }
        let mut t = vec![0f64; dim];
        t[1] = 1.0; // the text offset
        for (k, o) in object.iter().enumerate() {
            t[2 + k] = TEXT_OBJECT * o;
        }
        texts.extend(t.iter().map(|v| *v as f32));
    }
    Synthetic {
        images,
        texts,
        objects,
        views,
        dim,
    }
}

fn config(head: HeadKind, variant: Variant, dim: usize) -> HeadConfig {
    HeadConfig {
        head,
        variant,
        dim,
        hidden: 64,
        code: 16,
        weight_similarity: 0.5,
        weight_autoencoder: 0.5,
        temperature: 0.1,
    }
}

fn embeddings(s: &Synthetic) -> Embeddings<'_> {
    Embeddings {
        images: &s.images,
        texts: &s.texts,
        objects: s.objects,
        views: s.views.len(),
        dim: s.dim,
    }
}

fn settings(steps: u32) -> TrainSettings {
    TrainSettings {
        steps,
        views_per_step: 6,
        lr: 1e-3,
        validate_every: 10,
        seed: 42,
        redraw_validation: false,
    }
}

/// `h` trained for `steps` on `tr`, validated on `va`, with the test settings.
fn trained(h: &Head, tr: &Synthetic, va: &Synthetic, steps: u32) -> mvc::heads::train::Curve {
    train(
        h,
        &embeddings(tr),
        &embeddings(va),
        &settings(steps),
        &Device::Cpu,
        &|| false,
    )
    .unwrap()
}

/// Trains `head` on the synthetic space and evaluates it on held-out objects.
fn train_and_evaluate(
    head: HeadKind,
    variant: Variant,
    steps: u32,
) -> mvc::report::metrics::Metrics {
    let (tr, va, te) = (synthetic(48, 1), synthetic(8, 2), synthetic(16, 3));
    let h = Head::init(config(head, variant, tr.dim), 42, &Device::Cpu).unwrap();
    let curve = train(
        &h,
        &embeddings(&tr),
        &embeddings(&va),
        &settings(steps),
        &Device::Cpu,
        &|| false,
    )
    .unwrap();
    if head != HeadKind::Identity {
        assert_eq!(curve.train.len(), steps as usize);
        assert!(curve.chosen_step > 0);
    }
    let x =
        Tensor::from_slice(&te.images, (te.images.len() / te.dim, te.dim), &Device::Cpu).unwrap();
    let p: Vec<f32> = h
        .project(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let input = EvalInput {
        images: &p,
        texts: &te.texts,
        objects: te.objects,
        views: &te.views,
        dim: te.dim,
    };
    let m = evaluate(&input, 1 << 20).unwrap();
    println!(
        "{:<12} {:<6} same-object {:.3} ± {:.3}  cross-object {:.3} ± {:.3}  text-to-image {:.3} ± \
         {:.3}  top-1 {:.3}  top-5 {:.3}  (chosen step {})",
        head.name(),
        variant.name(),
        m.same_object.mean,
        m.same_object.std,
        m.cross_object.mean,
        m.cross_object.std,
        m.text_to_image.mean,
        m.text_to_image.std,
        m.retrieval_top1,
        m.retrieval_top5,
        curve.chosen_step
    );
    m
}

#[test]
fn on_a_clip_like_space_the_heads_show_the_studys_outcomes() {
    let base = train_and_evaluate(HeadKind::Identity, Variant::Study, 0);
    // What the construction implies (the parts are orthogonal; object vectors of different
    // objects are independent, so their dot products average out).
    let norm2 = 1.0 + OBJECT_NORM.powi(2) + VIEW_NORM.powi(2) + NOISE_NORM.powi(2);
    let same = (1.0 + OBJECT_NORM.powi(2)) / norm2;
    let cross = (1.0 + VIEW_NORM.powi(2) / 12.0) / norm2;
    let text_norm = (1.0 + (TEXT_OBJECT * OBJECT_NORM).powi(2)).sqrt();
    let text = TEXT_OBJECT * OBJECT_NORM.powi(2) / (text_norm * norm2.sqrt());
    let texts_mutual = 1.0 / text_norm.powi(2);
    println!(
        "implied by the construction: same-object {same:.3}, cross-object {cross:.3}, \
         text-to-image {text:.3}, text-to-text {texts_mutual:.3}"
    );
    assert!(
        (base.same_object.mean - same).abs() < 0.01,
        "{}",
        base.same_object.mean
    );
    assert!(
        (base.cross_object.mean - cross).abs() < 0.03,
        "{}",
        base.cross_object.mean
    );
    assert!(
        (base.text_to_image.mean - text).abs() < 0.01,
        "{}",
        base.text_to_image.mean
    );

    // The object head collapses: cross-object similarity rises far above the baseline's,
    // toward the texts' mutual similarity.
    let object = train_and_evaluate(HeadKind::Object, Variant::Study, 300);
    assert!(
        object.cross_object.mean
            > base.cross_object.mean + 0.5 * (texts_mutual - base.cross_object.mean),
        "object head cross-object {} vs baseline {}",
        object.cross_object.mean,
        base.cross_object.mean
    );
    assert!(object.same_object.mean > base.same_object.mean);

    // The contrastive head separates objects.
    let contrastive = train_and_evaluate(HeadKind::Contrastive, Variant::Study, 300);
    assert!(
        contrastive.cross_object.mean < base.cross_object.mean - 0.2,
        "contrastive cross-object {} vs baseline {}",
        contrastive.cross_object.mean,
        base.cross_object.mean
    );
    let info_nce = train_and_evaluate(HeadKind::Contrastive, Variant::Fixed, 300);
    assert!(info_nce.retrieval_top1 >= base.retrieval_top1 - 0.05);

    // The autoencoder's view-independent decoding raises same-object similarity.
    let autoencoder = train_and_evaluate(HeadKind::Autoencoder, Variant::Study, 300);
    assert!(
        autoencoder.same_object.mean > base.same_object.mean,
        "autoencoder same-object {} vs baseline {}",
        autoencoder.same_object.mean,
        base.same_object.mean
    );
    train_and_evaluate(HeadKind::Autoencoder, Variant::Fixed, 300);
}

/// The error training `h` stops with.
fn train_error(h: &Head, tr: &Embeddings, va: &Embeddings, s: &TrainSettings) -> String {
    match train(h, tr, va, s, &Device::Cpu, &|| false) {
        Ok(_) => panic!("training succeeded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn training_is_repeatable_and_a_diverging_loss_names_its_step() {
    let (tr, va) = (synthetic(8, 1), synthetic(3, 2));
    let weights = || {
        let h = Head::init(
            config(HeadKind::Contrastive, Variant::Study, tr.dim),
            5,
            &Device::Cpu,
        )
        .unwrap();
        let curve = trained(&h, &tr, &va, 20);
        let t: Vec<Vec<u8>> = h.tensors().unwrap().into_iter().map(|t| t.data).collect();
        (curve, t)
    };
    let (c1, w1) = weights();
    let (c2, w2) = weights();
    assert_eq!(c1, c2);
    assert!(w1 == w2, "the same seed gave different weights");

    let h = Head::init(
        config(HeadKind::Object, Variant::Study, tr.dim),
        5,
        &Device::Cpu,
    )
    .unwrap();
    let mut s = settings(50);
    s.lr = 1e38;
    let e = train_error(&h, &embeddings(&tr), &embeddings(&va), &s);
    assert!(e.contains("loss is") && e.contains("at step"), "{e}");
    assert!(e.contains("lr"), "{e}");

    // More views per step than the objects have, and no validation objects.
    let mut s = settings(5);
    s.views_per_step = 20;
    let e = train_error(&h, &embeddings(&tr), &embeddings(&va), &s);
    assert!(
        e.contains("views_per_step = 20 but the objects have 12 views; lower views_per_step"),
        "{e}"
    );
    let none = Embeddings {
        objects: 0,
        images: &[],
        texts: &[],
        ..embeddings(&va)
    };
    let e = train_error(&h, &embeddings(&tr), &none, &settings(5));
    assert!(
        e.contains("the validation split has 0 objects; training needs at least 1"),
        "{e}"
    );
}

/// The fused bias+ReLU and candle's own ops on `z` and `b` in `dtype`, flattened.
fn fused_and_plain<T: candle_core::WithDType>(
    z: &Tensor,
    b: &Tensor,
    dtype: DType,
) -> (Vec<T>, Vec<T>) {
    let (z, b) = (z.to_dtype(dtype).unwrap(), b.to_dtype(dtype).unwrap());
    let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<T>().unwrap();
    let fused = flat(mvc::heads::fused::bias_relu(&z, &b).unwrap());
    let plain = flat(z.broadcast_add(&b).unwrap().relu().unwrap());
    (fused, plain)
}

#[test]
fn the_fused_bias_relu_equals_candles_ops_and_has_their_gradient() {
    use mvc::heads::fused::bias_relu;
    let mut rng = fastrand::Rng::with_seed(5);
    let z = Tensor::from_vec(rng_vec(&mut rng, 7 * 9), (7, 9), &Device::Cpu).unwrap();
    let b = Tensor::from_vec(rng_vec(&mut rng, 9), 9, &Device::Cpu).unwrap();
    let (fused, plain) = fused_and_plain::<f64>(&z, &b, DType::F64);
    assert_eq!(fused, plain);
    assert!(fused.contains(&0.0) && fused.iter().any(|v| *v > 0.0));
    let w = Tensor::from_vec(rng_vec(&mut rng, 7 * 9), (7, 9), &Device::Cpu).unwrap();
    // A loss that weighs every output differently, through the op.
    check_gradient("bias-relu, by input", &z, &|z| {
        (bias_relu(z, &b).unwrap() * &w).unwrap().sum_all().unwrap()
    });
    check_gradient("bias-relu, by bias", &b, &|b| {
        (bias_relu(&z, b).unwrap() * &w).unwrap().sum_all().unwrap()
    });
    // f32, as training runs it.
    let (a, p) = fused_and_plain::<f32>(&z, &b, DType::F32);
    assert_eq!(a, p);
}

/// The value of the loss term named `name`.
fn term(loss: &loss::Loss, name: &str) -> f64 {
    let (_, _, value) = loss
        .terms
        .iter()
        .find(|(n, _, _)| *n == name)
        .unwrap_or_else(|| panic!("no term {name}"));
    value
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn a_dead_autoencoder_code_has_cosine_one_as_the_study_and_zero_when_fixed() {
    // Two objects, three views each, every view-independent code dead (all zero after the
    // last ReLU), at the study's code width.
    let codes = Tensor::zeros((2, 3, 128), DType::F32, &Device::Cpu).unwrap();
    let x = Tensor::ones((6, 4), DType::F32, &Device::Cpu).unwrap();
    let loss_of = |dead| {
        loss::autoencoder_loss(&x, &x, &codes, 0.5, 0.5, Normaliser::TrueMean, dead).unwrap()
    };
    // The study: 1e-7 in every component makes each dead code the same constant vector.
    let study = loss_of(DeadCodes::Study);
    let sim = term(&study, "similarity");
    assert!(
        (sim - 1.0).abs() < 1e-4,
        "study: dead codes' cosine {sim}, not 1"
    );
    assert!((term(&study, "dissimilarity") - 1.0).abs() < 1e-4);
    // Fixed: a zero code has cosine 0 with everything.
    let fixed = loss_of(DeadCodes::Zero);
    assert!(term(&fixed, "similarity").abs() < 1e-6);
    assert!(term(&fixed, "dissimilarity").abs() < 1e-6);
    // The variants choose so.
    assert_eq!(Variant::Study.dead_codes(), DeadCodes::Study);
    assert_eq!(Variant::Fixed.dead_codes(), DeadCodes::Zero);
}

#[test]
fn the_curve_keeps_every_loss_term_and_they_sum_to_the_total() {
    let (tr, va) = (synthetic(12, 1), synthetic(4, 2));
    for (head, variant, names) in [
        (
            HeadKind::Autoencoder,
            Variant::Study,
            &["reconstruction", "similarity", "dissimilarity"][..],
        ),
        (
            HeadKind::Contrastive,
            Variant::Study,
            &["similarity", "dissimilarity"][..],
        ),
        (HeadKind::Object, Variant::Study, &["similarity"][..]),
        (HeadKind::Contrastive, Variant::Fixed, &["info_nce"][..]),
    ] {
        let h = Head::init(config(head, variant, tr.dim), 42, &Device::Cpu).unwrap();
        let curve = trained(&h, &tr, &va, 20);
        let what = format!("{} ({})", head.name(), variant.name());
        let got: Vec<&str> = curve.terms.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(got, names, "{what}");
        assert_eq!(curve.train_terms.len(), 20, "{what}");
        assert_eq!(curve.validation_terms.len(), 2, "{what}");
        for (totals, terms) in [
            (&curve.train, &curve.train_terms),
            (&curve.validation, &curve.validation_terms),
        ] {
            for ((step, total), (term_step, values)) in totals.iter().zip(terms.iter()) {
                assert_eq!(step, term_step);
                let sum: f64 = curve
                    .terms
                    .iter()
                    .zip(values)
                    .map(|(t, v)| t.coefficient * *v as f64)
                    .sum();
                assert!(
                    (sum - *total as f64).abs() < 1e-5 * (1.0 + total.abs() as f64),
                    "{what}, step {step}: terms sum to {sum}, total {total}"
                );
            }
        }
    }
}

#[test]
fn the_study_redraws_the_validation_views_and_fixed_keeps_one_draw() {
    // A learning rate too small to move the weights: every change of the validation loss
    // comes from which views were drawn.
    let (tr, va) = (synthetic(12, 1), synthetic(6, 2));
    let validation_losses = |redraw: bool| {
        let h = Head::init(
            config(HeadKind::Object, Variant::Study, tr.dim),
            42,
            &Device::Cpu,
        )
        .unwrap();
        let mut s = settings(40);
        s.lr = 1e-30;
        s.redraw_validation = redraw;
        let curve = train(
            &h,
            &embeddings(&tr),
            &embeddings(&va),
            &s,
            &Device::Cpu,
            &|| false,
        )
        .unwrap();
        assert_eq!(curve.validation_redrawn, redraw);
        curve
            .validation
            .iter()
            .map(|(_, v)| *v)
            .collect::<Vec<f32>>()
    };
    let redrawn = validation_losses(true);
    let once = validation_losses(false);
    assert_eq!(redrawn.len(), 4);
    assert!(
        once.windows(2).all(|w| w[0] == w[1]),
        "one draw, the same views at every validation: {once:?}"
    );
    let distinct: std::collections::BTreeSet<u32> = redrawn.iter().map(|v| v.to_bits()).collect();
    assert!(
        distinct.len() >= 3,
        "redrawn views should change the validation loss: {redrawn:?}"
    );
    // The first validation draws the same views either way (the same seeded stream).
    assert_eq!(redrawn[0], once[0]);
}

/// An evaluation of `objects` random objects with `views` views each (12 azimuths a ring).
fn evaluation_of(
    head: HeadKind,
    variant: Variant,
    objects: usize,
    view_count: usize,
) -> mvc::report::metrics::Evaluation {
    let mut rng = fastrand::Rng::with_seed(3);
    let dim = 4;
    let images: Vec<f32> = (0..objects * view_count * dim).map(|_| rng.f32()).collect();
    let texts: Vec<f32> = (0..objects * dim).map(|_| rng.f32()).collect();
    let azimuths: Vec<f64> = (0..12).map(|k| k as f64 * 30.0).collect();
    let polars = [20.0, 50.0, 80.0];
    let infos = views(&azimuths, &polars[..view_count / 12]);
    let m = evaluate(
        &EvalInput {
            images: &images,
            texts: &texts,
            objects,
            views: &infos,
            dim,
        },
        1 << 20,
    )
    .unwrap();
    mvc::report::metrics::Evaluation {
        head: config(head, variant, dim),
        chosen_step: 0,
        test_objects: Vec::new(),
        parts: Vec::new(),
        test_loss: None,
        inter_object_similarity: m.same_object,
        intra_object_similarity: m.cross_object,
        metrics: m,
    }
}

#[test]
fn the_studys_numbers_stand_only_beside_the_same_head_variant_and_a_large_enough_split() {
    use mvc::report::table::{Results, Row, markdown, study_comparison};
    let ok = evaluation_of(HeadKind::Identity, Variant::Study, 50, 36);
    assert_eq!(study_comparison(&ok).unwrap().head, "identity");
    // The baseline has no formulas: its variant does not matter.
    let baseline_fixed = evaluation_of(HeadKind::Identity, Variant::Fixed, 50, 36);
    assert!(study_comparison(&baseline_fixed).is_ok());
    let fixed = evaluation_of(HeadKind::Autoencoder, Variant::Fixed, 50, 36);
    let why = study_comparison(&fixed).unwrap_err();
    assert!(why.contains("variant = \"fixed\""), "{why}");
    let tiny = evaluation_of(HeadKind::Object, Variant::Study, 4, 36);
    let why = study_comparison(&tiny).unwrap_err();
    assert!(
        why.contains("4 test objects") && why.contains("at least 50"),
        "{why}"
    );
    let one_ring = evaluation_of(HeadKind::Contrastive, Variant::Study, 60, 12);
    let why = study_comparison(&one_ring).unwrap_err();
    assert!(why.contains("12 views per object"), "{why}");

    let rows = [
        Row {
            stage: "eval_identity",
            evaluation: &ok,
            figures: Vec::new(),
            variant: None,
        },
        Row {
            stage: "eval_autoencoder",
            evaluation: &fixed,
            figures: Vec::new(),
            variant: None,
        },
        Row {
            stage: "eval_object",
            evaluation: &tiny,
            figures: Vec::new(),
            variant: None,
        },
    ];
    let md = markdown(&Results::new(("t", None), &rows, true, &[]));
    let line = |stage: &str| {
        md.lines()
            .find(|l| l.starts_with(&format!("| {stage} |")))
            .unwrap_or_else(|| panic!("no row for {stage} in\n{md}"))
            .to_string()
    };
    assert!(line("eval_identity").contains("0.893 ± 0.067"), "{md}");
    assert!(!line("eval_autoencoder").contains("0.965"), "{md}");
    assert!(
        line("eval_autoencoder").ends_with("– | – | – | – |"),
        "{md}"
    );
    assert!(!line("eval_object").contains("0.997"), "{md}");
    assert!(
        md.contains("No study column for `eval_autoencoder`: variant = \"fixed\""),
        "{md}"
    );
    assert!(
        md.contains("No study column for `eval_object`: 4 test objects"),
        "{md}"
    );
    assert!(!md.contains("No study column for `eval_identity`"), "{md}");
    assert!(md.contains("NumPy's shuffle"), "{md}");
}
