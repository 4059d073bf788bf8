//! The `[executor]` table of a pipeline file: slots per resource, and where workers come
//! from (`kind = "slurm"` and its settings, checked here; `remote::slurm` launches them).

use crate::resources::Resources;
use crate::stages::KINDS;
use indexmap::IndexMap;
use serde::Deserialize;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// The `[executor]` table: slots per resource (defaults from the machine), and where
/// workers come from (`kind = "slurm"` and its settings, see `remote::slurm`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorTable {
    pub cpu: Option<u32>,
    pub gpu: Option<u32>,
    pub blender: Option<u32>,
    pub net: Option<u32>,
    /// `local` (the default) or `slurm`.
    pub kind: Option<Spanned<String>>,
    pub partition: Option<String>,
    pub account: Option<String>,
    /// The worker jobs' time limit, in Slurm's format (`HH:MM:SS`, `D-HH`).
    pub time: Option<String>,
    pub cpus_per_worker: Option<Spanned<u32>>,
    pub max_workers: Option<Spanned<u32>>,
    /// Stage kind → the generic resources its workers ask for, e.g. `embed = "gpu:1"`.
    #[serde(default)]
    pub gres: IndexMap<String, Spanned<String>>,
    /// The URL workers reach the coordinator at (default: from the listening address).
    pub connect: Option<String>,
    /// Seconds a worker job waits without work before it exits.
    pub exit_when_idle: Option<Spanned<f64>>,
    /// Whether this machine also runs units (default: no, under Slurm: a login node).
    pub local: Option<bool>,
    /// A worker job script to use instead of the built-in `workers/slurm/worker.sbatch`.
    pub script: Option<String>,
}

impl ExecutorTable {
    pub fn apply(&self, base: Resources) -> Resources {
        Resources {
            cpu: self.cpu.unwrap_or(base.cpu),
            gpu: self.gpu.unwrap_or(base.gpu),
            blender: self.blender.unwrap_or(base.blender),
            net: self.net.unwrap_or(base.net),
        }
    }
}

/// The Slurm settings of an `[executor]` table, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct SlurmConfig {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub time: Option<String>,
    pub cpus_per_worker: u32,
    pub max_workers: u32,
    /// Stage kind → gres.
    pub gres: IndexMap<String, String>,
    pub connect: Option<String>,
    pub exit_when_idle: Duration,
    pub local: bool,
    pub script: Option<PathBuf>,
}

/// An error in the `[executor]` table, at a value's position when it has one.
pub type TableError = (Option<Range<usize>>, String);

impl SlurmConfig {
    /// `None` for a local executor; errors name the field and say what to write.
    pub fn from_table(t: &ExecutorTable) -> Result<Option<SlurmConfig>, TableError> {
        let kind = t
            .kind
            .as_ref()
            .map(|k| k.get_ref().as_str())
            .unwrap_or("local");
        let slurm_only = [
            ("partition", t.partition.is_some()),
            ("account", t.account.is_some()),
            ("time", t.time.is_some()),
            ("cpus_per_worker", t.cpus_per_worker.is_some()),
            ("max_workers", t.max_workers.is_some()),
            ("gres", !t.gres.is_empty()),
            ("connect", t.connect.is_some()),
            ("exit_when_idle", t.exit_when_idle.is_some()),
            ("local", t.local.is_some()),
            ("script", t.script.is_some()),
        ];
        match kind {
            "local" => {
                if let Some((field, _)) = slurm_only.iter().find(|(_, set)| *set) {
                    return Err((
                        t.kind.as_ref().map(|k| k.span()),
                        format!(
                            "[executor]: `{field}` is a Slurm setting; add `kind = \"slurm\"` \
                             or remove it"
                        ),
                    ));
                }
                return Ok(None);
            }
            "slurm" => {}
            other => {
                return Err((
                    t.kind.as_ref().map(|k| k.span()),
                    format!(
                        "[executor]: kind `{other}` is not known; executors are `local` (the \
                         default) and `slurm`"
                    ),
                ));
            }
        }
        let positive = |v: &Option<toml::Spanned<u32>>, field: &str, default: u32| match v {
            None => Ok(default),
            Some(n) if *n.get_ref() == 0 => Err((
                Some(n.span()),
                format!("[executor]: `{field}` must be at least 1"),
            )),
            Some(n) => Ok(*n.get_ref()),
        };
        let cpus_per_worker = positive(&t.cpus_per_worker, "cpus_per_worker", 1)?;
        let max_workers = positive(&t.max_workers, "max_workers", 4)?;
        let mut gres = IndexMap::new();
        for (kind, value) in &t.gres {
            if !KINDS.contains(&kind.as_str()) {
                return Err((
                    Some(value.span()),
                    format!(
                        "[executor.gres]: `{kind}` is not a stage kind; gres is given per kind: {}",
                        KINDS.join(", ")
                    ),
                ));
            }
            let g = value.get_ref().trim();
            if g.is_empty() || g.contains(char::is_whitespace) {
                return Err((
                    Some(value.span()),
                    format!("[executor.gres]: `{g}` is not a gres such as \"gpu:1\""),
                ));
            }
            gres.insert(kind.clone(), g.to_string());
        }
        let exit_when_idle = match &t.exit_when_idle {
            None => Duration::from_secs(30),
            Some(s) if !(*s.get_ref() >= 0.0 && s.get_ref().is_finite()) => {
                return Err((
                    Some(s.span()),
                    "[executor]: `exit_when_idle` must be a number of seconds".into(),
                ));
            }
            Some(s) => Duration::from_secs_f64(*s.get_ref()),
        };
        Ok(Some(SlurmConfig {
            partition: t.partition.clone(),
            account: t.account.clone(),
            time: t.time.clone(),
            cpus_per_worker,
            max_workers,
            gres,
            connect: t.connect.clone(),
            exit_when_idle,
            local: t.local.unwrap_or(false),
            script: t.script.as_ref().map(PathBuf::from),
        }))
    }
}
