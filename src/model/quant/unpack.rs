//! Packed int32 words → one small integer per byte, a whole tensor at a time: one function per
//! packing direction, the order of the values inside a word given as the shift of each.

/// Nibble order inside an AWQ GEMM word: value j of a word sits at shift `4 · AWQ_ORDER[j]`.
pub const AWQ_ORDER: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7];
/// GPTQ packs in plain order.
pub const PLAIN_ORDER: [usize; 8] = [0, 1, 2, 3, 4, 5, 6, 7];

/// `words [rows, cols]` packed along the rows (GPTQ `qweight`: 8 input features per word) →
/// `[rows · 8, cols]`, row `8r + i` = bits `4i..4i+4` of row r.
pub fn along_rows(words: &[i32], rows: usize, cols: usize) -> Vec<u8> {
    debug_assert_eq!(words.len(), rows * cols);
    let mut out = vec![0u8; rows * 8 * cols];
    for (r, src) in words.chunks_exact(cols).enumerate() {
        for (i, dst) in out[r * 8 * cols..(r + 1) * 8 * cols]
            .chunks_exact_mut(cols)
            .enumerate()
        {
            let shift = 4 * i as u32;
            for (d, &w) in dst.iter_mut().zip(src) {
                *d = ((w as u32 >> shift) & 0xF) as u8;
            }
        }
    }
    out
}

/// `words [rows, cols]` packed along the columns (AWQ `qweight`, every `qzeros`) →
/// `[rows, cols · 8]`, column `8c + j` = bits at `4 · order[j]` of column c.
pub fn along_cols(words: &[i32], rows: usize, cols: usize, order: &[usize; 8]) -> Vec<u8> {
    debug_assert_eq!(words.len(), rows * cols);
    let shifts = order.map(|o| 4 * o as u32);
    let mut out = vec![0u8; rows * cols * 8];
    for (dst, &w) in out.chunks_exact_mut(8).zip(words) {
        for (d, s) in dst.iter_mut().zip(shifts) {
            *d = ((w as u32 >> s) & 0xF) as u8;
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
            along_rows(&w, 1, 2),
            [0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15]
        );
        assert_eq!(
            along_cols(&w[..1], 1, 1, &PLAIN_ORDER),
            [0, 1, 2, 3, 4, 5, 6, 7]
        );
        assert_eq!(
            along_cols(&w[..1], 1, 1, &AWQ_ORDER),
            [0, 4, 1, 5, 2, 6, 3, 7]
        );
        assert_eq!(pair_nibbles(&[1, 2, 15, 0]), [0x21, 0x0F]);
    }
}
