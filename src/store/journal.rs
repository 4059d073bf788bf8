//! The run journal: every index entry a run records, written again into a plain file of its
//! own beside the index (`journal/<run>.journal`), so that a damaged index can be rebuilt
//! from the journals and the blobs, and an index that silently came back at an earlier state
//! is noticed.
//!
//! Why: sled keeps one log file. A damaged page there either stops sled from opening ("Read
//! corrupted data", or a panic in its recovery) or, worse, makes it recover to the last state
//! before the damage without a word, forgetting every result after it. The blobs are intact
//! beside it; what is lost is the map from task keys to them, which is what a journal keeps.
//!
//! A journal is a sequence of frames, each `len (u32 LE) | blake3 of the body, first 8 bytes
//! | body (postcard)`, whose bodies are [`Frame`]s: index entries as they were put, in order,
//! then, once the run has ended, an [`Frame::End`] naming the run and a 12-byte trailer
//! (`length of the End frame (u32 LE) | MVCJEND1`), so that the run a journal ends with is
//! read from its tail alone. A file cut short (a run killed mid-way) is read up to its last
//! whole frame; its results count all the same. A *snapshot* is a journal holding every
//! entry the index has (written on a cache's first run under this scheme, and after `gc`):
//! the journals before it are then removed.

use super::index::{Index, Tree};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// The trees a journal keeps: what a cached result needs (results, their key records, the
/// negative cache, the object records of views), what plans and `mvc why` read (latest keys, shared parameters), and the
/// run records (what gc keeps). Not kept: the stat cache and plan memos (rebuilt by the
/// next run), leases (a restarted coordinator's), the schema (written at open).
pub const KEPT: [Tree; 7] = [
    Tree::Tasks,
    Tree::Records,
    Tree::Failures,
    Tree::Latest,
    Tree::Params,
    Tree::Runs,
    Tree::Objects,
];

/// One frame's body.
#[derive(Debug, Serialize, Deserialize)]
pub enum Frame {
    /// `tree[key] = value`, or the entry removed when `value` is `None`.
    Entry {
        tree: u8,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    },
    /// The journal is whole: the run `run` ended (or, for a snapshot, the index held
    /// everything above when the last run recorded was `run`).
    End { run: Vec<u8>, snapshot: bool },
}

/// [`Frame`] as written, borrowing what it writes: the same bytes (postcard encodes a slice
/// of bytes as it does a `Vec` of them), without copying every key and value recorded.
#[derive(Serialize)]
enum FrameOut<'a> {
    Entry {
        tree: u8,
        key: &'a [u8],
        value: Option<&'a [u8]>,
    },
    End {
        run: &'a [u8],
        snapshot: bool,
    },
}

/// The last 8 bytes of a finished journal.
const TRAILER: &[u8; 8] = b"MVCJEND1";

fn tree_code(tree: Tree) -> u8 {
    Tree::ALL
        .iter()
        .position(|t| *t == tree)
        .expect("a tree of ALL") as u8
}

pub fn tree_of(code: u8) -> Option<Tree> {
    Tree::ALL.get(code as usize).copied()
}

/// A journal being written: frames are appended as the run records them (buffered; made
/// durable by [`Writer::finish`]).
pub struct Writer {
    file: BufWriter<File>,
    path: PathBuf,
    dir: PathBuf,
    /// The first write error: the journal is then left unfinished, and the run says so.
    failed: Option<std::io::Error>,
}

