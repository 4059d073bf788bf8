//! Embeddings of a split's objects, gathered from an embed stage's results into dense
//! object-major arrays: every object with the same views (in the study's order: ring by
//! ring, polar angle increasing, then azimuth) and its caption.
//!
//! An object whose render or download failed has no complete set of embeddings; the study's
//! scripts dropped such objects before splitting. Here the split stays where it is (a failed
//! render must not reshuffle the parts) and the stages that read it skip them instead, each
//! left-out object listed with the failure upstream that cost it, up to `max_missing`.

use super::embed::{CAPTION_SUFFIX, EMBEDDING};
use crate::exec::workdir::InputData;
use crate::render::camera::ViewSpec;
use crate::report::coverage::{Coverage, LeftOutObject};
use crate::report::metrics::ViewInfo;
use crate::store::Store;
use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

pub struct Gathered {
    /// The complete objects, sorted.
    pub uids: Vec<String>,
    pub views: Vec<ViewInfo>,
    pub dim: usize,
    /// `[objects, views, dim]`.
    pub images: Vec<f32>,
    /// `[objects, dim]`.
    pub texts: Vec<f32>,
    /// The part's objects, used and left out.
    pub coverage: Coverage,
}

#[derive(Default)]
struct Object {
    views: HashMap<String, Vec<f32>>,
    caption: Option<Vec<f32>>,
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect()
}

/// Lists at most a few names, then how many more.
fn some(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
    match names.len() {
        n if n > 5 => format!("{} and {} more", shown.join(", "), n - 5),
        _ => shown.join(", "),
    }
}

/// Which objects of a part to use, and how many may be left out.
pub struct Part<'a> {
    /// `training`, `validation` or `test`, for messages.
    pub name: &'a str,
    pub uids: &'a [String],
    /// The largest fraction of the part that may be left out (the stage's `max_missing`).
    pub max_missing: f64,
    /// The fewest complete objects the stage can work with.
    pub least: usize,
}

/// How many of `n` objects `max_missing` lets go: the fraction of the part, rounded up, so
/// that a small part can lose one object unless `max_missing` is 0.
pub fn allowed_missing(max_missing: f64, n: usize) -> usize {
    ((max_missing * n as f64) - 1e-9).ceil().max(0.0) as usize
}

/// An embed item's object and view: `<uid>@<view>` is a view, `<uid>#caption` the caption
/// (`None`), and a bare id an image with no view of its own (`""`).
fn item_parts(item: &str) -> (&str, Option<&str>) {
    match item.strip_suffix(CAPTION_SUFFIX) {
        Some(uid) => (uid, None),
        None => match item.rsplit_once(super::render::VIEW_SEPARATOR) {
            Some((uid, view)) => (uid, Some(view)),
            None => (item, Some("")),
        },
    }
}

/// Gathers the embeddings of the complete objects of `part` from `input`: every view of the
/// stage's grid (the views of every item it has, failed ones included) and the caption.
/// Incomplete objects are left out with their reason; more than the part's `max_missing`
/// allows, or fewer complete objects than it needs, is an error that lists them.
pub fn gather(store: &Store, input: &InputData, part: &Part) -> Result<Gathered> {
    let wanted: HashSet<&str> = part.uids.iter().map(String::as_str).collect();
    // Every view any object has or should have had: a view that failed for every object is
    // still a view each of them lacks.
    let all_views: BTreeSet<&str> = input
        .items
        .iter()
        .map(|(i, _)| i.as_str())
        .chain(input.left_out.iter().map(|l| l.item.as_str()))
        .filter_map(|item| item_parts(item).1)
        .collect();
    let (mut objects, dim) = read_embeddings(store, input, part, &wanted)?;
    let (left_out, problems) = incomplete_objects(input, &objects, &all_views, &wanted);
    let n = objects.len();
    let allowed = allowed_missing(part.max_missing, n);
    if left_out.len() > allowed {
        bail!(
            "{} of the {n} {} objects lack embeddings in `{}` (every object needs the same \
             views and its caption): {}. At most {allowed} may be left out (max_missing = {} \
             of the part): fix the cause (failed items are listed by `mvc run` and \
             `mvc status`, then --retry-failed), or raise the stage's `max_missing`",
            left_out.len(),
            part.name,
            input.stage,
            some(&problems),
            part.max_missing
        );
    }
    objects.retain(|uid, _| !left_out.iter().any(|l| l.uid == *uid));
    if objects.len() < part.least {
        bail!(
            "only {} of the {n} {} objects {} complete in `{}`; this stage needs at least {} \
             (adjust the split's fractions or add objects){}",
            objects.len(),
            part.name,
            if objects.len() == 1 { "is" } else { "are" },
            input.stage,
            part.least,
            if problems.is_empty() {
                String::new()
            } else {
                format!("; left out: {}", some(&problems))
            }
        );
    }
    let dim = dim.with_context(|| {
        format!(
            "{}: none of the {} objects has an embedding",
            input.stage, part.name
        )
    })?;
    let views = ordered_views(&all_views);
    let mut images = Vec::with_capacity(objects.len() * views.len() * dim);
    let mut texts = Vec::with_capacity(objects.len() * dim);
    for o in objects.values() {
        for v in &views {
            images.extend_from_slice(&o.views[&v.id]);
        }
        texts.extend_from_slice(o.caption.as_ref().expect("complete"));
    }
    Ok(Gathered {
        uids: objects.keys().map(|u| u.to_string()).collect(),
        views,
        dim,
        images,
        texts,
        coverage: Coverage {
            part: part.name.to_string(),
            objects: n,
            used: objects.len(),
            left_out,
        },
    })
}

