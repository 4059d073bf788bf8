//! Diagnostics every layer uses: an error at a position of the pipeline file, "did you mean",
//! and the error that says a stage cannot be keyed *yet*.

/// An error about one value of a stage table: reported at that value's position rather
/// than at the table's header.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AtSpan {
    pub span: std::ops::Range<usize>,
    pub message: String,
}

/// Fails with an [`AtSpan`]: the error a stage table's check gives about one value, which the
/// pipeline reports at that value's line and column.
pub fn at<T>(span: std::ops::Range<usize>, message: impl Into<String>) -> anyhow::Result<T> {
    Err(AtSpan {
        span,
        message: message.into(),
    }
    .into())
}

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
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotYetAvailable(pub String);
