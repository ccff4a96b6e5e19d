//! Which sampling configuration the user asked for: greedy unless a sampling flag (or
//! `--sample`) is given; unset values come from generation_config.json, then from LLM-TPU's
//! defaults.

use crate::runner::sample::{SamplingConfig, DEFAULT_TOP_K};

use super::config::GenerationDefaults;

/// The sampling flags as given on the command line.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SamplingFlags {
    /// Sample (through the bmodel's sample_head; needs a --do_sample bmodel) with
    /// generation_config.json's parameters. Any of the options below also turns sampling on;
    /// without them decoding is greedy.
    #[arg(long)]
    pub sample: bool,
    /// Sampling temperature (> 0; 0 means greedy).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Candidates to sample from, 1..=50.
    #[arg(long = "top-k")]
    pub top_k: Option<usize>,
    /// Nucleus sampling threshold, in (0, 1].
    #[arg(long = "top-p")]
    pub top_p: Option<f32>,
    /// Repetition penalty (> 0; 1 = none) on the last --repetition-window tokens.
    #[arg(long = "repetition-penalty")]
    pub repetition_penalty: Option<f32>,
    /// Tokens the repetition penalty looks back at (default 64).
    #[arg(long = "repetition-window")]
    pub repetition_window: Option<usize>,
    /// Seed for the draws (default: random, reported with --json).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// The configuration to run with (None: greedy), and notes for the user about values taken
/// from generation_config.json that sample_head cannot use as they are.
pub fn resolve(
    flags: &SamplingFlags,
    defaults: &GenerationDefaults,
) -> (Option<SamplingConfig>, Vec<String>) {
    let mut notes = Vec::new();
    // --temperature 0 is the usual way to ask for greedy decoding.
    if flags.temperature == Some(0.0) {
        return (None, notes);
    }
    let any = flags.sample
        || flags.temperature.is_some()
        || flags.top_k.is_some()
        || flags.top_p.is_some()
        || flags.repetition_penalty.is_some()
        || flags.repetition_window.is_some()
        || flags.seed.is_some();
    if !any {
        return (None, notes);
    }
    let base = SamplingConfig::default();
    let top_k = flags.top_k.unwrap_or_else(|| match defaults.top_k {
        // transformers: 0 disables top-k; sample_head returns at most 50 candidates.
        Some(k) if k == 0 || k > DEFAULT_TOP_K => {
            notes.push(format!(
                "generation_config.json top_k {k}: sample_head returns {DEFAULT_TOP_K} candidates, using top_k {DEFAULT_TOP_K}"
            ));
            DEFAULT_TOP_K
        }
        Some(k) => k,
        None => base.top_k,
    });
    let temperature = flags.temperature.unwrap_or(match defaults.temperature {
        Some(t) if t > 0.0 => t,
        _ => base.temperature,
    });
    let config = SamplingConfig {
        temperature,
        top_k,
        top_p: flags.top_p.or(defaults.top_p).unwrap_or(base.top_p),
        repetition_penalty: flags
            .repetition_penalty
            .or(defaults.repetition_penalty)
            .unwrap_or(base.repetition_penalty),
        repetition_window: flags.repetition_window.unwrap_or(base.repetition_window),
        // Without --seed every run differs; the seed used is reported so it can be replayed.
        seed: flags.seed.unwrap_or_else(rand::random),
    };
    (Some(config), notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_unless_asked() {
        let d = GenerationDefaults {
            do_sample: Some(true),
            temperature: Some(0.6),
            ..Default::default()
        };
        assert_eq!(resolve(&SamplingFlags::default(), &d).0, None);
        let zero = SamplingFlags {
            temperature: Some(0.0),
            top_k: Some(5),
            ..Default::default()
        };
        assert_eq!(resolve(&zero, &d).0, None);
    }

    #[test]
    fn flags_then_generation_config_then_defaults() {
        let d = GenerationDefaults {
            do_sample: Some(true),
            temperature: Some(0.6),
            top_k: Some(20),
            top_p: Some(0.95),
            repetition_penalty: None,
        };
        let flags = SamplingFlags {
            sample: true,
            top_p: Some(0.5),
            seed: Some(9),
            ..Default::default()
        };
        let (c, notes) = resolve(&flags, &d);
        assert!(notes.is_empty());
        assert_eq!(
            c,
            Some(SamplingConfig {
                temperature: 0.6,
                top_k: 20,
                top_p: 0.5,
                repetition_penalty: 1.0,
                repetition_window: 64,
                seed: 9,
            })
        );
    }

    #[test]
    fn generation_config_top_k_beyond_the_head_is_capped_with_a_note() {
        let d = GenerationDefaults {
            top_k: Some(0),
            ..Default::default()
        };
        let flags = SamplingFlags {
            seed: Some(1),
            ..Default::default()
        };
        let (c, notes) = resolve(&flags, &d);
        assert_eq!(c.unwrap().top_k, 50);
        assert_eq!(notes.len(), 1);
    }
}
