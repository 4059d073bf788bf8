//! The typed values kept in the index trees (postcard-encoded).

use crate::task::{Digest, TaskKey};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// Outputs up to this size live inline in the index rather than as blob files: a million
/// small outputs (embeddings, scores) would otherwise be a million files.
pub const INLINE_MAX: u64 = 4096;

/// One output file of a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// Relative path under the task's output directory, `/`-separated.
    pub name: String,
    pub digest: Digest,
    pub size: u64,
    /// The bytes, for outputs of at most [`INLINE_MAX`] bytes; `None` means a blob.
    pub inline: Option<Vec<u8>>,
}

/// The digest of a list of outputs: what downstream keys depend on (early cutoff: same
/// bytes under the same names give the same manifest digest, whatever ran to make them).
pub fn manifest_digest(outputs: &[Output]) -> Digest {
    let pairs: Vec<(&str, &Digest)> = outputs
        .iter()
        .map(|o| (o.name.as_str(), &o.digest))
        .collect();
    Digest::of(&postcard::to_stdvec(&pairs).expect("manifests always encode"))
}

/// A completed task (the `tasks` tree).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub stage: String,
    pub item: String,
    pub outputs: Vec<Output>,
    pub manifest: Digest,
    pub stdout: Option<Digest>,
    pub stderr: Option<Digest>,
    pub started_ms: u64,
    pub duration_ms: u64,
    /// Where it ran: `local` or a worker's name.
    pub host: String,
}

impl TaskResult {
    /// Digests and sizes of the blob files this result needs (inline outputs excluded).
    pub fn blob_outputs(&self) -> impl Iterator<Item = (Digest, u64)> + '_ {
        self.outputs
            .iter()
            .filter(|o| o.inline.is_none())
            .map(|o| (o.digest, o.size))
    }

    /// Every blob this result refers to, logs included (what `gc` must keep).
    pub fn referenced_blobs(&self) -> impl Iterator<Item = Digest> + '_ {
        self.blob_outputs()
            .map(|(d, _)| d)
            .chain(self.stdout)
            .chain(self.stderr)
    }
}

/// A permanent item failure (the `failures` tree): not retried until its key changes or
/// `--retry-failed` is given.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub stage: String,
    pub item: String,
    pub error: String,
    pub stderr: Option<Digest>,
    pub when_ms: u64,
}

/// The last key recorded for a (stage, item) (the `latest` tree), and the one it replaced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Latest {
    pub key: TaskKey,
    pub previous: Option<TaskKey>,
    pub when_ms: u64,
}

pub fn latest_key(stage: &str, item: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(stage.len() + item.len() + 1);
    k.extend_from_slice(stage.as_bytes());
    k.push(0);
    k.extend_from_slice(item.as_bytes());
    k
}

/// Per-stage counts of a run, as `mvc run --json` prints them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageCounts {
    pub total: u64,
    pub cached: u64,
    pub ran: u64,
    pub failed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunOutcome {
    Ok,
    Failed,
    Interrupted,
}

/// A run summary (the `runs` tree, keyed by big-endian start time so scans are in order).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub pipeline: String,
    pub pipeline_path: String,
    pub started_ms: u64,
    pub ended_ms: u64,
    pub outcome: RunOutcome,
    pub stages: IndexMap<String, StageCounts>,
    /// Blob holding the sorted task keys this run's plan reached: what `gc` keeps.
    pub reach: Digest,
    /// Blob holding the pipeline file's text as the run read it (none in records written
    /// before mvc kept it): what the page compares two runs' parameters by.
    pub source: Option<Digest>,
    /// The result of each stage that publishes results (a report), by stage: its key.
    pub published: Vec<(String, TaskKey)>,
    /// The command line that ran it (with its `--with` and `--set`), as given.
    pub command: Vec<String>,
}

/// A run record as mvc wrote them before `command` (postcard is not self-describing, so an
/// old record is read through its own layout).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct RunRecordV2 {
    pipeline: String,
    pipeline_path: String,
    started_ms: u64,
    ended_ms: u64,
    outcome: RunOutcome,
    stages: IndexMap<String, StageCounts>,
    reach: Digest,
    source: Option<Digest>,
    published: Vec<(String, TaskKey)>,
}

/// A run record as mvc wrote them before `source` and `published`.
#[derive(Deserialize)]
struct RunRecordV1 {
    pipeline: String,
    pipeline_path: String,
    started_ms: u64,
    ended_ms: u64,
    outcome: RunOutcome,
    stages: IndexMap<String, StageCounts>,
    reach: Digest,
}

