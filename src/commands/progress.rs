//! The live display of `mvc run` and `mvc serve` (a [`RunView`] the engine feeds): one
//! indicatif bar per stage on a terminal (done / cached / failed / total, rate,
//! ETA). When stdout is not a terminal, plain log lines on stderr instead: a line per stage
//! when it finishes, and a status line for unfinished stages every ten seconds.
//!
//! A stage's rate and ETA are its own: counted from when its first task finished, not from
//! when the run began (every bar exists from the start), and written as the plain lines and
//! the summary write numbers. A stage whose items are not known yet shows no bar at all, only
//! what it waits for.

use crate::exec::resolve::Counts;
use crate::exec::view::RunView;
use crate::text::group_digits;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub const PLAIN_INTERVAL: Duration = Duration::from_secs(10);

pub struct Progress {
    bars: Option<(MultiProgress, Vec<ProgressBar>)>,
    names: Vec<String>,
    totals: Vec<u64>,
    stage_started: Vec<Option<Instant>>,
    finished: Vec<bool>,
    /// Stages whose items are not known yet: never finished, whatever their counts.
    deferred: Vec<bool>,
    /// Bytes (done, total) per stage, for kinds that transfer data.
    bytes: Vec<(u64, u64)>,
    /// When each stage's first task finished, and how many had then: its rate counts from
    /// there.
    first_done: Vec<Option<(Instant, u64)>>,
    /// The stage a waiting stage waits for (named in its reason), if it is shown.
    waits_for: Vec<Option<usize>>,
    /// `-q`: neither bars nor plain lines.
    quiet: bool,
    last_plain: Instant,
    styles: Option<Styles>,
}

/// A bar for a stage whose items are known, and a line for one still waiting.
struct Styles {
    bar: ProgressStyle,
    waiting: ProgressStyle,
}

impl Progress {
    /// The display of a run of `pipeline`: its stages in the order the engine expands them.
    pub fn of(pipeline: &crate::exec::workflow::Workflow, quiet: bool) -> Progress {
        let shown: Vec<(String, u64)> = pipeline
            .order
            .iter()
            .map(|&s| (pipeline.stages[s].name.clone(), 0))
            .collect();
        Progress::new(&shown, quiet)
    }

