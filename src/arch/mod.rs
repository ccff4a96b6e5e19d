//! Which pieces a model is cut into, and how each computes, as `graph` builders. Net names,
//! input/output names, order, shapes and dtypes follow the LLM-TPU runtime contract.

mod decoder;
mod heads;
mod mask;
mod moe;
pub mod mrope;
mod rope;
mod softcap;
pub mod vit;

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
    /// `--use_history_kv`: adds block_kv_i (prefill of new tokens after a KV history).
    pub history_kv: bool,
    /// `--chunk_length c`: extra decode stages of block_cache_i with these history lengths
    /// (c, 2c, 4c, … < S, largest first), as llm_convert.py's `decode_chunk_list`.
    pub decode_stages: Vec<usize>,
    /// `--max_pixels` as W·H (vision-language models; None: the model's default).
    pub max_pixels: Option<usize>,
    /// A GGUF's quantized block linears become A16MatMuls on the file's own blocks (see
    /// `model::gguf_linear`) instead of float weights.
    pub gguf_own_quant: bool,
    /// The native backend at a bf16 half precision: the vocabulary tables (embedding, lm_head)
    /// go to the Top weights as bf16, rounded as the BF16 lowering would round them (a bf16
    /// checkpoint's unchanged). TPU-MLIR lowers them to the same bmodel bytes with half the
    /// bytes to write and read; F16 and F32 lowerings refuse bf16 weights, so only bf16 may.
    pub bf16_tables: bool,
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
            history_kv: false,
            decode_stages: Vec::new(),
            max_pixels: None,
            gguf_own_quant: false,
            bf16_tables: false,
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

    pub fn with_gguf_own_quant(mut self, own: bool) -> PieceOptions {
        self.gguf_own_quant = own;
        self
    }

    pub fn with_bf16_tables(mut self, bf16: bool) -> PieceOptions {
        self.bf16_tables = bf16;
        self
    }

    pub fn with_max_pixels(mut self, max_pixels: Option<usize>) -> PieceOptions {
        self.max_pixels = max_pixels;
        self
    }

    /// History-KV prefill nets and the decode stages for `chunk_length` (0 = none).
    pub fn with_history(mut self, history_kv: bool, chunk_length: usize) -> PieceOptions {
        self.history_kv = history_kv;
        self.decode_stages = decode_stages(self.seq_length, chunk_length);
        self
    }
}

/// llm_convert.py's `decode_chunk_list`: c, 2c, 4c, … below `seq_length`, largest first.
pub fn decode_stages(seq_length: usize, chunk_length: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut len = chunk_length;
    while len > 0 && len < seq_length {
        out.push(len);
        len *= 2;
    }
    out.reverse();
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    Embedding,
    EmbeddingCache,
    Block(usize),
    BlockCache(usize),
    /// Decode stage `k` (1-based) of block_cache_i: the same net with a shorter history.
    BlockCacheStage(usize, usize),
    /// block_kv_i: prefill of new tokens attending to a KV history.
    BlockKv(usize),
    LmHead,
    GreedyHead,
    SampleHead,
    /// The vision tower of a vision-language model.
    Vit,
}

impl Piece {
    /// The net name inside the combined bmodel.
    pub fn name(&self) -> String {
        match self {
            Piece::Embedding => "embedding".into(),
            Piece::EmbeddingCache => "embedding_cache".into(),
            Piece::Block(i) => format!("block_{i}"),
            Piece::BlockCache(i) | Piece::BlockCacheStage(i, _) => format!("block_cache_{i}"),
            Piece::BlockKv(i) => format!("block_kv_{i}"),
            Piece::LmHead => "lm_head".into(),
            Piece::GreedyHead => "greedy_head".into(),
            Piece::SampleHead => "sample_head".into(),
            Piece::Vit => "vit".into(),
        }
    }

    /// Its file and folder name: the net name, but decode stages of one net need their own
    /// (`block_cache_<i>_<k>`, as llm_convert.py names them).
    pub fn file_stem(&self) -> String {
        match self {
            Piece::BlockCacheStage(i, k) => format!("block_cache_{i}_{k}"),
            _ => self.name(),
        }
    }

    /// The decoder layer of a block piece (None: not one).
    pub fn layer(&self) -> Option<usize> {
        match self {
            Piece::Block(i)
            | Piece::BlockCache(i)
            | Piece::BlockCacheStage(i, _)
            | Piece::BlockKv(i) => Some(*i),
            _ => None,
        }
    }

    /// Whether `other` reads this piece's checkpoint tensors too (a layer's pieces; the
    /// vocabulary pieces), so their native exports may share one weight archive.
    pub fn shares_weights_with(&self, other: &Piece) -> bool {
        let vocabulary =
            |p: &Piece| matches!(p, Piece::Embedding | Piece::EmbeddingCache | Piece::LmHead);
        self != other
            && match (self.layer(), other.layer()) {
                (Some(a), Some(b)) => a == b,
                _ => vocabulary(self) && vocabulary(other),
            }
    }

