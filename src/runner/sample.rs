//! Sampling parameters and the host-side draw. sample_head (TPU-MLIR's semantics, see
//! `arch::heads::sample_head`) applies the repetition penalty, temperature, top-p and top-k on
//! the TPU and returns the 50 best candidates with their probabilities; the host only draws one
//! of them, as LLM-TPU's `penalty_sample` does with `std::discrete_distribution`
//! (support/docs/runtime-contract.md §6).

use anyhow::{bail, ensure, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How to pick the next token when sampling (greedy is the absence of this).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SamplingConfig {
    /// Logits are divided by it before the softmax (> 0; higher is more random).
    pub temperature: f32,
    /// Candidates kept, 1..=the number sample_head returns (50 in TPU-MLIR's and our builds).
    pub top_k: usize,
    /// Smallest set of candidates whose probability reaches it, in (0, 1] (sample_head always
    /// keeps at least 5, TPU-MLIR's min_tokens_to_keep).
    pub top_p: f32,
    /// > 0; 1 is none. Logits of recently seen tokens are divided by it (multiplied if negative).
    pub repetition_penalty: f32,
    /// How many of the last visited tokens (prompt + generated) the penalty looks at.
    pub repetition_window: usize,
    /// The draws are reproducible for a given seed.
    pub seed: u64,
}

/// LLM-TPU's default repetition window (`-w`).
pub const DEFAULT_REPETITION_WINDOW: usize = 64;
/// transformers' default top_k, and the candidates sample_head returns.
pub const DEFAULT_TOP_K: usize = 50;

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 1.0,
            top_k: DEFAULT_TOP_K,
            top_p: 1.0,
            repetition_penalty: 1.0,
            repetition_window: DEFAULT_REPETITION_WINDOW,
            seed: 0,
        }
    }
}

impl SamplingConfig {
    /// Rejects parameters sample_head cannot honour, saying which and what is allowed;
    /// `candidates` is how many tokens the bmodel's sample_head returns.
    pub fn validate(&self, candidates: usize) -> Result<()> {
        ensure!(
            self.temperature.is_finite() && self.temperature > 0.0,
            "temperature {} is invalid: it must be > 0 (for greedy decoding, do not sample)",
            self.temperature
        );
        ensure!(
            (1..=candidates).contains(&self.top_k),
            "top_k {} is invalid: sample_head returns {candidates} candidates, so top_k must be 1..={candidates}",
            self.top_k
        );
        ensure!(
            self.top_p.is_finite() && self.top_p > 0.0 && self.top_p <= 1.0,
            "top_p {} is invalid: it must be in (0, 1]",
            self.top_p
        );
        ensure!(
            self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0,
            "repetition penalty {} is invalid: it must be > 0 (1 = no penalty)",
            self.repetition_penalty
        );
        ensure!(
            self.repetition_window >= 1,
            "repetition window 0 is invalid: it must be >= 1"
        );
        Ok(())
    }

    pub fn rng(&self) -> StdRng {
        StdRng::seed_from_u64(self.seed)
    }
}

/// Draws one of `tokens` with probability proportional to `probs` (the first `min(len)` of
/// each). Zero-probability candidates are never drawn; negative or non-finite probabilities,
/// or none above zero, are an error (sample_head's softmax never produces them).
pub fn draw(probs: &[f32], tokens: &[i32], rng: &mut impl Rng) -> Result<u32> {
    let n = probs.len().min(tokens.len());
    ensure!(n > 0, "sample_head returned no candidates");
    let mut total = 0f64;
    for (i, &p) in probs[..n].iter().enumerate() {
        ensure!(
            p.is_finite() && p >= 0.0,
            "sample_head returned probability {p} for candidate {i}"
        );
        total += f64::from(p);
    }
    ensure!(total > 0.0, "sample_head returned only zero probabilities");
    let u = rng.random::<f64>() * total;
    let mut acc = 0f64;
    let mut last = None;
    for i in 0..n {
        if probs[i] <= 0.0 {
            continue;
        }
        last = Some(i);
        acc += f64::from(probs[i]);
        if u < acc {
            return token_id(tokens[i]);
        }
    }
    // Rounding can leave u a hair above the running sum: the last non-zero candidate.
    match last {
        Some(i) => token_id(tokens[i]),
        None => bail!("sample_head returned only zero probabilities"),
    }
}

