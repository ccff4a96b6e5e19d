//! What a prompt with images adds to prefill (LLM-TPU's Qwen2.5-VL / InternVL pipelines,
//! vlm.md §1.4-1.5, §2.4): image embeddings written over the embedding output at the image
//! tokens' rows, and for M-RoPE models `[3, L]` position ids (t, h, w rows) whose decode
//! positions continue from their maximum.

/// Extras for the next prefill.
#[derive(Debug, Clone, Default)]
pub struct PromptExtras {
    /// M-RoPE positions, one `[t, h, w]` per prompt token (None: `0..L` on every row).
    pub positions: Option<Vec<[i32; 3]>>,
    /// (first token row, the embeddings' bytes in the activation dtype) per image.
    pub embeds: Vec<(usize, Vec<u8>)>,
}

impl PromptExtras {
    /// The extras for a prompt's tokens from `cached` on, when the ones before are already
    /// in the KV cache (a history-KV chat turn): positions from there, and only the images
    /// that start there or later (an image in the cached part is in the cache already).
    pub fn after(self, cached: usize) -> PromptExtras {
        self.slice(cached, usize::MAX)
    }

    /// The extras of the prompt's tokens `start..start + len` (one prefill chunk), counted
    /// from `start`: their positions and the images that start among them.
    pub fn slice(&self, start: usize, len: usize) -> PromptExtras {
        let end = start.saturating_add(len);
        PromptExtras {
            positions: self.positions.as_ref().map(|p| {
                let end = end.min(p.len());
                p.get(start..end).unwrap_or(&[]).to_vec()
            }),
            embeds: self
                .embeds
                .iter()
                .filter(|(at, _)| (start..end).contains(at))
                .map(|(at, bytes)| (at - start, bytes.clone()))
                .collect(),
        }
    }
}

/// The `[3, rows]` position_ids of a prefill of `len` tokens at history slots `old..`
/// (row-major: every t, then every h, then every w; zero-padded to `rows`), and the decode
/// offset: decode step positions are `history_slot + delta` (max + 1 - (old + len)).
///
/// Without given positions the tokens continue the cache's: slot + `delta`, the offset its
/// last prefill left (after an image, positions run behind the slots). A later chat turn's
/// given positions are those of the whole conversation from `old` on (transformers'
/// `get_rope_index` over every turn), so its text continues one past the cache's largest
/// position. LLM-TPU's `history_max_posid = max_posid + 2` is that rule for a next prompt
/// that starts after the reply's `<|im_end|>`, which its runtime never feeds; ours is fed
/// (the conversation is re-rendered), so the tokens keep transformers' positions.
pub fn mrope_positions(
    extras: Option<&[[i32; 3]]>,
    old: usize,
    len: usize,
    rows: usize,
    delta: i32,
) -> (Vec<i32>, i32) {
    let mut out = vec![0i32; 3 * rows];
    // Given positions (after an image) may sit below the slots: only they count.
    let mut max = if extras.is_some() {
        -1
    } else {
        old as i32 + delta - 1
    };
    for i in 0..len {
        let p = match extras {
            Some(p) => p[i],
            None => [(old + i) as i32 + delta; 3],
        };
        for (r, v) in p.iter().enumerate() {
            out[r * rows + i] = *v;
            max = max.max(*v);
        }
    }
    let delta = max + 1 - (old + len) as i32;
    (out, delta)
}

#[cfg(test)]
mod tests {
    use super::mrope_positions;

    #[test]
    fn text_positions_repeat_on_every_row() {
        let (p, delta) = mrope_positions(None, 0, 3, 4, 0);
        assert_eq!(p, [0, 1, 2, 0, 0, 1, 2, 0, 0, 1, 2, 0]);
        assert_eq!(delta, 0);
    }

    #[test]
    fn image_positions_shift_decode() {
        // 2 text tokens, a 2x2-token image at offset 2, 1 text token after it.
        let pos = [
            [0, 0, 0],
            [1, 1, 1],
            [2, 2, 2],
            [2, 2, 3],
            [2, 3, 2],
            [2, 3, 3],
            [4, 4, 4],
        ];
        let (p, delta) = mrope_positions(Some(&pos), 0, 7, 7, 0);
        assert_eq!(&p[7..14], &[0, 1, 2, 2, 3, 3, 4]);
        // The next token is at 5, its slot is 7.
        assert_eq!(delta, 5 - 7);
    }

    #[test]
    fn a_cached_image_keeps_its_positions_for_the_new_tokens() {
        use super::PromptExtras;
        let pos: Vec<[i32; 3]> = (0..7).map(|i| [i.min(3), i, i]).collect();
        let e = PromptExtras {
            positions: Some(pos),
            embeds: vec![(1, vec![1, 2]), (5, vec![3])],
        };
        let tail = e.clone().after(4);
        assert_eq!(
            tail.positions.as_deref(),
            Some(&[[3, 4, 4], [3, 5, 5], [3, 6, 6]][..])
        );
        assert_eq!(tail.embeds, vec![(1, vec![3])]);
        // A chunk holds the images that start in it, counted from the chunk.
        let chunk = e.slice(1, 3);
        assert_eq!(
            chunk.positions.as_deref(),
            Some(&[[1, 1, 1], [2, 2, 2], [3, 3, 3]][..])
        );
        assert_eq!(chunk.embeds, vec![(0, vec![1, 2])]);
        // Decode continues after the largest given position, not after the slots.
        let (_, delta) = mrope_positions(tail.positions.as_deref(), 10, 3, 3, 0);
        assert_eq!(delta, 7 - 13);
    }

    /// Text after a cached image (no positions given) continues the cache's positions, not
    /// its slots: slot 7 with offset -2 is position 5, and the offset stays.
    #[test]
    fn text_after_a_cached_image_keeps_the_offset() {
        let (p, delta) = mrope_positions(None, 7, 2, 2, -2);
        assert_eq!(p, [5, 6, 5, 6, 5, 6]);
        assert_eq!(delta, -2);
    }
}