    /// `stages`: (name, total) in the order to show them.
    pub fn new(stages: &[(String, u64)], quiet: bool) -> Progress {
        let names: Vec<String> = stages.iter().map(|s| s.0.clone()).collect();
        let totals: Vec<u64> = stages.iter().map(|s| s.1).collect();
        // Bars only when someone watches a terminal: with stdout redirected (a log file, a
        // pipe into jq), plain lines are what the reader of that output can use.
        let watched = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        let width = names.iter().map(|n| n.len()).max().unwrap_or(5);
        let styles = (!quiet && watched).then(|| Styles {
            bar: ProgressStyle::with_template(&format!(
                "{{prefix:>{width}.bold}} [{{bar:30.cyan/blue}}] {{msg}}"
            ))
            .expect("the progress template is valid")
            .progress_chars("=> "),
            waiting: ProgressStyle::with_template(&format!("{{prefix:>{width}.bold}} {{msg}}"))
                .expect("the progress template is valid"),
        });
        let bars = styles.as_ref().map(|styles| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8));
            let bars = stages
                .iter()
                .map(|(name, total)| {
                    // Until the graph is built, nothing is known: no bar yet.
                    let bar = multi.add(ProgressBar::new(*total));
                    bar.set_style(styles.waiting.clone());
                    bar.set_prefix(name.clone());
                    bar.set_message("planning");
                    bar
                })
                .collect();
            (multi, bars)
        });
        let n = stages.len();
        Progress {
            bars,
            names,
            totals,
            stage_started: vec![None; n],
            finished: vec![false; n],
            deferred: vec![false; n],
            bytes: vec![(0, 0); n],
            first_done: vec![None; n],
            waits_for: vec![None; n],
            quiet,
            last_plain: Instant::now(),
            styles,
        }
    }

    fn stage_line(&self, i: usize, c: &Counts) -> String {
        let elapsed = self.stage_started[i]
            .map(|t| t.elapsed())
            .unwrap_or_default()
            .as_secs_f64();
        let total = self.totals[i];
        let resolved = c.resolved();
        let mut line = format!(
            "{}: {}/{} tasks ({} cached, {} ran, {} failed)",
            self.names[i],
            group_digits(resolved),
            group_digits(total),
            group_digits(c.cached),
            group_digits(c.ran),
            group_digits(c.all_failed())
        );
        line.push_str(&self.bytes_text(i));
        if resolved == total {
            line.push_str(&format!(" in {elapsed:.1}s"));
        } else {
            line.push_str(&self.rate_text(i, c));
        }
        line
    }

    /// `, 1.7 tasks/s, ETA 12s` once a stage has finished tasks at a measurable pace (two or
    /// more, counted from its first), else nothing.
    fn rate_text(&self, i: usize, c: &Counts) -> String {
        let Some((first, at_first)) = self.first_done[i] else {
            return String::new();
        };
        let since = first.elapsed().as_secs_f64();
        let done = (c.ran + c.failed).saturating_sub(at_first);
        let left = self.totals[i].saturating_sub(c.resolved());
        if done == 0 || since <= 0.0 || left == 0 {
            return String::new();
        }
        let rate = done as f64 / since;
        format!(", {rate:.1} tasks/s, ETA {:.0}s", left as f64 / rate)
    }

    /// ` · 1.2 MB of 3.4 MB` for stages that transfer data, else nothing.
    fn bytes_text(&self, i: usize) -> String {
        match self.bytes.get(i) {
            Some(&(done, total)) if total > 0 || done > 0 => format!(
                " · {} of {}",
                crate::text::human_bytes(done),
                crate::text::human_bytes(total.max(done))
            ),
            _ => String::new(),
        }
    }
}

impl RunView for Progress {
    /// New totals for the stages (a run's graph grows when deferred stages expand);
    /// `deferred[i]` marks a stage whose items are not known yet.
    fn set_stages(&mut self, totals: &[u64], deferred: &[Option<String>]) {
        for (i, (total, why)) in totals.iter().zip(deferred).enumerate() {
            self.totals[i] = *total;
            self.deferred[i] = why.is_some();
            // The engine's reason names the stage it waits for: once that stage is done the
            // line says so, rather than go on waiting for it.
            self.waits_for[i] = why.as_deref().and_then(|why| {
                let name = why.split('`').nth(1)?;
                self.names.iter().position(|n| n == name)
            });
            if let (Some((_, bars)), Some(styles)) = (&self.bars, &self.styles) {
                bars[i].set_length(*total);
                match why {
                    Some(why) => {
                        // No bar: an empty stage would draw a full one, as if it were done.
                        bars[i].set_style(styles.waiting.clone());
                        bars[i].set_message(format!("waiting: {why}"));
                    }
                    None => bars[i].set_style(styles.bar.clone()),
                }
            }
        }
    }

    /// Bytes (done, total) per stage, in the order of `new`.
    fn set_bytes(&mut self, bytes: Vec<(u64, u64)>) {
        self.bytes = bytes;
    }

