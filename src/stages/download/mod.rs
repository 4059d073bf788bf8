//! Stage kind `download`: Objaverse 1.0 objects by Sketchfab category (or by uid), their
//! captions and metadata, and their GLB files, from the Hugging Face hub or a mirror.
//!
//! A `download` stage named `objects` becomes four graph stages, so that each piece is
//! cached on its own and a change reruns only what it touches:
//! - `objects.paths`: `object-paths.json.gz` (uid → GLB path);
//! - `objects.metadata`: one task per metadata shard it needs (all 160 to select by
//!   category, only the shards of the listed uids otherwise);
//! - `objects.select`: the selection and captions → `manifest.json` and `metadata.json`;
//! - `objects`: one task per object, keyed by dataset, revision and GLB path only, so a
//!   new caption rule downloads nothing again.
//!
//! Each later stage is expanded once the one before it has run (its items come from it).

mod fetch;
mod kinds;
pub use kinds::read_selection;
pub mod objaverse;
mod select;

use crate::diag::at;
use crate::diag::closest;
use crate::stages::StageKind;
use anyhow::{Result, bail};
use crate::hf::{HubClient, RetryPolicy};
use objaverse::{CATEGORIES, CaptionSource, LICENSES, is_uid};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use toml::Spanned;

/// The graph stages a download stage adds before itself (`NAME.paths`, …).
/// The `kind` of its tables in pipeline files (and of its objects' key records).
pub const KIND: &str = "download";

pub const SUB_STAGES: &[&str] = &["paths", "metadata", SELECT];

/// The sub-stage holding the selection manifest (what an embed stage reads captions from).
pub const SELECT: &str = "select";

/// The `[stage.NAME]` table of a `download` stage, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadParams {
    pub kind: String,
    /// Hugging Face dataset repository (default `allenai/objaverse`).
    pub dataset: Option<String>,
    /// Branch, tag or commit (default `main`).
    pub revision: Option<String>,
    /// Sketchfab category slugs (default `["food-drink"]`).
    pub categories: Option<Spanned<Vec<Spanned<String>>>>,
    /// Explicit uids: a list, or a file with one uid a line.
    pub uids: Option<Spanned<UidList>>,
    /// Take the first N selected objects (in uid order).
    pub limit: Option<Spanned<i64>>,
    /// Keep only objects under these Sketchfab license slugs.
    pub licenses: Option<Vec<Spanned<String>>>,
    /// Skip objects whose GLB (`archives.glb.size`) is larger.
    pub max_bytes: Option<Spanned<i64>>,
    /// `name` (default), `name+description`, `tags` or `cap3d`.
    pub caption: Option<Spanned<String>>,
    /// Cap3D captions: a local CSV file or an http(s) URL.
    pub cap3d_csv: Option<Spanned<String>>,
    /// Retries after a transient failure (default 5).
    pub retries: Option<u32>,
    /// First backoff in seconds (default 0.5; doubles each retry).
    pub backoff: Option<f64>,
    /// Seconds to wait for a connection (default 10).
    pub connect_timeout: Option<f64>,
    /// Longest silence in seconds while reading a response (default 60).
    pub read_timeout: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a list of uids, or the path of a file with one uid a line"
)]
pub enum UidList {
    List(Vec<String>),
    File(String),
}

/// A download stage's settings, shared by its graph stages.
#[derive(Debug)]
pub struct DownloadConfig {
    pub stage: String,
    pub dataset: String,
    pub revision: String,
    /// `None` when selecting by uid without a category filter.
    pub categories: Option<Vec<String>>,
    /// Sorted, without duplicates.
    pub uids: Option<Vec<String>>,
    pub limit: Option<u64>,
    pub licenses: Option<Vec<String>>,
    pub max_bytes: Option<u64>,
    pub caption: CaptionSource,
    pub cap3d: Option<Cap3dSource>,
    pub policy: RetryPolicy,
    /// Made on first use, at run time (it reads `HF_ENDPOINT` and `HF_TOKEN`).
    client: OnceLock<Result<Arc<HubClient>, String>>,
}

#[derive(Debug, Clone)]
pub enum Cap3dSource {
    File(PathBuf),
    Url(String),
}

impl DownloadConfig {
    pub fn client(&self) -> Result<Arc<HubClient>, String> {
        self.client
            .get_or_init(|| {
                HubClient::from_env(
                    &format!("datasets/{}", self.dataset),
                    &self.revision,
                    self.policy.clone(),
                )
                .map(Arc::new)
                .map_err(|e| format!("{e:#}"))
            })
            .clone()
    }
}


fn seconds(stage: &str, field: &str, value: Option<f64>, default: Duration) -> Result<Duration> {
    match value {
        None => Ok(default),
        Some(s) if s >= 0.0 && s.is_finite() => Ok(Duration::from_secs_f64(s)),
        Some(_) => bail!("stage `{stage}`: `{field}` must be a number of seconds, 0 or more"),
    }
}

