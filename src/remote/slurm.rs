//! Workers through Slurm (`[executor] kind = "slurm"`): the coordinator submits
//! `mvc worker` jobs with `sbatch` (job arrays sized to the queued work, capped by
//! `max_workers`), watches them with `squeue`, submits again when workers end while work
//! remains, and `scancel`s its jobs when the run ends. Slurm allocates and places; mvc caches
//! and dispatches.
//!
//! Workers are grouped in classes, one per distinct `gres`: a stage kind with
//! `gres = "gpu:1"` gets workers submitted with `--gres=gpu:1` that offer one gpu slot, so
//! its units (which need a gpu slot) go to them.

use super::coordinator::Coordinator;
use crate::pipeline::Pipeline;
use crate::resources::Resources;
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// The built-in worker job script (`workers/slurm/worker.sbatch`).
pub const WORKER_SCRIPT: &str = include_str!("../../workers/slurm/worker.sbatch");

pub use crate::pipeline::executor::{SlurmConfig, TableError};

/// A pipeline name as part of a Slurm job name: letters, digits, `.`, `_` and `-` kept,
/// anything else `_`, at most 40 characters. `squeue --name` splits its list on commas and
/// the launcher splits squeue's lines on `|`: a name holding either made running workers
/// invisible, and the launcher submitted again and again.
pub fn job_name_part(name: &str) -> String {
    name.chars()
        .take(40)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// GPUs a gres asks for: `gpu:2` and `gpu:a100:2` are 2, `gpu` is 1, anything else 0.
pub fn gres_gpus(gres: &str) -> u32 {
    let mut parts = gres.split(':');
    if parts.next() != Some("gpu") {
        return 0;
    }
    parts.next_back().and_then(|n| n.parse().ok()).unwrap_or(1)
}

/// One kind of worker job: those without gres, and one per distinct gres.
#[derive(Debug)]
struct Class {
    gres: Option<String>,
    job_name: String,
    slots: Resources,
}

/// Jobs in a row that end without their worker ever registering before the launcher stops
/// submitting and the run stops: a wrong `MVC_BIN`, a node without the shared file system or
/// a script that fails would otherwise have it submit job after job.
pub const DEAD_JOBS_LIMIT: usize = 3;

/// A job submitted is given this long to show in squeue before its absence means it ended.
const SHOW_UP: Duration = Duration::from_secs(3);

/// What the cluster lets one user submit (`scontrol show config`): Slurm refuses an array
/// larger than `MaxArraySize` (default 1001) and any job past `MaxJobCount` (default 10,000)
/// in the system, so the launcher splits its worker arrays and caps its jobs to fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterLimits {
    pub max_array_size: u64,
    pub max_job_count: u64,
}

impl ClusterLimits {
    /// Slurm's own defaults, for a cluster whose configuration cannot be read.
    pub const DEFAULT: ClusterLimits = ClusterLimits {
        max_array_size: 1001,
        max_job_count: 10_000,
    };

    /// The limits in `scontrol show config`'s output (`MaxArraySize = 5`); a limit it does
    /// not give keeps Slurm's default.
    pub fn parse(config: &str) -> ClusterLimits {
        let value = |name: &str| {
            config.lines().find_map(|line| {
                let (key, value) = line.split_once('=')?;
                (key.trim() == name)
                    .then(|| value.split_whitespace().next()?.parse::<u64>().ok())
                    .flatten()
            })
        };
        ClusterLimits {
            // An array of 0 jobs is no array: at least one job per submission.
            max_array_size: value("MaxArraySize")
                .unwrap_or(Self::DEFAULT.max_array_size)
                .max(1),
            max_job_count: value("MaxJobCount").unwrap_or(Self::DEFAULT.max_job_count),
        }
    }

    /// The sizes of the arrays `count` jobs are submitted as: as large as the cluster allows.
    pub fn arrays(&self, count: u64) -> Vec<u64> {
        let mut left = count;
        let mut sizes = Vec::new();
        while left > 0 {
            let size = left.min(self.max_array_size);
            sizes.push(size);
            left -= size;
        }
        sizes
    }
}

