//! Diagnostics every layer uses: an error at a position of the pipeline file, "did you mean",
//! and the error that says a stage cannot be keyed *yet*.

use std::fmt;

/// An error about one value of a stage table: reported at that value's position rather
/// than at the table's header.
#[derive(Debug)]
pub struct AtSpan {
    pub span: std::ops::Range<usize>,
    pub message: String,
}

impl fmt::Display for AtSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AtSpan {}

/// The closest of `candidates` to `word`, if any is reasonably close.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), *c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 2).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// An error of a stage's shared parameters saying that the stage cannot be keyed *yet* (its
/// model could not be downloaded: the network is down): the stage stays unexpanded with this
/// reason, the rest of the pipeline plans and runs, and the next run tries again.
#[derive(Debug)]
pub struct NotYetAvailable(pub String);

impl fmt::Display for NotYetAvailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotYetAvailable {}
