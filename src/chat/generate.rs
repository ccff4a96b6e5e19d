//! The generation loop: prefill the prompt, decode until an EOS id, the token budget or the
//! end of the KV cache, and stream the text as it completes.

use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;
use tokenizers::Tokenizer;

use super::detok::IncrementalDecoder;
use crate::runner::Pipeline;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model produced an EOS id (it is the last of `tokens`, and not in `text`).
    Eos,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The KV cache (SEQLEN slots) is full: the bmodel cannot attend to more tokens.
    KvCacheFull,
}

impl StopReason {
    pub fn describe(self, seq_length: usize) -> String {
        match self {
            StopReason::Eos => "end of sequence".into(),
            StopReason::MaxTokens => "the --max-tokens limit".into(),
            StopReason::KvCacheFull => format!(
                "the KV cache is full (this bmodel holds {seq_length} tokens, its SEQLEN; convert with a larger -s for longer outputs)"
            ),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    pub stop_reason: StopReason,
    pub prompt_tokens: usize,
    /// Prompt tokens that were already in the KV cache (history-KV bmodels, later chat turns).
    pub cached_prompt_tokens: usize,
    /// Prefill + the first token.
    pub first_token_s: f64,
    /// Every later token.
    pub decode_s: f64,
}

impl Generation {
    /// Tokens after the first per second (0 when only one was generated).
    pub fn decode_tokens_per_s(&self) -> f64 {
        let n = self.tokens.len().saturating_sub(1);
        if n == 0 || self.decode_s <= 0.0 {
            0.0
        } else {
            n as f64 / self.decode_s
        }
    }
}

/// Runs `prompt` through `pipeline` and generates up to `max_tokens` tokens (>= 1), handing
/// each newly completed piece of text to `on_text`.
pub fn generate(
    pipeline: &mut Pipeline,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    max_tokens: usize,
    eos_ids: &BTreeSet<u32>,
    mut on_text: impl FnMut(&str) -> Result<()>,
) -> Result<Generation> {
    anyhow::ensure!(max_tokens >= 1, "--max-tokens must be at least 1");
    let seq = pipeline.nets.seq_length;
    let mut detok = IncrementalDecoder::new(tokenizer);
    let mut text = String::new();
    let mut tokens = Vec::new();
    let t0 = Instant::now();
    // History-KV bmodels keep the conversation so far in the KV cache across turns.
    let (first, reused) = pipeline.prefill_reusing(prompt)?;
    let mut token = first.token;
    let first_token_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let stop_reason = loop {
        tokens.push(token);
        if eos_ids.contains(&token) {
            break StopReason::Eos;
        }
        let piece = detok.push(token)?;
        if !piece.is_empty() {
            on_text(&piece)?;
            text += &piece;
        }
        if tokens.len() >= max_tokens {
            break StopReason::MaxTokens;
        }
        // decode writes the KV slot history-1: there is none left past SEQLEN.
        if pipeline.history() > seq {
            break StopReason::KvCacheFull;
        }
        token = pipeline.decode(token)?.token;
    };
    let decode_s = t1.elapsed().as_secs_f64();
    let rest = detok.finish()?;
    if !rest.is_empty() {
        on_text(&rest)?;
        text += &rest;
    }
    Ok(Generation {
        tokens,
        text,
        stop_reason,
        prompt_tokens: prompt.len(),
        cached_prompt_tokens: reused,
        first_token_s,
        decode_s,
    })
}
