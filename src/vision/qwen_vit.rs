//! The host-side inputs of the Qwen VL `vit` net for one image, exactly as LLM-TPU's
//! `pipeline.py` builds them (`get_window_index`, `rot_pos`, `get_attn_mask`) and `chat.cpp`
//! pads them (`forward_vit`); the window index and rotary positions are transformers'
//! `get_window_index` / `rot_pos_emb` with the parameters taken from the config.

use std::path::Path;

use super::qwen::{QwenPixels, QwenVisionParams};
use super::Grid;
use crate::error::InputError;

/// Additive mask value for "no attention", as LLM-TPU uses.
pub const MASK_OFF: f32 = -10000.0;

/// How the compiled vit takes its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VitShape {
    /// Fixed `[capacity, ..]` inputs: rows past N are zero, masks `[P, P]` are −10000 outside
    /// the valid `[N, N]` corner.
    Static,
    /// Dynamic net: compact `[N, ..]` inputs and `[N, N]` masks (`reverse_index` keeps its
    /// `[P / merge²]` shape with zeros past N / merge², as chat.cpp leaves it).
    Dynamic,
}

/// Qwen2.5-VL's window partition of one image, in merge units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowPlan {
    /// Merge-unit index (raster order) for each window-ordered slot; `N / merge²` entries.
    pub window_index: Vec<usize>,
    /// Patch-row offsets of the windows, starting at 0, empty windows dropped
    /// (`unique_consecutive`).
    pub cu_window_seqlens: Vec<usize>,
}

/// Every host input of the vit, ready to copy into the net's tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct QwenVitInputs {
    /// `[rows, dim]` f32 (`input_states`): patch rows in window order (Qwen2.5-VL) or raster
    /// order (Qwen2-VL).
    pub input_states: Vec<f32>,
    /// `[rows, 2]` i32 (`position_ids`): (h, w) of each row's patch, same order.
    pub position_ids: Vec<i32>,
    /// `[1, 1, rows, rows]` f32 (`full_attn_mask`), 0 inside each frame, −10000 elsewhere.
    pub full_attn_mask: Vec<f32>,
    /// `[1, 1, rows, rows]` f32 (`window_attn_mask`), Qwen2.5-VL only.
    pub window_attn_mask: Option<Vec<f32>>,
    /// `[capacity / merge²]` i32 (`reverse_index`), Qwen2.5-VL only: `argsort(window_index)`.
    pub reverse_index: Option<Vec<i32>>,
    /// Rows of the tensors above: the capacity P (static) or N (dynamic).
    pub rows: usize,
    /// Real patch rows N = t·h·w.
    pub patches: usize,
    /// LLM tokens the image becomes: the first N / merge² rows of the vit output.
    pub tokens: usize,
}

/// `(h, w)` per patch in block raster order (transformers' `rot_pos_emb` ids).
pub fn rot_pos_ids(grid: Grid, merge: usize) -> Vec<[i32; 2]> {
    let mut ids = Vec::with_capacity(grid.patches());
    for _ in 0..grid.t {
        for bh in 0..grid.h / merge {
            for bw in 0..grid.w / merge {
                for mh in 0..merge {
                    for mw in 0..merge {
                        ids.push([(bh * merge + mh) as i32, (bw * merge + mw) as i32]);
                    }
                }
            }
        }
    }
    ids
}

