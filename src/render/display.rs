//! A virtual X display for Blender's OpenGL engines (EEVEE, Workbench) on a machine with no
//! display: one `Xvfb` per Blender pool, with Mesa's software renderer behind it.
//!
//! Why not `xvfb-run` around each Blender: it is a shell script, so killing it (a timeout, a
//! crash, Ctrl-C) would leave its Blender and its X server running; and `xvfb-run -a` picks a
//! display number by looking for lock files, which two starting at once can both pick. Here
//! mvc starts `Xvfb` itself as its own child (killed with it), `-displayfd` makes the server
//! choose a free display number and say which, and an authority file with a fresh cookie (the
//! file `xvfb-run` makes with `xauth`, written here directly) keeps other users' programs off it.

use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long Xvfb may take to say which display it opened.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The engines that draw with OpenGL (Cycles on the CPU needs no display).
pub fn needs_opengl(engine: &str) -> bool {
    matches!(engine, "BLENDER_EEVEE" | "BLENDER_WORKBENCH")
}

/// Whether this process already has an X display to give Blender.
pub fn display_is_set() -> bool {
    std::env::var_os("DISPLAY").is_some_and(|d| !d.is_empty())
}

/// `Xvfb` on PATH.
pub fn find_xvfb() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("Xvfb"))
        .find(|p| p.is_file())
}

/// The Xvfb a pool for `engine` must start: none for Cycles or when a display is set, else
/// the one `find` gives, or an error saying what to install.
pub fn xvfb_to_start(
    engine: &str,
    display_set: bool,
    find: impl FnOnce() -> Option<PathBuf>,
) -> anyhow::Result<Option<PathBuf>> {
    if !needs_opengl(engine) || display_set {
        return Ok(None);
    }
    match find() {
        Some(xvfb) => Ok(Some(xvfb)),
        None => anyhow::bail!(missing_xvfb_message(engine)),
    }
}

/// What users read when an OpenGL engine has neither a display nor Xvfb.
fn missing_xvfb_message(engine: &str) -> String {
    format!(
        "the engine {engine} draws with OpenGL, and this machine has no display (DISPLAY is \
         not set) and no Xvfb on PATH: install Xvfb and Mesa's software OpenGL (Debian: \
         apt-get install xvfb libgl1-mesa-dri) and mvc starts a virtual display itself, or \
         use engine = \"CYCLES\", which needs none"
    )
}

/// A running Xvfb, stopped when dropped (and killed with mvc).
#[derive(Debug)]
pub struct VirtualDisplay {
    /// `:N`, for Blender's `DISPLAY`.
    pub display: String,
    /// The authority file holding the server's cookie, for Blender's `XAUTHORITY`.
    pub authority: PathBuf,
    server: Child,
}

impl VirtualDisplay {
    /// Whether the server is still up.
    pub fn is_running(&mut self) -> bool {
        matches!(self.server.try_wait(), Ok(None))
    }

    /// Starts `xvfb` with its authority file in `dir`.
    pub async fn start(xvfb: &Path, dir: &Path) -> Result<VirtualDisplay, String> {
        let authority = dir.join("Xauthority");
        let mut cookie = [0u8; 16];
        getrandom::fill(&mut cookie).map_err(|e| format!("making an X cookie: {e}"))?;
        std::fs::write(&authority, authority_file(&cookie))
            .map_err(|e| format!("writing {}: {e}", authority.display()))?;
        let mut cmd = Command::new(xvfb);
        // -displayfd 1: the server picks the first free display and writes its number on
        // stdout once it accepts connections. A 24-bit screen is what Mesa's GLX visuals need.
        cmd.args([
            "-displayfd",
            "1",
            "-nolisten",
            "tcp",
            "-screen",
            "0",
            "1024x768x24",
        ])
        .arg("-auth")
        .arg(&authority)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
        super::dies_with_mvc(&mut cmd);
        let mut server = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", xvfb.display()))?;
        let stdout = server.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let number = match tokio::time::timeout(START_TIMEOUT, lines.next_line()).await {
            Ok(Ok(Some(line))) if line.trim().parse::<u32>().is_ok() => line.trim().to_string(),
            Ok(Ok(other)) => {
                return Err(format!(
                    "{} did not open a display (it said {:?}); is it Xvfb?",
                    xvfb.display(),
                    other.unwrap_or_default()
                ));
            }
            Ok(Err(e)) => return Err(format!("reading from {}: {e}", xvfb.display())),
            Err(_) => {
                return Err(format!(
                    "{} opened no display within {}s",
                    xvfb.display(),
                    START_TIMEOUT.as_secs()
                ));
            }
        };
        Ok(VirtualDisplay {
            display: format!(":{number}"),
            authority,
            server,
        })
    }
}

