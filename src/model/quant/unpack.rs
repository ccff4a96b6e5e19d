//! Packed int32 words → one small integer per byte, a whole tensor at a time: one function per
//! packing direction, the order of the values inside a word given as the shift of each.

/// Nibble order inside an AWQ GEMM word: value j of a word sits at shift `4 · AWQ_ORDER[j]`.
pub const AWQ_ORDER: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7];
/// GPTQ and compressed-tensors pack in plain order (the first `32 / bits` entries).
pub const PLAIN_ORDER: [usize; 8] = [0, 1, 2, 3, 4, 5, 6, 7];

/// `words [rows, cols]` of `bits`-bit values packed along the rows (GPTQ `qweight`: 32/bits
/// input features per word) → `[rows · 32/bits, cols]`, row `p·r + i` = value i of row r.
pub fn along_rows(words: &[i32], rows: usize, cols: usize, bits: usize) -> Vec<u8> {
    debug_assert_eq!(words.len(), rows * cols);
    let (per, mask) = (32 / bits, (1u32 << bits) - 1);
    let mut out = vec![0u8; rows * per * cols];
    for (r, src) in words.chunks_exact(cols).enumerate() {
        for (i, dst) in out[r * per * cols..(r + 1) * per * cols]
            .chunks_exact_mut(cols)
            .enumerate()
        {
            let shift = (bits * i) as u32;
            for (d, &w) in dst.iter_mut().zip(src) {
                *d = ((w as u32 >> shift) & mask) as u8;
            }
        }
    }
    out
}

/// `words [rows, cols]` of `bits`-bit values packed along the columns (AWQ `qweight`, every
/// `qzeros`) → `[rows, cols · 32/bits]`, column `p·c + j` = the value at `bits · order[j]`.
pub fn along_cols(
    words: &[i32],
    rows: usize,
    cols: usize,
    bits: usize,
    order: &[usize],
) -> Vec<u8> {
    debug_assert_eq!(words.len(), rows * cols);
    let (per, mask) = (32 / bits, (1u32 << bits) - 1);
    let shifts: Vec<u32> = order[..per].iter().map(|&o| (bits * o) as u32).collect();
    let mut out = vec![0u8; rows * cols * per];
    for (dst, &w) in out.chunks_exact_mut(per).zip(words) {
        for (d, &s) in dst.iter_mut().zip(&shifts) {
            *d = ((w as u32 >> s) & mask) as u8;
        }
    }
    out
}

/// Two 4-bit values per byte along each row, the even one in the low nibble (what
/// TPU-MLIR's A16MatMul reads: `[N, K]` → `[N, K/2]`).
pub fn pair_nibbles(values: &[u8]) -> Vec<u8> {
    values.chunks_exact(2).map(|p| p[0] | (p[1] << 4)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_unpack_in_each_order() {
        // 0x76543210: nibble i holds i.
        let w = [0x7654_3210_i32, 0xFEDC_BA98_u32 as i32];
        assert_eq!(
            along_rows(&w, 1, 2, 4),
            [0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15]
        );
        assert_eq!(
            along_cols(&w[..1], 1, 1, 4, &PLAIN_ORDER),
            [0, 1, 2, 3, 4, 5, 6, 7]
        );
        assert_eq!(
            along_cols(&w[..1], 1, 1, 4, &AWQ_ORDER),
            [0, 4, 1, 5, 2, 6, 3, 7]
        );
        // 8-bit: four bytes per word, the first in the low byte.
        assert_eq!(
            along_cols(&w[..1], 1, 1, 8, &PLAIN_ORDER),
            [0x10, 0x32, 0x54, 0x76]
        );
        assert_eq!(along_rows(&w[..1], 1, 1, 8), [0x10, 0x32, 0x54, 0x76]);
        assert_eq!(pair_nibbles(&[1, 2, 15, 0]), [0x21, 0x0F]);
    }
}
