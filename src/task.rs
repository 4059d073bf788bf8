//! The content-addressing rules: digests, key records and task keys.
//!
//! A task's key is the blake3 hash of its *key record*: a canonical description of everything
//! that determines its output (ARCHITECTURE.md, "The core model"). The record is stored next to the result so that
//! `mvc why` and `mvc plan` can say which field changed.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Version of the key-record layout. Bumping it makes every key new (old results stay in the
/// cache untouched and `mvc gc` reclaims them), so an upgrade never reads a record it
/// misunderstands.
pub const KEY_SCHEMA: u32 = 1;

/// A blake3 digest: of a blob, of an output manifest, of a key record.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    pub fn from_hasher(hasher: &blake3::Hasher) -> Digest {
        Digest(*hasher.finalize().as_bytes())
    }

    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// The first 12 hex digits: enough to tell keys apart in human output.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

impl FromStr for Digest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        blake3::Hash::from_hex(s)
            .map(|h| Digest(*h.as_bytes()))
            .map_err(|_| format!("`{s}` is not a 64-digit hex blake3 digest"))
    }
}

// Hex in JSON (readable), raw bytes in postcard (compact).
impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            Ok(Digest(<[u8; 32]>::deserialize(d)?))
        }
    }
}

/// A task key: blake3 of the canonical encoding of its [`KeyRecord`].
pub type TaskKey = Digest;

/// A flattened slice of parameters: dotted field path → canonical JSON text of the value.
/// Sorted, so its encoding is canonical.
pub type ParamSlice = BTreeMap<String, String>;

/// Everything that determines a task's output.
///
/// Parameters shared by all tasks of a stage are stored once (in the index's `params` tree,
/// under `shared`) rather than in every record: a stage of a million tasks with a long command
/// line would otherwise store that command a million times.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub schema: u32,
    pub kind: String,
    pub kind_version: u32,
    pub item: String,
    /// Digest of the canonical encoding of the stage-wide parameter slice.
    pub shared: Digest,
    /// Parameters that belong to this item alone (an item's own `params`, a render view).
    pub item_params: ParamSlice,
    /// Input name (upstream stage) → digest of what this task reads from it.
    pub inputs: BTreeMap<String, Digest>,
}

impl KeyRecord {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("key records always encode")
    }

    pub fn decode(bytes: &[u8]) -> Result<KeyRecord, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    pub fn key(&self) -> TaskKey {
        Digest::of(&self.encode())
    }

    /// The record as `field → value` lines, with the shared parameters expanded, for display
    /// and for diffs. `shared` is the slice stored under `self.shared` when it is known.
    pub fn fields(&self, shared: Option<&ParamSlice>) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        out.insert("schema".to_string(), self.schema.to_string());
        out.insert(
            "kind".to_string(),
            format!("{} v{}", self.kind, self.kind_version),
        );
        out.insert("item".to_string(), self.item.clone());
        match shared {
            Some(slice) => {
                for (k, v) in slice {
                    out.insert(k.clone(), v.clone());
                }
            }
            None => {
                out.insert("(shared parameters)".to_string(), self.shared.to_hex());
            }
        }
        // An item's own parameters override the stage's (that is what the task sees).
        for (k, v) in &self.item_params {
            out.insert(k.clone(), v.clone());
        }
        for (k, v) in &self.inputs {
            out.insert(format!("inputs.{k}"), v.to_hex());
        }
        out
    }
}

/// A key record by reference: encodes to exactly the bytes of the [`KeyRecord`] it mirrors,
/// without building one. Planning a million tasks keys each of them; building and encoding
/// an owned record cost five allocations a task.
#[derive(Serialize)]
pub struct KeyRecordRef<'a> {
    pub schema: u32,
    pub kind: &'a str,
    pub kind_version: u32,
    pub item: &'a str,
    pub shared: &'a Digest,
    pub item_params: &'a ParamSlice,
    /// Sorted by name (a `BTreeMap` encodes as its sorted pairs).
    #[serde(serialize_with = "pairs_as_map")]
    pub inputs: &'a [(&'a str, Digest)],
}

