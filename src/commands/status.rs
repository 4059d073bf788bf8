//! `mvc status`: what the cache holds, its last runs, and (with a pipeline) where each
//! stage stands; `--verify` re-hashes everything.

use crate::exec::plan::PlanReport;
use crate::store::Store;
use crate::store::records::{RunOutcome, RunRecord, format_time};
use crate::store::verify::VerifyReport;
use crate::text::{group_digits, human_bytes, name_width};
use anyhow::Result;
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Debug, Serialize)]
pub struct CacheSummary {
    pub cache: String,
    pub results: usize,
    pub failures: usize,
    pub records: usize,
    pub blobs: usize,
    pub blob_bytes: u64,
    pub index_bytes: u64,
    pub runs: Vec<RunLine>,
}

#[derive(Debug, Serialize)]
pub struct RunLine {
    pub pipeline: String,
    pub started: String,
    pub seconds: f64,
    pub outcome: RunOutcome,
    pub ran: u64,
    pub cached: u64,
    pub failed: u64,
}

pub fn summarize(store: &Store, last_runs: usize) -> Result<CacheSummary> {
    let listing = store.blobs().list()?;
    let runs: Vec<RunRecord> = store.runs()?;
    let entries = store.entry_counts()?;
    let runs = runs
        .iter()
        .rev()
        .take(last_runs)
        .map(|r| RunLine {
            pipeline: r.pipeline.clone(),
            started: format_time(r.started_ms),
            seconds: r.ended_ms.saturating_sub(r.started_ms) as f64 / 1000.0,
            outcome: r.outcome,
            ran: r.stages.values().map(|s| s.ran).sum(),
            cached: r.stages.values().map(|s| s.cached).sum(),
            failed: r.stages.values().map(|s| s.failed).sum(),
        })
        .collect();
    Ok(CacheSummary {
        cache: store.dir().display().to_string(),
        results: entries.results,
        failures: entries.failures,
        records: entries.records,
        blobs: listing.blobs.len(),
        blob_bytes: listing.blobs.iter().map(|b| b.1).sum(),
        index_bytes: store.index().size_on_disk(),
        runs,
    })
}

pub fn to_text(
    summary: &CacheSummary,
    plan: Option<&PlanReport>,
    verify: Option<&VerifyReport>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "cache {}", summary.cache);
    let _ = writeln!(
        out,
        "  {} results, {} recorded failures, {} blobs ({}), index {}",
        group_digits(summary.results as u64),
        group_digits(summary.failures as u64),
        group_digits(summary.blobs as u64),
        human_bytes(summary.blob_bytes),
        human_bytes(summary.index_bytes)
    );
    if summary.runs.is_empty() {
        let _ = writeln!(out, "  no runs yet");
    } else {
        let _ = writeln!(out, "last runs:");
        for r in &summary.runs {
            let _ = writeln!(
                out,
                "  {}  {:<16} {:<11} {:>8.1}s  ran {}, cached {}, failed {}",
                r.started,
                r.pipeline,
                format!("{:?}", r.outcome).to_lowercase(),
                r.seconds,
                group_digits(r.ran),
                group_digits(r.cached),
                group_digits(r.failed)
            );
        }
    }
    if let Some(plan) = plan {
        let _ = writeln!(out, "\npipeline stages:");
        let width = name_width(plan.stages.keys());
        for (name, s) in &plan.stages {
            if let Some(why) = &s.not_expanded {
                let _ = writeln!(out, "  {name:<width$}  items not known yet ({why})");
                continue;
            }
            let _ = writeln!(
                out,
                "  {name:<width$}  {}/{} cached, {} to run, {} failed",
                group_digits(s.cached),
                group_digits(s.total),
                group_digits(s.to_run),
                group_digits(s.failed_skipped)
            );
        }
    }
    if let Some(v) = verify {
        let _ = writeln!(
            out,
            "\nverify: {} blobs ({}) re-hashed, {} results checked",
            group_digits(v.blobs),
            human_bytes(v.blob_bytes),
            group_digits(v.results)
        );
        if v.clean() {
            let _ = writeln!(out, "  clean");
        } else {
            for p in &v.problems {
                let _ = writeln!(out, "  problem: {p}");
            }
            let _ = writeln!(
                out,
                "  {} problem(s); the next `mvc run` recomputes what they affect",
                v.problems.len()
            );
        }
        if v.temp_files > 0 {
            let _ = writeln!(
                out,
                "  {} temp file(s) of interrupted writes (harmless; `mvc gc` removes them)",
                v.temp_files
            );
        }
    }
    out
}