impl Writer {
    /// Starts `dir/<name>.journal` (without its end mark until [`Writer::finish`]).
    pub fn create(dir: &Path, name: &str) -> Result<Writer> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the journal directory {}", dir.display()))?;
        let path = dir.join(format!("{name}.journal"));
        let file = File::create(&path)
            .with_context(|| format!("creating the journal {}", path.display()))?;
        Ok(Writer {
            file: BufWriter::with_capacity(1 << 20, file),
            path,
            dir: dir.to_path_buf(),
            failed: None,
        })
    }

    /// Appends a frame; returns its length.
    fn frame(&mut self, frame: &FrameOut) -> usize {
        let size = match frame {
            FrameOut::Entry { key, value, .. } => key.len() + value.map_or(0, <[u8]>::len),
            FrameOut::End { run, .. } => run.len(),
        };
        let body = postcard::to_extend(frame, Vec::with_capacity(size + 16))
            .expect("frames always encode");
        if self.failed.is_some() {
            return 0;
        }
        let mut head = [0u8; 12];
        head[..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
        head[4..].copy_from_slice(&blake3::hash(&body).as_bytes()[..8]);
        if let Err(e) = self
            .file
            .write_all(&head)
            .and_then(|()| self.file.write_all(&body))
        {
            self.failed = Some(e);
        }
        12 + body.len()
    }

    pub fn put(&mut self, tree: Tree, key: &[u8], value: &[u8]) {
        self.entry(tree, key, Some(value));
    }

    pub fn delete(&mut self, tree: Tree, key: &[u8]) {
        self.entry(tree, key, None);
    }

    /// `tree[key] = value`, or the entry removed when `value` is `None`.
    pub fn entry(&mut self, tree: Tree, key: &[u8], value: Option<&[u8]>) {
        self.frame(&FrameOut::Entry {
            tree: tree_code(tree),
            key,
            value,
        });
    }

    /// Ends the journal with the run's id, and makes it durable.
    pub fn finish(mut self, run: &[u8], snapshot: bool) -> Result<PathBuf> {
        let end = self.frame(&FrameOut::End { run, snapshot });
        if self.failed.is_none()
            && let Err(e) = self
                .file
                .write_all(&(end as u32).to_le_bytes())
                .and_then(|()| self.file.write_all(TRAILER))
        {
            self.failed = Some(e);
        }
        if let Some(e) = self.failed.take() {
            return Err(e).with_context(|| format!("writing the journal {}", self.path.display()));
        }
        let file = self
            .file
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing the journal {}", self.path.display()))?;
        file.sync_all()
            .with_context(|| format!("syncing the journal {}", self.path.display()))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).ok();
        Ok(self.path)
    }
}

/// Writes a snapshot of `index` (every entry of the [`KEPT`] trees) as `dir/<name>.journal`,
/// then removes the journals before it.
pub fn snapshot(index: &dyn Index, dir: &Path, name: &str, last_run: &[u8]) -> Result<()> {
    let mut writer = Writer::create(dir, name)?;
    for tree in KEPT {
        for entry in index.scan(tree, b"") {
            let (key, value) = entry?;
            writer.put(tree, &key, &value);
        }
    }
    let path = writer.finish(last_run, true)?;
    for old in files(dir)? {
        if old != path && old.file_name() < path.file_name() {
            std::fs::remove_file(&old)
                .with_context(|| format!("removing the journal {}", old.display()))?;
        }
    }
    Ok(())
}

/// The journal files of `dir`, oldest first (names sort by the run's start).
pub fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "journal"))
        .collect();
    files.sort();
    Ok(files)
}

/// A journal read back: its whole frames, and whether it ended (an [`Frame::End`]) or was
/// cut short or damaged (then what was wrong).
pub struct Contents {
    pub frames: Vec<Frame>,
    pub end: Option<(Vec<u8>, bool)>,
    pub damage: Option<String>,
}

/// Reads a journal's frames up to its end or its first damaged frame.
pub fn read(path: &Path) -> Result<Contents> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| format!("reading the journal {}", path.display()))?;
    let mut out = Contents {
        frames: Vec::new(),
        end: None,
        damage: None,
    };
    let mut at = 0;
    while at < bytes.len() {
        if bytes.len() - at == 12 && &bytes[at + 4..] == TRAILER {
            break;
        }
        if bytes.len() - at < 12 {
            out.damage = Some(format!("cut short at byte {at}"));
            break;
        }
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let body = at + 12;
        if bytes.len() - body < len {
            out.damage = Some(format!("cut short at byte {at}"));
            break;
        }
        let body = &bytes[body..body + len];
        if blake3::hash(body).as_bytes()[..8] != bytes[at + 4..at + 12] {
            out.damage = Some(format!("damaged at byte {at}"));
            break;
        }
        match postcard::from_bytes::<Frame>(body) {
            Ok(Frame::End { run, snapshot }) => out.end = Some((run, snapshot)),
            Ok(frame) => out.frames.push(frame),
            Err(e) => {
                out.damage = Some(format!("unreadable at byte {at}: {e}"));
                break;
            }
        }
        at += 12 + len;
    }
    Ok(out)
}