fn pairs_as_map<S: Serializer>(pairs: &&[(&str, Digest)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}

impl KeyRecordRef<'_> {
    pub fn key(&self) -> TaskKey {
        // Encoded into a reused buffer and hashed in one call: fed field by field, blake3's
        // incremental updates cost more than the encoding.
        thread_local! {
            static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUFFER.with_borrow_mut(|buf| {
            buf.clear();
            let bytes =
                postcard::to_extend(self, std::mem::take(buf)).expect("encoding cannot fail");
            let key = Digest::of(&bytes);
            *buf = bytes;
            key
        })
    }
}

/// Digest of a shared parameter slice, as stored in [`KeyRecord::shared`].
pub fn slice_digest(slice: &ParamSlice) -> Digest {
    Digest::of(&postcard::to_stdvec(slice).expect("parameter slices always encode"))
}

/// One changed field between two records.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FieldChange {
    pub field: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// Field-by-field differences between two flattened records.
pub fn diff_fields(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Vec<FieldChange> {
    let mut changes = Vec::new();
    for (field, old_value) in old {
        match new.get(field) {
            Some(new_value) if new_value == old_value => {}
            other => changes.push(FieldChange {
                field: field.clone(),
                old: Some(old_value.clone()),
                new: other.cloned(),
            }),
        }
    }
    for (field, new_value) in new {
        if !old.contains_key(field) {
            changes.push(FieldChange {
                field: field.clone(),
                old: None,
                new: Some(new_value.clone()),
            });
        }
    }
    changes.sort_by(|a, b| a.field.cmp(&b.field));
    changes
}

/// The grouped cause of a set of changes, as `mvc plan` reports it: "kind version changed",
/// "parameter changed: params.scale", "input changed: gen", "input file changed: data".
/// `set_by`: the parameters an overlay or override set, as `(key, origin)`: a changed one is
/// named with its origin ("parameter changed: steps (--set)").
pub fn cause_of(changes: &[FieldChange], set_by: &[(String, String)]) -> String {
    let mut kind = false;
    let mut schema = false;
    let mut params = Vec::new();
    let mut files = Vec::new();
    let mut inputs = Vec::new();
    for change in changes {
        let f = change.field.as_str();
        if f == "schema" {
            schema = true;
        } else if f == "kind" {
            kind = true;
        } else if let Some(input) = f.strip_prefix("inputs.") {
            inputs.push(input.to_string());
        } else if let Some(file) = f.strip_prefix("files.") {
            files.push(file.to_string());
        } else if f != "item" {
            let origin = set_by.iter().rev().find(|(key, _)| {
                f == key
                    || f.strip_prefix(key.as_str())
                        .is_some_and(|r| r.starts_with('.'))
            });
            match origin {
                Some((_, origin)) => params.push(format!("{f} ({origin})")),
                None => params.push(f.to_string()),
            }
        }
    }
    let mut causes = Vec::new();
    if schema {
        causes.push("key schema changed".to_string());
    }
    if kind {
        causes.push("kind version changed".to_string());
    }
    if !params.is_empty() {
        causes.push(format!("parameter changed: {}", params.join(", ")));
    }
    if !files.is_empty() {
        causes.push(format!("input file changed: {}", files.join(", ")));
    }
    if !inputs.is_empty() {
        causes.push(format!("input changed: {}", inputs.join(", ")));
    }
    if causes.is_empty() {
        // Same fields, different key: only possible if the encoding itself changed.
        causes.push("key encoding changed".to_string());
    }
    causes.join("; ")
}

/// Canonical JSON text of a TOML value: tables with sorted keys, no whitespace.
pub fn canonical_json(value: &toml::Value) -> String {
    serde_json::to_string(&toml_to_json(value)).expect("JSON values always serialise")
}

pub fn toml_to_json(value: &toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(J::Number)
            // NaN and infinities have no JSON form; keep them distinguishable as text.
            .unwrap_or_else(|| J::String(f.to_string())),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.iter().map(toml_to_json).collect()),
        // Inserted in sorted order, so the text is sorted whether serde_json's map keeps
        // insertion order (its `preserve_order` feature) or sorts.
        toml::Value::Table(t) => {
            let sorted: BTreeMap<&String, &toml::Value> = t.iter().collect();
            J::Object(
                sorted
                    .into_iter()
                    .map(|(k, v)| (k.clone(), toml_to_json(v)))
                    .collect(),
            )
        }
    }
}

/// Flattens a TOML table into a parameter slice under `prefix` ("params.scale").
/// Nested tables become dotted paths so that a diff names the innermost changed field.
pub fn flatten_into(slice: &mut ParamSlice, prefix: &str, value: &toml::Value) {
    match value {
        toml::Value::Table(t) if !t.is_empty() => {
            for (k, v) in t {
                flatten_into(slice, &format!("{prefix}.{k}"), v);
            }
        }
        other => {
            slice.insert(prefix.to_string(), canonical_json(other));
        }
    }
}