/// `mvc status --connect URL`: a running coordinator's workers and what each runs.
pub fn remote_to_text(status: &crate::remote::protocol::Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pipeline {}: {} task(s) queued{}",
        status.pipeline,
        group_digits(status.queued),
        if status.finished { " (run over)" } else { "" }
    );
    let _ = writeln!(
        out,
        "blobs: {} sent to workers ({}), {} received ({})",
        group_digits(status.blobs_sent.0),
        human_bytes(status.blobs_sent.1),
        group_digits(status.blobs_received.0),
        human_bytes(status.blobs_received.1)
    );
    if status.workers.is_empty() {
        let _ = writeln!(out, "no workers connected");
        return out;
    }
    let _ = writeln!(out, "{} worker(s):", status.workers.len());
    for w in &status.workers {
        let _ = writeln!(
            out,
            "  {} on {}: slots {}{}, {} unit(s) done, seen {:.1}s ago",
            w.name,
            w.host,
            w.slots,
            if w.labels.is_empty() {
                String::new()
            } else {
                format!(", labels {}", w.labels.join(","))
            },
            w.units_done,
            w.last_seen_ms_ago as f64 / 1000.0
        );
        for r in &w.running {
            let _ = writeln!(out, "    running {r}");
        }
    }
    out
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    pub file: Option<std::path::PathBuf>,
    /// Ask a running coordinator instead: its workers, their slots and what each runs.
    #[arg(long, value_name = "URL", conflicts_with_all = ["file", "verify"])]
    pub connect: Option<String>,
    /// The coordinator's token file (with --connect; else MVC_TOKEN).
    #[arg(long, value_name = "FILE", requires = "connect")]
    pub token_file: Option<std::path::PathBuf>,
    /// The fingerprint of the coordinator's self-signed certificate (with --connect; else
    /// MVC_FINGERPRINT).
    #[arg(long, value_name = "HEX", requires = "connect")]
    pub fingerprint: Option<String>,
    /// Re-hash every blob and check every index entry.
    #[arg(long)]
    pub verify: bool,
    #[command(flatten)]
    pub variants: super::VariantArgs,
}

pub fn run(args: StatusArgs, global: &super::Global) -> Result<super::Output> {
    if let Some(url) = &args.connect {
        return remote(url, args.token_file.as_deref(), args.fingerprint.as_deref());
    }
    args.variants.need_file(args.file.as_deref())?;
    let pipeline = args
        .file
        .as_deref()
        .map(|f| super::load(f, &args.variants))
        .transpose()?;
    let dir = global.cache_dir(pipeline.as_ref());
    if !dir.exists() {
        anyhow::bail!(
            "there is no cache at {} yet (a first `mvc run` creates it)",
            dir.display()
        );
    }
    let store = std::sync::Arc::new(super::open_store(&dir, global)?);
    let summary = summarize(&store, 5)?;
    let plan_report = match &pipeline {
        Some(p) => Some(
            crate::exec::stage_summaries::plan_report(
                &p.workflow,
                store.clone(),
                false,
                crate::exec::stage_summaries::Depth::Summaries,
            )?
            .1,
        ),
        None => None,
    };
    let verify_report = args
        .verify
        .then(|| crate::store::verify::verify(&store))
        .transpose()?;
    let value = serde_json::json!({
        "cache": summary,
        "stages": plan_report.as_ref().map(|p| &p.stages),
        "verify": verify_report.as_ref().map(|v| serde_json::json!({
            "clean": v.clean(),
            "problems": v.problems,
            "blobs": v.blobs,
            "results": v.results,
        })),
    });
    let text = to_text(&summary, plan_report.as_ref(), verify_report.as_ref());
    let code = match verify_report {
        Some(v) if !v.clean() => 1,
        _ => 0,
    };
    Ok(super::Output::new(text, &value).with_code(code))
}

/// `mvc status --connect URL`.
fn remote(
    url: &str,
    token_file: Option<&std::path::Path>,
    fingerprint: Option<&str>,
) -> Result<super::Output> {
    use anyhow::Context as _;
    let token = crate::remote::auth::Token::load(token_file)?;
    let options = crate::remote::client::ClientOptions {
        fingerprint: crate::remote::tls::Fingerprint::load(fingerprint)?,
        ..Default::default()
    };
    let client = crate::remote::client::Client::with_options(url, token.as_ref(), &options)?;
    let status = super::block_on(async {
        match client.status().await {
            Err(e) if e.is_network() => {
                let hint = crate::remote::reach::explain(url).await;
                Err(anyhow::anyhow!(
                    "{e}{}",
                    hint.map(|h| format!("; {h}")).unwrap_or_default()
                ))
            }
            other => other.map_err(anyhow::Error::from),
        }
    })?
    .with_context(|| format!("asking {url}"))?;
    Ok(super::Output::new(remote_to_text(&status), &status))
}