/// transformers' `get_window_index` for one image; `window` is the window side in merge
/// units (`window_size / merge / patch`, 4).
pub fn window_plan(grid: Grid, merge: usize, window: usize) -> WindowPlan {
    let (lh, lw) = (grid.h / merge, grid.w / merge);
    // Always pads, even a full window when the side is divisible (as transformers does).
    let (nh, nw) = (
        (lh + window - lh % window) / window,
        (lw + window - lw % window) / window,
    );
    let unit = merge * merge;
    let mut window_index = Vec::with_capacity(grid.t * lh * lw);
    let mut cu = vec![0usize];
    for t in 0..grid.t {
        for wy in 0..nh {
            for wx in 0..nw {
                let mut count = 0;
                for y in wy * window..((wy + 1) * window).min(lh) {
                    for x in wx * window..((wx + 1) * window).min(lw) {
                        window_index.push((t * lh + y) * lw + x);
                        count += 1;
                    }
                }
                if count > 0 {
                    cu.push(cu[cu.len() - 1] + count * unit);
                }
            }
        }
    }
    WindowPlan {
        window_index,
        cu_window_seqlens: cu,
    }
}

/// Frame boundaries for the full-attention mask: `[0, h·w, 2·h·w, …]` (one block per frame).
pub fn cu_seqlens(grid: Grid) -> Vec<usize> {
    (0..=grid.t).map(|i| i * grid.h * grid.w).collect()
}

/// A `[rows, rows]` additive mask: 0 inside the `cu` blocks, −10000 elsewhere (also past the
/// last block, i.e. in padded rows and columns).
pub fn block_mask(cu: &[usize], rows: usize) -> Vec<f32> {
    let mut mask = vec![MASK_OFF; rows * rows];
    for pair in cu.windows(2) {
        for r in pair[0]..pair[1] {
            mask[r * rows + pair[0]..r * rows + pair[1]].fill(0.0);
        }
    }
    mask
}

/// `argsort(window_index)`: where each raster merge unit sits in window order.
pub fn reverse_index(window_index: &[usize]) -> Vec<i32> {
    let mut rev = vec![0i32; window_index.len()];
    for (slot, &unit) in window_index.iter().enumerate() {
        rev[unit] = slot as i32;
    }
    rev
}

