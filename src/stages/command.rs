//! Stage kind `command`: runs a shell command per item, with declared inputs and outputs.
//!
//! Each task runs `sh -c CMD` in a fresh directory with:
//! - `MVC_ITEM`: the item id;
//! - `MVC_OUT`: a directory it fills; every file left there becomes an output;
//! - `MVC_IN_<UPSTREAM>`: the upstream item's output files (per item), or one sub-directory
//!   per upstream item (all at once);
//! - `MVC_PARAM_<NAME>`: each entry of `params` (strings as they are, other values as JSON);
//! - `MVC_FILE_<NAME>`: the absolute path of each entry of `files`.

use super::{
    Binding, ExecCtx, ExpandCtx, Expansion, ItemDecl, ParamCtx, PlannedItem, StageKind,
    TaskOutcome, UnitTask, env_name, validate_item_id,
};
use crate::exec::blocking_if;
use crate::exec::launcher::{Event, LaunchRequest};
use crate::exec::workdir::{ingest_outputs, materialize_input, safe_relative};
use crate::resources::Resources;
use crate::store::records::now_ms;
use crate::task::{ParamSlice, canonical_json, flatten_into};
use anyhow::{Context, Result, bail};
use indexmap::IndexMap;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use toml::Spanned;

/// The `kind` of its tables in pipeline files (and of its key records).
pub const KIND: &str = "command";

/// Bump when the same command and inputs would give different outputs (environment,
/// input layout, output rules).
const VERSION: u32 = 1;

/// The id of the single task of an all-at-once stage without items of its own.
pub const ALL_ITEM: &str = "all";

/// The `[stage.NAME]` table of a `command` stage, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandParams {
    pub kind: String,
    #[serde(default)]
    pub inputs: Vec<Spanned<String>>,
    pub cmd: String,
    pub items: Option<Vec<ItemDecl>>,
    pub items_file: Option<String>,
    pub per_item: Option<bool>,
    #[serde(default)]
    pub params: toml::Table,
    #[serde(default)]
    pub files: IndexMap<String, String>,
    pub outputs: Option<Vec<String>>,
    pub resources: Option<Resources>,
    /// Seconds a task may run before it is killed and counted as failed.
    pub timeout: Option<f64>,
}

#[derive(Debug)]
pub struct CommandStage {
    stage: String,
    cmd: String,
    has_inputs: bool,
    items: Option<Vec<ItemDecl>>,
    item_params: HashMap<String, toml::Table>,
    items_file: Option<PathBuf>,
    per_item: bool,
    params: toml::Table,
    files: IndexMap<String, PathBuf>,
    outputs: Option<Vec<String>>,
    resources: Resources,
    timeout: Option<Duration>,
}

impl CommandStage {
    /// Checks a command stage's table; errors name the stage and say what to write.
    pub fn new(stage: &str, p: CommandParams) -> Result<CommandStage> {
        if p.cmd.trim().is_empty() {
            bail!("stage `{stage}`: `cmd` is empty; give the shell command each task runs");
        }
        if p.items.is_some() && p.items_file.is_some() {
            bail!("stage `{stage}`: give either `items` or `items_file`, not both");
        }
        let own_items = p.items.is_some() || p.items_file.is_some();
        if !own_items && p.inputs.is_empty() {
            bail!(
                "stage `{stage}` has nothing to fan out over: give `items = [\"a\", \"b\"]`, \
                 `items_file = \"ids.txt\"`, or `inputs = [\"upstream\"]`"
            );
        }
        if own_items && p.per_item == Some(true) {
            bail!(
                "stage `{stage}`: `per_item = true` takes its items from the inputs, so it \
                 cannot be combined with `items` or `items_file`"
            );
        }
        if p.per_item.is_some() && p.inputs.is_empty() {
            bail!("stage `{stage}`: `per_item` says how to read inputs, but the stage has none");
        }
        let mut item_params = HashMap::new();
        if let Some(items) = &p.items {
            let mut seen = HashSet::new();
            for item in items {
                validate_item_id(&item.id).map_err(|e| anyhow::anyhow!("stage `{stage}`: {e}"))?;
                if !seen.insert(item.id.as_str()) {
                    bail!(
                        "stage `{stage}`: item `{}` is listed twice in `items`",
                        item.id
                    );
                }
                check_param_names(stage, &item.params)?;
                if !item.params.is_empty() {
                    item_params.insert(item.id.clone(), item.params.clone());
                }
            }
        }
        check_param_names(stage, &p.params)?;
        let mut file_envs = HashMap::new();
        for name in p.files.keys() {
            if let Some(other) = file_envs.insert(env_name(name), name) {
                bail!(
                    "stage `{stage}`: files `{other}` and `{name}` both become MVC_FILE_{}; \
                     rename one",
                    env_name(name)
                );
            }
        }
        if let Some(outputs) = &p.outputs {
            for name in outputs {
                if safe_relative(name).is_none() {
                    bail!(
                        "stage `{stage}`: output `{name}` must be a relative path inside \
                         $MVC_OUT (no `..`, not absolute)"
                    );
                }
            }
        }
        let resources = p.resources.unwrap_or(Resources::ONE_CPU);
        if resources.is_zero() {
            bail!(
                "stage `{stage}`: `resources` holds no slot; a task must hold at least one \
                 (e.g. resources = {{ cpu = 1 }})"
            );
        }
        let timeout = match p.timeout {
            Some(t) if !(t > 0.0 && t.is_finite()) => {
                bail!("stage `{stage}`: `timeout` must be a positive number of seconds")
            }
            Some(t) => Some(Duration::from_secs_f64(t)),
            None => None,
        };
        Ok(CommandStage {
            stage: stage.to_string(),
            cmd: p.cmd,
            has_inputs: !p.inputs.is_empty(),
            per_item: !own_items && p.per_item.unwrap_or(true),
            items: p.items,
            item_params,
            items_file: p.items_file.map(PathBuf::from),
            params: p.params,
            files: p
                .files
                .into_iter()
                .map(|(k, v)| (k, PathBuf::from(v)))
                .collect(),
            outputs: p.outputs,
            resources,
            timeout,
        })
    }