/// Item ids name directories (exports, task inputs) and go into keys: they must be plain.
/// Every id is checked, wherever it came from (a pipeline file, a dataset's metadata).
pub fn validate_item_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("an item id is empty".into());
    }
    if id.len() > 200 {
        // The first 40 characters, not bytes: a byte slice could cut a character in two.
        let start: String = id.chars().take(40).collect();
        return Err(format!(
            "item id `{}…` is longer than 200 bytes",
            start.escape_debug()
        ));
    }
    if id == "." || id == ".." || id.starts_with('.') {
        return Err(format!(
            "item id `{}` starts with `.`; ids name directories",
            id.escape_debug()
        ));
    }
    // Every task's id is checked when it is resolved (a million in a large plan): plain
    // printable ASCII, the usual case, is decided on the bytes, with a fold rather than an
    // early exit so that it vectorises (about 6x faster than decoding characters).
    let plain = id.bytes().fold(true, |plain, b| {
        plain & (0x20..0x7f).contains(&b) & (b != b'/') & (b != b'\\')
    });
    if plain {
        return Ok(());
    }
    if let Some(c) = id
        .chars()
        .find(|c| *c == '/' || *c == '\\' || c.is_control())
    {
        return Err(format!(
            "item id `{}` contains {:?}; ids name directories, so `/`, `\\` and control \
             characters are not allowed",
            id.escape_debug(),
            c
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(item: &str, x: &str) -> KeyRecord {
        KeyRecord {
            schema: KEY_SCHEMA,
            kind: "command".into(),
            kind_version: 1,
            item: item.into(),
            shared: Digest::of(b"shared"),
            item_params: [("params.x".to_string(), x.to_string())].into(),
            inputs: [("gen".to_string(), Digest::of(b"in"))].into(),
        }
    }

    #[test]
    fn keys_depend_on_every_field_and_nothing_else() {
        let a = record("a", "1");
        assert_eq!(a.key(), record("a", "1").key());
        assert_ne!(a.key(), record("b", "1").key());
        assert_ne!(a.key(), record("a", "2").key());
        let mut c = a.clone();
        c.inputs.insert("gen".into(), Digest::of(b"other"));
        assert_ne!(a.key(), c.key());
        let mut d = a.clone();
        d.kind_version = 2;
        assert_ne!(a.key(), d.key());
    }

    #[test]
    fn record_by_reference_encodes_like_the_record() {
        let mut owned = record("item-7", "3");
        owned.inputs.insert("alpha".into(), Digest::of(b"a"));
        let inputs: Vec<(&str, Digest)> =
            owned.inputs.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let by_ref = KeyRecordRef {
            schema: owned.schema,
            kind: &owned.kind,
            kind_version: owned.kind_version,
            item: &owned.item,
            shared: &owned.shared,
            item_params: &owned.item_params,
            inputs: &inputs,
        };
        assert_eq!(postcard::to_stdvec(&by_ref).unwrap(), owned.encode());
        assert_eq!(by_ref.key(), owned.key());
    }

    #[test]
    fn diff_names_the_changed_field_and_groups_the_cause() {
        let old = record("a", "1").fields(None);
        let new = record("a", "2").fields(None);
        let changes = diff_fields(&old, &new);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].field, "params.x");
        assert_eq!(cause_of(&changes, &[]), "parameter changed: params.x");
        let set_by = [("params".to_string(), "--set".to_string())];
        assert_eq!(
            cause_of(&changes, &set_by),
            "parameter changed: params.x (--set)"
        );
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let v: toml::Value = toml::from_str("b = 1\na = { d = 2.5, c = [1, 'x'] }").unwrap();
        assert_eq!(canonical_json(&v), r#"{"a":{"c":[1,"x"],"d":2.5},"b":1}"#);
    }

    #[test]
    fn digest_round_trips_through_hex_and_postcard() {
        let d = Digest::of(b"x");
        assert_eq!(d.to_hex().parse::<Digest>().unwrap(), d);
        let bytes = postcard::to_stdvec(&d).unwrap();
        assert_eq!(postcard::from_bytes::<Digest>(&bytes).unwrap(), d);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
    }
}