impl DownloadConfig {
    /// Checks a download stage's table; errors point at the value and say what to write.
    pub fn new(stage: &str, p: DownloadParams) -> Result<DownloadConfig> {
        let categories = categories(stage, p.categories, p.uids.is_some())?;
        let uids = p.uids.map(|list| uids(stage, list)).transpose()?;
        let limit = match p.limit {
            None => None,
            Some(l) if *l.get_ref() >= 1 => Some(*l.get_ref() as u64),
            Some(l) => {
                return at(
                    l.span(),
                    format!(
                        "stage `{stage}`: `limit` must be at least 1 (leave it out to take \
                         every selected object)"
                    ),
                );
            }
        };
        let max_bytes = match p.max_bytes {
            None => None,
            Some(m) if *m.get_ref() >= 1 => Some(*m.get_ref() as u64),
            Some(m) => {
                return at(
                    m.span(),
                    format!("stage `{stage}`: `max_bytes` must be a positive number of bytes"),
                );
            }
        };
        let licenses = p.licenses.map(|list| licenses(stage, list)).transpose()?;
        let (caption, cap3d) = captions(stage, p.caption, p.cap3d_csv)?;
        let defaults = RetryPolicy::default();
        let policy = RetryPolicy {
            retries: p.retries.unwrap_or(defaults.retries),
            backoff: seconds(stage, "backoff", p.backoff, defaults.backoff)?,
            max_backoff: defaults.max_backoff,
            connect_timeout: seconds(
                stage,
                "connect_timeout",
                p.connect_timeout,
                defaults.connect_timeout,
            )?,
            read_timeout: seconds(stage, "read_timeout", p.read_timeout, defaults.read_timeout)?,
            remember_unreachable: defaults.remember_unreachable,
        };
        let dataset = p.dataset.unwrap_or_else(|| "allenai/objaverse".into());
        if dataset.split('/').count() != 2 || dataset.split('/').any(str::is_empty) {
            bail!("stage `{stage}`: `dataset` must be a repository id such as `allenai/objaverse`");
        }
        let revision = p.revision.unwrap_or_else(|| "main".into());
        if revision.is_empty() {
            bail!("stage `{stage}`: `revision` is empty; use a branch, tag or commit (`main`)");
        }
        Ok(DownloadConfig {
            stage: stage.to_string(),
            dataset,
            revision,
            categories,
            uids,
            limit,
            licenses,
            max_bytes,
            caption,
            cap3d,
            policy,
            client: OnceLock::new(),
        })
    }
}

/// The Sketchfab categories to select from: checked, sorted, without duplicates; by default
/// `food-drink`, or none when selecting by uid.
fn categories(
    stage: &str,
    categories: Option<Spanned<Vec<Spanned<String>>>>,
    by_uid: bool,
) -> Result<Option<Vec<String>>> {
    let Some(list) = categories else {
        // Selecting by uid takes the uids as they are unless categories are also given.
        return Ok((!by_uid).then(|| vec!["food-drink".to_string()]));
    };
    if list.get_ref().is_empty() {
        return at(
            list.span(),
            format!(
                "stage `{stage}`: `categories` is empty; name at least one Sketchfab category \
                 (e.g. [\"food-drink\"]) or leave it out"
            ),
        );
    }
    let mut slugs = Vec::new();
    for slug in list.into_inner() {
        if !CATEGORIES.contains(&slug.get_ref().as_str()) {
            let mut message = format!(
                "stage `{stage}`: unknown category `{}`; the Sketchfab categories are: {}",
                slug.get_ref(),
                CATEGORIES.join(", ")
            );
            if let Some(close) = closest(slug.get_ref(), CATEGORIES) {
                message.push_str(&format!(" (did you mean `{close}`?)"));
            }
            return at(slug.span(), message);
        }
        slugs.push(slug.into_inner());
    }
    slugs.sort();
    slugs.dedup();
    Ok(Some(slugs))
}

/// The uids a stage lists (in its table or in a file), checked, lower-cased and sorted.
fn uids(stage: &str, list: Spanned<UidList>) -> Result<Vec<String>> {
    let span = list.span();
    let (uids, origin) = match list.into_inner() {
        UidList::List(uids) => (
            uids.into_iter().map(|u| (u, None)).collect::<Vec<_>>(),
            "`uids`".to_string(),
        ),
        UidList::File(path) => {
            let text = std::fs::read_to_string(&path).or_else(|e| {
                at(
                    span.clone(),
                    format!(
                        "stage `{stage}`: cannot read the uids file `{path}`: {e} (relative \
                         paths are from the directory mvc runs in)"
                    ),
                )
            })?;
            let uids = text
                .lines()
                .enumerate()
                .map(|(i, l)| (l.trim().to_string(), Some(i + 1)))
                .filter(|(l, _)| !l.is_empty() && !l.starts_with('#'))
                .collect();
            (uids, format!("uids file `{path}`"))
        }
    };
    let mut checked = Vec::with_capacity(uids.len());
    for (uid, line) in uids {
        if !is_uid(&uid.to_ascii_lowercase()) {
            let place = line.map(|l| format!(" line {l}")).unwrap_or_default();
            return at(
                span,
                format!(
                    "stage `{stage}`: {origin}{place}: `{uid}` is not an Objaverse uid (32 \
                     hexadecimal digits)"
                ),
            );
        }
        checked.push(uid.to_ascii_lowercase());
    }
    if checked.is_empty() {
        return at(span, format!("stage `{stage}`: {origin} lists no uids"));
    }
    checked.sort();
    checked.dedup();
    Ok(checked)
}

