//! longrope (`rope_type` "longrope": Phi-3/3.5 128k, Phi-4-mini, MiniCPM4), read as transformers
//! 5.6.2's `_compute_longrope_parameters` reads it: `inv_freq_i = 1 / (ext_i · θ^(2i/d))` with
//! `ext = long_factor` when the sequence is longer than `original_max_position_embeddings`,
//! else `short_factor`, and cos/sin × `attention_factor` (either way).
//!
//! Which factors apply: transformers chooses per forward call by `max(position_ids) + 1 >
//! original_max_position_embeddings` (`dynamic_rope_update`); keys cached before the switch
//! keep their short-factor rotation. The graph and the reference do exactly that, per call,
//! from the position ids (`arch::rope`), so a compiled sequence length longer than the
//! original one still runs short prompts with the short factors, as transformers does.

use serde_json::Value;

use super::ConfigKeys;
use crate::error::InputError;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LongRope {
    pub short_factor: Vec<f64>,
    pub long_factor: Vec<f64>,
    /// Longer sequences than this use `long_factor`.
    pub original_max_position_embeddings: usize,
    /// cos and sin are multiplied by it.
    pub attention_factor: f64,
}

impl LongRope {
    /// From the rope dict `params` (under config key `key`). `original_max_position_embeddings`
    /// at the top level wins over the dict's (transformers' `standardize_rope_params`), and
    /// defaults to `max_position_embeddings`.
    pub fn read(
        keys: &ConfigKeys,
        key: &str,
        params: &Value,
        max_position_embeddings: usize,
    ) -> Result<LongRope, InputError> {
        let factors = |name: &str| -> Result<Vec<f64>, InputError> {
            let bad = || {
                keys.bad(
                    key,
                    format!("longrope needs \"{name}\": a list of positive numbers"),
                    format!("restore {key}.{name} from the original config"),
                )
            };
            let list = params.get(name).and_then(Value::as_array).ok_or_else(bad)?;
            list.iter()
                .map(|v| v.as_f64().filter(|f| f.is_finite() && *f > 0.0))
                .collect::<Option<Vec<f64>>>()
                .ok_or_else(bad)
        };
        let number = |name: &str| -> Result<Option<f64>, InputError> {
            match params.get(name).filter(|v| !v.is_null()) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .filter(|f| f.is_finite() && *f > 0.0)
                    .map(Some)
                    .ok_or_else(|| {
                        keys.bad(
                            key,
                            format!("\"{name}\" must be a positive number, got {v}"),
                            "fix its value",
                        )
                    }),
            }
        };
        const ORIGINAL: &str = "original_max_position_embeddings";
        let original = match keys.opt_usize(ORIGINAL)? {
            Some(o) => Some(o as f64),
            None => number(ORIGINAL)?,
        }
        .unwrap_or(max_position_embeddings as f64);
        if original < 2.0 || original.fract() != 0.0 {
            return Err(keys.bad(
                ORIGINAL,
                format!("{original} is not a context length"),
                "fix its value",
            ));
        }
        let factor = number("factor")?.unwrap_or(max_position_embeddings as f64 / original);
        let attention_factor = match number("attention_factor")? {
            Some(a) => a,
            None if factor <= 1.0 => 1.0,
            None => (1.0 + factor.ln() / original.ln()).sqrt(),
        };
        Ok(LongRope {
            short_factor: factors("short_factor")?,
            long_factor: factors("long_factor")?,
            original_max_position_embeddings: original as usize,
            attention_factor,
        })
    }

    /// Both factor lists have one entry per rotated pair.
    pub fn check_width(&self, keys: &ConfigKeys, rotary_dim: usize) -> Result<(), InputError> {
        for (name, list) in [
            ("short_factor", &self.short_factor),
            ("long_factor", &self.long_factor),
        ] {
            if list.len() != rotary_dim / 2 {
                return Err(keys.bad(
                    "rope_scaling",
                    format!(
                        "longrope's {name} has {} entries, the rotary width {rotary_dim} needs {}",
                        list.len(),
                        rotary_dim / 2
                    ),
                    "restore rope_scaling from the original config",
                ));
            }
        }
        Ok(())
    }

    /// The factors for a call whose largest position is `max_position`.
    pub fn factors_at(&self, max_position: usize) -> &[f64] {
        if max_position + 1 > self.original_max_position_embeddings {
            &self.long_factor
        } else {
            &self.short_factor
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::config::{test_config, RopeScaling};
    use serde_json::json;

    fn longrope(extra: serde_json::Value) -> super::LongRope {
        match test_config("phi3", 128, extra).unwrap().rope_scaling {
            Some(RopeScaling::LongRope(l)) => l,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn attention_factor_like_transformers() {
        let f: Vec<f64> = vec![1.0; 16];
        let l = longrope(json!({"max_position_embeddings": 4096,
            "original_max_position_embeddings": 1024,
            "rope_scaling": {"type": "longrope", "short_factor": f, "long_factor": f}}));
        assert_eq!(l.original_max_position_embeddings, 1024);
        let want = (1.0 + 4f64.ln() / 1024f64.ln()).sqrt();
        assert!((l.attention_factor - want).abs() < 1e-12);
        assert_eq!(l.factors_at(1023).as_ptr(), l.short_factor.as_ptr());
        assert_eq!(l.factors_at(1024).as_ptr(), l.long_factor.as_ptr());
        let l = longrope(
            json!({"rope_scaling": {"rope_type": "longrope", "short_factor": f,
            "long_factor": f, "attention_factor": 1.5, "original_max_position_embeddings": 64}}),
        );
        assert_eq!(
            (l.attention_factor, l.original_max_position_embeddings),
            (1.5, 64)
        );
    }

    #[test]
    fn bad_factors_are_refused_naming_the_key() {
        let e = test_config(
            "phi3",
            128,
            json!({"rope_scaling": {"type": "longrope", "short_factor": [1.0],
                                    "long_factor": [1.0]}}),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("rope_scaling") && e.contains("short_factor"),
            "{e}"
        );
        let e = test_config(
            "phi3",
            128,
            json!({"rope_scaling": {"type": "longrope", "short_factor": "x"}}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("short_factor"), "{e}");
    }
}
