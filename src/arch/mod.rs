//! Which pieces a model is cut into, and how each computes, as `graph` builders. Net names,
//! input/output names, order, shapes and dtypes follow the LLM-TPU runtime contract.

mod decoder;
mod heads;
mod rope;

use anyhow::{bail, Result};

use crate::graph::Graph;
use crate::model::ModelConfig;

/// Shape-relevant export options (llm_convert.py's meaning).
#[derive(Debug, Clone)]
pub struct PieceOptions {
    /// `-s`: KV cache length (SEQLEN).
    pub seq_length: usize,
    /// Prefill length (MAX_INPUT_LENGTH); defaults to `seq_length`.
    pub max_input_length: usize,
    /// `--dynamic`: prefill blocks take any length up to MAX_INPUT_LENGTH and build their
    /// causal mask in-graph (no attention_mask input), as the runtime contract says.
    pub dynamic: bool,
    /// `--do_sample`: lm_head returns logits; greedy_head and sample_head are added.
    pub do_sample: bool,
}

impl PieceOptions {
    pub fn new(seq_length: usize, max_input_length: Option<usize>) -> Result<PieceOptions> {
        let mil = max_input_length.unwrap_or(seq_length);
        if seq_length == 0 || mil == 0 || mil > seq_length {
            bail!("need 0 < max_input_length ({mil}) <= seq_length ({seq_length})");
        }
        Ok(PieceOptions {
            seq_length,
            max_input_length: mil,
            dynamic: false,
            do_sample: false,
        })
    }

    pub fn with_dynamic(mut self, dynamic: bool) -> PieceOptions {
        self.dynamic = dynamic;
        self
    }

    pub fn with_do_sample(mut self, do_sample: bool) -> PieceOptions {
        self.do_sample = do_sample;
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    Embedding,
    EmbeddingCache,
    Block(usize),
    BlockCache(usize),
    LmHead,
    GreedyHead,
    SampleHead,
}

impl Piece {
    /// The net name inside the combined bmodel.
    pub fn name(&self) -> String {
        match self {
            Piece::Embedding => "embedding".into(),
            Piece::EmbeddingCache => "embedding_cache".into(),
            Piece::Block(i) => format!("block_{i}"),
            Piece::BlockCache(i) => format!("block_cache_{i}"),
            Piece::LmHead => "lm_head".into(),
            Piece::GreedyHead => "greedy_head".into(),
            Piece::SampleHead => "sample_head".into(),
        }
    }

    /// The piece kind, as `templates/deploy.json` names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Piece::Embedding => "embedding",
            Piece::EmbeddingCache => "embedding_cache",
            Piece::Block(_) => "block",
            Piece::BlockCache(_) => "block_cache",
            Piece::LmHead => "lm_head",
            Piece::GreedyHead => "greedy_head",
            Piece::SampleHead => "sample_head",
        }
    }
}

/// Every piece of a model, in the runtime's combine order.
pub fn pieces(cfg: &ModelConfig, opts: &PieceOptions) -> Vec<Piece> {
    let mut out = vec![Piece::Embedding, Piece::EmbeddingCache, Piece::LmHead];
    if opts.do_sample {
        out.extend([Piece::GreedyHead, Piece::SampleHead]);
    }
    for i in 0..cfg.num_hidden_layers {
        out.push(Piece::Block(i));
        out.push(Piece::BlockCache(i));
    }
    out
}

/// The graph of one piece.
pub fn build(piece: Piece, cfg: &ModelConfig, opts: &PieceOptions) -> Graph {
    match piece {
        Piece::Embedding => heads::embedding(cfg, opts.max_input_length, "embedding"),
        Piece::EmbeddingCache => heads::embedding(cfg, 1, "embedding_cache"),
        Piece::LmHead => heads::lm_head(cfg, opts.do_sample),
        Piece::GreedyHead => heads::greedy_head(cfg),
        Piece::SampleHead => heads::sample_head(cfg, opts.seq_length),
        Piece::Block(i) => decoder::prefill_block(cfg, opts, i),
        Piece::BlockCache(i) => decoder::decode_block(cfg, opts, i),
    }
}
