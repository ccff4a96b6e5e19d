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
        PromptExtras {
            positions: self
                .positions
                .map(|p| p.get(cached..).unwrap_or(&[]).to_vec()),
            embeds: self
                .embeds
                .into_iter()
                .filter(|(at, _)| *at >= cached)
                .map(|(at, bytes)| (at - cached, bytes))
                .collect(),
        }
    }
}

/// The `[3, rows]` position_ids of a prefill of `len` tokens at `old..` (row-major: every t,
/// then every h, then every w; zero-padded to `rows`), and the decode offset: decode step
/// positions are `history_slot + delta` (max + 1 - len after an image, else 0).
pub fn mrope_positions(
    extras: Option<&[[i32; 3]]>,
    old: usize,
    len: usize,
    rows: usize,
) -> (Vec<i32>, i32) {
    let mut out = vec![0i32; 3 * rows];
    // Given positions (after an image) may sit below the slots: only they count.
    let mut max = if extras.is_some() { -1 } else { old as i32 - 1 };
    for i in 0..len {
        let p = match extras {
            Some(p) => p[i],
            None => [(old + i) as i32; 3],
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
        let (p, delta) = mrope_positions(None, 0, 3, 4);
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
        let (p, delta) = mrope_positions(Some(&pos), 0, 7, 7);
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
        let tail = e.after(4);
        assert_eq!(
            tail.positions.as_deref(),
            Some(&[[3, 4, 4], [3, 5, 5], [3, 6, 6]][..])
        );
        assert_eq!(tail.embeds, vec![(1, vec![3])]);
        // Decode continues after the largest given position, not after the slots.
        let (_, delta) = mrope_positions(tail.positions.as_deref(), 10, 3, 3);
        assert_eq!(delta, 7 - 13);
    }
}