/// What the launcher did, for the run's last lines.
#[derive(Debug, Default)]
pub struct SlurmSummary {
    pub jobs_submitted: u64,
    pub arrays: Vec<String>,
}

pub struct SlurmLauncher {
    config: SlurmConfig,
    coord: Arc<Coordinator>,
    classes: Vec<Class>,
    /// Stage name → its class, and what one of its tasks needs.
    stage_class: HashMap<String, (usize, Resources)>,
    script: PathBuf,
    log_dir: PathBuf,
    connect: String,
    token_file: Option<PathBuf>,
    summary: SlurmSummary,
    /// Job tasks submitted and not yet seen to end: `ARRAY_TASK` → (job name, submitted).
    watched: HashMap<String, (String, Instant)>,
    /// Log files of the jobs that ended without registering since one last did.
    dead: Vec<PathBuf>,
    /// Where its lines for people go (what it submitted, what Slurm refused).
    say: super::Say,
    /// What the cluster lets one submission hold, read when the launcher starts.
    limits: ClusterLimits,
}

/// Stage name → its job class, and what one of its tasks needs.
type StageClasses = HashMap<String, (usize, Resources)>;

/// The kinds of worker job the pipeline needs: one for cpu work, and one per `gres` its
/// GPU stages ask for; and each stage's class with what one of its tasks needs. A stage
/// whose tasks need more than its jobs would offer is an error that says what to set.
fn job_classes(
    config: &SlurmConfig,
    pipeline: &Pipeline,
    base: &str,
) -> Result<(Vec<Class>, StageClasses)> {
    let mut classes = vec![Class {
        gres: None,
        job_name: format!("{base}-cpu"),
        slots: Resources {
            cpu: config.cpus_per_worker,
            ..Resources::default()
        },
    }];
    let mut stage_class = HashMap::new();
    for stage in &pipeline.workflow.stages {
        let need = stage.kind.resources();
        let class = match config.gres.get(stage.kind.kind()) {
            None => 0,
            Some(g) => match classes.iter().position(|c| c.gres.as_deref() == Some(g)) {
                Some(k) => k,
                None => {
                    classes.push(Class {
                        gres: Some(g.clone()),
                        job_name: format!("{base}-{}", classes.len()),
                        slots: Resources {
                            cpu: config.cpus_per_worker,
                            gpu: gres_gpus(g),
                            ..Resources::default()
                        },
                    });
                    classes.len() - 1
                }
            },
        };
        let mut offered = classes[class].slots;
        // Blender and network slots are what the node has: not known here, assumed.
        offered.blender = need.blender;
        offered.net = need.net;
        if let Some((slot, n, have)) = offered.shortfall(&need) {
            bail!(
                "stage `{}` needs {slot} = {n} per task, but its Slurm workers would offer \
                 {have}; {}",
                stage.name,
                if slot == "gpu" {
                    format!("give [executor.gres] {} = \"gpu:{n}\"", stage.kind.kind())
                } else {
                    format!("raise cpus_per_worker to {n}")
                }
            );
        }
        stage_class.insert(stage.name.clone(), (class, need));
    }
    Ok((classes, stage_class))
}

