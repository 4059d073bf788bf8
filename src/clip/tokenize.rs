//! Captions to token ids as CLIP's tokenizer makes them, from the model's own
//! `tokenizer.json` (its normaliser lower-cases and collapses whitespace, its post-processor
//! adds `<|startoftext|>` and `<|endoftext|>`): truncated to the model's length keeping the
//! end token last, padded with the end token (what Hugging Face does).

use anyhow::{Context, Result, anyhow};
use std::path::Path;
use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

/// The end-of-text token of CLIP vocabularies.
pub const END_OF_TEXT: &str = "<|endoftext|>";

pub struct ClipTokenizer {
    inner: Tokenizer,
    pub max_tokens: usize,
    pub eos_id: u32,
}

impl ClipTokenizer {
    pub fn from_file(path: &Path, max_tokens: usize) -> Result<ClipTokenizer> {
        let mut inner = Tokenizer::from_file(path)
            .map_err(|e| anyhow!("{}: not a tokenizer mvc can read: {e}", path.display()))?;
        let eos_id = inner.token_to_id(END_OF_TEXT).with_context(|| {
            format!(
                "{}: the vocabulary has no {END_OF_TEXT} token; is this a CLIP tokenizer?",
                path.display()
            )
        })?;
        // Truncation leaves room for the tokens the post-processor adds, so the end token
        // stays last.
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_tokens),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id: eos_id,
            pad_type_id: 0,
            pad_token: END_OF_TEXT.to_string(),
        }));
        Ok(ClipTokenizer {
            inner,
            max_tokens,
            eos_id,
        })
    }

    /// `max_tokens` ids for one caption. An empty caption is valid: start, end, padding.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| anyhow!("tokenising {text:?}: {e}"))?;
        let ids = encoding.get_ids().to_vec();
        if ids.len() != self.max_tokens {
            return Err(anyhow!(
                "tokenising {text:?} gave {} ids instead of {}",
                ids.len(),
                self.max_tokens
            ));
        }
        Ok(ids)
    }
}
