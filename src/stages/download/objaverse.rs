//! The Objaverse 1.0 dataset's layout and records: file paths, metadata shards, Sketchfab
//! annotations, captions, and the selection manifest the download stage writes.
//! Facts from the `objaverse` package (0.1.7) and the `allenai/objaverse` dataset.

use anyhow::{Context, Result, bail};
use serde::de::{DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Read;

pub const OBJECT_PATHS: &str = "object-paths.json.gz";

/// Number of metadata shards (`metadata/000-000.json.gz` … `metadata/000-159.json.gz`).
pub const SHARDS: usize = 160;

/// The 18 Sketchfab category slugs.
pub const CATEGORIES: &[&str] = &[
    "animals-pets",
    "architecture",
    "art-abstract",
    "cars-vehicles",
    "characters-creatures",
    "cultural-heritage-history",
    "electronics-gadgets",
    "fashion-style",
    "food-drink",
    "furniture-home",
    "music",
    "nature-plants",
    "news-politics",
    "people",
    "places-travel",
    "science-technology",
    "sports-fitness",
    "weapons-military",
];

/// Sketchfab license slugs found in Objaverse 1.0 (all Creative Commons).
pub const LICENSES: &[&str] = &[
    "by", "by-sa", "by-nd", "by-nc", "by-nc-sa", "by-nc-nd", "cc0",
];

/// Shard `i`'s name, as the reference client writes it: `f"{i // 1000:03d}-{i % 1000:03d}"`.
pub fn shard_name(i: usize) -> String {
    format!("{:03}-{:03}", i / 1000, i % 1000)
}

pub fn shard_path(name: &str) -> String {
    format!("metadata/{name}.json.gz")
}

/// A uid is 32 lower-case hexadecimal digits, as Objaverse writes them. Uids name items,
/// files and folders, so one from the outside (a mirror's metadata) is checked before use.
pub fn is_uid(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The shard of an object: the folder of its GLB path (`glbs/000-023/<uid>.glb`).
pub fn shard_of(glb_path: &str) -> Option<&str> {
    let mut parts = glb_path.split('/');
    (parts.next()? == "glbs").then_some(())?;
    parts.next()
}

/// Checks the gzip magic number, saying plainly when the file is not gzip at all (a web
/// page where a mirror should serve the file).
fn check_gzip_magic(bytes: &[u8], what: &str) -> Result<()> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(());
    }
    let start: String = String::from_utf8_lossy(&bytes[..bytes.len().min(40)])
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let looks_html = start.trim_start().starts_with('<');
    bail!(
        "{what} is not gzip-compressed JSON: the server sent {} (starting `{}`); check that \
         HF_ENDPOINT is the hub or a dataset mirror with the same paths",
        if looks_html {
            "an HTML page"
        } else {
            "something else"
        },
        start.trim()
    );
}

/// The most a `.json.gz` file of the dataset may expand to. The real files are far smaller
/// (a metadata shard is a few tens of MB of JSON, `object-paths.json` about a hundred); a
/// file that expands further is not one of them (a gzip bomb from a hostile mirror expands
/// a few MB into many GB), and is refused before it fills memory or disk.
pub const MAX_EXPANDED: u64 = 512 << 20;

/// What `compressed` gives, decompressed, as a stream.
fn decoded<R: Read>(compressed: R) -> impl Read {
    std::io::BufReader::with_capacity(256 * 1024, flate2::read::MultiGzDecoder::new(compressed))
}

/// Fails when `compressed` expands to more than `limit`. Inflating alone is cheap; parsing
/// is not, so a file is measured before it is parsed.
fn check_expanded_size<R: Read>(compressed: R, what: &str, limit: u64) -> Result<()> {
    let expanded = std::io::copy(&mut decoded(compressed).take(limit + 1), &mut std::io::sink())
        .map_err(|e| anyhow::anyhow!("{what} is not valid gzip (truncated or damaged): {e}"))?;
    if expanded > limit {
        return Err(too_large(what, limit));
    }
    Ok(())
}