    fn own_items(&self) -> Result<Option<Vec<PlannedItem>>> {
        if let Some(items) = &self.items {
            return Ok(Some(
                items
                    .iter()
                    .map(|i| PlannedItem {
                        id: Arc::from(i.id.as_str()),
                        params: Arc::new(item_slice(&i.params)),
                        bytes: None,
                        source: None,
                    })
                    .collect(),
            ));
        }
        let Some(path) = &self.items_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "stage `{}`: reading items_file {} (paths are relative to the directory mvc \
                 runs in)",
                self.stage,
                path.display()
            )
        })?;
        let mut ids: Vec<(&str, usize)> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let id = line.trim();
            if id.is_empty() || id.starts_with('#') {
                continue;
            }
            validate_item_id(id).map_err(|e| {
                anyhow::anyhow!("{}:{}: {e} (stage `{}`)", path.display(), n + 1, self.stage)
            })?;
            ids.push((id, n + 1));
        }
        // Duplicates, found by sorting (ids files of a million lines are common, and usually
        // sorted already, which makes this one pass).
        if !ids.is_sorted_by(|a, b| a.0 < b.0) {
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            if let Some((id, line)) = sorted
                .windows(2)
                .filter(|w| w[0].0 == w[1].0)
                .map(|w| w[1])
                .min_by_key(|(_, line)| *line)
            {
                bail!(
                    "{}:{line}: item `{id}` is listed twice (stage `{}`)",
                    path.display(),
                    self.stage
                );
            }
        }
        let items = ids
            .into_iter()
            .map(|(id, _)| PlannedItem {
                id: Arc::from(id),
                params: Default::default(),
                bytes: None,
                source: None,
            })
            .collect();
        Ok(Some(items))
    }

    fn env_params(&self, item: &str) -> Vec<(String, String)> {
        let mut merged = self.params.clone();
        if let Some(own) = self.item_params.get(item) {
            merge_tables(&mut merged, own);
        }
        merged
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    toml::Value::String(s) => s.clone(),
                    other => canonical_json(other),
                };
                (format!("MVC_PARAM_{}", env_name(k)), text)
            })
            .collect()
    }

    /// Runs a task; a process killed by a signal from outside (the OOM killer, a neighbour)
    /// is not the item's failure, so it runs once more in a fresh process, and only a second
    /// death is recorded, naming both.
    async fn run_task(&self, ctx: &ExecCtx, task: UnitTask) -> TaskOutcome {
        let dir = ctx.store.tmp_dir().join(task.key.to_hex());
        let mut first_death: Option<i32> = None;
        loop {
            let mut died_of: Option<(i32, String)> = None;
            let outcome = self.run_in(ctx, &task, &dir, &mut died_of).await;
            let outcome = outcome.unwrap_or_else(|e| TaskOutcome::Failed {
                error: format!("{e:#}"),
                stderr: None,
            });
            // Asked before the work directory goes: its partial output is what fills the disk.
            let outcome = super::unless_disk_full(ctx.store.tmp_dir(), outcome);
            let _ = std::fs::remove_dir_all(&dir);
            let (Some((signal, said)), TaskOutcome::Failed { stderr, .. }) = (died_of, &outcome)
            else {
                return outcome;
            };
            match first_death {
                None if !ctx.kill.is_cancelled() => {
                    tracing::warn!(
                        "{}/{}: the command was {}; running it again in a fresh process \
                         (nothing is recorded unless it dies again)",
                        self.stage,
                        task.item,
                        crate::signals::death(signal)
                    );
                    first_death = Some(signal);
                }
                None => return outcome,
                Some(first) => {
                    return TaskOutcome::Failed {
                        error: died_twice(first, signal, &said),
                        stderr: *stderr,
                    };
                }
            }
        }
    }

    async fn run_in(
        &self,
        ctx: &ExecCtx,
        task: &UnitTask,
        dir: &Path,
        died_of: &mut Option<(i32, String)>,
    ) -> Result<TaskOutcome> {
        let (work, out, env) = match self.prepare(ctx, task, dir).await? {
            Ok(prepared) => prepared,
            Err(outcome) => return Ok(outcome),
        };
        let stdout_path = dir.join("stdout");
        let stderr_path = dir.join("stderr");
        let started_ms = now_ms();
        let started = Instant::now();
        let request = LaunchRequest {
            cmd: self.cmd.clone(),
            cwd: work,
            env,
            stdout: stdout_path.clone(),
            stderr: stderr_path.clone(),
        };
        let launched = match ctx.launcher.launch(request).await {
            Ok(l) => l,
            // Not the item's fault: nothing is recorded, the task stays to run.
            Err(e) => {
                return Ok(TaskOutcome::Aborted(format!(
                    "could not start the task: {e}"
                )));
            }
        };
        let (code, signal) = match self.wait_for(ctx, launched, &stderr_path).await {
            Ok(ended) => ended,
            Err(outcome) => return Ok(outcome),
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        let stdout = store_log(ctx, &stdout_path);
        let stderr = store_log(ctx, &stderr_path);
        if code != Some(0) {
            let error = exit_failure(code, signal, &stderr_path, died_of);
            return Ok(TaskOutcome::Failed { error, stderr });
        }
        let store = ctx.store.clone();
        let heavy = dir_holds_blobs(&out);
        let outputs = blocking_if(heavy, move || ingest_outputs(&store, &out)).await;
        let outputs = match outputs {
            Ok(o) => o,
            Err(error) => return Ok(TaskOutcome::Failed { error, stderr }),
        };
        if let Some(error) = self.outputs_lacking(&outputs) {
            return Ok(TaskOutcome::Failed { error, stderr });
        }
        Ok(TaskOutcome::Success {
            outputs,
            stdout,
            stderr,
            started_ms,
            duration_ms,
        })
    }

    /// A fresh task directory (`work/`, `out/`, `in/<stage>/` with the inputs as files) and
    /// the task's environment; a damaged input is the task's outcome instead.
    async fn prepare(
        &self,
        ctx: &ExecCtx,
        task: &UnitTask,
        dir: &Path,
    ) -> Result<Result<(PathBuf, PathBuf, Vec<(String, String)>), TaskOutcome>> {
        let _ = std::fs::remove_dir_all(dir);
        let work = dir.join("work");
        let out = dir.join("out");
        for d in [&work, &out] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let mut env: Vec<(String, String)> = vec![
            ("MVC_ITEM".into(), task.item.clone()),
            ("MVC_OUT".into(), out.display().to_string()),
        ];
        for input in &task.inputs {
            let in_dir = dir.join("in").join(&input.stage);
            std::fs::create_dir_all(&in_dir)?;
            let store = ctx.store.clone();
            let input_data = input.clone();
            let target = in_dir.clone();
            let heavy = input.items.len() > 16;
            let materialized = blocking_if(heavy, move || {
                materialize_input(&store, &target, &input_data)
            })
            .await;
            if let Err(corrupt) = materialized {
                return Ok(Err(TaskOutcome::InputCorrupt {
                    stage: corrupt.stage,
                    item: corrupt.item,
                    error: corrupt.error.to_string(),
                }));
            }
            env.push((
                format!("MVC_IN_{}", env_name(&input.stage)),
                in_dir.display().to_string(),
            ));
        }
        env.extend(self.env_params(&task.item));
        for (name, path) in &self.files {
            let abs = std::path::absolute(path)?;
            env.push((
                format!("MVC_FILE_{}", env_name(name)),
                abs.display().to_string(),
            ));
        }
        Ok(Ok((work, out, env)))
    }

    /// Waits for the task's process to end: its exit code and signal, or the outcome when
    /// it was killed (Ctrl-C's kill, the stage's `timeout`) or lost.
    async fn wait_for(
        &self,
        ctx: &ExecCtx,
        mut launched: crate::exec::launcher::Launched,
        stderr_path: &Path,
    ) -> Result<(Option<i32>, Option<i32>), TaskOutcome> {
        let pid = Some(launched.pid);
        let timeout = async {
            match self.timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = launched.events.recv() => match event {
                Some(Event::Exited { code, signal }) => Ok((code, signal)),
                Some(Event::Error { message }) => Err(TaskOutcome::Aborted(message)),
                Some(Event::Started { .. }) | None => {
                    Err(TaskOutcome::Aborted("lost track of the task".into()))
                }
            },
            _ = ctx.kill.cancelled() => {
                kill_group(pid);
                let _ = launched.events.recv().await;
                Err(TaskOutcome::Cancelled)
            }
            _ = timeout => {
                kill_group(pid);
                let _ = launched.events.recv().await;
                let stderr = store_log(ctx, stderr_path);
                Err(TaskOutcome::Failed {
                    error: format!(
                        "timed out after {:.1}s (the stage's `timeout`)",
                        self.timeout.unwrap_or_default().as_secs_f64()
                    ),
                    stderr,
                })
            }
        }
    }

    /// What is wrong with the outputs a command left: nothing at all (without `outputs`),
    /// or not every declared one.
    fn outputs_lacking(&self, outputs: &[crate::store::records::Output]) -> Option<String> {
        match &self.outputs {
            None if outputs.is_empty() => Some(format!(
                "the command wrote nothing into $MVC_OUT; every file it leaves there becomes an \
                 output. Write its results there, or set `outputs = []` on stage `{}` if it has \
                 none",
                self.stage
            )),
            Some(required) => {
                let missing: Vec<String> = required
                    .iter()
                    .filter(|r| !outputs.iter().any(|o| o.name == **r))
                    .map(|m| format!("`{m}`"))
                    .collect();
                (!missing.is_empty()).then(|| {
                    format!(
                        "the command did not write the declared output(s) {} into $MVC_OUT",
                        missing.join(", ")
                    )
                })
            }
            None => None,
        }
    }
}

