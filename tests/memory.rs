//! What large files cost in memory: a downloaded `.json.gz` is checked, and a blob is put
//! into the store from another file system, without holding the file in memory. Measured
//! by counting this test binary's allocations (one test, so nothing else allocates
//! meanwhile).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, keeping count of the bytes held and their peak.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller promised for `layout`.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = HELD.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) };
        HELD.fetch_sub(layout.size(), Ordering::SeqCst);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as the caller promised.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let grown = new_size - layout.size();
                let now = HELD.fetch_add(grown, Ordering::SeqCst) + grown;
                PEAK.fetch_max(now, Ordering::SeqCst);
            } else {
                HELD.fetch_sub(layout.size() - new_size, Ordering::SeqCst);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most memory `work` held at once beyond what was held before it.
fn peak_of<T>(work: impl FnOnce() -> T) -> (T, usize) {
    let before = HELD.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let out = work();
    (out, PEAK.load(Ordering::SeqCst) - before)
}

#[test]
fn large_files_are_checked_and_stored_streaming() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();

    // A `.json.gz` of about 16 MB that hardly compresses (hex of a pseudo-random sequence).
    let gz = dir.path().join("object-paths.json.gz");
    {
        let file = std::fs::File::create(&gz).unwrap();
        let mut out = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        out.write_all(b"{").unwrap();
        let mut line = String::with_capacity(128);
        for i in 0..400_000u32 {
            line.clear();
            let mut hex = String::with_capacity(64);
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                hex.push_str(&format!("{x:016x}"));
            }
            let sep = if i == 0 { "" } else { "," };
            line.push_str(&format!("{sep}\"{i:08}\":\"{hex}\""));
            out.write_all(line.as_bytes()).unwrap();
        }
        out.write_all(b"}").unwrap();
        out.finish().unwrap();
    }
    let size = std::fs::metadata(&gz).unwrap().len() as usize;
    assert!(size > 12 << 20, "the file is only {size} bytes");
    let (checked, peak) = peak_of(|| {
        mvc::stages::download::objaverse::check_json_gz_file(&gz, "object-paths.json.gz")
    });
    checked.unwrap();
    assert!(
        peak < size / 4,
        "checking a {size}-byte .json.gz held {peak} bytes at once"
    );

    // A blob put from another file system (here /dev/shm) is copied in chunks.
    let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
        panic!("no /dev/shm: the cross-file-system copy cannot be measured here");
    };
    {
        use std::os::unix::fs::MetadataExt;
        let dev = |p: &std::path::Path| std::fs::metadata(p).unwrap().dev();
        assert_ne!(
            dev(shm.path()),
            dev(dir.path()),
            "/dev/shm and the temp directory are one file system: nothing would be copied"
        );
    }
    let src = shm.path().join("out.bin");
    std::fs::copy(&gz, &src).unwrap();
    let store = mvc::store::blobs::BlobStore::new(dir.path().join("blobs"));
    let ((digest, stored), peak) = peak_of(|| store.put_file(&src).unwrap());
    assert_eq!(stored as usize, size);
    assert!(!src.exists());
    assert!(store.verify(&digest).unwrap());
    assert!(
        peak < size / 4,
        "putting a {size}-byte file across file systems held {peak} bytes at once"
    );
}