/// What to say of a file that expanded past [`MAX_EXPANDED`].
fn too_large(what: &str, limit: u64) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} expands to more than {} when decompressed, far more than the dataset's files: \
         the server sent something else (check that HF_ENDPOINT is the hub or a dataset mirror)",
        crate::text::human_bytes(limit)
    )
}

/// Decompresses a `.json.gz` file (at most [`MAX_EXPANDED`] bytes of it).
pub fn gunzip(bytes: &[u8], what: &str) -> Result<Vec<u8>> {
    gunzip_within(bytes, what, MAX_EXPANDED)
}

fn gunzip_within(bytes: &[u8], what: &str, limit: u64) -> Result<Vec<u8>> {
    check_gzip_magic(bytes, what)?;
    let mut out = Vec::with_capacity((bytes.len() * 4).min(limit as usize));
    decoded(bytes)
        .take(limit + 1)
        .read_to_end(&mut out)
        .with_context(|| format!("{what} is not valid gzip (truncated or damaged)"))?;
    if out.len() as u64 > limit {
        return Err(too_large(what, limit));
    }
    Ok(out)
}

/// Checks that `bytes`, a `.json.gz` file, decompress to a JSON object.
pub fn check_json_gz(bytes: &[u8], what: &str) -> Result<()> {
    check_json_gz_from(|| Ok(bytes), what)
}

/// Checks that a `.json.gz` file decompresses to a JSON object, streaming from the file:
/// neither the compressed nor the expanded bytes are held (a check of the 60 MB
/// `object-paths.json` costs no more memory than a small file's).
pub fn check_json_gz_file(path: &std::path::Path, what: &str) -> Result<()> {
    let open = || std::fs::File::open(path);
    check_json_gz_from(open, what).with_context(|| format!("reading {}", path.display()))
}

/// The check of a `.json.gz`, reading it twice from `open` (measured, then parsed).
fn check_json_gz_from<R: Read>(open: impl Fn() -> std::io::Result<R>, what: &str) -> Result<()> {
    struct AnObject;
    impl<'de> serde::Deserialize<'de> for AnObject {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<AnObject, D::Error> {
            d.deserialize_map(AnObject)
        }
    }
    impl<'de> Visitor<'de> for AnObject {
        type Value = AnObject;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnObject, A::Error> {
            while map
                .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                .is_some()
            {}
            Ok(AnObject)
        }
    }
    let mut start = Vec::with_capacity(40);
    open()?.take(40).read_to_end(&mut start)?;
    check_gzip_magic(&start, what)?;
    check_expanded_size(open()?, what, MAX_EXPANDED)?;
    let mut de = serde_json::Deserializer::from_reader(decoded(open()?).take(MAX_EXPANDED));
    AnObject::deserialize(&mut de)
        .and_then(|_| de.end())
        .map_err(|e| match e.classify() {
            serde_json::error::Category::Io => {
                anyhow::anyhow!("{what} is not valid gzip (truncated or damaged): {e}")
            }
            _ => anyhow::anyhow!("{what} does not hold a JSON object: {e}"),
        })
}

/// Reads `object-paths.json.gz`, keeping the entries `keep` accepts (the whole map holds
/// about 800,000 uids; a selection needs a few thousand).
pub fn read_object_paths(
    bytes: &[u8],
    what: &str,
    keep: &dyn Fn(&str) -> bool,
) -> Result<BTreeMap<String, String>> {
    struct Filter<'a>(&'a dyn Fn(&str) -> bool);
    impl<'de> DeserializeSeed<'de> for Filter<'_> {
        type Value = BTreeMap<String, String>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for Filter<'_> {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object of uid → GLB path")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(uid) = map.next_key::<std::borrow::Cow<str>>()? {
                if (self.0)(&uid) {
                    out.insert(uid.into_owned(), map.next_value::<String>()?);
                } else {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok(out)
        }
    }
    // Streamed: the 60 MB of JSON is never held whole.
    check_gzip_magic(bytes, what)?;
    // The file was measured when it was fetched (`check_json_gz`); the bound here only
    // keeps a file that never was from running on.
    let mut de = serde_json::Deserializer::from_reader(decoded(bytes).take(MAX_EXPANDED));
    Filter(keep)
        .deserialize(&mut de)
        .with_context(|| format!("{what} is not a JSON object of uid → GLB path"))
}

