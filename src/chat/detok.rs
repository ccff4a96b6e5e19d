//! Streaming detokenization. A byte-level BPE token can end in the middle of a UTF-8
//! character (and SentencePiece decoders drop a leading space from the first piece), so a
//! token cannot be decoded on its own. We keep the ids, decode a short window that starts a
//! few tokens back, and print only text past what that window's prefix already produced;
//! while the window ends in U+FFFD (an incomplete character) nothing is printed.

use anyhow::Result;
use tokenizers::Tokenizer;

pub struct IncrementalDecoder<'t> {
    tokenizer: &'t Tokenizer,
    ids: Vec<u32>,
    /// Start of the window decoded for context.
    prefix_offset: usize,
    /// Tokens before it have been printed.
    read_offset: usize,
}

impl<'t> IncrementalDecoder<'t> {
    pub fn new(tokenizer: &'t Tokenizer) -> Self {
        IncrementalDecoder {
            tokenizer,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| anyhow::anyhow!("decoding token ids {ids:?}: {e}"))
    }

    /// Adds a token; returns the newly completed text (often empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = self.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = self.decode(&self.ids[self.prefix_offset..])?;
        if full.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let new = new_text(&prefix, &full);
        if !new.is_empty() {
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
        }
        Ok(new)
    }

    /// Whatever is still held back (a trailing incomplete character prints as U+FFFD).
    pub fn finish(&mut self) -> Result<String> {
        let prefix = self.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = self.decode(&self.ids[self.prefix_offset..])?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(new_text(&prefix, &full))
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

/// `full` past `prefix`; when `full` does not start with `prefix` (a decoder that rewrites
/// earlier text), past their longest common prefix at a character boundary.
fn new_text(prefix: &str, full: &str) -> String {
    if let Some(rest) = full.strip_prefix(prefix) {
        return rest.to_string();
    }
    let common = prefix
        .char_indices()
        .zip(full.chars())
        .take_while(|((_, a), b)| a == b)
        .last()
        .map_or(0, |((i, a), _)| i + a.len_utf8());
    full[common..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::test_util::byte_tokenizer;

    #[test]
    fn multibyte_characters_split_over_tokens_are_never_broken() {
        let tok = byte_tokenizer();
        let text = "a é 世界 🦀!";
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(ids.len(), text.len(), "one token per byte");
        let mut d = IncrementalDecoder::new(&tok);
        let mut out = String::new();
        let mut pieces = Vec::new();
        for &id in &ids {
            let piece = d.push(id).unwrap();
            assert!(
                !piece.contains('\u{FFFD}'),
                "broken UTF-8 printed: {piece:?}"
            );
            out += &piece;
            pieces.push(piece);
        }
        out += &d.finish().unwrap();
        assert_eq!(out, text);
        // The crab's four bytes print as one piece, on its last byte.
        assert!(pieces.iter().any(|p| p == "🦀"), "{pieces:?}");
        assert_eq!(d.ids(), ids);
    }

    #[test]
    fn an_unfinished_character_is_flushed_as_replacement() {
        let tok = byte_tokenizer();
        let mut d = IncrementalDecoder::new(&tok);
        assert_eq!(d.push(u32::from(b'x')).unwrap(), "x");
        assert_eq!(d.push(0xF0).unwrap(), "");
        assert_eq!(d.finish().unwrap(), "\u{FFFD}");
    }

    #[test]
    fn new_text_past_a_rewritten_prefix() {
        assert_eq!(new_text("ab", "abc"), "c");
        assert_eq!(new_text("ab", "aXc"), "Xc");
        assert_eq!(new_text("é", "éa"), "a");
        assert_eq!(new_text("", "x"), "x");
    }
}