/// The failure of a command that did not exit with 0, with its stderr's last lines; a death
/// by a signal is noted in `died_of` (the task is tried once more before it is recorded).
fn exit_failure(
    code: Option<i32>,
    signal: Option<i32>,
    stderr_path: &Path,
    died_of: &mut Option<(i32, String)>,
) -> String {
    let tail = last_lines(stderr_path, 3);
    let said = match tail.is_empty() {
        true => " (no stderr)".to_string(),
        false => format!(": {tail}"),
    };
    match (code, signal) {
        (Some(code), _) => format!("command failed with exit status {code}{said}"),
        (None, Some(sig)) => {
            let error = format!("the command was {}{said}", crate::signals::death(sig));
            *died_of = Some((sig, said));
            error
        }
        _ => format!("command failed with an unknown status{said}"),
    }
}

#[async_trait::async_trait]
impl StageKind for CommandStage {
    /// A command run once over all its inputs (`per_item = false`, no items of its own)
    /// makes one result; one with items of its own or per upstream item fans out.
    fn fans_out(&self) -> bool {
        self.per_item || self.items.is_some() || self.items_file.is_some()
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        VERSION
    }

    fn resources(&self) -> Resources {
        self.resources
    }

    fn shared_params(&self, ctx: &ParamCtx) -> Result<ParamSlice> {
        let mut slice = ParamSlice::new();
        slice.insert("cmd".into(), serde_json::to_string(&self.cmd)?);
        if self.has_inputs {
            slice.insert("per_item".into(), self.per_item.to_string());
        }
        if let Some(outputs) = &self.outputs {
            slice.insert("outputs".into(), serde_json::to_string(outputs)?);
        }
        for (k, v) in &self.params {
            flatten_into(&mut slice, &format!("params.{k}"), v);
        }
        for (name, path) in &self.files {
            let digest = ctx.file_digest(path).with_context(|| {
                format!(
                    "stage `{}`: file `{name}` ({}) (paths are relative to the directory mvc \
                     runs in)",
                    self.stage,
                    path.display()
                )
            })?;
            slice.insert(format!("files.{name}"), format!("\"{}\"", digest.to_hex()));
        }
        Ok(slice)
    }