/// A metadata shard: uid → annotation, each kept as its raw JSON text.
pub fn read_shard(bytes: &[u8], what: &str) -> Result<Vec<(String, Box<RawValue>)>> {
    let json = gunzip(bytes, what)?;
    let map: BTreeMap<String, Box<RawValue>> = serde_json::from_slice(&json)
        .with_context(|| format!("{what} is not a JSON object of uid → annotation"))?;
    Ok(map.into_iter().collect())
}

#[derive(Debug, Default, Deserialize)]
pub struct Named {
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct GlbArchive {
    pub size: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Archives {
    pub glb: Option<GlbArchive>,
}

/// The fields of a Sketchfab annotation that selection and captions read.
#[derive(Debug, Default, Deserialize)]
pub struct Annotation {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tags: Vec<Named>,
    #[serde(default)]
    pub categories: Vec<Named>,
    #[serde(default)]
    pub license: Option<String>,
    #[serde(default)]
    pub archives: Option<Archives>,
}

impl Annotation {
    pub fn glb_size(&self) -> Option<u64> {
        self.archives.as_ref()?.glb.as_ref()?.size
    }

    pub fn in_any_category(&self, slugs: &[String]) -> bool {
        self.categories.iter().any(|c| slugs.contains(&c.name))
    }
}

/// Where an object's caption comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptionSource {
    /// The Sketchfab `name` (what the study used).
    Name,
    /// The name, then the description without its HTML.
    NameDescription,
    /// The tag names, comma-separated.
    Tags,
    /// Cap3D's automated captions (a CSV of uid, caption); objects it lacks get their name.
    Cap3d,
}

impl CaptionSource {
    pub const NAMES: &[&str] = &["name", "name+description", "tags", "cap3d"];

    pub fn parse(s: &str) -> Option<CaptionSource> {
        Some(match s {
            "name" => CaptionSource::Name,
            "name+description" => CaptionSource::NameDescription,
            "tags" => CaptionSource::Tags,
            "cap3d" => CaptionSource::Cap3d,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// An object's caption, and which source gave it.
pub fn caption(
    uid: &str,
    a: &Annotation,
    source: CaptionSource,
    cap3d: Option<&HashMap<String, String>>,
) -> (String, &'static str) {
    let name = a.name.trim().to_string();
    match source {
        CaptionSource::Name => (name, "name"),
        CaptionSource::NameDescription => {
            let description = clean_description(a.description.as_deref().unwrap_or(""));
            if description.is_empty() {
                (name, "name")
            } else if name.is_empty() {
                (description, "name+description")
            } else {
                (format!("{name}. {description}"), "name+description")
            }
        }
        CaptionSource::Tags => {
            let tags: Vec<&str> = a
                .tags
                .iter()
                .map(|t| t.name.trim())
                .filter(|t| !t.is_empty())
                .collect();
            if tags.is_empty() {
                (name, "name")
            } else {
                (tags.join(", "), "tags")
            }
        }
        CaptionSource::Cap3d => match cap3d.and_then(|m| m.get(uid)) {
            Some(c) => (c.clone(), "cap3d"),
            None => (name, "name"),
        },
    }
}

/// A Sketchfab description as plain text: tags dropped, common entities decoded,
/// whitespace collapsed.
pub fn clean_description(html: &str) -> String {
    let mut text = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                text.push(' ');
            }
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    let text = text
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Reads a Cap3D caption file: no header, two columns (uid, caption).
pub fn read_cap3d(bytes: &[u8], what: &str) -> Result<HashMap<String, String>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut captions = HashMap::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            anyhow::anyhow!("{what}:{line}: not valid CSV: {e}")
        })?;
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        if record.len() != 2 {
            bail!(
                "{what}:{line}: expected 2 columns (uid, caption), found {}; a Cap3D file has \
                 no header and one object a line",
                record.len()
            );
        }
        let uid = record[0].trim();
        if !is_uid(uid) {
            bail!("{what}:{line}: `{uid}` is not an Objaverse uid (32 hexadecimal digits)");
        }
        captions.insert(uid.to_string(), record[1].trim().to_string());
    }
    if captions.is_empty() {
        bail!("{what} holds no captions");
    }
    Ok(captions)
}

/// One selected object.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SelectedObject {
    pub uid: String,
    /// Path of its GLB in the dataset.
    pub path: String,
    pub caption: String,
    /// Where the caption came from (`name`, `name+description`, `tags`, `cap3d`).
    pub caption_source: String,
    /// The Sketchfab name, for reports.
    pub name: String,
    /// `archives.glb.size`.
    pub size: Option<u64>,
    pub license: Option<String>,
}

