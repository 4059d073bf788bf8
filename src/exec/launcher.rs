//! Starting task processes: `sh -c CMD` in its own process group, dying with mvc.
//!
//! Tasks must not outlive a killed mvc (they would run unobserved and race the next run), so
//! each gets `PR_SET_PDEATHSIG`. Setting it needs code between fork and exec, which makes
//! Rust's `Command` fork instead of `posix_spawn`, and a fork copies the page tables of the
//! whole orchestrator: measured here, a task's start cost grew from ~1.7 ms to over 30 ms as
//! mvc's memory grew during a 100,000-task run. So mvc starts one small helper process (its
//! own binary, `mvc __launcher`) while it is still small, and the helper forks the tasks. The
//! helper dies with mvc (its own death signal) and the tasks die with the helper.
//!
//! Protocol: one JSON request per line on the helper's stdin, one JSON event per line on its
//! stdout (`started` with the pid, then `exited`), matched by request id.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// The hidden subcommand that runs the helper.
pub const LAUNCHER_ARG: &str = "__launcher";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LaunchRequest {
    pub cmd: String,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Request {
    id: u64,
    #[serde(flatten)]
    launch: LaunchRequest,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    Started {
        pid: i32,
    },
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    Error {
        message: String,
    },
}

#[derive(Serialize, Deserialize)]
struct Reply {
    id: u64,
    #[serde(flatten)]
    event: Event,
}

/// A started task: its pid (also its process group) and the events still to come.
pub struct Launched {
    pub pid: i32,
    pub events: mpsc::UnboundedReceiver<Event>,
}

type Pending = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Event>>>>;

pub enum Launcher {
    /// The helper process.
    Helper {
        stdin: Mutex<ChildStdin>,
        pending: Pending,
        next: AtomicU64,
        _child: Child,
    },
    /// Forking from mvc itself: used when mvc runs as a library inside another program,
    /// where there is no `mvc` binary to start the helper from.
    Direct,
}

impl Launcher {
    /// Starts the helper from the running `mvc` binary; falls back to direct forks when the
    /// running program is not `mvc`.
    pub fn start() -> Launcher {
        if std::env::var_os("MVC_LAUNCHER").is_some_and(|v| v == "direct") {
            return Launcher::Direct;
        }
        let exe = std::env::current_exe().ok();
        let is_mvc = exe
            .as_ref()
            .and_then(|p| p.file_name())
            .is_some_and(|n| n == "mvc");
        match exe.filter(|_| is_mvc).map(start_helper) {
            Some(Ok(launcher)) => launcher,
            Some(Err(e)) => {
                tracing::warn!("could not start the task launcher ({e}); forking tasks directly");
                Launcher::Direct
            }
            None => Launcher::Direct,
        }
    }

    pub async fn launch(&self, request: LaunchRequest) -> std::io::Result<Launched> {
        match self {
            Launcher::Helper {
                stdin,
                pending,
                next,
                ..
            } => {
                let id = next.fetch_add(1, Ordering::Relaxed);
                let (tx, mut events) = mpsc::unbounded_channel();
                pending.lock().unwrap().insert(id, tx);
                let mut line = serde_json::to_vec(&Request {
                    id,
                    launch: request,
                })?;
                line.push(b'\n');
                if let Err(e) = stdin.lock().unwrap().write_all(&line) {
                    pending.lock().unwrap().remove(&id);
                    return Err(std::io::Error::other(format!(
                        "the task launcher is gone: {e}"
                    )));
                }
                match events.recv().await {
                    Some(Event::Started { pid }) => Ok(Launched { pid, events }),
                    Some(Event::Error { message }) => Err(std::io::Error::other(message)),
                    Some(Event::Exited { .. }) | None => Err(std::io::Error::other(
                        "the task launcher stopped before starting the task",
                    )),
                }
            }
            Launcher::Direct => launch_direct(request),
        }
    }
}

fn start_helper(exe: PathBuf) -> std::io::Result<Launcher> {
    let mut command = Command::new(exe);
    command
        .arg(LAUNCHER_ARG)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    die_with_parent(&mut command);
    let mut child = command.spawn()?;
    let stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let pending: Pending = Arc::default();
    let readers = pending.clone();
    std::thread::Builder::new()
        .name("mvc-launcher-events".into())
        .spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(reply) = serde_json::from_str::<Reply>(&line) else {
                    tracing::warn!("task launcher said something unreadable: {line}");
                    continue;
                };
                let done = matches!(reply.event, Event::Exited { .. } | Event::Error { .. });
                let mut pending = readers.lock().unwrap();
                if let Some(tx) = pending.get(&reply.id) {
                    let _ = tx.send(reply.event);
                }
                if done {
                    pending.remove(&reply.id);
                }
            }
            // The helper is gone: every task still waiting hears it.
            for (_, tx) in readers.lock().unwrap().drain() {
                let _ = tx.send(Event::Error {
                    message: "the task launcher process died".into(),
                });
            }
        })?;
    Ok(Launcher::Helper {
        stdin: Mutex::new(stdin),
        pending,
        next: AtomicU64::new(0),
        _child: child,
    })
}

/// `sh -c CMD` with the request's directory, environment and log files, in its own process
/// group (a terminal's Ctrl-C reaches mvc alone, which decides), dying with its parent.
fn task_command(request: &LaunchRequest) -> std::io::Result<Command> {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(&request.cmd)
        .current_dir(&request.cwd)
        .envs(request.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&request.stdout)?)
        .stderr(log_with_room(&request.stderr)?);
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    die_with_parent(&mut command);
    Ok(command)
}

