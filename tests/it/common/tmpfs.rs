//! A small tmpfs of the tests' own, to fill: what a full disk looks like to mvc.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted at a directory, unmounted when dropped.
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as mount(8) writes it, e.g. `6m`) at `dir`. Mounting needs
    /// root: elsewhere the test says so and is skipped (`None`), unless MVC_REQUIRE_ROOT=1
    /// (which `.ci/run` sets, CI running as root), which makes it fail instead.
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("running mount");
        if out.status.success() {
            return Some(Tmpfs {
                dir: dir.to_path_buf(),
            });
        }
        let why = String::from_utf8_lossy(&out.stderr);
        if std::env::var("MVC_REQUIRE_ROOT").as_deref() == Ok("1") {
            panic!("MVC_REQUIRE_ROOT=1 but a tmpfs cannot be mounted: {why}");
        }
        eprintln!("SKIPPED: mounting a tmpfs needs root ({why}); CI runs this test as root");
        None
    }

    /// Gives it another size, keeping what it holds (room freed, or taken away).
    pub fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process of the test that still has a file open there must not keep it.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
