//! The selection: which objects a download stage takes, with their captions.

use super::DownloadConfig;
use super::objaverse::{
    Annotation, Manifest, OBJECT_PATHS, SelectedObject, Unavailable, caption, is_uid,
    read_object_paths, read_shard, shard_of, shard_path,
};
use anyhow::{Context, Result};
use rayon::prelude::*;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap, HashSet};

/// A candidate before the filters: its annotation, parsed and raw.
struct Candidate {
    annotation: Annotation,
    raw: Box<RawValue>,
}

/// Reads a metadata shard's file by shard name.
pub type ShardReader<'a> = dyn Fn(&str) -> Result<Vec<u8>> + Sync + 'a;

/// Reads the given shards (in parallel, one shard in memory per thread) and keeps the
/// annotations `keep` accepts.
fn scan_shards(
    shards: &[String],
    read: &ShardReader,
    keep: &(dyn Fn(&str, &Annotation) -> bool + Sync),
) -> Result<Vec<(String, Candidate)>> {
    let per_shard: Vec<Result<Vec<(String, Candidate)>>> = shards
        .par_iter()
        .map(|name| {
            let what = shard_path(name);
            let mut kept = Vec::new();
            for (uid, raw) in read_shard(&read(name)?, &what)? {
                let annotation: Annotation =
                    serde_json::from_str(raw.get()).with_context(|| {
                        format!("{what}: the annotation of `{uid}` is not a Sketchfab record")
                    })?;
                if keep(&uid, &annotation) {
                    kept.push((uid, Candidate { annotation, raw }));
                }
            }
            Ok(kept)
        })
        .collect();
    let mut all = Vec::new();
    for shard in per_shard {
        all.extend(shard?);
    }
    Ok(all)
}

/// Selects objects from `object-paths.json.gz` and the metadata shards `shards` (read
/// through `read`). Returns the manifest and `metadata.json` (uid → the full annotation of
/// each selected object).
pub fn select(
    config: &DownloadConfig,
    object_paths: &[u8],
    shards: &[String],
    read: &ShardReader,
    cap3d: Option<&HashMap<String, String>>,
) -> Result<(Manifest, Vec<u8>)> {
    let mut manifest = Manifest {
        dataset: config.dataset.clone(),
        revision: config.revision.clone(),
        ..Manifest::default()
    };
    let sources = Sources {
        object_paths,
        shards,
        read,
    };
    let (candidates, paths) = match &config.uids {
        Some(uids) => by_uids(config, uids, &sources, &mut manifest)?,
        None => by_categories(config, &sources, &mut manifest)?,
    };
    let kept = filter(config, candidates, &mut manifest);
    let mut metadata = String::from("{");
    for (i, (uid, c)) in kept.iter().enumerate() {
        let (text, source) = caption(uid, &c.annotation, config.caption, cap3d);
        manifest.objects.push(SelectedObject {
            uid: uid.clone(),
            path: paths[uid].clone(),
            caption: text,
            caption_source: source.to_string(),
            name: c.annotation.name.clone(),
            size: c.annotation.glb_size(),
            license: c.annotation.license.clone(),
        });
        if i > 0 {
            metadata.push(',');
        }
        metadata.push_str(&serde_json::to_string(uid)?);
        metadata.push(':');
        metadata.push_str(c.raw.get());
    }
    metadata.push('}');
    manifest.missing.sort_by(|a, b| a.uid.cmp(&b.uid));
    manifest.skipped.sort_by(|a, b| a.uid.cmp(&b.uid));
    Ok((manifest, metadata.into_bytes()))
}

/// Where a selection reads from: the object paths' file and the metadata shards.
struct Sources<'a> {
    object_paths: &'a [u8],
    shards: &'a [String],
    read: &'a ShardReader<'a>,
}

/// Candidates and their GLB paths.
type Found = (BTreeMap<String, Candidate>, BTreeMap<String, String>);

