//! What an LLM bmodel contains, discovered by net name and shape exactly as the LLM-TPU runtime
//! does (shared/reference/llm-tpu.md §4.2), and checked: a missing net or a shape that does not
//! fit the contract is an error naming the net and what was expected.

use anyhow::{bail, ensure, Result};

use crate::bmrt::{DType, NetInfo, Runtime};

pub struct LlmNets {
    pub embedding: NetInfo,
    pub embedding_cache: NetInfo,
    pub lm_head: NetInfo,
    pub blocks: Vec<NetInfo>,
    pub block_caches: Vec<NetInfo>,
    pub greedy_head: Option<NetInfo>,
    pub sample_head: Option<NetInfo>,
    /// MAX_INPUT_LENGTH: the prefill length (embedding's input dims[1]).
    pub max_input_length: usize,
    /// SEQLEN: KV cache slots (block_cache_0's history_k dims[1]).
    pub seq_length: usize,
    pub hidden_size: usize,
    /// Prefill nets take any length up to MAX_INPUT_LENGTH.
    pub dynamic: bool,
    /// Prefill blocks take an attention_mask input (static builds).
    pub prefill_mask: bool,
    /// lm_head returns the token id (fused top-1) rather than logits.
    pub lm_head_topk: bool,
    /// Activation dtype (embedding_cache's output): decides the mask value.
    pub activation: DType,
}

fn dims(net: &NetInfo, input: bool, index: usize) -> Result<&[usize]> {
    let stage = net.stage(0)?;
    let shapes = if input {
        &stage.input_shapes
    } else {
        &stage.output_shapes
    };
    match shapes.get(index) {
        Some(s) => Ok(s),
        None => bail!(
            "net {}: expected {} {index}, it has {}",
            net.name,
            if input { "input" } else { "output" },
            shapes.len()
        ),
    }
}

fn expect(net: &NetInfo, input: bool, index: usize, want: &[usize]) -> Result<()> {
    let got = dims(net, input, index)?;
    ensure!(
        got == want,
        "net {}: {} {index} ({}) has shape {got:?}, expected {want:?} (runtime contract, llm-tpu.md §1)",
        net.name,
        if input { "input" } else { "output" },
        if input {
            net.input_names.get(index)
        } else {
            net.output_names.get(index)
        }
        .map(String::as_str)
        .unwrap_or("?")
    );
    Ok(())
}

impl LlmNets {
    pub fn discover(rt: &Runtime) -> Result<LlmNets> {
        let embedding = rt.net("embedding")?;
        let embedding_cache = rt.net("embedding_cache")?;
        let lm_head = rt.net("lm_head")?;
        let mut blocks = Vec::new();
        let mut block_caches = Vec::new();
        while rt.has_net(&format!("block_{}", blocks.len()))? {
            let i = blocks.len();
            blocks.push(rt.net(&format!("block_{i}"))?);
            block_caches.push(rt.net(&format!("block_cache_{i}"))?);
        }
        ensure!(
            !blocks.is_empty(),
            "the bmodel has no block_0 net: not an LLM bmodel"
        );
        let greedy_head = if rt.has_net("greedy_head")? {
            Some(rt.net("greedy_head")?)
        } else {
            None
        };
        let sample_head = if rt.has_net("sample_head")? {
            Some(rt.net("sample_head")?)
        } else {
            None
        };

        let emb_in = dims(&embedding, true, 0)?;
        ensure!(
            emb_in.len() == 2,
            "net embedding: input 0 has shape {emb_in:?}, expected [1, MAX_INPUT_LENGTH]"
        );
        let max_input_length = emb_in[1];
        let hist = dims(&block_caches[0], true, 3)?;
        ensure!(
            hist.len() == 4,
            "net block_cache_0: input 3 (history_k) has shape {hist:?}, expected [1, SEQLEN, KV_HEADS, HEAD_DIM]"
        );
        let (seq_length, kvh, d) = (hist[1], hist[2], hist[3]);
        let hidden_size = *dims(&embedding_cache, false, 0)?.last().unwrap_or(&0);
        let dynamic = blocks[0].is_dynamic;
        let prefill_mask = blocks[0].input_num() > 2;
        let lm_head_topk = dims(&lm_head, false, 0)?.get(1) == Some(&1);
        let activation = embedding_cache
            .output_dtypes
            .first()
            .copied()
            .unwrap_or(DType::F32);

        let (l, h, s) = (max_input_length, hidden_size, seq_length);
        expect(&embedding_cache, true, 0, &[1, 1])?;
        expect(&embedding_cache, false, 0, &[1, 1, h])?;
        expect(&embedding, false, 0, &[1, l, h])?;
        expect(&lm_head, true, 0, &[1, h])?;
        for (i, (b, c)) in blocks.iter().zip(&block_caches).enumerate() {
            ensure!(
                b.input_num() == 2 + usize::from(prefill_mask),
                "net block_{i}: {} inputs, but block_0 has {}",
                b.input_num(),
                blocks[0].input_num()
            );
            expect(b, true, 0, &[1, l, h])?;
            expect(b, true, 1, &[1, l])?;
            if prefill_mask {
                expect(b, true, 2, &[1, 1, l, l])?;
            }
            expect(b, false, 0, &[1, l, h])?;
            expect(b, false, 1, &[1, l, kvh, d])?;
            expect(b, false, 2, &[1, l, kvh, d])?;
            ensure!(
                c.input_num() == 5 && c.output_num() == 3,
                "net block_cache_{i}: expected 5 inputs and 3 outputs, found {} and {}",
                c.input_num(),
                c.output_num()
            );
            expect(c, true, 0, &[1, 1, h])?;
            expect(c, true, 1, &[1, 1])?;
            expect(c, true, 2, &[1, 1, 1, s + 1])?;
            expect(c, true, 3, &[1, s, kvh, d])?;
            expect(c, true, 4, &[1, s, kvh, d])?;
            expect(c, false, 1, &[1, 1, kvh, d])?;
            ensure!(
                c.is_io_alone(),
                "net block_cache_{i} was not compiled with --addr_mode io_alone: the KV cache would not survive other launches"
            );
        }
        if !lm_head_topk {
            ensure!(
                greedy_head.is_some(),
                "lm_head returns logits but the bmodel has no greedy_head net"
            );
        }
        Ok(LlmNets {
            embedding,
            embedding_cache,
            lm_head,
            blocks,
            block_caches,
            greedy_head,
            sample_head,
            max_input_length,
            seq_length,
            hidden_size,
            dynamic,
            prefill_mask,
            lm_head_topk,
            activation,
        })
    }

    pub fn layers(&self) -> usize {
        self.blocks.len()
    }

    /// The additive mask value the runtime writes, in the activation dtype (bf16 0xC61C = -9984,
    /// f16 0xF0E2 = -10000).
    pub fn mask_value(&self) -> f32 {
        match self.activation {
            DType::BF16 => -9984.0,
            _ => -10000.0,
        }
    }
}
