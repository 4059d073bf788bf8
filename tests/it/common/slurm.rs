//! A real single-node Slurm cluster for tests: munged, slurmctld and slurmd on 127.0.0.1,
//! every file in a temp dir, stopped by pid when dropped. Recipe: ../shared/reference/stack.md.

use super::free_port;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
}

/// Why this machine cannot start a cluster, if it cannot.
pub fn unavailable() -> Option<String> {
    for tool in [
        "munged",
        "mungekey",
        "slurmctld",
        "slurmd",
        "sbatch",
        "squeue",
        "scancel",
    ] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false)
            || Path::new("/usr/sbin").join(tool).is_file();
        if !found {
            return Some(format!(
                "`{tool}` is not installed (apt-get install slurm-wlm munge)"
            ));
        }
    }
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Some("slurmd must run as root to start jobs".into());
    }
    None
}

fn tool(name: &str) -> PathBuf {
    let sbin = Path::new("/usr/sbin").join(name);
    if sbin.is_file() {
        sbin
    } else {
        PathBuf::from(name)
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The configuration of a one-node cluster on this host (its CPUs, sockets and half its
/// memory, as `slurmd -C` sees them), all its state under `d`, authenticated by the munged
/// on `sock`.
fn slurm_conf(d: &Path, sock: &Path) -> String {
    // The node as slurmd sees it (CPUs, sockets, memory), under this host's short name.
    let probe = Command::new(tool("slurmd")).arg("-C").output().unwrap();
    let node_line = String::from_utf8_lossy(&probe.stdout)
        .lines()
        .find(|l| l.starts_with("NodeName="))
        .expect("slurmd -C describes the node")
        .to_string();
    let host = String::from_utf8(Command::new("hostname").arg("-s").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string();
    let mut node = format!("NodeName={host} NodeAddr=127.0.0.1");
    for field in node_line.split_whitespace().skip(1) {
        if let Some(mem) = field.strip_prefix("RealMemory=") {
            let mem: u64 = mem.parse().unwrap_or(1000);
            node.push_str(&format!(" RealMemory={}", (mem / 2).max(100)));
        } else if !field.starts_with("UpTime") {
            node.push(' ');
            node.push_str(field);
        }
    }
    let p = |s: &str| d.join(s).display().to_string();
    let conf = format!(
        "ClusterName=mvctest\n\
         SlurmctldHost={host}(127.0.0.1)\n\
         SlurmUser=root\n\
         SlurmdUser=root\n\
         AuthType=auth/munge\n\
         AuthInfo=socket={sock}\n\
         CredType=cred/munge\n\
         ProctrackType=proctrack/linuxproc\n\
         TaskPlugin=task/none\n\
         JobAcctGatherType=jobacct_gather/none\n\
         AccountingStorageType=accounting_storage/none\n\
         JobCompType=jobcomp/none\n\
         SelectType=select/cons_tres\n\
         SelectTypeParameters=CR_Core\n\
         ReturnToService=2\n\
         MpiDefault=none\n\
         SlurmctldPort={ctld}\n\
         SlurmdPort={slurmd}\n\
         StateSaveLocation={state}\n\
         SlurmdSpoolDir={spool}\n\
         SlurmctldPidFile={ctld_pid}\n\
         SlurmdPidFile={slurmd_pid}\n\
         SlurmctldLogFile={ctld_log}\n\
         SlurmdLogFile={slurmd_log}\n\
         {node} State=UNKNOWN\n\
         PartitionName=debug Nodes=ALL Default=YES State=UP MaxTime=INFINITE\n",
        sock = sock.display(),
        ctld = free_port(),
        slurmd = free_port(),
        state = p("state"),
        spool = p("spool"),
        ctld_pid = p("slurmctld.pid"),
        slurmd_pid = p("slurmd.pid"),
        ctld_log = p("log/slurmctld.log"),
        slurmd_log = p("log/slurmd.log"),
    );
    conf
}

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::start_with("")
    }

    /// A cluster whose slurm.conf has `extra` lines too (e.g. `MaxArraySize=5`).
    pub fn start_with(extra: &str) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("mvc-slurm-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        for sub in ["munge", "state", "spool", "log"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.join("munge"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let key = d.join("munge/key");
        let sock = d.join("munge/sock");
        run(Command::new(tool("mungekey")).arg("-c").arg("-k").arg(&key));
        run(Command::new(tool("munged"))
            .arg("--key-file")
            .arg(&key)
            .arg("--socket")
            .arg(&sock)
            .arg("--pid-file")
            .arg(d.join("munge/pid"))
            .arg("--log-file")
            .arg(d.join("munge/log"))
            .arg("--seed-file")
            .arg(d.join("munge/seed"))
            .arg("--force"));

        let conf = slurm_conf(d, &sock) + extra;
        let conf_path = d.join("slurm.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let cluster = Cluster {
            dir,
            conf: conf_path,
        };
        // -i: ignore any state a crashed earlier test left (there is none in a fresh dir).
        run(cluster.cmd(tool("slurmctld")).arg("-i"));
        run(&mut cluster.cmd(tool("slurmd")));
        cluster.wait_until_idle();
        cluster
    }

    /// Waits (up to a minute) until the node is idle; past that, fails with the controller's
    /// log.
    fn wait_until_idle(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self
                .client("sinfo")
                .args(["-h", "-o", "%T"])
                .output()
                .unwrap();
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state == "idle" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the test cluster did not become idle (sinfo: {state:?}); logs in {}:\n{}",
                self.dir.path().display(),
                std::fs::read_to_string(self.dir.path().join("log/slurmctld.log"))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A daemon of this cluster, with its configuration.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c.arg("-f").arg(&self.conf);
        c
    }

    /// A Slurm client command (sbatch, squeue, …) for this cluster.
    pub fn client(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// `squeue -h` lines.
    pub fn queue(&self) -> Vec<String> {
        let out = self
            .client("squeue")
            .args(["-h", "-o", "%i|%T"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Every job slurmctld remembers (finished ones too, for MinJobAge).
    pub fn jobs_known(&self) -> usize {
        let out = self
            .client("scontrol")
            .args(["-o", "show", "job"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("JobId="))
            .count()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let d = self.dir.path();
        for pid in ["slurmd.pid", "slurmctld.pid", "munge/pid"] {
            if let Some(pid) = read_pid(&d.join(pid)) {
                // SAFETY: kill(2) on a daemon this cluster started.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
                let deadline = Instant::now() + Duration::from_secs(10);
                // SAFETY: signal 0 only checks that the process exists.
                while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