/// An object asked for that cannot be downloaded, and why.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Unavailable {
    pub uid: String,
    pub reason: String,
}

/// What the selection task writes as `manifest.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub dataset: String,
    pub revision: String,
    /// Sorted by uid.
    pub objects: Vec<SelectedObject>,
    /// Explicitly listed uids that the dataset lacks: each becomes a failed item.
    pub missing: Vec<Unavailable>,
    /// Objects left out by the license or size filters.
    pub skipped: Vec<Unavailable>,
    /// Objects left out by `limit`.
    pub over_limit: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a `.json.gz` may expand to is bounded: past the limit it is refused by name, up
    /// to it the bytes come whole.
    #[test]
    fn expansion_is_bounded() {
        let json = format!("{{\"a\":\"{}\"}}", "0".repeat(4096));
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, json.as_bytes()).unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(gunzip_within(&gz, "x.json.gz", 5000).unwrap(), json.as_bytes());
        let e = gunzip_within(&gz, "x.json.gz", 1024).unwrap_err().to_string();
        assert!(e.starts_with("x.json.gz expands to more than 1.0 KiB"), "{e}");
    }

    #[test]
    fn shard_names_match_the_reference_client() {
        assert_eq!(shard_name(0), "000-000");
        assert_eq!(shard_name(159), "000-159");
        assert_eq!(shard_of("glbs/000-023/abc.glb"), Some("000-023"));
        assert_eq!(shard_of("meshes/x.glb"), None);
    }

    #[test]
    fn descriptions_lose_their_html() {
        assert_eq!(
            clean_description("<p>A <b>ripe</b>&nbsp;banana &amp; a pear.</p>\n<br>"),
            "A ripe banana & a pear."
        );
    }

    #[test]
    fn html_is_not_taken_for_gzip() {
        let e = gunzip(b"<!DOCTYPE html><html>", "object-paths.json.gz").unwrap_err();
        let text = format!("{e:#}");
        assert!(
            text.contains("object-paths.json.gz is not gzip-compressed JSON"),
            "{text}"
        );
        assert!(text.contains("an HTML page"), "{text}");
    }

    #[test]
    fn cap3d_errors_name_the_line() {
        let ok = read_cap3d(
            b"0123456789abcdef0123456789abcdef,\"a red, round apple\"\n",
            "c.csv",
        )
        .unwrap();
        assert_eq!(ok["0123456789abcdef0123456789abcdef"], "a red, round apple");
        let e = read_cap3d(
            b"0123456789abcdef0123456789abcdef,x\nnot-a-uid,y\n",
            "c.csv",
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").starts_with("c.csv:2: `not-a-uid`"),
            "{e:#}"
        );
        let e = read_cap3d(b"0123456789abcdef0123456789abcdef\n", "c.csv").unwrap_err();
        assert!(
            format!("{e:#}").contains("c.csv:1: expected 2 columns"),
            "{e:#}"
        );
    }
}
