//! `mvc plan`: expand, key and look up every task, and say what would run and why.

use super::graph::{Sources, TaskGraph};
use super::kind::Columns;
use super::resolve::{Carry, Engine, Mode, State};
use super::workflow::Workflow;
use crate::store::Store;
use crate::text::{group_digits, name_width};
use anyhow::Result;
use indexmap::IndexMap;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct StagePlan {
    pub total: u64,
    pub cached: u64,
    pub to_run: u64,
    pub failed_skipped: u64,
    /// Cause → number of tasks to run for that cause, most frequent first.
    pub reasons: IndexMap<String, u64>,
    /// Set when the stage's items are not known yet: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_expanded: Option<String>,
    /// The views (of a stage made of view columns) whose tasks are all new items or
    /// blocked, sorted: a new ring's cameras.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub new_views: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PlanReport {
    pub stages: IndexMap<String, StagePlan>,
    /// Each stage of the file a sweep made several.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<super::workflow::Swept>,
    /// Set when every stage's summary decided the plan: no task was made, keyed or looked
    /// up (`exec::stage_summaries`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub from_summaries: bool,
    /// Set when the view stages were planned by their columns: the summaries of the views
    /// that did not change, and the new views' tasks keyed without being made
    /// (`exec::columns`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub from_columns: bool,
}

impl PlanReport {
    pub fn to_run(&self) -> u64 {
        self.stages.values().map(|s| s.to_run).sum()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plans always serialise")
    }

    /// The plan's "variants" lines: each swept stage, its variants and their seeds.
    fn variants_text(&self) -> String {
        let mut out = String::new();
        if self.variants.is_empty() {
            return out;
        }
        let _ = writeln!(out, "variants (the stages each sweep makes):");
        for s in &self.variants {
            let plural =
                |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
            let mut line = format!("  {}: ", s.stage);
            if s.variants.len() > 1 || s.seeds.is_empty() {
                let shown: Vec<&str> = s
                    .variants
                    .iter()
                    .map(|n| n.strip_prefix(s.stage.as_str()).unwrap_or(n))
                    .collect();
                let _ = write!(
                    line,
                    "{} {}",
                    plural(s.variants.len(), "variant"),
                    shown.join(" ")
                );
            }
            if !s.seeds.is_empty() {
                if s.variants.len() > 1 {
                    line.push_str(", each with ");
                }
                let _ = write!(
                    line,
                    "{} ({})",
                    plural(s.seeds.len(), "seed"),
                    s.seeds.join(" ")
                );
            }
            let _ = writeln!(out, "{line}");
        }
        out
    }

    pub fn to_text(&self, pipeline: &Workflow, cache: &std::path::Path) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "plan for {} ({}), cache {}",
            pipeline.name,
            pipeline.path.display(),
            cache.display()
        );
        out.push_str(&self.variants_text());
        let width = name_width(self.stages.keys());
        let _ = writeln!(
            out,
            "{:<width$}  {:>9}  {:>9}  {:>9}  {:>9}",
            "stage", "total", "cached", "to run", "failed"
        );
        for (name, s) in &self.stages {
            if let Some(why) = &s.not_expanded {
                let _ = writeln!(out, "{name:<width$}  {:>9}  ({why})", "?");
                continue;
            }
            let _ = writeln!(
                out,
                "{:<width$}  {:>9}  {:>9}  {:>9}  {:>9}",
                name,
                group_digits(s.total),
                group_digits(s.cached),
                group_digits(s.to_run),
                group_digits(s.failed_skipped)
            );
        }
        let mut any = false;
        for (name, s) in &self.stages {
            if s.reasons.is_empty() {
                continue;
            }
            if !any {
                let _ = writeln!(out, "\nwhy:");
                any = true;
            }
            let reasons: Vec<String> = s
                .reasons
                .iter()
                .map(|(cause, n)| format!("{} {cause}", group_digits(*n)))
                .collect();
            let _ = writeln!(
                out,
                "  {name}: {}{}",
                reasons.join("; "),
                new_views_text(&s.new_views)
            );
        }
        if self
            .stages
            .values()
            .any(|s| s.reasons.keys().any(|c| c.starts_with("upstream reruns")))
        {
            let _ = writeln!(
                out,
                "  (\"upstream reruns\" tasks run only if their inputs come out different: an \
                 upstream rerun that reproduces the same bytes leaves them cached)"
            );
        }
        let total = self.to_run();
        let unknown: Vec<&str> = self
            .stages
            .iter()
            .filter(|(_, s)| s.not_expanded.is_some())
            .map(|(name, _)| name.as_str())
            .collect();
        let later = if unknown.is_empty() {
            String::new()
        } else {
            format!(
                " Then the tasks of {}, once the stages they come from have run.",
                unknown.join(", ")
            )
        };
        let _ = writeln!(
            out,
            "\n{} to run.{later}",
            if total == 0 {
                "nothing".to_string()
            } else {
                format!(
                    "{} task{}",
                    group_digits(total),
                    if total == 1 { "" } else { "s" }
                )
            }
        );
        out
    }
}