/// The embeddings of the wanted objects, by uid (an object with none is there, empty), and
/// their width; every embedding must have the same.
fn read_embeddings<'a>(
    store: &Store,
    input: &'a InputData,
    part: &'a Part,
    wanted: &HashSet<&str>,
) -> Result<(BTreeMap<&'a str, Object>, Option<usize>)> {
    let mut objects: BTreeMap<&str, Object> = part
        .uids
        .iter()
        .map(|u| (u.as_str(), Object::default()))
        .collect();
    let mut dim = None;
    for (item, result) in &input.items {
        let (uid, view) = item_parts(item);
        if !wanted.contains(uid) {
            continue;
        }
        let output = result
            .outputs
            .iter()
            .find(|o| o.name == EMBEDDING)
            .with_context(|| format!("{}/{item} has no {EMBEDDING}", input.stage))?;
        let values = floats(&store.read_output(output).with_context(|| {
            format!(
                "{}/{item}: reading its embedding; run the pipeline again",
                input.stage
            )
        })?);
        match dim {
            None => dim = Some(values.len()),
            Some(d) if d != values.len() => bail!(
                "{}/{item} has {} values where the others have {d}",
                input.stage,
                values.len()
            ),
            Some(_) => {}
        }
        let object = objects.get_mut(uid).expect("wanted");
        match view {
            None => object.caption = Some(values),
            Some(v) => {
                object.views.insert(v.to_string(), values);
            }
        }
    }
    Ok((objects, dim))
}

/// The objects that lack a view or their caption, each with its reason (the first failure
/// upstream of it, else what it lacks), and the same as `uid: reason` lines.
fn incomplete_objects(
    input: &InputData,
    objects: &BTreeMap<&str, Object>,
    all_views: &BTreeSet<&str>,
    wanted: &HashSet<&str>,
) -> (Vec<LeftOutObject>, Vec<String>) {
    let mut failure: HashMap<&str, &str> = HashMap::new();
    for l in &input.left_out {
        let (uid, _) = item_parts(&l.item);
        if wanted.contains(uid) {
            failure.entry(uid).or_insert(l.reason.as_str());
        }
    }
    let mut left_out = Vec::new();
    let mut problems = Vec::new();
    for (uid, o) in objects {
        let missing: Vec<String> = all_views
            .iter()
            .filter(|v| !o.views.contains_key(**v))
            .map(|v| v.to_string())
            .collect();
        if missing.is_empty() && o.caption.is_some() {
            continue;
        }
        let mut what = Vec::new();
        if !missing.is_empty() {
            what.push(format!(
                "{} of {} views missing ({})",
                missing.len(),
                all_views.len(),
                some(&missing)
            ));
        }
        if o.caption.is_none() {
            what.push("no caption embedding".into());
        }
        let reason = match failure.get(uid) {
            Some(reason) => reason.to_string(),
            None => what.join(", "),
        };
        problems.push(format!("{uid}: {reason}"));
        left_out.push(LeftOutObject {
            uid: uid.to_string(),
            reason,
        });
    }
    (left_out, problems)
}

/// The views as the study orders them: ring by ring (polar angle), azimuth within a ring;
/// ids that are not cameras last, by id.
fn ordered_views(all_views: &BTreeSet<&str>) -> Vec<ViewInfo> {
    let mut views: Vec<ViewInfo> = all_views
        .iter()
        .map(|id| {
            let spec = ViewSpec::parse_id(id);
            ViewInfo {
                id: id.to_string(),
                azimuth: spec.map(|s| s.azimuth),
                polar: spec.map(|s| s.polar),
            }
        })
        .collect();
    views.sort_by(|a, b| {
        let key = |v: &ViewInfo| (v.polar.unwrap_or(f64::MAX), v.azimuth.unwrap_or(f64::MAX));
        key(a)
            .partial_cmp(&key(b))
            .expect("finite angles")
            .then_with(|| a.id.cmp(&b.id))
    });
    views
}