/// The vit inputs for `pixels` on a net compiled for `capacity` patches.
pub fn qwen_vit_inputs(
    params: &QwenVisionParams,
    pixels: &QwenPixels,
    capacity: usize,
    shape: VitShape,
    path: &Path,
) -> Result<QwenVitInputs, InputError> {
    let grid = pixels.grid;
    params.check_capacity(grid, capacity, path)?;
    let (n, dim, merge, unit) = (
        grid.patches(),
        pixels.dim,
        params.merge_size,
        params.merge_unit(),
    );
    let rows = match shape {
        VitShape::Static => capacity,
        VitShape::Dynamic => n,
    };
    let pos = rot_pos_ids(grid, merge);
    let plan = params
        .window_size
        .map(|ws| window_plan(grid, merge, ws / merge / params.patch_size));
    // Reorder whole merge units (unit rows at a time) by the window index.
    let order: Vec<usize> = match &plan {
        Some(p) => p.window_index.clone(),
        None => (0..n / unit).collect(),
    };
    let mut input_states = vec![0f32; rows * dim];
    let mut position_ids = vec![0i32; rows * 2];
    for (slot, &u) in order.iter().enumerate() {
        let (src, dst) = (u * unit * dim, slot * unit * dim);
        input_states[dst..dst + unit * dim].copy_from_slice(&pixels.rows[src..src + unit * dim]);
        for k in 0..unit {
            position_ids[(slot * unit + k) * 2..][..2].copy_from_slice(&pos[u * unit + k]);
        }
    }
    let full_attn_mask = block_mask(&cu_seqlens(grid), rows);
    let (window_attn_mask, reverse_index) = match &plan {
        Some(p) => {
            let mut rev = reverse_index(&p.window_index);
            rev.resize(capacity / unit, 0);
            (Some(block_mask(&p.cu_window_seqlens, rows)), Some(rev))
        }
        None => (None, None),
    };
    Ok(QwenVitInputs {
        input_states,
        position_ids,
        full_attn_mask,
        window_attn_mask,
        reverse_index,
        rows,
        patches: n,
        tokens: n / unit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_plan_of_a_6x10_merge_grid() {
        // grid 12×20 patches → 6×10 merge units → windows 2×3 (padded to 8×12).
        let plan = window_plan(Grid { t: 1, h: 12, w: 20 }, 2, 4);
        assert_eq!(plan.window_index.len(), 60);
        assert_eq!(&plan.window_index[..5], &[0, 1, 2, 3, 10]);
        // Window sizes: 16, 16, 8 (row 0), then 8, 8, 4 → ×4 patches.
        assert_eq!(plan.cu_window_seqlens, vec![0, 64, 128, 160, 192, 224, 240]);
        let rev = reverse_index(&plan.window_index);
        for (slot, &u) in plan.window_index.iter().enumerate() {
            assert_eq!(rev[u] as usize, slot);
        }
    }

    #[test]
    fn divisible_sides_keep_no_empty_windows() {
        let plan = window_plan(Grid { t: 1, h: 16, w: 8 }, 2, 4);
        assert_eq!(plan.cu_window_seqlens, vec![0, 64, 128]);
    }

    #[test]
    fn static_inputs_are_padded_and_dynamic_compact() {
        let p = QwenVisionParams::defaults(true);
        let grid = Grid { t: 1, h: 4, w: 12 };
        let n = grid.patches();
        let pixels = QwenPixels {
            rows: (0..n * 1176).map(|i| (i / 1176) as f32).collect(),
            dim: 1176,
            grid,
            resized: (56, 168),
        };
        let path = Path::new("x.png");
        let s = qwen_vit_inputs(&p, &pixels, 64, VitShape::Static, path).expect("static");
        assert_eq!((s.rows, s.patches, s.tokens), (64, 48, 12));
        assert_eq!(s.input_states.len(), 64 * 1176);
        assert!(s.input_states[48 * 1176..].iter().all(|&v| v == 0.0));
        let rev = s.reverse_index.as_ref().expect("windowed");
        assert_eq!(rev.len(), 16);
        assert!(rev[12..].iter().all(|&v| v == 0));
        let w = s.window_attn_mask.as_ref().expect("windowed");
        assert_eq!(w[63 * 64 + 63], MASK_OFF);
        assert_eq!(s.full_attn_mask[47 * 64 + 47], 0.0);
        assert_eq!(s.full_attn_mask[47 * 64 + 48], MASK_OFF);
        // 2×6 merge units → windows of 4 and 2 columns: unit 4 (row 0, col 4) is slot 8.
        assert_eq!(s.input_states[8 * 4 * 1176], 16.0);
        assert_eq!(w[31], 0.0);
        assert_eq!(w[32], MASK_OFF);
        let d = qwen_vit_inputs(&p, &pixels, 64, VitShape::Dynamic, path).expect("dynamic");
        assert_eq!(d.rows, 48);
        assert_eq!(d.full_attn_mask.len(), 48 * 48);
        assert_eq!(&d.input_states[..], &s.input_states[..48 * 1176]);
        assert_eq!(d.reverse_index, s.reverse_index);
        assert!(qwen_vit_inputs(&p, &pixels, 32, VitShape::Static, path).is_err());
    }

    #[test]
    fn qwen2_vl_has_raster_order_and_full_mask_only() {
        let p = QwenVisionParams::defaults(false);
        let grid = Grid { t: 1, h: 4, w: 12 };
        let pixels = QwenPixels {
            rows: (0..48 * 1176).map(|i| (i / 1176) as f32).collect(),
            dim: 1176,
            grid,
            resized: (56, 168),
        };
        let v =
            qwen_vit_inputs(&p, &pixels, 48, VitShape::Static, Path::new("x.png")).expect("inputs");
        assert_eq!(v.input_states, pixels.rows);
        assert!(v.window_attn_mask.is_none() && v.reverse_index.is_none());
        assert_eq!(&v.position_ids[..8], &[0, 0, 0, 1, 1, 0, 1, 1]);
        assert!(v.full_attn_mask.iter().all(|&m| m == 0.0));
    }
}
