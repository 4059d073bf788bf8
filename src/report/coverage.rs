//! Which objects of a split a science stage used, and those it left out with why: recorded
//! in `head.json` and `metrics.json`, shown in results.md and the run summary.

use serde::{Deserialize, Serialize};

/// How the objects of a split's part fared: how many the part has, how many a stage used,
/// and each one left out with the first failure upstream that cost it its embeddings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    /// `training`, `validation` or `test`.
    pub part: String,
    /// Objects in the split's part.
    pub objects: usize,
    /// Objects the stage used (complete: every view's embedding and the caption's).
    pub used: usize,
    /// Sorted by uid.
    pub left_out: Vec<LeftOutObject>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeftOutObject {
    pub uid: String,
    /// `stage: error` of the first failure upstream (download, render or embed), or what
    /// the object lacks when no failure explains it.
    pub reason: String,
}

/// The run summary's account of a stage's parts: a line of counts, then one line per reason
/// with how many objects it cost and the first few (results.md lists every one). `None`
/// when nothing was left out.
pub fn coverage_note(parts: &[Coverage]) -> Option<String> {
    let lost: usize = parts.iter().map(|p| p.left_out.len()).sum();
    if lost == 0 {
        return None;
    }
    let counts: Vec<String> = parts
        .iter()
        .map(|p| format!("{} {} of {}", p.part, p.used, p.objects))
        .collect();
    let mut by_reason: Vec<(&str, Vec<&str>)> = Vec::new();
    for l in parts.iter().flat_map(|p| &p.left_out) {
        match by_reason.iter_mut().find(|(r, _)| *r == l.reason) {
            Some((_, uids)) => uids.push(&l.uid),
            None => by_reason.push((&l.reason, vec![&l.uid])),
        }
    }
    by_reason.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
    let mut note = format!("used {} ({lost} left out)", counts.join(", "));
    for (reason, uids) in by_reason {
        let reason: String = reason.split_whitespace().collect::<Vec<_>>().join(" ");
        let reason = match reason.char_indices().nth(200) {
            Some((cut, _)) => format!("{}…", &reason[..cut]),
            None => reason,
        };
        let shown: Vec<&str> = uids.iter().take(3).copied().collect();
        let more = match uids.len() {
            n if n > 3 => format!(" and {} more", n - 3),
            _ => String::new(),
        };
        note.push_str(&format!(
            "\n  {:>5}  {reason} — {}{more}",
            uids.len(),
            shown.join(", ")
        ));
    }
    Some(note)
}
