//! The index arithmetic of the Qwen2(.5)-VL vision tower (transformers'
//! `rot_pos_emb`, `get_window_index` and `cu_seqlens`), from the image grids `(t, h, w)` in
//! patches.

use anyhow::{ensure, Result};

/// One image (or video) grid: frames, patch rows, patch columns.
pub type Grid = [usize; 3];

/// Each patch row's (h, w) position, in the processor's row order: per frame, merge units in
/// raster order, the `merge × merge` patches of a unit in raster order inside it.
pub fn rotary_positions(grids: &[Grid], merge: usize) -> Vec<[usize; 2]> {
    let mut pos = vec![];
    for &[t, h, w] in grids {
        for _ in 0..t {
            for br in 0..h / merge {
                for bc in 0..w / merge {
                    for ir in 0..merge {
                        for ic in 0..merge {
                            pos.push([br * merge + ir, bc * merge + ic]);
                        }
                    }
                }
            }
        }
    }
    pos
}

/// Qwen2.5-VL's windows of `ws × ws` merge units: the merge-unit order that groups each
/// window's units together (window by window, raster order inside), and the window
/// boundaries in patch rows (`cu_window_seqlens`, empty windows dropped).
pub fn window_index(grids: &[Grid], merge: usize, ws: usize) -> (Vec<usize>, Vec<usize>) {
    let unit = merge * merge;
    let (mut index, mut cu) = (vec![], vec![0]);
    let mut base = 0;
    for &[t, h, w] in grids {
        let (lh, lw) = (h / merge, w / merge);
        // transformers pads by a whole window when the side is already a multiple.
        let (nh, nw) = ((lh + ws - lh % ws) / ws, (lw + ws - lw % ws) / ws);
        for f in 0..t {
            for wr in 0..nh {
                for wc in 0..nw {
                    let before = index.len();
                    for r in wr * ws..((wr + 1) * ws).min(lh) {
                        for c in wc * ws..((wc + 1) * ws).min(lw) {
                            index.push(base + f * lh * lw + r * lw + c);
                        }
                    }
                    let last = cu[cu.len() - 1];
                    let rows = (index.len() - before) * unit;
                    if rows > 0 {
                        cu.push(last + rows);
                    }
                }
            }
        }
        base += t * lh * lw;
    }
    (index, cu)
}

/// Full attention's boundaries: one block per frame of each grid.
pub fn full_seqlens(grids: &[Grid]) -> Vec<usize> {
    let mut cu = vec![0];
    for &[t, h, w] in grids {
        for _ in 0..t {
            cu.push(cu[cu.len() - 1] + h * w);
        }
    }
    cu
}

/// Checks the grids describe `rows` patch rows and split into merge units.
pub fn check_grids(grids: &[Grid], merge: usize, rows: usize) -> Result<()> {
    ensure!(!grids.is_empty(), "no image grid given");
    for g in grids {
        ensure!(
            g.iter().all(|&d| d > 0) && g[1] % merge == 0 && g[2] % merge == 0,
            "image grid {g:?} is not a positive multiple of the merge size {merge}"
        );
    }
    let total: usize = grids.iter().map(|g| g.iter().product::<usize>()).sum();
    ensure!(
        total == rows,
        "image grids {grids:?} describe {total} patch rows, the pixel values have {rows}"
    );
    Ok(())
}

/// The inverse permutation (`argsort` of a permutation).
pub fn inverse(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_of_a_5x7_unit_grid() {
        // 10x14 patches, merge 2: 5x7 units; windows of 4 units: rows 0-3 | 4, cols 0-3 | 4-6.
        let (index, cu) = window_index(&[[1, 10, 14]], 2, 4);
        assert_eq!(index.len(), 35);
        assert_eq!(&index[..5], &[0, 1, 2, 3, 7]);
        assert_eq!(cu, vec![0, 64, 112, 128, 140]);
        assert_eq!(inverse(&index).len(), 35);
        let mut sorted = index.clone();
        sorted.sort();
        assert_eq!(sorted, (0..35).collect::<Vec<_>>());
    }

    #[test]
    fn positions_follow_merge_units() {
        let p = rotary_positions(&[[1, 2, 4]], 2);
        assert_eq!(
            p,
            vec![
                [0, 0],
                [0, 1],
                [1, 0],
                [1, 1],
                [0, 2],
                [0, 3],
                [1, 2],
                [1, 3]
            ]
        );
        assert_eq!(full_seqlens(&[[2, 2, 4]]), vec![0, 8, 16]);
    }
}