    fn expansion_files(&self) -> Vec<PathBuf> {
        self.items_file.iter().cloned().collect()
    }

    fn expand(&self, ctx: &ExpandCtx) -> Result<Expansion> {
        let n_inputs = ctx.inputs.len();
        if let Some(items) = self.own_items()? {
            return Ok(Expansion {
                items,
                bindings: vec![Binding::All; n_inputs],
            });
        }
        if self.per_item {
            let (_, first) = ctx.inputs[0];
            Ok(Expansion {
                items: first
                    .iter()
                    .map(|id| PlannedItem {
                        id: id.clone(),
                        params: Default::default(),
                        bytes: None,
                        source: None,
                    })
                    .collect(),
                bindings: vec![Binding::Item; n_inputs],
            })
        } else {
            Ok(Expansion {
                items: vec![PlannedItem {
                    id: Arc::from(ALL_ITEM),
                    params: Default::default(),
                    bytes: None,
                    source: None,
                }],
                bindings: vec![Binding::All; n_inputs],
            })
        }
    }

    async fn execute(&self, ctx: &ExecCtx, unit: Vec<UnitTask>) -> Vec<TaskOutcome> {
        let mut outcomes = Vec::with_capacity(unit.len());
        for task in unit {
            outcomes.push(self.run_task(ctx, task).await);
        }
        outcomes
    }
}

