//! The content-addressed blob store: `blobs/ab/cdef…`, named by the blake3 of the content.
//!
//! Writes go to a temp file in the blob's own directory, are fsynced, then renamed, so a
//! reader never sees half a blob and a killed process leaves at most a `.tmp` file behind.
//! Reads verify the digest; a blob that fails is removed, so the caller treats it as a miss.

use crate::task::Digest;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} is missing from the cache")]
    Missing(Digest),
    #[error("blob {digest} failed verification (its content hashes to {actual}) and was removed")]
    Corrupt { digest: Digest, actual: Digest },
    #[error("reading blob {digest}: {source}")]
    Io { digest: Digest, source: io::Error },
}

impl BlobError {
    pub fn is_missing_or_corrupt(&self) -> bool {
        matches!(self, BlobError::Missing(_) | BlobError::Corrupt { .. })
    }
}

/// Prefix of temp files; anything starting with it is not a blob.
const TMP_PREFIX: &str = ".tmp";
const CHUNK: usize = 1 << 20;

#[derive(Clone, Debug)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    pub fn new(dir: PathBuf) -> BlobStore {
        BlobStore { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.dir.join(&hex[..2]).join(&hex[2..])
    }

    fn shard(&self, digest: &Digest) -> io::Result<PathBuf> {
        let shard = self.dir.join(&digest.to_hex()[..2]);
        fs::create_dir_all(&shard)?;
        Ok(shard)
    }

    /// Size of the blob if it is present (a cheap check: no read).
    pub fn size(&self, digest: &Digest) -> Option<u64> {
        fs::metadata(self.path(digest)).ok().map(|m| m.len())
    }

    pub fn put_bytes(&self, bytes: &[u8]) -> io::Result<Digest> {
        let digest = Digest::of(bytes);
        if self.size(&digest) == Some(bytes.len() as u64) {
            return Ok(digest);
        }
        let shard = self.shard(&digest)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempfile_in(&shard)?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(self.path(&digest)).map_err(|e| e.error)?;
        sync_dir(&shard)?;
        Ok(digest)
    }

    /// Stores what `write` writes, hashed as it goes, without holding it: lists of a value
    /// per task (a stage's plan memo, the keys a run reached) are gigabytes at Objaverse-XL's
    /// size. The bytes go to a temp file under `.tmp/` (where `gc` finds one a killed process
    /// left), then move to their digest's place.
    pub fn put_streamed(
        &self,
        write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<Digest> {
        let dir = self.dir.join(TMP_PREFIX);
        fs::create_dir_all(&dir)?;
        let tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempfile_in(&dir)?;
        let mut out = Hashed::new(io::BufWriter::with_capacity(CHUNK, tmp));
        write(&mut out)?;
        let digest = Digest::from_hasher(&out.hasher);
        if self.size(&digest) == Some(out.size) {
            return Ok(digest);
        }
        let tmp = out.file.into_inner().map_err(|e| e.into_error())?;
        tmp.as_file().sync_all()?;
        let shard = self.shard(&digest)?;
        tmp.persist(self.path(&digest)).map_err(|e| e.error)?;
        sync_dir(&shard)?;
        Ok(digest)
    }

    /// Moves `src` (a file on the same file system, such as a task's output) into the store.
    pub fn put_file(&self, src: &Path) -> io::Result<(Digest, u64)> {
        let mut file = File::open(src)?;
        let mut hasher = blake3::Hasher::new();
        let size = io::copy(&mut file, &mut hasher)?;
        let digest = Digest::from_hasher(&hasher);
        if self.size(&digest) == Some(size) {
            fs::remove_file(src)?;
            return Ok((digest, size));
        }
        // The task may still hold the file open for writing in theory; we own it now.
        file.sync_all()?;
        drop(file);
        let shard = self.shard(&digest)?;
        let dest = self.path(&digest);
        match fs::rename(src, &dest) {
            Ok(()) => {}
            // Different file system (a cache on another mount than its tmp dir): copy,
            // streaming (a GLB or a model file need not fit in memory), verified on the way.
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                let mut writer = self.writer(&digest)?;
                let mut file = File::open(src)?;
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let n = file.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    writer.write(&buf[..n])?;
                }
                writer.finish().map_err(io::Error::other)?;
                fs::remove_file(src)?;
            }
            Err(e) => return Err(e),
        }
        // Blobs are immutable; make accidental writes through a hard link less likely.
        let _ = fs::set_permissions(&dest, readonly());
        sync_dir(&shard)?;
        Ok((digest, size))
    }

    /// Starts writing the blob that should have digest `expected`, chunk by chunk (a blob
    /// arriving over the network): the bytes are hashed as they come, and
    /// [`BlobWriter::finish`] stores them only if they hash to `expected`.
    pub fn writer(&self, expected: &Digest) -> io::Result<BlobWriter> {
        let shard = self.shard(expected)?;
        let tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempfile_in(&shard)?;
        Ok(BlobWriter {
            file: io::BufWriter::with_capacity(CHUNK, tmp),
            hasher: blake3::Hasher::new(),
            expected: *expected,
            dest: self.path(expected),
            shard,
            size: 0,
        })
    }

    /// Reads a blob whole and verifies it.
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>, BlobError> {
        let path = self.path(digest);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BlobError::Missing(*digest));
            }
            Err(source) => {
                return Err(BlobError::Io {
                    digest: *digest,
                    source,
                });
            }
        };
        let actual = Digest::of(&bytes);
        if actual != *digest {
            self.quarantine(digest);
            return Err(BlobError::Corrupt {
                digest: *digest,
                actual,
            });
        }
        Ok(bytes)
    }

    /// Copies a blob to `dest`, verifying it on the way; a corrupt blob leaves no `dest`.
    pub fn copy_to(&self, digest: &Digest, dest: &Path) -> Result<u64, BlobError> {
        let io_err = |source| BlobError::Io {
            digest: *digest,
            source,
        };
        let mut src = match File::open(self.path(digest)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BlobError::Missing(*digest));
            }
            Err(e) => return Err(io_err(e)),
        };
        let mut out = File::create(dest).map_err(io_err)?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        loop {
            let n = src.read(&mut buf).map_err(io_err)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io_err)?;
            total += n as u64;
        }
        let actual = Digest::from_hasher(&hasher);
        if actual != *digest {
            drop(out);
            let _ = fs::remove_file(dest);
            self.quarantine(digest);
            return Err(BlobError::Corrupt {
                digest: *digest,
                actual,
            });
        }
        Ok(total)
    }

    /// Hashes a blob in place; `Ok(true)` when it verifies.
    pub fn verify(&self, digest: &Digest) -> Result<bool, BlobError> {
        let mut file = match File::open(self.path(digest)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BlobError::Missing(*digest));
            }
            Err(source) => {
                return Err(BlobError::Io {
                    digest: *digest,
                    source,
                });
            }
        };
        let mut hasher = blake3::Hasher::new();
        io::copy(&mut file, &mut hasher).map_err(|source| BlobError::Io {
            digest: *digest,
            source,
        })?;
        Ok(Digest::from_hasher(&hasher) == *digest)
    }

    /// Removes a blob that failed verification, so it is never served again.
    pub fn quarantine(&self, digest: &Digest) {
        let path = self.path(digest);
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!("could not remove corrupt blob {}: {e}", path.display());
        }
    }

    pub fn remove(&self, digest: &Digest) -> io::Result<()> {
        match fs::remove_file(self.path(digest)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every blob (digest and size), and every leftover temp file, in the store.
    pub fn list(&self) -> io::Result<BlobListing> {
        let mut listing = BlobListing::default();
        let shards = match fs::read_dir(&self.dir) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(listing),
            Err(e) => return Err(e),
        };
        for shard in shards {
            let shard = shard?;
            let shard_name = shard.file_name().to_string_lossy().to_string();
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(shard.path())? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().to_string();
                if name.starts_with(TMP_PREFIX) {
                    listing.temp_files.push(entry.path());
                    continue;
                }
                match format!("{shard_name}{name}").parse::<Digest>() {
                    Ok(digest) => listing.blobs.push((digest, entry.metadata()?.len())),
                    Err(_) => listing.strays.push(entry.path()),
                }
            }
        }
        listing.blobs.sort();
        Ok(listing)
    }
}

