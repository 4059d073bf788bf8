//! Embeddings of a split's objects, gathered from an embed stage's results into dense
//! object-major arrays: every object with the same views (in the study's order: ring by
//! ring, polar angle increasing, then azimuth) and its caption.

use super::embed::{CAPTION_SUFFIX, EMBEDDING};
use crate::exec::workdir::InputData;
use crate::render::camera::ViewSpec;
use crate::report::metrics::ViewInfo;
use crate::store::Store;
use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, BTreeSet, HashSet};

pub struct Gathered {
    pub uids: Vec<String>,
    pub views: Vec<ViewInfo>,
    pub dim: usize,
    /// `[objects, views, dim]`.
    pub images: Vec<f32>,
    /// `[objects, dim]`.
    pub texts: Vec<f32>,
}

#[derive(Default)]
struct Object {
    views: BTreeMap<String, Vec<f32>>,
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

/// Gathers the embeddings of `uids` (the `part` of a split, for messages) from `input`. Every
/// object must have a caption and the same views as the others; the error names those that
/// do not.
pub fn gather(store: &Store, input: &InputData, uids: &[String], part: &str) -> Result<Gathered> {
    let wanted: HashSet<&str> = uids.iter().map(String::as_str).collect();
    let mut objects: BTreeMap<&str, Object> = uids
        .iter()
        .map(|u| (u.as_str(), Object::default()))
        .collect();
    let mut dim = None;
    for (item, result) in &input.items {
        let (uid, view) = match item.strip_suffix(CAPTION_SUFFIX) {
            Some(uid) => (uid, None),
            None => match item.rsplit_once(super::render::VIEW_SEPARATOR) {
                Some((uid, view)) => (uid, Some(view)),
                None => (item.as_str(), Some("")),
            },
        };
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
    let dim = dim.with_context(|| {
        format!(
            "{}: none of the {part} objects has an embedding",
            input.stage
        )
    })?;
    // The views: those of the objects that have any (a failed render leaves an object short).
    let all_views: BTreeSet<&String> = objects.values().flat_map(|o| o.views.keys()).collect();
    let mut problems = Vec::new();
    for (uid, o) in &objects {
        let missing: Vec<&str> = all_views
            .iter()
            .filter(|v| !o.views.contains_key(**v))
            .map(|v| v.as_str())
            .collect();
        let mut what = Vec::new();
        if !missing.is_empty() {
            what.push(format!(
                "{} of {} views missing ({})",
                missing.len(),
                all_views.len(),
                some(&missing.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            ));
        }
        if o.caption.is_none() {
            what.push("no caption embedding".into());
        }
        if !what.is_empty() {
            problems.push(format!("{uid}: {}", what.join(", ")));
        }
    }
    if !problems.is_empty() {
        bail!(
            "{} of the {} {part} objects lack embeddings in `{}` (every object needs the same \
             views and its caption): {}. Look at failed items with `mvc status`, or rerun with \
             --retry-failed once fixed",
            problems.len(),
            objects.len(),
            input.stage,
            some(&problems)
        );
    }
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
    let mut images = Vec::with_capacity(objects.len() * views.len() * dim);
    let mut texts = Vec::with_capacity(objects.len() * dim);
    for o in objects.values() {
        for v in &views {
            images.extend_from_slice(&o.views[&v.id]);
        }
        texts.extend_from_slice(o.caption.as_ref().expect("checked"));
    }
    Ok(Gathered {
        uids: objects.keys().map(|u| u.to_string()).collect(),
        views,
        dim,
        images,
        texts,
    })
}