    /// The piece kind, as `templates/deploy.json` names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Piece::Embedding => "embedding",
            Piece::EmbeddingCache => "embedding_cache",
            Piece::Block(_) => "block",
            Piece::BlockCache(_) | Piece::BlockCacheStage(..) => "block_cache",
            Piece::BlockKv(_) => "block_kv",
            Piece::LmHead => "lm_head",
            Piece::GreedyHead => "greedy_head",
            Piece::SampleHead => "sample_head",
            Piece::Vit => "vit",
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
        for k in 1..=opts.decode_stages.len() {
            out.push(Piece::BlockCacheStage(i, k));
        }
        if opts.history_kv {
            out.push(Piece::BlockKv(i));
        }
    }
    if vit::vit_spec(cfg).is_some() {
        // First, as llm_convert.py combines it.
        out.insert(0, Piece::Vit);
    }
    out
}

/// The graph of one piece.
pub fn build(piece: Piece, cfg: &ModelConfig, opts: &PieceOptions) -> Graph {
    match piece {
        Piece::Embedding => heads::embedding(cfg, opts, opts.max_input_length, "embedding"),
        Piece::EmbeddingCache => heads::embedding(cfg, opts, 1, "embedding_cache"),
        Piece::LmHead => heads::lm_head(cfg, opts),
        Piece::GreedyHead => heads::greedy_head(cfg),
        Piece::SampleHead => heads::sample_head(cfg, opts.seq_length),
        Piece::Block(i) => decoder::prefill_block(cfg, opts, i),
        Piece::BlockCache(i) => decoder::decode_block(cfg, opts, i, opts.seq_length),
        Piece::BlockCacheStage(i, k) => {
            decoder::decode_block(cfg, opts, i, opts.decode_stages[k - 1])
        }
        Piece::BlockKv(i) => decoder::history_block(cfg, opts, i),
        Piece::Vit => vit::build(cfg, opts.max_pixels),
    }
}

#[cfg(test)]
mod tests {
    use super::decode_stages;

    #[test]
    fn decode_stages_follow_llm_convert() {
        assert_eq!(decode_stages(64, 16), vec![32, 16]);
        assert_eq!(decode_stages(512, 128), vec![256, 128]);
        assert_eq!(decode_stages(8192, 512), vec![4096, 2048, 1024, 512]);
        assert_eq!(decode_stages(64, 0), Vec::<usize>::new());
    }
}

#[cfg(test)]
mod window_tests {
    use super::{build, pieces, Piece, PieceOptions};
    use crate::model::ModelConfig;
    use serde_json::{json, Value};

    fn config(model_type: &str, window: Value) -> ModelConfig {
        let v = json!({"model_type": model_type, "hidden_size": 64, "num_attention_heads": 4,
                       "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 256,
                       "sliding_window": window});
        ModelConfig::from_json(&v, std::path::Path::new("config.json")).unwrap()
    }

    /// Every piece at S 32, MAX_INPUT_LENGTH 16 (static and dynamic), with history KV and
    /// decode stages of 16 and 8 slots.
    fn all_options() -> Vec<PieceOptions> {
        [false, true]
            .map(|dynamic| {
                PieceOptions::new(32, Some(16))
                    .unwrap()
                    .with_dynamic(dynamic)
                    .with_history(true, 8)
            })
            .to_vec()
    }

    fn same_graph(a: &ModelConfig, b: &ModelConfig, piece: Piece, o: &PieceOptions) -> bool {
        format!("{:?}", build(piece, a, o)) == format!("{:?}", build(piece, b, o))
    }

    /// A mistral whose window hides nothing a piece can see exports llama's graph.
    #[test]
    fn mistral_with_an_invisible_window_is_llama() {
        let llama = config("llama", Value::Null);
        for window in [Value::Null, json!(32), json!(4096)] {
            let mistral = config("mistral", window.clone());
            for o in all_options() {
                for piece in pieces(&llama, &o) {
                    assert!(
                        same_graph(&llama, &mistral, piece, &o),
                        "{window} {piece:?}"
                    );
                }
            }
        }
    }

    /// A window shorter than what a piece sees changes exactly the pieces that see that far,
    /// and its mask ops run in f32.
    #[test]
    fn a_short_window_changes_exactly_the_blocks_that_see_past_it() {
        let llama = config("llama", Value::Null);
        // 20 slots: beyond block_i's 16 rows and the 16- and 8-slot decode stages, within
        // block_kv_i's and the full block_cache_i's 32.
        let mistral = config("mistral", json!(20));
        for o in all_options() {
            for piece in pieces(&llama, &o) {
                let windowed = matches!(piece, Piece::BlockCache(_) | Piece::BlockKv(_));
                assert_eq!(
                    !same_graph(&llama, &mistral, piece, &o),
                    windowed,
                    "{piece:?}"
                );
                if windowed {
                    let table = build(piece, &mistral, &o).quantize_table().unwrap();
                    assert!(table.contains("_Relu F32"), "{table}");
                }
            }
        }
    }
}
