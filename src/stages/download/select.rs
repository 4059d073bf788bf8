//! The selection: which objects a download stage takes, with their captions.

use super::DownloadConfig;
use super::objaverse::{
    Annotation, Manifest, OBJECT_PATHS, SelectedObject, Unavailable, caption, read_object_paths,
    read_shard, shard_of, shard_path,
};
use anyhow::{Context, Result};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap, HashSet};

/// A candidate before the filters: its annotation, parsed and raw.
struct Candidate {
    annotation: Annotation,
    raw: Box<RawValue>,
}

/// Selects objects from `object-paths.json.gz` and the metadata shards (name → bytes).
/// Returns the manifest and `metadata.json` (uid → the full annotation of each selected
/// object).
pub fn select(
    config: &DownloadConfig,
    object_paths: &[u8],
    shards: &[(String, Vec<u8>)],
    cap3d: Option<&HashMap<String, String>>,
) -> Result<(Manifest, Vec<u8>)> {
    let mut manifest = Manifest {
        dataset: config.dataset.clone(),
        revision: config.revision.clone(),
        ..Manifest::default()
    };
    let mut candidates: BTreeMap<String, Candidate> = BTreeMap::new();
    let paths: BTreeMap<String, String>;
    let parse = |uid: &str, raw: Box<RawValue>, shard: &str| -> Result<Candidate> {
        let annotation: Annotation = serde_json::from_str(raw.get()).with_context(|| {
            format!(
                "{}: the annotation of `{uid}` is not a Sketchfab record",
                shard_path(shard)
            )
        })?;
        Ok(Candidate { annotation, raw })
    };

    match &config.uids {
        Some(uids) => {
            let wanted: HashSet<&str> = uids.iter().map(String::as_str).collect();
            paths = read_object_paths(object_paths, OBJECT_PATHS, &|uid| wanted.contains(uid))?;
            let mut by_shard: HashMap<&str, Vec<&str>> = HashMap::new();
            for uid in uids {
                match paths.get(uid).map(|p| (p, shard_of(p))) {
                    Some((_, Some(shard))) => by_shard.entry(shard).or_default().push(uid),
                    Some((p, None)) => manifest.missing.push(Unavailable {
                        uid: uid.clone(),
                        reason: format!("its path in {OBJECT_PATHS}, `{p}`, is not under glbs/"),
                    }),
                    None => manifest.missing.push(Unavailable {
                        uid: uid.clone(),
                        reason: format!(
                            "uid `{uid}` is not in {OBJECT_PATHS} of {}@{}; check the uid",
                            config.dataset, config.revision
                        ),
                    }),
                }
            }
            for (name, bytes) in shards {
                let Some(want) = by_shard.remove(name.as_str()) else {
                    continue;
                };
                let mut entries: HashMap<String, Box<RawValue>> =
                    read_shard(bytes, &shard_path(name))?.into_iter().collect();
                for uid in want {
                    match entries.remove(uid) {
                        Some(raw) => {
                            candidates.insert(uid.to_string(), parse(uid, raw, name)?);
                        }
                        None => manifest.missing.push(Unavailable {
                            uid: uid.to_string(),
                            reason: format!("`{uid}` has no annotation in {}", shard_path(name)),
                        }),
                    }
                }
            }
            for (shard, uids) in by_shard {
                for uid in uids {
                    manifest.missing.push(Unavailable {
                        uid: uid.to_string(),
                        reason: format!("its metadata shard {} was not fetched", shard_path(shard)),
                    });
                }
            }
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
        }
        None => {
            let categories = config
                .categories
                .as_ref()
                .expect("categories default when no uids are given");
            for (name, bytes) in shards {
                for (uid, raw) in read_shard(bytes, &shard_path(name))? {
                    let candidate = parse(&uid, raw, name)?;
                    if candidate.annotation.in_any_category(categories) {
                        candidates.insert(uid, candidate);
                    }
                }
            }
            paths = read_object_paths(object_paths, OBJECT_PATHS, &|uid| {
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
        }
    }

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
