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

/// `training 23 of 25, validation 3 of 3`: how many objects of each part were used.
pub fn counts(parts: &[Coverage]) -> String {
    parts
        .iter()
        .map(|p| format!("{} {} of {}", p.part, p.used, p.objects))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The objects left out, grouped by reason as (reason, [(uid, part)]): the reasons that cost
/// most objects first.
pub fn by_reason(parts: &[Coverage]) -> Vec<(&str, Vec<(&str, &str)>)> {
    let mut groups: Vec<(&str, Vec<(&str, &str)>)> = Vec::new();
    for p in parts {
        for l in &p.left_out {
            let entry = (l.uid.as_str(), p.part.as_str());
            match groups.iter_mut().find(|(r, _)| *r == l.reason) {
                Some((_, objects)) => objects.push(entry),
                None => groups.push((&l.reason, vec![entry])),
            }
        }
    }
    groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
    groups
}

/// A reason on one line (Blender's errors span several).
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The run summary's account of a stage's parts: a line of counts, then one line per reason
/// with how many objects it cost and the first few (results.md lists every one). `None`
/// when nothing was left out.
pub fn coverage_note(parts: &[Coverage]) -> Option<String> {
    let lost: usize = parts.iter().map(|p| p.left_out.len()).sum();
    if lost == 0 {
        return None;
    }
    let mut note = format!("used {} ({lost} left out)", counts(parts));
    for (reason, objects) in by_reason(parts) {
        let reason = one_line(reason);
        let reason = match reason.char_indices().nth(200) {
            Some((cut, _)) => format!("{}…", &reason[..cut]),
            None => reason,
        };
        let shown: Vec<&str> = objects.iter().take(3).map(|(uid, _)| *uid).collect();
        let more = match objects.len() {
            n if n > 3 => format!(" and {} more", n - 3),
            _ => String::new(),
        };
        note.push_str(&format!(
            "\n  {:>5}  {reason} — {}{more}",
            objects.len(),
            shown.join(", ")
        ));
    }
    Some(note)
}