/// The failure of a task that a signal ended twice, each time in a fresh process: both
/// deaths named, and what the second try said (its stderr's last lines).
fn died_twice(first: i32, second: i32, said: &str) -> String {
    let how = if first == second {
        format!(
            "the command was {}, twice (each time in a fresh process)",
            crate::signals::death(first)
        )
    } else {
        format!(
            "the command died twice (each time in a fresh process): first {}; then {}",
            crate::signals::death(first),
            crate::signals::death(second)
        )
    };
    format!("{how}{said}")
}

/// Whether an output directory holds a file large enough to become a blob (its ingestion
/// then copies and fsyncs: work for the blocking pool).
fn dir_holds_blobs(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| match e.file_type() {
        Ok(t) if t.is_dir() => dir_holds_blobs(&e.path()),
        Ok(_) => e
            .metadata()
            .is_ok_and(|m| m.len() > crate::store::records::INLINE_MAX),
        Err(_) => false,
    })
}

fn item_slice(params: &toml::Table) -> ParamSlice {
    let mut slice = ParamSlice::new();
    for (k, v) in params {
        flatten_into(&mut slice, &format!("params.{k}"), v);
    }
    slice
}

fn check_param_names(stage: &str, params: &toml::Table) -> Result<()> {
    let mut seen: HashMap<String, &str> = HashMap::new();
    for name in params.keys() {
        if let Some(other) = seen.insert(env_name(name), name) {
            bail!(
                "stage `{stage}`: params `{other}` and `{name}` both become MVC_PARAM_{}; \
                 rename one",
                env_name(name)
            );
        }
    }
    Ok(())
}

fn merge_tables(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_tables(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

fn kill_group(pid: Option<i32>) {
    if let Some(pid) = pid {
        // SAFETY: signalling a process group we created; a stale id only gets ESRCH.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

/// Stores a non-empty log file as a blob.
fn store_log(ctx: &ExecCtx, path: &Path) -> Option<crate::task::Digest> {
    let bytes = std::fs::read(path).ok().filter(|b| !b.is_empty())?;
    match ctx.store.blobs().put_bytes(&bytes) {
        Ok(d) => Some(d),
        // A full disk is said once, by the task's outcome, not again per log.
        Err(e) if crate::disk::says_full(&e.to_string()) => None,
        Err(e) => {
            tracing::warn!("could not keep the log {}: {e}", path.display());
            None
        }
    }
}

/// The last `n` non-empty lines of a text file, joined with " | ", at most 400 characters.
fn last_lines(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = lines[lines.len().saturating_sub(n)..].join(" | ");
    if tail.chars().count() > 400 {
        let skip = tail.chars().count() - 400;
        format!("…{}", tail.chars().skip(skip).collect::<String>())
    } else {
        tail
    }
}

impl super::table::StageTable for CommandParams {
    fn inputs(&self) -> &[toml::Spanned<String>] {
        &self.inputs
    }
    fn captions_from(&self, name: &str) -> Option<String> {
        // A command stage whose items write `caption.txt` gives an embed stage its captions.
        let captions = self.outputs.as_ref();
        captions
            .is_some_and(|o| o.iter().any(|f| f == super::embed::CAPTION_FILE))
            .then(|| name.to_string())
    }
    fn build(
        self: Box<Self>,
        name: &str,
        inputs: Vec<String>,
        _around: &super::table::Around,
    ) -> Result<Vec<super::table::Built>> {
        Ok(super::table::Built::one(
            name,
            inputs,
            CommandStage::new(name, *self)?,
        ))
    }
}