/// " (new views: a, b, …)", naming the first few.
fn new_views_text(views: &[String]) -> String {
    const SHOWN: usize = 6;
    match views.len() {
        0 => String::new(),
        n if n <= SHOWN => format!(" (new views: {})", views.join(", ")),
        n => format!(
            " (new views: {} and {} more)",
            views[..SHOWN].join(", "),
            n - SHOWN
        ),
    }
}

/// The views of a stage made of view columns that are new: each of their tasks that is to
/// run is a new item (the rest are blocked), and none is cached or failed.
#[derive(Default)]
struct NewViews<'a> {
    /// By view: whether every task seen so far leaves it new.
    views: HashMap<&'a str, bool>,
}

impl<'a> NewViews<'a> {
    fn saw(&mut self, item: &'a str, new: bool) {
        if let Some((_, view)) = crate::store::object_stage::split_view(item) {
            *self.views.entry(view).or_insert(true) &= new;
        }
    }

    fn sorted(self) -> Vec<String> {
        let mut new: Vec<String> = self
            .views
            .into_iter()
            .filter(|&(_, new)| new)
            .map(|(view, _)| view.to_string())
            .collect();
        new.sort_unstable();
        new
    }
}

/// Plans a pipeline: every task keyed and looked up, nothing run.
pub fn plan(
    pipeline: &Workflow,
    store: Arc<Store>,
    retry_failed: bool,
) -> Result<(Engine, PlanReport)> {
    // Rounds as in a run: stages that expand from upstream results are expanded when those
    // results are cached; otherwise the plan says they are not known yet.
    let mut sources = Sources::new();
    loop {
        let graph = TaskGraph::build(pipeline, &store, &sources)?;
        let mut engine = Engine::new(
            graph,
            store.clone(),
            Mode::Plan,
            retry_failed,
            Carry::default(),
        )?;
        engine.resolve_ready()?;
        let more = if engine.graph.has_deferred() {
            engine.sources(&sources)?
        } else {
            sources.clone()
        };
        if more.len() == sources.len() {
            let mut report = report(&engine)?;
            report.variants = pipeline.variants.clone();
            return Ok((engine, report));
        }
        sources = more;
    }
}

pub fn report(engine: &Engine) -> Result<PlanReport> {
    let g = &engine.graph;
    let mut stages = IndexMap::new();
    for &s in &g.order {
        let node = &g.stages[s];
        let counts = &engine.counts[s];
        let mut reasons: HashMap<String, u64> = HashMap::new();
        let mut new_views = NewViews::default();
        let has_views = !matches!(node.kind.columns(), Columns::None);
        if counts.to_run + counts.pending > 0 {
            // A stage the index has never recorded: every task is new, without a lookup each
            // (the presence filter, when it speaks for the index, answers those lookups
            // without it, and the index need not be opened to ask).
            let never_seen =
                !engine.store.presence_known() && !engine.store.has_seen_stage(&node.name);
            for t in node.tasks() {
                let cause = match engine.state[t] {
                    State::ToRun | State::Pending if never_seen => "new item".to_string(),
                    State::ToRun | State::Pending => engine.cause(t)?,
                    State::Blocked => continue,
                    _ => {
                        if has_views {
                            new_views.saw(g.item(t), false);
                        }
                        continue;
                    }
                };
                if has_views {
                    new_views.saw(g.item(t), cause == "new item");
                }
                *reasons.entry(cause).or_default() += 1;
            }
        }
        let mut reasons: Vec<(String, u64)> = reasons.into_iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        stages.insert(
            node.name.clone(),
            StagePlan {
                total: node.len() as u64,
                cached: counts.cached,
                to_run: counts.to_run + counts.pending,
                failed_skipped: counts.known_failed + counts.blocked,
                reasons: reasons.into_iter().collect(),
                not_expanded: node.deferred.clone(),
                new_views: new_views.sorted(),
            },
        );
    }
    Ok(PlanReport {
        stages,
        variants: Vec::new(),
        from_summaries: false,
        from_columns: false,
    })
}