/// A file being written as it is made (a blob by [`BlobStore::put_streamed`], the presence
/// filter): its bytes, hashed and counted, so that it can be named by its digest when done.
pub(super) struct Hashed<W> {
    pub(super) file: W,
    pub(super) hasher: blake3::Hasher,
    pub(super) size: u64,
}

impl<W: Write> Hashed<W> {
    pub(super) fn new(file: W) -> Hashed<W> {
        Hashed {
            file,
            hasher: blake3::Hasher::new(),
            size: 0,
        }
    }
}

impl<W: Write> Write for Hashed<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = self.file.write(bytes)?;
        self.hasher.update(&bytes[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A blob being received: see [`BlobStore::writer`]. Dropped unfinished, it leaves nothing.
pub struct BlobWriter {
    file: io::BufWriter<tempfile::NamedTempFile>,
    hasher: blake3::Hasher,
    expected: Digest,
    dest: PathBuf,
    shard: PathBuf,
    size: u64,
}

impl BlobWriter {
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        self.file.write_all(bytes)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Stores the blob when its bytes hash to the expected digest; otherwise removes them
    /// and says what they hashed to.
    pub fn finish(self) -> Result<u64, BlobError> {
        let actual = Digest::from_hasher(&self.hasher);
        let io_err = |source| BlobError::Io {
            digest: self.expected,
            source,
        };
        if actual != self.expected {
            return Err(BlobError::Corrupt {
                digest: self.expected,
                actual,
            });
        }
        let tmp = self.file.into_inner().map_err(|e| io_err(e.into_error()))?;
        tmp.as_file().sync_all().map_err(io_err)?;
        tmp.persist(&self.dest).map_err(|e| io_err(e.error))?;
        let _ = fs::set_permissions(&self.dest, readonly());
        sync_dir(&self.shard).map_err(io_err)?;
        Ok(self.size)
    }
}

#[derive(Debug, Default)]
pub struct BlobListing {
    pub blobs: Vec<(Digest, u64)>,
    /// Temp files of writes that never finished (a killed process).
    pub temp_files: Vec<PathBuf>,
    /// Files that are not blobs at all.
    pub strays: Vec<PathBuf>,
}

fn readonly() -> fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    fs::Permissions::from_mode(0o444)
}

/// fsync a directory so that a rename into it survives a power loss, not just a kill.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_read_and_detect_corruption() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::new(tmp.path().join("blobs"));
        let d = store.put_bytes(b"hello").unwrap();
        assert_eq!(store.read(&d).unwrap(), b"hello");
        assert_eq!(store.put_bytes(b"hello").unwrap(), d, "idempotent");

        let path = store.path(&d);
        fs::set_permissions(&path, {
            use std::os::unix::fs::PermissionsExt;
            fs::Permissions::from_mode(0o644)
        })
        .unwrap();
        fs::write(&path, b"hellO").unwrap();
        let err = store.read(&d).unwrap_err();
        assert!(err.to_string().contains("failed verification"), "{err}");
        assert!(matches!(store.read(&d), Err(BlobError::Missing(_))));
    }

    #[test]
    fn a_streamed_blob_is_the_blob_of_its_bytes_and_a_failed_one_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::new(tmp.path().join("blobs"));
        let bytes: Vec<u8> = (0..3 * CHUNK as u32).map(|i| (i % 251) as u8).collect();
        let streamed = store
            .put_streamed(|out| {
                for piece in bytes.chunks(1000) {
                    out.write_all(piece)?;
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(streamed, Digest::of(&bytes));
        assert_eq!(store.read(&streamed).unwrap(), bytes);
        let again = store.put_streamed(|out| out.write_all(&bytes)).unwrap();
        assert_eq!(again, streamed, "idempotent");

        let failed = store.put_streamed(|out| {
            out.write_all(b"half a list")?;
            Err(io::Error::other("the disk is full"))
        });
        assert_eq!(failed.unwrap_err().to_string(), "the disk is full");
        let listing = store.list().unwrap();
        assert_eq!(listing.blobs, vec![(streamed, bytes.len() as u64)]);
        assert!(listing.strays.is_empty(), "{:?}", listing.strays);
        assert!(listing.temp_files.is_empty(), "{:?}", listing.temp_files);
    }

    #[test]
    fn put_file_moves_and_lists() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::new(tmp.path().join("blobs"));
        let src = tmp.path().join("out.bin");
        fs::write(&src, vec![7u8; 100_000]).unwrap();
        let (d, size) = store.put_file(&src).unwrap();
        assert_eq!(size, 100_000);
        assert!(!src.exists());
        let dest = tmp.path().join("copy.bin");
        assert_eq!(store.copy_to(&d, &dest).unwrap(), 100_000);
        assert_eq!(fs::read(&dest).unwrap(), vec![7u8; 100_000]);
        let listing = store.list().unwrap();
        assert_eq!(listing.blobs, vec![(d, 100_000)]);
    }

    /// A task's output on another file system than the cache (here /dev/shm, a tmpfs) is
    /// copied in, streaming, and its source removed.
    #[test]
    fn put_file_across_file_systems_copies() {
        use std::os::unix::fs::MetadataExt;
        let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
            eprintln!("skipped: no /dev/shm to put a file on another file system");
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        if fs::metadata(shm.path()).unwrap().dev() == fs::metadata(tmp.path()).unwrap().dev() {
            eprintln!("skipped: /dev/shm is on the same file system as the temp directory");
            return;
        }
        let store = BlobStore::new(tmp.path().join("blobs"));
        let src = shm.path().join("out.bin");
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        fs::write(&src, &bytes).unwrap();
        let (d, size) = store.put_file(&src).unwrap();
        assert_eq!((d, size), (Digest::of(&bytes), 3_000_000));
        assert!(!src.exists());
        assert_eq!(store.read(&d).unwrap(), bytes);
        assert!(store.list().unwrap().temp_files.is_empty());
    }

    #[test]
    fn a_writer_stores_only_bytes_that_match_their_digest() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::new(tmp.path().join("blobs"));
        let good = Digest::of(b"hello world");
        let mut w = store.writer(&good).unwrap();
        w.write(b"hello ").unwrap();
        w.write(b"world").unwrap();
        assert_eq!(w.finish().unwrap(), 11);
        assert_eq!(store.read(&good).unwrap(), b"hello world");

        let claimed = Digest::of(b"something else");
        let mut w = store.writer(&claimed).unwrap();
        w.write(b"hello world").unwrap();
        let err = w.finish().unwrap_err();
        assert!(
            matches!(err, BlobError::Corrupt { actual, .. } if actual == good),
            "{err}"
        );
        assert!(store.size(&claimed).is_none());
        assert!(store.list().unwrap().temp_files.is_empty());
    }
}