/// The listed uids that have metadata and a path (and are in the categories, when given);
/// each one that is not is in the manifest with its reason.
fn by_uids(
    config: &DownloadConfig,
    uids: &[String],
    sources: &Sources,
    manifest: &mut Manifest,
) -> Result<Found> {
    let wanted: HashSet<&str> = uids.iter().map(String::as_str).collect();
    let paths = read_object_paths(sources.object_paths, OBJECT_PATHS, &|uid| {
        wanted.contains(uid)
    })?;
    let mut candidates: BTreeMap<String, Candidate> =
        scan_shards(sources.shards, sources.read, &|uid, _| wanted.contains(uid))?
            .into_iter()
            .collect();
    let fetched: HashSet<&str> = sources.shards.iter().map(String::as_str).collect();
    for uid in uids {
        if candidates.contains_key(uid) {
            continue;
        }
        let reason = match paths.get(uid).map(|p| (p, shard_of(p))) {
            None => format!(
                "uid `{uid}` is not in {OBJECT_PATHS} of {}@{}; check the uid",
                config.dataset, config.revision
            ),
            Some((p, None)) => format!("its path in {OBJECT_PATHS}, `{p}`, is not under glbs/"),
            Some((_, Some(shard))) if !fetched.contains(shard) => {
                format!("its metadata shard {} was not fetched", shard_path(shard))
            }
            Some((_, Some(shard))) => {
                format!("`{uid}` has no annotation in {}", shard_path(shard))
            }
        };
        manifest.missing.push(Unavailable {
            uid: uid.clone(),
            reason,
        });
    }
    candidates.retain(|uid, _| paths.contains_key(uid));
    if let Some(categories) = &config.categories {
        candidates.retain(|uid, c| {
            let keep = c.annotation.in_any_category(categories);
            if !keep {
                manifest.skipped.push(Unavailable {
                    uid: uid.clone(),
                    reason: format!("not in the categories {}", categories.join(", ")),
                });
            }
            keep
        });
    }
    Ok((candidates, paths))
}

/// Every object of the categories whose uid is an Objaverse uid and that has a path; the
/// others are in the manifest with their reason.
fn by_categories(
    config: &DownloadConfig,
    sources: &Sources,
    manifest: &mut Manifest,
) -> Result<Found> {
    let categories = config
        .categories
        .as_ref()
        .expect("categories default when no uids are given");
    let mut candidates: BTreeMap<String, Candidate> =
        scan_shards(sources.shards, sources.read, &|_, a| {
            a.in_any_category(categories)
        })?
        .into_iter()
        .collect();
    // A uid from the metadata names an item, a file and folders: one that is not a uid (a
    // damaged or hostile mirror) is left out, with the reason, before it names anything.
    candidates.retain(|uid, _| {
        let ok = is_uid(uid);
        if !ok {
            manifest.missing.push(Unavailable {
                uid: uid.clone(),
                reason: format!(
                    "`{}` in the metadata is not an Objaverse uid (32 lower-case hexadecimal \
                     digits): the dataset's metadata is damaged or not Objaverse's; the object \
                     is left out",
                    uid.escape_debug()
                ),
            });
        }
        ok
    });
    let paths = read_object_paths(sources.object_paths, OBJECT_PATHS, &|uid| {
        candidates.contains_key(uid)
    })?;
    candidates.retain(|uid, _| {
        let known = paths.contains_key(uid);
        if !known {
            manifest.missing.push(Unavailable {
                uid: uid.clone(),
                reason: format!("`{uid}` has metadata but no path in {OBJECT_PATHS}"),
            });
        }
        known
    });
    Ok((candidates, paths))
}

/// The candidates the license and size filters keep, in uid order, up to the limit; the
/// others are in the manifest as skipped (or counted over the limit).
fn filter(
    config: &DownloadConfig,
    candidates: BTreeMap<String, Candidate>,
    manifest: &mut Manifest,
) -> Vec<(String, Candidate)> {
    let mut kept = Vec::new();
    for (uid, c) in candidates {
        let a = &c.annotation;
        if let Some(allowed) = &config.licenses {
            let license = a.license.as_deref().unwrap_or("");
            if !allowed.iter().any(|l| l == license) {
                manifest.skipped.push(Unavailable {
                    uid,
                    reason: format!("license `{license}` is not in `licenses`"),
                });
                continue;
            }
        }
        if let (Some(max), Some(size)) = (config.max_bytes, a.glb_size())
            && size > max
        {
            manifest.skipped.push(Unavailable {
                uid,
                reason: format!("its GLB is {size} bytes, more than max_bytes = {max}"),
            });
            continue;
        }
        kept.push((uid, c));
    }
    if let Some(limit) = config.limit
        && kept.len() as u64 > limit
    {
        manifest.over_limit = kept.len() as u64 - limit;
        kept.truncate(limit as usize);
    }
    kept
}