/// An X authority file with one entry: any host, any display, MIT-MAGIC-COOKIE-1 `cookie`.
/// The format (libXau): per entry, a big-endian u16 family, then address, display number,
/// protocol name and data, each as a big-endian u16 length and its bytes. The server reads
/// only the name and data; clients match the wildcard family (0xffff) and the empty number
/// whatever display they open.
fn authority_file(cookie: &[u8]) -> Vec<u8> {
    const FAMILY_WILD: u16 = 0xffff;
    let mut out = FAMILY_WILD.to_be_bytes().to_vec();
    for field in [&b""[..], b"", b"MIT-MAGIC-COOKIE-1", cookie] {
        out.extend_from_slice(&(field.len() as u16).to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authority_file_has_one_wildcard_cookie() {
        let file = authority_file(&[7u8; 16]);
        // family, two empty fields, the name, the cookie.
        assert_eq!(&file[..6], &[0xff, 0xff, 0, 0, 0, 0]);
        assert_eq!(&file[6..8], &[0, 18]);
        assert_eq!(&file[8..26], b"MIT-MAGIC-COOKIE-1");
        assert_eq!(&file[26..28], &[0, 16]);
        assert_eq!(&file[28..], &[7u8; 16]);
    }

    #[tokio::test]
    async fn a_missing_xvfb_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = VirtualDisplay::start(Path::new("/nonexistent/Xvfb"), dir.path())
            .await
            .unwrap_err();
        assert!(err.contains("starting /nonexistent/Xvfb"), "{err}");
    }

    #[tokio::test]
    async fn a_real_xvfb_opens_a_display_and_its_death_is_seen() {
        let Some(xvfb) = find_xvfb() else {
            if std::env::var("MVC_REQUIRE_BLENDER").as_deref() == Ok("1") {
                panic!("MVC_REQUIRE_BLENDER=1 but Xvfb is not installed (apt-get install xvfb)");
            }
            eprintln!("SKIPPED: Xvfb is not installed (apt-get install xvfb)");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut d = VirtualDisplay::start(&xvfb, dir.path()).await.unwrap();
        assert!(
            d.display.starts_with(':') && d.display.len() > 1,
            "{}",
            d.display
        );
        assert_eq!(std::fs::read(&d.authority).unwrap().len(), 28 + 16);
        assert!(d.is_running());
        d.server.start_kill().unwrap();
        let _ = d.server.wait().await;
        assert!(!d.is_running());
    }

    #[test]
    fn only_an_opengl_engine_without_a_display_needs_xvfb_and_its_absence_says_what_to_install() {
        let here = || Some(PathBuf::from("/usr/bin/Xvfb"));
        let none = || None;
        assert_eq!(xvfb_to_start("CYCLES", false, none).unwrap(), None);
        assert_eq!(xvfb_to_start("BLENDER_EEVEE", true, none).unwrap(), None);
        assert_eq!(xvfb_to_start("BLENDER_EEVEE", false, here).unwrap(), here());
        let err = xvfb_to_start("BLENDER_EEVEE", false, none)
            .unwrap_err()
            .to_string();
        assert!(err.contains("BLENDER_EEVEE draws with OpenGL"), "{err}");
        assert!(
            err.contains("apt-get install xvfb libgl1-mesa-dri"),
            "{err}"
        );
        assert!(err.contains("engine = \"CYCLES\""), "{err}");
    }
}
