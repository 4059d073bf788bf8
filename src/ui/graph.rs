//! The stage graph as SVG, drawn from the pipeline: a column per depth (a stage sits one
//! column right of its deepest input), one node per stage with its counts and a bar split by
//! state. Element ids carry the stage's position (`s3-ran`), never its name, so the script
//! can update a node whatever the pipeline called it.

use super::live::{StageLive, StageNumbers};
use maud::{Markup, html};
use std::collections::HashMap;

const NODE_W: u32 = 230;
const NODE_H: u32 = 70;
const GAP_X: u32 = 56;
const GAP_Y: u32 = 18;
const PAD: u32 = 12;
const BAR_W: u32 = NODE_W - 20;

/// The states a bar shows, in its order from the left.
pub const STATES: [&str; 5] = ["cached", "ran", "running", "waiting", "failed"];

/// Each stage's (column, row).
fn layout(stages: &[StageLive]) -> Vec<(u32, u32)> {
    let index: HashMap<&str, usize> = stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    // Stages come upstream first, so one pass gives every depth.
    let mut depth = vec![0u32; stages.len()];
    for (i, s) in stages.iter().enumerate() {
        depth[i] = s
            .inputs
            .iter()
            .filter_map(|input| index.get(input.as_str()))
            .map(|&j| depth[j] + 1)
            .max()
            .unwrap_or(0);
    }
    let mut rows: HashMap<u32, u32> = HashMap::new();
    depth
        .iter()
        .map(|&d| {
            let row = rows.entry(d).or_default();
            *row += 1;
            (d, *row - 1)
        })
        .collect()
}

fn origin((col, row): (u32, u32)) -> (u32, u32) {
    (PAD + col * (NODE_W + GAP_X), PAD + row * (NODE_H + GAP_Y))
}

/// The widths of a bar's segments, in the order of [`STATES`].
pub fn segments(n: &StageNumbers) -> [u32; 5] {
    let parts = [n.cached, n.ran, n.running, n.waiting, n.failed];
    let total: u64 = parts.iter().sum::<u64>().max(1);
    parts.map(|p| (p as f64 / total as f64 * BAR_W as f64).round() as u32)
}

/// `70/72 done · 1 running · 8 failed` (the bar and the table say cached and ran), or that
/// the stage's items are not known yet (the node's tooltip says why).
pub fn counts_text(n: &StageNumbers) -> String {
    use crate::text::group_digits as g;
    match &n.deferred {
        Some(_) => "items not known yet".to_string(),
        None => format!(
            "{}/{} done · {} running · {} failed",
            g(n.cached + n.ran + n.failed),
            g(n.total),
            g(n.running),
            g(n.failed)
        ),
    }
}

pub fn svg(stages: &[StageLive]) -> Markup {
    let places = layout(stages);
    let cols = places.iter().map(|p| p.0).max().map_or(1, |c| c + 1);
    let rows = places.iter().map(|p| p.1).max().map_or(1, |r| r + 1);
    let width = 2 * PAD + cols * NODE_W + (cols - 1) * GAP_X;
    let height = 2 * PAD + rows * NODE_H + (rows - 1) * GAP_Y;
    let index: HashMap<&str, usize> = stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    html! {
        svg.graph #graph xmlns="http://www.w3.org/2000/svg" width=(width) height=(height)
            viewBox=(format!("0 0 {width} {height}")) role="img" aria-label="stage graph" {
            @for (i, s) in stages.iter().enumerate() {
                @for input in &s.inputs {
                    @if let Some(&j) = index.get(input.as_str()) {
                        (edge(origin(places[j]), origin(places[i])))
                    }
                }
            }
            @for (i, s) in stages.iter().enumerate() {
                (node(i, s, origin(places[i])))
            }
        }
    }
}

fn edge(from: (u32, u32), to: (u32, u32)) -> Markup {
    let (x1, y1) = (from.0 + NODE_W, from.1 + NODE_H / 2);
    let (x2, y2) = (to.0, to.1 + NODE_H / 2);
    let mid = (x1 + x2) / 2;
    html! {
        path.edge d=(format!("M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}")) {}
    }
}

fn node(i: usize, s: &StageLive, (x, y): (u32, u32)) -> Markup {
    let n = StageNumbers::of(s);
    let widths = segments(&n);
    let mut xs = [0u32; 5];
    let mut left = x + 10;
    for (k, w) in widths.iter().enumerate() {
        xs[k] = left;
        left += w;
    }
    html! {
        g.stage data-stage=(i) {
            title { (s.name) ": " (n.deferred.as_deref().unwrap_or("")) }
            rect.node x=(x) y=(y) width=(NODE_W) height=(NODE_H) rx="6" {}
            text.name x=(x + 10) y=(y + 18) { (s.name) }
            text.muted x=(x + NODE_W - 10) y=(y + 18) text-anchor="end" { (s.kind) }
            text #(format!("s{i}-text")) x=(x + 10) y=(y + 38) font-size="11" { (counts_text(&n)) }
            @for (k, state) in STATES.iter().enumerate() {
                rect #(format!("s{i}-{state}")) class=(format!("seg-{state}"))
                    x=(xs[k]) y=(y + 48) width=(widths[k]) height="12" {}
            }
        }
    }
}
