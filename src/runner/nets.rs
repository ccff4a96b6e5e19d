//! What an LLM bmodel contains, discovered by net name and shape exactly as the LLM-TPU runtime
//! does (support/docs/runtime-contract.md §1), and checked: a missing net or a shape that does not
//! fit the contract is an error naming the net and what was expected.

use anyhow::{bail, ensure, Context, Result};

use crate::bmrt::{DType, NetInfo, Runtime};

pub struct LlmNets {
    pub embedding: NetInfo,
    pub embedding_cache: NetInfo,
    pub lm_head: NetInfo,
    pub blocks: Vec<NetInfo>,
    pub block_caches: Vec<NetInfo>,
    /// block_kv_i (history-KV builds): prefill of new tokens after the cached ones.
    pub block_kvs: Vec<NetInfo>,
    /// block_cache stages as (stage index, history slots), fewest slots first; one stage
    /// unless built with --chunk_length.
    pub decode_stages: Vec<(usize, usize)>,
    /// The stage with SEQLEN slots: its history inputs are the KV cache.
    pub full_stage: usize,
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
    /// Position id rows: 3 for M-RoPE (Qwen2-VL / Qwen2.5-VL, `[3, L]`), else 1.
    pub position_rows: usize,
    /// How block_cache returns K/V, told by its output 1's dims[1].
    pub kv_out: KvOut,
}

/// The two decode contracts (support/docs/runtime-contract.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvOut {
    /// `[1,1,KVH,D]`: the new token's K/V, appended at slot history-1.
    NewToken,
    /// `[1,S,KVH,D]`: the whole cache shifted by one, the new token last (llm_convert.py's
    /// chatglm): the cache is right-aligned, the valid tokens in its last slots.
    ShiftedCache,
}

fn dims(net: &NetInfo, input: bool, index: usize) -> Result<&[usize]> {
    stage_dims(net, 0, input, index)
}

fn stage_dims(net: &NetInfo, stage: usize, input: bool, index: usize) -> Result<&[usize]> {
    let stage = net.stage(stage)?;
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
    expect_stage(net, 0, input, index, want)
}

