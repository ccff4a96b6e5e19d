//! Qwen VL 3D M-RoPE position ids for a prompt with images (transformers 5.6.2
//! `Qwen2_5_VLModel.get_rope_index` / `Qwen2VLModel.get_rope_index` for images; LLM-TPU's
//! pipeline computes the same for images), and the decode positions after it.

use anyhow::{bail, Result};

use super::Grid;

/// `[3, L]` position ids (rows t, h, w) of a prompt, plus what decode continues from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MropePositions {
    /// Row-major `[3, len]`: all t, then all h, then all w (the `position_ids` layout of
    /// the `block_i` nets).
    pub ids: Vec<i32>,
    pub len: usize,
    /// transformers' `rope_deltas`: max(ids) + 1 − len. The token at sequence index `i ≥ len`
    /// has position `i + delta` in all three rows.
    pub delta: i64,
}

impl MropePositions {
    /// Row `r` (0 = t, 1 = h, 2 = w).
    pub fn row(&self, r: usize) -> &[i32] {
        &self.ids[r * self.len..(r + 1) * self.len]
    }

    /// Position (same in all three rows) of the token at sequence index `index ≥ len`:
    /// the first decode step is max + 1, then +1 per step (LLM-TPU's `max_posid += 1`).
    pub fn decode_position(&self, index: usize) -> i32 {
        (index as i64 + self.delta) as i32
    }

    /// The ids zero-padded to `[3, width]` row-major (a static `block_0` input).
    pub fn padded(&self, width: usize) -> Vec<i32> {
        let mut out = vec![0i32; 3 * width];
        for r in 0..3 {
            let n = self.len.min(width);
            out[r * width..r * width + n].copy_from_slice(&self.row(r)[..n]);
        }
        out
    }
}

/// Position ids for `tokens`, where each maximal run of `image_token_id` is one image, in
/// order of `grids`; each run must hold exactly `grid.tokens(merge)` tokens (transformers
/// groups by token type, so two images need text, e.g. `<|vision_end|><|vision_start|>`,
/// between them). Text advances all rows by 1; an image at offset `o` gets
/// t = o, h = o + row, w = o + col over its merged (h/merge × w/merge) raster, and the text
/// after it starts at `o + max(h, w) / merge`.
pub fn mrope_position_ids(
    tokens: &[u32],
    image_token_id: u32,
    grids: &[Grid],
    merge: usize,
) -> Result<MropePositions> {
    let len = tokens.len();
    let mut rows = [
        Vec::with_capacity(len),
        Vec::with_capacity(len),
        Vec::with_capacity(len),
    ];
    let mut pos: i64 = 0;
    let mut images = grids.iter();
    let mut seen = 0usize;
    let mut i = 0;
    while i < len {
        if tokens[i] != image_token_id {
            for row in &mut rows {
                row.push(pos as i32);
            }
            pos += 1;
            i += 1;
            continue;
        }
        let run = tokens[i..]
            .iter()
            .take_while(|&&t| t == image_token_id)
            .count();
        let Some(&grid) = images.next() else {
            bail!(
                "the prompt has more image-token runs than the {} image(s) given",
                grids.len()
            );
        };
        let (lt, lh, lw) = (grid.t, grid.h / merge, grid.w / merge);
        if run != lt * lh * lw {
            bail!(
                "image {} needs {} image tokens ({}×{}×{} after merge {merge}), the prompt has a run of {run}",
                seen + 1,
                lt * lh * lw,
                lt,
                lh,
                lw
            );
        }
        // Images: temporal index 0 for every frame (time_interval only applies to video).
        for _ in 0..lt {
            for y in 0..lh {
                for x in 0..lw {
                    rows[0].push(pos as i32);
                    rows[1].push((pos + y as i64) as i32);
                    rows[2].push((pos + x as i64) as i32);
                }
            }
        }
        pos += (grid.h.max(grid.w) / merge) as i64;
        seen += 1;
        i += run;
    }
    if seen != grids.len() {
        bail!(
            "{} image(s) given but the prompt has {seen} image-token run(s)",
            grids.len()
        );
    }
    let max = rows
        .iter()
        .flat_map(|r| r.iter())
        .copied()
        .max()
        .map_or(-1, i64::from);
    let ids = rows.concat();
    Ok(MropePositions {
        ids,
        len,
        delta: max + 1 - len as i64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAD: u32 = 151655;

    #[test]
    fn text_image_text() {
        // 2 text, an image of 2×3 merged tokens (grid 4×6), 2 text.
        let mut toks = vec![1, 2];
        toks.extend([PAD; 6]);
        toks.extend([3, 4]);
        let p = mrope_position_ids(&toks, PAD, &[Grid { t: 1, h: 4, w: 6 }], 2).expect("ids");
        assert_eq!(p.row(0), &[0, 1, 2, 2, 2, 2, 2, 2, 5, 6]);
        assert_eq!(p.row(1), &[0, 1, 2, 2, 2, 3, 3, 3, 5, 6]);
        assert_eq!(p.row(2), &[0, 1, 2, 3, 4, 2, 3, 4, 5, 6]);
        assert_eq!(p.delta, 7 - 10);
        assert_eq!(p.decode_position(10), 7);
        assert_eq!(p.decode_position(11), 8);
        assert_eq!(&p.padded(12)[12..24], &[0, 1, 2, 2, 2, 3, 3, 3, 5, 6, 0, 0]);
    }

    #[test]
    fn text_only_is_arange_and_mismatches_fail() {
        let p = mrope_position_ids(&[5, 6, 7], PAD, &[], 2).expect("ids");
        assert_eq!(p.ids, vec![0, 1, 2, 0, 1, 2, 0, 1, 2]);
        assert_eq!(p.decode_position(3), 3);
        assert!(mrope_position_ids(&[PAD; 5], PAD, &[Grid { t: 1, h: 4, w: 4 }], 2).is_err());
        assert!(mrope_position_ids(&[1, 2], PAD, &[Grid { t: 1, h: 4, w: 4 }], 2).is_err());
        assert!(mrope_position_ids(&[PAD; 4], PAD, &[], 2).is_err());
    }
}