impl SlurmLauncher {
    /// Checks that Slurm's commands answer and writes the job script into the cache.
    pub fn new(
        config: SlurmConfig,
        pipeline: &Pipeline,
        coord: Arc<Coordinator>,
        token_file: Option<&Path>,
        say: super::Say,
    ) -> Result<SlurmLauncher> {
        let base = format!(
            "mvc-{}-{}",
            job_name_part(&pipeline.workflow.name),
            std::process::id()
        );
        let (classes, stage_class) = job_classes(&config, pipeline, &base)?;
        // Not `sbatch --version`: it needs the cluster's configuration to answer at all.
        let on_path = |tool: &str| {
            std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        };
        if let Some(tool) = ["sbatch", "squeue", "scancel"]
            .into_iter()
            .find(|t| !on_path(t))
        {
            bail!(
                "[executor] kind = \"slurm\" needs Slurm's commands (sbatch, squeue, scancel) \
                 on PATH; `{tool}` is not there"
            );
        }
        let dir = coord.store.dir().join("slurm");
        let log_dir = dir.join("logs");
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        let script = match &config.script {
            Some(path) => std::path::absolute(path)?,
            None => {
                let path = dir.join("worker.sbatch");
                std::fs::write(&path, WORKER_SCRIPT)
                    .with_context(|| format!("writing {}", path.display()))?;
                path
            }
        };
        let connect = match &config.connect {
            Some(url) => url.trim_end_matches('/').to_string(),
            None if coord.addr.ip().is_unspecified() => format!(
                "{}://{}:{}",
                coord.scheme(),
                crate::resources::hostname(),
                coord.addr.port()
            ),
            None => coord.url(),
        };
        Ok(SlurmLauncher {
            config,
            coord,
            classes,
            stage_class,
            script,
            log_dir,
            connect,
            token_file: token_file.map(std::path::absolute).transpose()?,
            summary: SlurmSummary::default(),
            watched: HashMap::new(),
            dead: Vec::new(),
            say,
            limits: ClusterLimits::DEFAULT,
        })
    }

    /// The cluster's limits, from `scontrol show config`; Slurm's defaults (and a line
    /// saying so) when it does not answer.
    async fn read_limits(&self) -> ClusterLimits {
        let out = Command::new("scontrol")
            .args(["show", "config"])
            .output()
            .await;
        match out {
            Ok(out) if out.status.success() => {
                ClusterLimits::parse(&String::from_utf8_lossy(&out.stdout))
            }
            other => {
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                self.say.line(&format!(
                    "slurm: `scontrol show config` did not answer ({why}); assuming Slurm's \
                     default limits (MaxArraySize 1001, MaxJobCount 10000)"
                ));
                ClusterLimits::DEFAULT
            }
        }
    }