/// The license slugs to keep: checked, sorted, without duplicates.
fn licenses(stage: &str, list: Vec<Spanned<String>>) -> Result<Vec<String>> {
    let mut slugs = Vec::new();
    for slug in list {
        if !LICENSES.contains(&slug.get_ref().as_str()) {
            return at(
                slug.span(),
                format!(
                    "stage `{stage}`: unknown license `{}`; Objaverse's licenses are: {}",
                    slug.get_ref(),
                    LICENSES.join(", ")
                ),
            );
        }
        slugs.push(slug.into_inner());
    }
    slugs.sort();
    slugs.dedup();
    Ok(slugs)
}

/// Where captions come from, and Cap3D's CSV when they come from Cap3D (it is required then,
/// and refused otherwise).
fn captions(
    stage: &str,
    caption: Option<Spanned<String>>,
    cap3d_csv: Option<Spanned<String>>,
) -> Result<(CaptionSource, Option<Cap3dSource>)> {
    let source = match &caption {
        None => CaptionSource::Name,
        Some(c) => match CaptionSource::parse(c.get_ref()) {
            Some(source) => source,
            None => {
                return at(
                    c.span(),
                    format!(
                        "stage `{stage}`: unknown caption source `{}`; use one of: {}",
                        c.get_ref(),
                        CaptionSource::NAMES.join(", ")
                    ),
                );
            }
        },
    };
    let cap3d = match (cap3d_csv, source) {
        (Some(csv), CaptionSource::Cap3d) => {
            let v = csv.get_ref().trim();
            Some(if v.starts_with("http://") || v.starts_with("https://") {
                Cap3dSource::Url(v.to_string())
            } else {
                Cap3dSource::File(PathBuf::from(v))
            })
        }
        (None, CaptionSource::Cap3d) => {
            let span = caption.as_ref().expect("caption was given").span();
            return at(
                span,
                format!(
                    "stage `{stage}`: `caption = \"cap3d\"` needs `cap3d_csv`, a path or URL of \
                     Cap3D's caption CSV (Cap3D_automated_Objaverse_full.csv)"
                ),
            );
        }
        (Some(csv), _) => {
            return at(
                csv.span(),
                format!("stage `{stage}`: `cap3d_csv` is read only with `caption = \"cap3d\"`"),
            );
        }
        (None, _) => None,
    };
    Ok((source, cap3d))
}

/// A graph stage: its name, its inputs, its kind.
pub type GraphStage = (String, Vec<String>, Arc<dyn StageKind>);

/// A download stage's graph stages, upstream first.
pub fn graph_stages(stage: &str, params: DownloadParams) -> Result<Vec<GraphStage>> {
    let config = Arc::new(DownloadConfig::new(stage, params)?);
    let paths = format!("{stage}.paths");
    let metadata = format!("{stage}.metadata");
    let select = format!("{stage}.select");
    Ok(vec![
        (
            paths.clone(),
            vec![],
            Arc::new(kinds::PathsKind(config.clone())),
        ),
        (
            metadata.clone(),
            vec![paths.clone()],
            Arc::new(kinds::MetadataKind(config.clone())),
        ),
        (
            select.clone(),
            vec![paths, metadata],
            Arc::new(kinds::SelectKind(config.clone())),
        ),
        (
            stage.to_string(),
            vec![select],
            Arc::new(kinds::ObjectsKind(config)),
        ),
    ])
}

impl crate::stages::table::StageTable for DownloadParams {
    fn inputs(&self) -> &[toml::Spanned<String>] {
        &[]
    }
    fn sub_stages(&self) -> &'static [&'static str] {
        SUB_STAGES
    }
    fn read_as(&self, name: &str) -> String {
        // Other stages read a download's objects and captions from its selection.
        format!("{name}.{SELECT}")
    }
    fn captions_from(&self, name: &str) -> Option<String> {
        Some(self.read_as(name))
    }
    fn build(
        self: Box<Self>,
        name: &str,
        _inputs: Vec<String>,
        _around: &crate::stages::table::Around,
    ) -> Result<Vec<crate::stages::table::Built>> {
        let stages = graph_stages(name, *self)?;
        Ok(stages
            .into_iter()
            .map(|(name, inputs, kind)| crate::stages::table::Built { name, inputs, kind })
            .collect())
    }
}