fn token_id(t: i32) -> Result<u32> {
    u32::try_from(t).map_err(|_| anyhow::anyhow!("sample_head returned token id {t}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_follow_the_distribution() {
        let probs = [0.5f32, 0.3, 0.2, 0.0];
        let tokens = [10, 20, 30, 40];
        let mut rng = StdRng::seed_from_u64(7);
        let n = 100_000;
        let mut counts = [0usize; 4];
        for _ in 0..n {
            let t = draw(&probs, &tokens, &mut rng).unwrap();
            counts[tokens.iter().position(|&x| x as u32 == t).unwrap()] += 1;
        }
        for (c, p) in counts.iter().zip(probs) {
            // 5 standard deviations of a binomial(n, p): a broken draw is far outside.
            let sd = (n as f64 * f64::from(p) * (1.0 - f64::from(p))).sqrt();
            let dev = (*c as f64 - n as f64 * f64::from(p)).abs();
            assert!(dev <= 5.0 * sd + 1e-9, "{counts:?} vs {probs:?}");
        }
        assert_eq!(counts[3], 0, "a zero-probability candidate was drawn");
    }

    #[test]
    fn zero_probability_is_never_drawn_even_at_the_edges() {
        let tokens = [1, 2, 3, 4, 5];
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..10_000 {
            let t = draw(&[0.0, 1.0, 0.0, 0.0, 0.0], &tokens, &mut rng).unwrap();
            assert_eq!(t, 2);
            let t = draw(&[0.0, 0.0, 0.0, 0.0, 1e-30], &tokens, &mut rng).unwrap();
            assert_eq!(t, 5);
        }
    }

    #[test]
    fn same_seed_same_draws() {
        let probs = [0.25f32; 4];
        let tokens = [1, 2, 3, 4];
        let run = |seed| {
            let mut rng = SamplingConfig {
                seed,
                ..Default::default()
            }
            .rng();
            (0..32)
                .map(|_| draw(&probs, &tokens, &mut rng).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[test]
    fn bad_probabilities_are_errors() {
        let mut rng = StdRng::seed_from_u64(0);
        assert!(draw(&[0.0, 0.0], &[1, 2], &mut rng).is_err());
        assert!(draw(&[f32::NAN, 1.0], &[1, 2], &mut rng).is_err());
        assert!(draw(&[-0.1, 1.0], &[1, 2], &mut rng).is_err());
        assert!(draw(&[], &[], &mut rng).is_err());
        assert!(draw(&[1.0], &[-5], &mut rng).is_err());
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        let ok = SamplingConfig::default();
        ok.validate(50).unwrap();
        let bad = [
            SamplingConfig {
                temperature: 0.0,
                ..ok.clone()
            },
            SamplingConfig {
                temperature: f32::INFINITY,
                ..ok.clone()
            },
            SamplingConfig {
                top_k: 0,
                ..ok.clone()
            },
            SamplingConfig {
                top_k: 51,
                ..ok.clone()
            },
            SamplingConfig {
                top_p: 0.0,
                ..ok.clone()
            },
            SamplingConfig {
                top_p: 1.5,
                ..ok.clone()
            },
            SamplingConfig {
                repetition_penalty: 0.0,
                ..ok.clone()
            },
            SamplingConfig {
                repetition_window: 0,
                ..ok.clone()
            },
        ];
        for b in bad {
            let err = b.validate(50).unwrap_err().to_string();
            assert!(err.contains("invalid"), "{b:?}: {err}");
        }
    }
}
