//! ALiBi's per-head slopes (Press et al., "Train Short, Test Long"), as Baichuan2-13B's remote
//! code `_get_interleave` computes them: for a power-of-two head count n, head h (from 0)
//! gets `2^(-8/n · (h+1))`; otherwise the n' = largest power of two below n heads get n''s
//! slopes, and the remaining n - n' heads take every other slope of 2n', from the first.
//! The bias of head h on a query at position q for a key at position k is
//! `slope_h · (k - q)`: the remote code adds `slope_h · k` per key, which differs from it by
//! `slope_h · q`, the same for every key of a query row, so softmax gives the same result.

/// The slopes of `heads` attention heads, head 0 first.
pub fn slopes(heads: usize) -> Vec<f64> {
    if heads == 0 {
        return Vec::new();
    }
    if heads.is_power_of_two() {
        return power_of_two(heads);
    }
    let below = 1usize << heads.ilog2();
    let mut s = power_of_two(below);
    s.extend(slopes(2 * below).into_iter().step_by(2).take(heads - below));
    s
}

/// `start^1, start^2, …, start^n` with `start = 2^(-8/n)`.
fn power_of_two(n: usize) -> Vec<f64> {
    let start = 2f64.powf(-8.0 / n as f64);
    (1..=n as i32).map(|i| start.powi(i)).collect()
}

#[cfg(test)]
mod tests {
    use super::slopes;

    /// Worked by hand from `_get_interleave`: 4 heads start at 2^-2; 8 heads at 2^-1, of
    /// which 6 heads take the 1st and 3rd (0.5, 0.125) after the 4 heads' slopes.
    #[test]
    fn interleaved_slopes() {
        assert_eq!(slopes(4), vec![0.25, 0.0625, 0.015625, 0.00390625]);
        assert_eq!(
            slopes(6),
            vec![0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]
        );
        // Baichuan2-13B's 40 heads: 32 of 2^(-1/4)^i, then 2^(-1/8) to the powers 1, 3, …, 15.
        let s = slopes(40);
        assert_eq!(s.len(), 40);
        assert!((s[0] - 2f64.powf(-0.25)).abs() < 1e-15);
        assert!((s[31] - 2f64.powf(-8.0)).abs() < 1e-15);
        assert!((s[32] - 2f64.powf(-0.125)).abs() < 1e-15);
        assert!((s[39] - 2f64.powf(-0.125 * 15.0)).abs() < 1e-15);
    }
}