/// The run the newest finished journal ends with, if any: what the index must hold. Read
/// from each file's tail (a cache is checked every time it is opened).
pub fn last_run(dir: &Path) -> Result<Option<Vec<u8>>> {
    Ok(files(dir)?.iter().rev().find_map(|path| end_of(path)))
}

/// The run a finished journal ends with, from its trailer and End frame.
fn end_of(path: &Path) -> Option<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    let mut file = File::open(path).ok()?;
    let size = file.metadata().ok()?.len();
    let mut trailer = [0u8; 12];
    file.seek(SeekFrom::Start(size.checked_sub(12)?)).ok()?;
    file.read_exact(&mut trailer).ok()?;
    if &trailer[4..] != TRAILER {
        return None;
    }
    let len = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes")) as u64;
    let mut frame = vec![0u8; usize::try_from(len).ok()?];
    file.seek(SeekFrom::Start(size.checked_sub(12 + len)?))
        .ok()?;
    file.read_exact(&mut frame).ok()?;
    let body = frame.get(12..)?;
    if blake3::hash(body).as_bytes()[..8] != frame[4..12] {
        return None;
    }
    match postcard::from_bytes(body).ok()? {
        Frame::End { run, .. } => Some(run),
        Frame::Entry { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is written borrowed is read back owned: the two enums encode the same.
    #[test]
    fn a_borrowed_frame_encodes_as_the_frame_read_back() {
        let written = postcard::to_stdvec(&FrameOut::Entry {
            tree: 3,
            key: b"stage\0item",
            value: Some(&[0, 1, 255, 7]),
        })
        .unwrap();
        let read: Frame = postcard::from_bytes(&written).unwrap();
        assert!(matches!(
            read,
            Frame::Entry { tree: 3, ref key, value: Some(ref v) }
                if key == b"stage\0item" && v == &[0, 1, 255, 7]
        ));
        let written = postcard::to_stdvec(&FrameOut::Entry {
            tree: 1,
            key: b"k",
            value: None,
        })
        .unwrap();
        let read: Frame = postcard::from_bytes(&written).unwrap();
        assert!(matches!(
            read,
            Frame::Entry {
                tree: 1,
                value: None,
                ..
            }
        ));
        let written = postcard::to_stdvec(&FrameOut::End {
            run: b"run1",
            snapshot: true,
        })
        .unwrap();
        let read: Frame = postcard::from_bytes(&written).unwrap();
        assert!(matches!(read, Frame::End { ref run, snapshot: true } if run == b"run1"));
    }

    #[test]
    fn frames_round_trip_and_a_damaged_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(dir.path(), "0001").unwrap();
        w.put(Tree::Tasks, b"k1", b"v1");
        w.delete(Tree::Failures, b"k1");
        w.put(Tree::Latest, b"s\0i", b"k1");
        let path = w.finish(b"run1", false).unwrap();
        let r = read(&path).unwrap();
        assert_eq!(r.frames.len(), 3);
        assert_eq!(r.end, Some((b"run1".to_vec(), false)));
        assert!(r.damage.is_none());
        assert_eq!(last_run(dir.path()).unwrap(), Some(b"run1".to_vec()));

        // Damage in the second frame: the first is kept, the rest is not trusted.
        let mut bytes = std::fs::read(&path).unwrap();
        let second = 12 + u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        bytes[second + 14] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let r = read(&path).unwrap();
        assert_eq!(r.frames.len(), 1);
        assert!(r.end.is_none());
        assert!(r.damage.unwrap().starts_with("damaged at byte"));
        // Its end is read from its tail: the run did end.
        assert_eq!(last_run(dir.path()).unwrap(), Some(b"run1".to_vec()));
        // Cut short (a run killed mid-way): no end.
        std::fs::write(&path, &bytes[..second + 5]).unwrap();
        assert_eq!(read(&path).unwrap().frames.len(), 1);
        assert_eq!(last_run(dir.path()).unwrap(), None);
    }
}