/// Reads a run record of either layout.
pub fn decode_run(bytes: &[u8]) -> anyhow::Result<RunRecord> {
    if let Ok(record) = postcard::from_bytes::<RunRecord>(bytes) {
        return Ok(record);
    }
    if let Ok(old) = postcard::from_bytes::<RunRecordV2>(bytes) {
        return Ok(RunRecord {
            pipeline: old.pipeline,
            pipeline_path: old.pipeline_path,
            started_ms: old.started_ms,
            ended_ms: old.ended_ms,
            outcome: old.outcome,
            stages: old.stages,
            reach: old.reach,
            source: old.source,
            published: old.published,
            command: Vec::new(),
        });
    }
    let old: RunRecordV1 = decode(bytes, "run record")?;
    Ok(RunRecord {
        pipeline: old.pipeline,
        pipeline_path: old.pipeline_path,
        started_ms: old.started_ms,
        ended_ms: old.ended_ms,
        outcome: old.outcome,
        stages: old.stages,
        reach: old.reach,
        source: None,
        published: Vec::new(),
        command: Vec::new(),
    })
}

/// A run's id: its start (big-endian, so ids sort by time) and the process that ran it.
pub fn run_id(started_ms: u64) -> Vec<u8> {
    let mut id = started_ms.to_be_bytes().to_vec();
    id.extend_from_slice(&std::process::id().to_be_bytes());
    id
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn format_time(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("index values always encode")
}

/// Writes `count` values into `out` as [`encode`] writes a `Vec` of them, without the `Vec`
/// or the encoding's buffer: lists of a value per task (the keys a run reached, a stage's
/// results) are gigabytes at Objaverse-XL's size.
pub fn encode_seq_into<W, T, I>(out: W, count: usize, values: I) -> std::io::Result<W>
where
    W: std::io::Write,
    T: Serialize,
    I: Iterator<Item = T>,
{
    let seq = Seq {
        values: std::cell::RefCell::new(Some(values)),
        count,
        written: std::cell::Cell::new(0),
    };
    postcard::to_io(&seq, out).map_err(|e| match seq.written.get() {
        // postcard keeps no message of its own errors: say what went wrong here.
        written if written != count => {
            std::io::Error::other(format!("{written} values given for a sequence of {count}"))
        }
        _ => std::io::Error::other(e),
    })
}

/// A sequence of `count` values encoded once, as they come.
struct Seq<I> {
    values: std::cell::RefCell<Option<I>>,
    count: usize,
    written: std::cell::Cell<usize>,
}

impl<T: Serialize, I: Iterator<Item = T>> Serialize for Seq<I> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        let values = self.values.borrow_mut().take();
        let values = values.ok_or_else(|| S::Error::custom("a sequence is encoded once"))?;
        let mut seq = serializer.serialize_seq(Some(self.count))?;
        for value in values {
            seq.serialize_element(&value)?;
            self.written.set(self.written.get() + 1);
        }
        // Another count than the values' would encode another sequence than the `Vec`'s.
        if self.written.get() != self.count {
            return Err(S::Error::custom("the values are not as many as said"));
        }
        seq.end()
    }
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> anyhow::Result<T> {
    postcard::from_bytes(bytes)
        .map_err(|e| anyhow::anyhow!("the index holds an unreadable {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequence_encoded_as_it_comes_is_the_vec_encoded_whole() {
        // 0, 1, 127 and 128 values: where postcard's length prefix takes one byte or two.
        for n in [0usize, 1, 127, 128, 1000] {
            let keys: Vec<TaskKey> = (0..n as u32)
                .map(|i| Digest::of(&i.to_le_bytes()))
                .collect();
            let streamed = encode_seq_into(Vec::new(), n, keys.iter()).unwrap();
            assert_eq!(streamed, encode(&keys), "{n} keys");
        }
        let wrong = encode_seq_into(Vec::new(), 3, [1u8, 2].into_iter());
        assert!(
            wrong
                .unwrap_err()
                .to_string()
                .contains("2 values given for a sequence of 3")
        );
    }

    #[test]
    fn a_run_record_written_before_the_command_line_was_kept_reads_whole() {
        let source = Some(Digest::of(b"[stage.a]"));
        let published = vec![("report".to_string(), Digest::of(b"k"))];
        let old = RunRecordV2 {
            pipeline: "p".into(),
            pipeline_path: "p.toml".into(),
            started_ms: 1,
            ended_ms: 2,
            outcome: RunOutcome::Ok,
            stages: IndexMap::new(),
            reach: Digest::of(b""),
            source,
            published: published.clone(),
        };
        let record = decode_run(&postcard::to_stdvec(&old).unwrap()).unwrap();
        assert_eq!(record.source, source);
        assert_eq!(record.published, published);
        assert!(record.command.is_empty());
    }
}