/// Room kept for a task's stderr whatever happens to the disk: its complaint ("No space left
/// on device") is what says why it failed, and a full disk would otherwise swallow it.
const STDERR_ROOM: i64 = 64 << 10;

/// Creates a task's stderr file with [`STDERR_ROOM`] bytes allocated ahead (its size stays
/// 0). A disk too full for that is full now: the task is not started, and the error says so.
fn log_with_room(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::create(path)?;
    // SAFETY: fallocate on a descriptor we own; KEEP_SIZE leaves the file's length alone.
    let done =
        unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, STDERR_ROOM) };
    if done != 0 {
        let e = std::io::Error::last_os_error();
        // A file system without fallocate just goes without the room.
        if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
            return Err(std::io::Error::new(
                e.kind(),
                format!("keeping room for the task's log in {}: {e}", path.display()),
            ));
        }
    }
    Ok(file)
}

fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl, getppid and _exit are async-signal-safe; nothing else runs between
    // fork and exec.
    unsafe {
        command.pre_exec(|| {
            // The launcher blocks SIGCHLD for its signalfd; tasks start with none blocked.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // The parent may have died before prctl took effect.
            if libc::getppid() == 1 {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

fn launch_direct(request: LaunchRequest) -> std::io::Result<Launched> {
    let mut child = task_command(&request)?.spawn()?;
    let pid = child.id() as i32;
    let (tx, events) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("mvc-task-wait".into())
        .spawn(move || {
            let _ = tx.send(exit_event(child.wait()));
        })?;
    Ok(Launched { pid, events })
}

fn exit_event(status: std::io::Result<std::process::ExitStatus>) -> Event {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => Event::Exited {
            code: s.code(),
            signal: s.signal(),
        },
        Err(e) => Event::Error {
            message: format!("waiting for the task: {e}"),
        },
    }
}

/// The helper's main loop (`mvc __launcher`): start what is asked, report exits, and exit
/// when mvc closes its end (or dies, taking the helper with it).
///
/// Single-threaded on purpose: forking from a process with several threads costs a
/// cross-CPU TLB shootdown per fork, which virtual machines make expensive. Exits are
/// learnt from a signalfd for SIGCHLD, polled together with stdin.
pub fn helper_main() -> ! {
    // SAFETY: plain libc calls on our own descriptors and signal mask.
    let sfd = unsafe {
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut mask);
        libc::sigaddset(&mut mask, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &mask, std::ptr::null_mut());
        libc::signalfd(-1, &mask, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
    };
    if sfd < 0 {
        eprintln!(
            "mvc launcher: signalfd failed: {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(1);
    }
    let mut out = std::io::stdout().lock();
    let mut send = |id: u64, event: Event| {
        let mut line = serde_json::to_vec(&Reply { id, event }).expect("replies serialise");
        line.push(b'\n');
        let _ = out.write_all(&line);
        let _ = out.flush();
    };
    let mut running: HashMap<i32, u64> = HashMap::new();
    let mut input: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sfd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfd entries.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            std::process::exit(1);
        }
        if fds[1].revents != 0 {
            // SAFETY: draining a non-blocking signalfd into a plain buffer.
            unsafe { while libc::read(sfd, buf.as_mut_ptr().cast(), buf.len()) > 0 {} }
            reap_exited(&mut running, &mut send);
        }
        if fds[0].revents != 0 {
            // SAFETY: reading stdin into a buffer we own.
            let read = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if read <= 0 {
                // mvc closed its end: it is done with us.
                std::process::exit(0);
            }
            input.extend_from_slice(&buf[..read as usize]);
            while let Some(end) = input.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = input.drain(..=end).collect();
                start_requested(&line, &mut running, &mut send);
            }
        }
    }
}

/// Reaps every child that has ended and reports its exit.
fn reap_exited(running: &mut HashMap<i32, u64>, send: &mut impl FnMut(u64, Event)) {
    loop {
        let mut status = 0;
        // SAFETY: reaping our own children.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            break;
        }
        if let Some(id) = running.remove(&pid) {
            let event = if libc::WIFEXITED(status) {
                Event::Exited {
                    code: Some(libc::WEXITSTATUS(status)),
                    signal: None,
                }
            } else {
                Event::Exited {
                    code: None,
                    signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
                }
            };
            send(id, event);
        }
    }
}

/// Starts the process one request line asks for and reports it started (or why not).
fn start_requested(
    line: &[u8],
    running: &mut HashMap<i32, u64>,
    send: &mut impl FnMut(u64, Event),
) {
    let request: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => {
            // The helper's stderr is mvc's: the one place this process can say it.
            eprintln!("mvc launcher: unreadable request: {e}");
            return;
        }
    };
    match task_command(&request.launch).and_then(|mut c| c.spawn()) {
        Ok(child) => {
            let pid = child.id() as i32;
            running.insert(pid, request.id);
            send(request.id, Event::Started { pid });
            // Reaped through waitpid above; the handle itself is not needed.
            drop(child);
        }
        Err(e) => send(
            request.id,
            Event::Error {
                message: format!("starting `sh`: {e}"),
            },
        ),
    }
}