    /// Submits and watches worker jobs until `stop`, then cancels what is left and waits
    /// for the queue to be free of them.
    pub async fn run(mut self, stop: CancellationToken) -> SlurmSummary {
        self.limits = self.read_limits().await;
        let mut failures = 0u32;
        let mut quiet_until = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            if Instant::now() < quiet_until {
                continue;
            }
            match self.step().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    self.say.line(&format!("slurm: {e:#}"));
                    // Slurm busy or misconfigured: try again later, not in a tight loop.
                    quiet_until =
                        Instant::now() + Duration::from_secs(5 * u64::from(failures.min(12)));
                }
            }
        }
        self.cancel_all().await;
        self.summary
    }

    /// Worker tasks (pending or running) of each class, from squeue, and their ids
    /// (`ARRAY_TASK`).
    async fn active(&self) -> Result<(Vec<u64>, std::collections::HashSet<String>)> {
        let names: Vec<&str> = self.classes.iter().map(|c| c.job_name.as_str()).collect();
        let out = Command::new("squeue")
            .args(["-h", "-r", "-o", "%j|%i|%T", "--name"])
            .arg(names.join(","))
            .output()
            .await
            .context("running squeue")?;
        if !out.status.success() {
            bail!(
                "squeue failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let mut counts = vec![0u64; self.classes.len()];
        let mut ids = std::collections::HashSet::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut fields = line.split('|');
            let (Some(name), Some(id), Some(state)) = (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if matches!(state, "COMPLETING" | "COMPLETED" | "CANCELLED" | "FAILED") {
                continue;
            }
            if let Some(k) = names.iter().position(|n| *n == name) {
                counts[k] += 1;
                ids.insert(id.to_string());
            }
        }
        Ok((counts, ids))
    }

    /// Notes the jobs that ended since the last look; when [`DEAD_JOBS_LIMIT`] in a row
    /// ended without their worker registering, stops the run (through the coordinator)
    /// with their logs named. Returns whether it stopped.
    fn watch_deaths(&mut self, active: &std::collections::HashSet<String>) -> bool {
        if self.dead.len() >= DEAD_JOBS_LIMIT {
            // The run that stopped is over and a new one began (`mvc serve`): try again.
            self.dead.clear();
        }
        // Looked up under the lock, not copied: the set grows with every job of the run.
        let shared = self.coord.shared.lock().unwrap();
        let registered = &shared.slurm_jobs_registered;
        let now = Instant::now();
        let mut ended: Vec<(String, String)> = Vec::new();
        let mut any_registered = false;
        self.watched.retain(|id, (name, submitted)| {
            if registered.contains(id) {
                any_registered = true;
                return false;
            }
            if active.contains(id) || now.duration_since(*submitted) < SHOW_UP {
                return true;
            }
            ended.push((id.clone(), name.clone()));
            false
        });
        drop(shared);
        if any_registered {
            // Workers do start: earlier deaths were the nodes', not the setup's.
            self.dead.clear();
        }
        ended.sort();
        for (id, name) in ended {
            self.dead
                .push(self.log_dir.join(format!("{name}-{id}.log")));
        }
        if self.dead.len() < DEAD_JOBS_LIMIT {
            return false;
        }
        let last_lines = std::fs::read_to_string(&self.dead[0])
            .ok()
            .map(|log| {
                let lines: Vec<&str> = log.lines().rev().take(3).collect();
                lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
            })
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("; the first ends: {l}"))
            .unwrap_or_default();
        let logs: Vec<String> = self.dead.iter().map(|p| p.display().to_string()).collect();
        let why = format!(
            "slurm: {} worker jobs in a row ended without their worker registering, so no more \
             are submitted (is MVC_BIN, the job script or the file system the same on the \
             nodes?); their logs: {}{last_lines}",
            self.dead.len(),
            logs.join(", ")
        );
        // The run says it, once, as the reason its queued tasks fail.
        self.coord.shared.lock().unwrap().halt = Some(why);
        true
    }

    /// One look at the queue: submits the workers that queued work lacks.
    async fn step(&mut self) -> Result<()> {
        let queued: Vec<u64> = {
            let shared = self.coord.shared.lock().unwrap();
            if shared.finished || shared.halt.is_some() {
                return Ok(());
            }
            let mut per_class = vec![0u64; self.classes.len()];
            for (stage, n) in &shared.queued_by_stage {
                if let Some((class, _)) = self.stage_class.get(stage) {
                    per_class[*class] += n;
                }
            }
            per_class
        };
        if queued.iter().all(|n| *n == 0) {
            return Ok(());
        }
        let (active, ids) = self.active().await?;
        if self.watch_deaths(&ids) {
            return Ok(());
        }
        let mut total: u64 = active.iter().sum();
        // Never more jobs than the cluster holds, whatever max_workers says.
        let most = u64::from(self.config.max_workers).min(self.limits.max_job_count);
        for k in 0..self.classes.len() {
            let room = most.saturating_sub(total);
            let want = queued[k].saturating_sub(active[k]).min(room);
            for size in self.limits.arrays(want) {
                self.submit_array(k, size, queued[k]).await?;
                total += size;
            }
        }
        Ok(())
    }

    /// Submits one array of `size` worker jobs of class `k`, and watches them.
    async fn submit_array(&mut self, k: usize, size: u64, queued: u64) -> Result<()> {
        let id = self.submit(&self.classes[k], size).await?;
        let class = &self.classes[k];
        let now = Instant::now();
        for task in 0..size {
            self.watched
                .insert(format!("{id}_{task}"), (class.job_name.clone(), now));
        }
        self.summary.jobs_submitted += size;
        self.summary.arrays.push(id.clone());
        self.say.line(&format!(
            "slurm: submitted {size} worker job(s) as array {id}{} for {queued} queued task(s)",
            class
                .gres
                .as_ref()
                .map(|g| format!(" (--gres={g})"))
                .unwrap_or_default(),
        ));
        Ok(())
    }

    async fn submit(&self, class: &Class, count: u64) -> Result<String> {
        let mut cmd = Command::new("sbatch");
        cmd.arg("--parsable")
            .arg(format!("--job-name={}", class.job_name))
            .arg(format!("--array=0-{}", count - 1))
            .arg(format!("--cpus-per-task={}", self.config.cpus_per_worker))
            .arg(format!("--output={}/%x-%A_%a.log", self.log_dir.display()))
            .arg(format!("--chdir={}", std::env::current_dir()?.display()));
        if let Some(p) = &self.config.partition {
            cmd.arg(format!("--partition={p}"));
        }
        if let Some(a) = &self.config.account {
            cmd.arg(format!("--account={a}"));
        }
        if let Some(t) = &self.config.time {
            cmd.arg(format!("--time={t}"));
        }
        if let Some(g) = &class.gres {
            cmd.arg(format!("--gres={g}"));
        }
        let exe = std::env::current_exe().context("finding the mvc binary for the workers")?;
        // The job's variables travel in sbatch's own environment (`--export=ALL`), not in
        // `--export=NAME=value,…`, which splits on commas: the slots (`cpu=1,gpu=1`) and any
        // path may hold one.
        cmd.arg("--export=ALL")
            .env("MVC_BIN", &exe)
            .env("MVC_CONNECT", &self.connect)
            .env("MVC_SLOTS", class.slots.to_string())
            .env(
                "MVC_IDLE",
                self.config.exit_when_idle.as_secs_f64().to_string(),
            );
        match &self.token_file {
            Some(f) => cmd.env("MVC_TOKEN_FILE", f),
            None => cmd.env_remove("MVC_TOKEN_FILE"),
        };
        // A self-signed coordinator's fingerprint travels as the token does: the worker
        // reads it from its environment.
        match self.coord.fingerprint() {
            Some(f) => cmd.env(super::tls::FINGERPRINT_ENV, f.to_string()),
            None => cmd.env_remove(super::tls::FINGERPRINT_ENV),
        };
        cmd.arg(&self.script);
        let out = cmd.output().await.context("running sbatch")?;
        if !out.status.success() {
            bail!(
                "sbatch refused the worker jobs: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(id.split(';').next().unwrap_or("").to_string())
    }

    /// Cancels every worker job of this run and waits (up to a minute) until squeue no
    /// longer lists them.
    async fn cancel_all(&mut self) {
        if self.summary.jobs_submitted == 0 {
            return;
        }
        for class in &self.classes {
            let out = Command::new("scancel")
                .arg(format!("--name={}", class.job_name))
                .output()
                .await;
            if let Ok(out) = out
                && !out.status.success()
            {
                self.say.line(&format!(
                    "slurm: scancel --name={} failed: {}",
                    class.job_name,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let names: Vec<&str> = self.classes.iter().map(|c| c.job_name.as_str()).collect();
            let out = Command::new("squeue")
                .args(["-h", "-o", "%i", "--name"])
                .arg(names.join(","))
                .output()
                .await;
            let empty = matches!(&out, Ok(o) if o.status.success() && o.stdout.iter().all(|b| b.is_ascii_whitespace()));
            if empty || Instant::now() > deadline {
                if !empty {
                    self.say
                        .line("slurm: some worker jobs are still listed by squeue after scancel");
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_arrays_fit_the_clusters_limits() {
        let config = "MaxArraySize            = 5\nMaxJobCount             = 10000\n\
                      MaxJobId                = 67043328\n";
        let limits = ClusterLimits::parse(config);
        assert_eq!(limits.max_array_size, 5);
        assert_eq!(limits.max_job_count, 10_000);
        assert_eq!(limits.arrays(12), [5, 5, 2]);
        assert_eq!(limits.arrays(5), [5]);
        assert!(limits.arrays(0).is_empty());
        assert_eq!(ClusterLimits::parse("nothing here"), ClusterLimits::DEFAULT);
        assert_eq!(ClusterLimits::parse("MaxArraySize = 0").arrays(2), [1, 1]);
        assert_eq!(ClusterLimits::DEFAULT.arrays(2500), [1001, 1001, 498]);
    }

    #[test]
    fn gres_counts_gpus() {
        assert_eq!(gres_gpus("gpu:1"), 1);
        assert_eq!(gres_gpus("gpu:a100:2"), 2);
        assert_eq!(gres_gpus("gpu"), 1);
        assert_eq!(gres_gpus("mps:100"), 0);
    }
}
