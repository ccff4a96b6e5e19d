//! The per-piece `model_deploy.py` flags, read from `templates/deploy.json` (data, not code).

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::options::ConvertOptions;
use crate::arch::Piece;

const TEMPLATE: &str = include_str!("../../templates/deploy.json");

#[derive(Debug, Deserialize)]
pub struct DeployTemplate {
    common: Vec<String>,
    pieces: BTreeMap<String, PieceFlags>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PieceFlags {
    quantize: QuantizeRule,
    flags: Vec<String>,
    addr_mode: String,
    dynamic: DynamicRule,
    #[serde(default)]
    group_size: bool,
    /// Extra flags only when the piece is compiled `--dynamic`.
    #[serde(default)]
    dynamic_flags: Vec<String>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum QuantizeRule {
    Half,
    Model,
    None,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum DynamicRule {
    Never,
    WithFlag,
    Always,
}

impl DeployTemplate {
    /// The template built into this binary.
    pub fn builtin() -> Result<DeployTemplate> {
        serde_json::from_str(TEMPLATE).context("templates/deploy.json is not valid")
    }

    /// Whether this piece is compiled with `--dynamic`.
    pub fn is_dynamic(&self, piece: Piece, o: &ConvertOptions) -> Result<bool> {
        Ok(match self.flags_for(piece)?.dynamic {
            DynamicRule::Never => false,
            DynamicRule::WithFlag => o.dynamic,
            DynamicRule::Always => true,
        })
    }

    fn flags_for(&self, piece: Piece) -> Result<&PieceFlags> {
        match self.pieces.get(piece.kind()) {
            Some(f) => Ok(f),
            None => bail!(
                "templates/deploy.json has no entry for piece kind \"{}\"",
                piece.kind()
            ),
        }
    }

    /// `model_deploy.py` arguments (relative to the piece's work dir).
    pub fn deploy_argv(&self, piece: Piece, o: &ConvertOptions) -> Result<Vec<String>> {
        let f = self.flags_for(piece)?;
        let name = piece.name();
        let mut a: Vec<String> = vec![
            "--mlir".into(),
            format!("{name}.mlir"),
            "--chip".into(),
            o.chip.name().into(),
            "--model".into(),
            format!("{name}.bmodel"),
            "--addr_mode".into(),
            f.addr_mode.clone(),
            "--num_core".into(),
            o.num_core.to_string(),
            "--num_device".into(),
            o.num_device.to_string(),
        ];
        let quantize = match f.quantize {
            QuantizeRule::Half => Some(o.quantize.half()),
            QuantizeRule::Model => Some(o.quantize.name()),
            QuantizeRule::None => None,
        };
        if let Some(q) = quantize {
            a.extend(["--quantize".into(), q.into()]);
            if f.group_size && o.quantize.is_weight_only() {
                a.extend(["--q_group_size".into(), o.q_group_size.to_string()]);
            }
        }
        a.extend(f.flags.iter().cloned());
        a.extend(self.common.iter().cloned());
        if o.symmetric && quantize.is_some() {
            a.push("--q_symmetric".into());
        }
        if self.is_dynamic(piece, o)? {
            a.push("--dynamic".into());
            a.extend(f.dynamic_flags.iter().cloned());
        }
        if o.debug {
            a.push("--debug".into());
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_template_covers_every_piece_kind() {
        let t = DeployTemplate::builtin().unwrap();
        for p in [
            Piece::Embedding,
            Piece::EmbeddingCache,
            Piece::LmHead,
            Piece::Block(0),
            Piece::BlockCache(0),
        ] {
            assert!(t.flags_for(p).is_ok(), "{}", p.kind());
        }
    }
}