    /// Redraws from the current counts (`counts[i]` belongs to stage `i` of `new`).
    fn update(&mut self, counts: &[Counts]) {
        for (i, c) in counts.iter().enumerate() {
            let resolved = c.resolved();
            if self.stage_started[i].is_none() && (resolved > 0 || c.to_run > 0) {
                self.stage_started[i] = Some(Instant::now());
            }
            if self.first_done[i].is_none() && c.ran + c.failed > 0 {
                self.first_done[i] = Some((Instant::now(), c.ran + c.failed));
            }
            if self.deferred[i] {
                if let Some((_, bars)) = &self.bars
                    && let Some(source) = self.waits_for[i]
                    && self.finished[source]
                {
                    bars[i].set_message(format!(
                        "waiting: `{}` has run; its items are listed once the tasks running now \
                         end",
                        self.names[source]
                    ));
                }
                continue;
            }
            if let Some((_, bars)) = &self.bars {
                // The message first: a frame drawn between the two calls then shows the new
                // count beside the old bar, never a full bar beside the old count.
                bars[i].set_message(format!(
                    "{}/{} · cached {} · failed {}{}{}",
                    group_digits(resolved),
                    group_digits(self.totals[i]),
                    group_digits(c.cached),
                    group_digits(c.all_failed()),
                    self.bytes_text(i),
                    self.rate_text(i, c)
                ));
                bars[i].set_position(resolved);
            }
            if !self.finished[i] && resolved == self.totals[i] {
                self.finished[i] = true;
                match &self.bars {
                    Some((_, bars)) => bars[i].finish(),
                    None if !self.quiet => eprintln!("{}", self.stage_line(i, c)),
                    None => {}
                }
            }
        }
        if self.bars.is_none() && !self.quiet && self.last_plain.elapsed() >= PLAIN_INTERVAL {
            self.last_plain = Instant::now();
            for (i, c) in counts.iter().enumerate() {
                if !self.finished[i] && self.stage_started[i].is_some() {
                    eprintln!("{}", self.stage_line(i, c));
                }
            }
        }
    }

    /// Prints a line without tearing the bars.
    fn note(&self, line: &str) {
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    /// Leaves the bars of unfinished stages where they stopped.
    fn close(&mut self) {
        if let Some((_, bars)) = &self.bars {
            for bar in bars {
                if !bar.is_finished() {
                    bar.abandon();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(ran: u64, to_run: u64) -> Counts {
        Counts {
            ran,
            to_run,
            ..Counts::default()
        }
    }

    /// A stage's rate counts from its own first finished task, so a stage that has finished
    /// one task (or none) shows no rate at all, whenever the run began.
    #[test]
    fn a_rate_belongs_to_its_stage() {
        let stages = [("early".to_string(), 0), ("late".to_string(), 0)];
        let mut p = Progress::new(&stages, true);
        p.set_stages(&[10, 10], &[None, None]);
        p.update(&[counts(0, 10), counts(0, 10)]);
        assert_eq!(p.rate_text(0, &counts(0, 10)), "");
        p.update(&[counts(1, 9), counts(0, 10)]);
        assert_eq!(p.rate_text(0, &counts(1, 9)), "", "one task is no pace yet");
        std::thread::sleep(Duration::from_millis(50));
        let text = p.rate_text(0, &counts(3, 7));
        assert!(
            text.starts_with(", ") && text.contains(" tasks/s, ETA "),
            "{text}"
        );
        let rate = &text[2..text.find(" tasks/s").unwrap()];
        assert!(rate.parse::<f64>().unwrap() > 0.0, "{text}");
        assert_eq!(
            rate.split('.').nth(1).map(str::len),
            Some(1),
            "one decimal: {text}"
        );
        assert_eq!(
            p.rate_text(1, &counts(0, 10)),
            "",
            "the other stage has not begun"
        );
        assert_eq!(p.rate_text(0, &counts(10, 0)), "", "nothing left: no ETA");
    }

    /// A waiting stage knows which shown stage its reason names.
    #[test]
    fn a_waiting_stage_knows_what_it_waits_for() {
        let stages = [("objects".to_string(), 0), ("embed".to_string(), 0)];
        let mut p = Progress::new(&stages, true);
        p.set_stages(
            &[8, 0],
            &[None, Some("items known once `objects` has run".into())],
        );
        assert_eq!(p.waits_for, vec![None, Some(0)]);
        assert!(p.deferred[1]);
        p.set_stages(&[8, 104], &[None, None]);
        assert_eq!(p.waits_for, vec![None, None]);
        assert!(!p.deferred[1]);
    }
}
