//! The digest a whole stage contributes to the key of a task that reads all of it: its items
//! that succeeded and their manifests, in item order, as postcard encodes a `Vec` of
//! `(item, manifest)` pairs.
//!
//! The pairs are written straight into the hasher. Building the `Vec` and its encoding first
//! held about 200 bytes a task at the moment a stage completed (the encoding's buffer
//! doubling as it grew): 3.2 GB for the 15M renders of a 30M-task run, the highest point of
//! its memory. Streaming gives the same bytes, so keys made before are keys still.

use crate::store::records::encode_seq_into;
use crate::task::Digest;

/// The digest of `pairs` (`(item, manifest)` of each task that succeeded, `count` of them),
/// sorted by item. When they are already in item order (ids files usually are) nothing is
/// held; otherwise their references are sorted first.
pub(super) fn results_digest<'a, I>(pairs: I, count: usize) -> Digest
where
    I: Iterator<Item = (&'a str, &'a Digest)> + Clone,
{
    let sorted = pairs
        .clone()
        .try_fold(None::<&str>, |last, (item, _)| match last {
            Some(last) if last > item => None,
            _ => Some(Some(item)),
        })
        .is_some();
    let hasher = if sorted {
        encode_seq_into(blake3::Hasher::new(), count, pairs)
    } else {
        let mut held: Vec<(&str, &Digest)> = pairs.collect();
        held.sort_unstable_by(|a, b| a.0.cmp(b.0));
        encode_seq_into(blake3::Hasher::new(), held.len(), held.into_iter())
    };
    Digest::from_hasher(&hasher.expect("the pairs are counted as they are made"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digest keys were made with before: the pairs collected, sorted and encoded whole.
    fn collected(pairs: &[(String, Digest)]) -> Digest {
        let mut held: Vec<(&str, &Digest)> = pairs.iter().map(|(i, d)| (i.as_str(), d)).collect();
        held.sort_unstable_by(|a, b| a.0.cmp(b.0));
        Digest::of(&postcard::to_stdvec(&held).unwrap())
    }

    fn streamed(pairs: &[(String, Digest)]) -> Digest {
        results_digest(pairs.iter().map(|(i, d)| (i.as_str(), d)), pairs.len())
    }

    #[test]
    fn a_streamed_aggregate_is_the_digest_of_the_collected_encoding_sorted_or_not() {
        let sorted: Vec<(String, Digest)> = (0..300)
            .map(|i| (format!("{i:05}@az{:03}", i % 7), Digest::of(&[i as u8])))
            .collect();
        let mut shuffled = sorted.clone();
        shuffled.reverse();
        shuffled.swap(3, 200);
        // 0, 1, 127 and 128 pairs: where postcard's length prefix takes one byte or two.
        for pairs in [
            &sorted[..0],
            &sorted[..1],
            &sorted[..127],
            &sorted[..128],
            &sorted,
            &shuffled,
        ] {
            assert_eq!(streamed(pairs), collected(pairs), "{} pairs", pairs.len());
        }
        assert_eq!(
            streamed(&shuffled),
            streamed(&sorted),
            "the order of the tasks does not change what they contribute"
        );
        let mut other = sorted.clone();
        other[5].1 = Digest::of(b"another manifest");
        assert_ne!(streamed(&other), streamed(&sorted));
    }
}