fn expect_stage(
    net: &NetInfo,
    stage: usize,
    input: bool,
    index: usize,
    want: &[usize],
) -> Result<()> {
    let got = stage_dims(net, stage, input, index)?;
    ensure!(
        got == want,
        "net {}{}: {} {index} ({}) has shape {got:?}, expected {want:?} (runtime contract, llm-tpu.md §1)",
        net.name,
        if stage > 0 { format!(" stage {stage}") } else { String::new() },
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
        let mut block_kvs = Vec::new();
        while rt.has_net(&format!("block_{}", blocks.len()))? {
            let i = blocks.len();
            blocks.push(rt.net(&format!("block_{i}"))?);
            block_caches.push(rt.net(&format!("block_cache_{i}"))?);
            if i == 0 || !block_kvs.is_empty() {
                let name = format!("block_kv_{i}");
                if rt.has_net(&name)? {
                    block_kvs.push(rt.net(&name)?);
                } else {
                    ensure!(i == 0, "the bmodel has block_kv_0 but no {name}");
                }
            }
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
        // Decode stages: the runtime tells them apart by history_k's dims[1].
        let mut decode_stages = Vec::new();
        for j in 0..block_caches[0].stages.len() {
            let hist = stage_dims(&block_caches[0], j, true, 3)?;
            ensure!(
                hist.len() == 4,
                "net block_cache_0: input 3 (history_k) has shape {hist:?}, expected [1, SEQLEN, KV_HEADS, HEAD_DIM]"
            );
            decode_stages.push((j, hist[1]));
        }
        decode_stages.sort_by_key(|&(_, slots)| slots);
        let &(full_stage, seq_length) = decode_stages
            .last()
            .context("block_cache_0 has no stages")?;
        let hist = stage_dims(&block_caches[0], full_stage, true, 3)?;
        let (kvh, d) = (hist[2], hist[3]);
        let hidden_size = *dims(&embedding_cache, false, 0)?.last().unwrap_or(&0);
        let dynamic = blocks[0].is_dynamic;
        let position_rows = dims(&blocks[0], true, 1)?.first().copied().unwrap_or(1);
        let prefill_mask = blocks[0].input_num() > 2;
        let lm_head_topk = dims(&lm_head, false, 0)?.get(1) == Some(&1);
        let kv_out = match stage_dims(&block_caches[0], full_stage, false, 1)?.get(1) {
            Some(&n) if n == seq_length && n > 1 => KvOut::ShiftedCache,
            _ => KvOut::NewToken,
        };
        if kv_out == KvOut::ShiftedCache {
            // The shift moves every slot each step: no smaller stage can share the cache, and
            // block_kv's history would not start at slot 0.
            ensure!(
                decode_stages.len() == 1 && block_kvs.is_empty(),
                "block_cache_0 returns the whole shifted KV cache, which allows neither decode stages nor block_kv nets, but this bmodel has {} stages and {} block_kv nets",
                decode_stages.len(),
                block_kvs.len()
            );
        }
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
            // The runner copies hidden states between nets byte for byte.
            ensure!(
                b.input_dtypes[0] == activation,
                "net block_{i}: input_states is {:?}, but the hidden states are {activation:?}",
                b.input_dtypes[0]
            );
            expect(b, true, 1, &[position_rows, l])?;
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
            ensure!(
                c.is_io_alone(),
                "net block_cache_{i} was not compiled with --addr_mode io_alone: the KV cache would not survive other launches"
            );
            ensure!(
                c.stages.len() == decode_stages.len(),
                "net block_cache_{i} has {} stages, block_cache_0 has {}",
                c.stages.len(),
                decode_stages.len()
            );
            let cache = &c.stage(full_stage)?.input_mems;
            for &(j, slots) in &decode_stages {
                expect_stage(c, j, true, 0, &[1, 1, h])?;
                expect_stage(c, j, true, 1, &[position_rows, 1])?;
                expect_stage(c, j, true, 2, &[1, 1, 1, slots + 1])?;
                expect_stage(c, j, true, 3, &[1, slots, kvh, d])?;
                expect_stage(c, j, true, 4, &[1, slots, kvh, d])?;
                let new = match kv_out {
                    KvOut::NewToken => 1,
                    KvOut::ShiftedCache => slots,
                };
                expect_stage(c, j, false, 1, &[1, new, kvh, d])?;
                expect_stage(c, j, false, 2, &[1, new, kvh, d])?;
                // Every stage must read the one KV cache (--use_io_alone_config).
                let mems = &c.stage(j)?.input_mems;
                ensure!(
                    mems[3].addr() == cache[3].addr() && mems[4].addr() == cache[4].addr(),
                    "net block_cache_{i} stage {j}: its history inputs are not at the full stage's addresses (decode stages must be compiled with --use_io_alone_config)"
                );
            }
        }
        for (i, b) in block_kvs.iter().enumerate() {
            ensure!(
                b.is_dynamic && b.input_num() == 4,
                "net block_kv_{i}: expected a dynamic net with 4 inputs (input_states, position_ids, history_k, history_v), found {} inputs{}",
                b.input_num(),
                if b.is_dynamic { "" } else { ", static" }
            );
            expect(b, true, 0, &[1, l, h])?;
            expect(b, true, 1, &[position_rows, l])?;
            expect(b, true, 2, &[1, s, kvh, d])?;
            expect(b, true, 3, &[1, s, kvh, d])?;
            expect(b, false, 0, &[1, l, h])?;
            expect(b, false, 1, &[1, l, kvh, d])?;
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
            block_kvs,
            decode_stages,
            full_stage,
            greedy_head,
            sample_head,
            max_input_length,
            seq_length,
            hidden_size,
            dynamic,
            prefill_mask,
            lm_head_topk,
            activation,
            position_rows,
            kv_out,
        })
    }

    pub fn layers(&self) -> usize {
        self.blocks.len()
    }

    /// Prompts longer than MAX_INPUT_LENGTH can run in chunks, and a conversation can keep its
    /// KV cache across turns.
    pub fn history_kv(&self) -> bool {
        !self.block_kvs.is_empty()
    }

    /// The smallest decode stage whose history holds `history` tokens (the runtime's
    /// `select_decode_stage`): (stage index, slots).
    pub fn decode_stage(&self, history: usize) -> Option<(usize, usize)> {
        self.decode_stages
            .iter()
            .copied()
            .find(|&(_, slots)| slots >= history)
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
