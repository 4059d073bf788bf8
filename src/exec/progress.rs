//! Progress: one indicatif bar per stage on a terminal (done / cached / failed / total, rate,
//! ETA). When stdout is not a terminal, plain log lines on stderr instead: a line per stage
//! when it finishes, and a status line for unfinished stages every ten seconds.

use super::resolve::Counts;
use crate::text::group_digits;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub const PLAIN_INTERVAL: Duration = Duration::from_secs(10);

pub struct Progress {
    bars: Option<(MultiProgress, Vec<ProgressBar>)>,
    names: Vec<String>,
    totals: Vec<u64>,
    started: Instant,
    stage_started: Vec<Option<Instant>>,
    finished: Vec<bool>,
    /// Stages whose items are not known yet: never finished, whatever their counts.
    deferred: Vec<bool>,
    /// Bytes (done, total) per stage, for kinds that transfer data.
    bytes: Vec<(u64, u64)>,
    /// `-q`: neither bars nor plain lines.
    quiet: bool,
    last_plain: Instant,
}

impl Progress {
    /// `stages`: (name, total) in the order to show them.
    pub fn new(stages: &[(String, u64)], quiet: bool) -> Progress {
        let names: Vec<String> = stages.iter().map(|s| s.0.clone()).collect();
        let totals: Vec<u64> = stages.iter().map(|s| s.1).collect();
        // Bars only when someone watches a terminal: with stdout redirected (a log file, a
        // pipe into jq), plain lines are what the reader of that output can use.
        let watched = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        let bars = (!quiet && watched).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8));
            let width = names.iter().map(|n| n.len()).max().unwrap_or(5);
            let style = ProgressStyle::with_template(&format!(
                "{{prefix:>{width}.bold}} [{{bar:30.cyan/blue}}] {{pos}}/{{len}} {{msg}} \
                 {{per_sec}} ETA {{eta}}"
            ))
            .expect("the progress template is valid")
            .progress_chars("=> ");
            let bars = stages
                .iter()
                .map(|(name, total)| {
                    let bar = multi.add(ProgressBar::new(*total));
                    bar.set_style(style.clone());
                    bar.set_prefix(name.clone());
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
            started: Instant::now(),
            stage_started: vec![None; n],
            finished: vec![false; n],
            deferred: vec![false; n],
            bytes: vec![(0, 0); n],
            quiet,
            last_plain: Instant::now(),
        }
    }

    /// New totals for the stages (a run's graph grows when deferred stages expand);
    /// `deferred[i]` marks a stage whose items are not known yet.
    pub fn set_stages(&mut self, totals: &[u64], deferred: &[Option<String>]) {
        for (i, (total, why)) in totals.iter().zip(deferred).enumerate() {
            self.totals[i] = *total;
            self.deferred[i] = why.is_some();
            if let Some((_, bars)) = &self.bars {
                bars[i].set_length(*total);
                if let Some(why) = why {
                    bars[i].set_message(format!("waiting: {why}"));
                }
            }
        }
    }

    /// Bytes (done, total) per stage, in the order of `new`.
    pub fn set_bytes(&mut self, bytes: Vec<(u64, u64)>) {
        self.bytes = bytes;
    }

    /// Redraws from the current counts (`counts[i]` belongs to stage `i` of `new`).
    pub fn update(&mut self, counts: &[Counts]) {
        for (i, c) in counts.iter().enumerate() {
            let resolved = c.resolved();
            if self.stage_started[i].is_none() && (resolved > 0 || c.to_run > 0) {
                self.stage_started[i] = Some(Instant::now());
            }
            if self.deferred[i] {
                continue;
            }
            if let Some((_, bars)) = &self.bars {
                bars[i].set_position(resolved);
                bars[i].set_message(format!(
                    "cached {} · failed {}{}",
                    group_digits(c.cached),
                    group_digits(c.all_failed()),
                    self.bytes_text(i)
                ));
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
        } else if c.ran + c.failed > 0 && elapsed > 0.0 {
            let rate = (c.ran + c.failed) as f64 / elapsed;
            let left = total - resolved;
            line.push_str(&format!(
                ", {rate:.1} tasks/s, ETA {:.0}s",
                left as f64 / rate.max(1e-9)
            ));
        }
        line
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

    /// Prints a line without tearing the bars.
    pub fn println(&self, line: &str) {
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Leaves the bars of unfinished stages where they stopped.
    pub fn close(&mut self) {
        if let Some((_, bars)) = &self.bars {
            for bar in bars {
                if !bar.is_finished() {
                    bar.abandon();
                }
            }
        }
    }
}
