//! Prefill and decode exactly as the LLM-TPU runtime runs them (support/docs/runtime-contract.md
//! §5-6): BM_RUNTIME_SHARE_MEM, the KV cache is block_cache_i's own history inputs, prefill
//! copies each block's new K/V into it, decode lets the net write its new K/V in place at
//! (history_length-1)·kv_bytes (or, for a net returning the whole shifted cache, copies that
//! back), and position ids / masks go to layer 0's buffers only.

use std::time::Instant;

use anyhow::{ensure, Context, Result};
use rand::rngs::StdRng;

use super::multimodal::{mrope_positions, PromptExtras};
use super::nets::{KvOut, LlmNets};
use super::sample::{self, SamplingConfig};
use crate::bmrt::{DeviceBuffer, DeviceMem, NetInfo, Runtime, Tensor};

/// What one prefill or decode step produced.
pub struct StepResult {
    pub token: u32,
    /// Each block's output rows (real tokens only), f32, when capture is on.
    pub block_outputs: Vec<Vec<f32>>,
    /// Launch seconds per net name, in call order.
    pub launches: Vec<(String, f64)>,
    /// Prefill: the chunks the prompt ran in. Decode: 0.
    pub chunks: usize,
    /// Decode: the history slots of the block_cache stage used. Prefill: 0.
    pub slots: usize,
}

pub struct Pipeline<'rt> {
    rt: &'rt Runtime,
    pub nets: LlmNets,
    past_k: Vec<DeviceMem>,
    past_v: Vec<DeviceMem>,
    /// The embedding's output, copied out of the shared neuron memory before block_0's position
    /// ids and mask (which may live at the same addresses) are written.
    embedded: DeviceBuffer<'rt>,
    /// One token's hidden state / K / V in bytes.
    hidden_bytes: usize,
    kv_bytes: usize,
    /// Tokens in the KV cache plus the one being decoded (the runtime's history_length).
    history: usize,
    /// Read every block's output back (for verify).
    pub capture: bool,
    /// Sampling through sample_head (None: greedy), with its seeded generator.
    sampling: Option<(SamplingConfig, StdRng)>,
    /// Prompt + generated tokens of this sequence (the repetition penalty's window).
    visited: Vec<u32>,
    /// sample_head's last candidates (token, probability), top_k of them.
    candidates: Vec<(u32, f32)>,
    /// Images and M-RoPE positions for the next prefill.
    extras: Option<PromptExtras>,
    /// M-RoPE: decode positions are the history slot plus this.
    rope_delta: std::cell::Cell<i32>,
}

impl<'rt> Pipeline<'rt> {
    pub fn new(rt: &'rt Runtime) -> Result<Pipeline<'rt>> {
        let nets = LlmNets::discover(rt)?;
        let c0 = nets.block_caches[0].stage(nets.full_stage)?;
        let hidden_bytes = c0.output_mems[0].size();
        let kv_rows = match nets.kv_out {
            KvOut::NewToken => 1,
            KvOut::ShiftedCache => nets.seq_length,
        };
        let kv_bytes = c0.output_mems[1].size() / kv_rows;
        let mut past_k = Vec::new();
        let mut past_v = Vec::new();
        for c in &nets.block_caches {
            let s = c.stage(nets.full_stage)?;
            rt.memset_zero(&s.input_mems[3])?;
            rt.memset_zero(&s.input_mems[4])?;
            past_k.push(s.input_mems[3]);
            past_v.push(s.input_mems[4]);
        }
        let embedded = rt.alloc(nets.embedding.output_tensor(0, 0)?.mem.size())?;
        Ok(Pipeline {
            rt,
            embedded,
            nets,
            past_k,
            past_v,
            hidden_bytes,
            kv_bytes,
            history: 0,
            capture: false,
            sampling: None,
            visited: Vec::new(),
            candidates: Vec::new(),
            extras: None,
            rope_delta: Default::default(),
        })
    }

    /// Images and M-RoPE positions the next prefill uses (once).
    pub fn set_extras(&mut self, extras: PromptExtras) {
        self.extras = Some(extras);
    }

    /// Empties the KV cache (a new conversation).
    pub fn clear(&mut self) -> Result<()> {
        for m in self.past_k.iter().chain(&self.past_v) {
            self.rt.memset_zero(m)?;
        }
        self.history = 0;
        self.rope_delta.set(0);
        self.visited.clear();
        Ok(())
    }

    /// Samples through sample_head from now on (None: greedy). Fails when the bmodel has no
    /// sample_head or the parameters are out of its range. The seed restarts the generator.
    pub fn set_sampling(&mut self, config: Option<SamplingConfig>) -> Result<()> {
        let Some(config) = config else {
            self.sampling = None;
            return Ok(());
        };
        let Some(head) = &self.nets.sample_head else {
            anyhow::bail!(
                "this bmodel cannot sample: it has no sample_head net ({}); convert the model again with --do_sample, or run greedy (no sampling options)",
                if self.nets.lm_head_topk {
                    "its lm_head returns the top-1 token"
                } else {
                    "only greedy_head"
                }
            );
        };
        anyhow::ensure!(
            head.input_num() == 6 && head.output_num() == 2,
            "net sample_head has {} inputs and {} outputs; expected 6 (m_logits, input_ids, penalty, temperature, top_k, top_p) and 2 (probs, token)",
            head.input_num(),
            head.output_num()
        );
        use crate::bmrt::DType::{F32, I32};
        let want = [F32, I32, F32, F32, I32, F32];
        anyhow::ensure!(
            head.input_dtypes == want && head.output_dtypes == [F32, I32],
            "net sample_head has input dtypes {:?} and output dtypes {:?}; expected {want:?} and [F32, I32]",
            head.input_dtypes,
            head.output_dtypes
        );
        let candidates = head.output_tensor(0, 0)?.elements();
        config.validate(candidates).context("sampling parameters")?;
        let rng = config.rng();
        self.sampling = Some((config, rng));
        Ok(())
    }

    pub fn sampling(&self) -> Option<&SamplingConfig> {
        self.sampling.as_ref().map(|(c, _)| c)
    }

    /// Prompt + generated tokens of the current sequence, the last one not yet fed.
    pub fn visited(&self) -> &[u32] {
        &self.visited
    }

    /// The candidates (token, probability) sample_head offered for the last sampled token.
    pub fn last_candidates(&self) -> &[(u32, f32)] {
        &self.candidates
    }

    pub fn history(&self) -> usize {
        self.history
    }

    fn launch(
        &self,
        net: &NetInfo,
        inputs: &[Tensor],
        outputs: &[Tensor],
        log: &mut Vec<(String, f64)>,
    ) -> Result<()> {
        let t0 = Instant::now();
        self.rt.launch(net, inputs, outputs)?;
        log.push((net.name.clone(), t0.elapsed().as_secs_f64()));
        Ok(())
    }

    /// Runs the prompt on an empty KV cache; returns the first generated token. Prompts
    /// longer than MAX_INPUT_LENGTH run in chunks when the bmodel has block_kv nets.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<StepResult> {
        self.clear()?;
        self.extend(tokens)
    }

    /// Runs `prompt`, reusing the KV cache for the part of it already there: on a history-KV
    /// bmodel, when the cached tokens are a prefix of `prompt` (the next chat turn after the
    /// last reply), only the rest is prefilled (through block_kv); otherwise a fresh prefill.
    /// Returns the step and how many prompt tokens came from the cache.
    pub fn prefill_reusing(&mut self, prompt: &[u32]) -> Result<(StepResult, usize)> {
        let cached = self.history.saturating_sub(1);
        let reusable = self.nets.history_kv()
            && cached > 0
            && prompt.len() > cached
            && self.visited.get(..cached) == Some(&prompt[..cached]);
        if reusable {
            // Extras describe the whole prompt; only its new part is prefilled.
            self.extras = self.extras.take().map(|e| e.after(cached));
            Ok((self.extend(&prompt[cached..])?, cached))
        } else {
            Ok((self.prefill(prompt)?, 0))
        }
    }

    /// Appends `tokens` after the ones already in the KV cache (block_i for the first chunk of
    /// an empty cache, block_kv_i after that); returns the next token. On a cache that holds
    /// a generated but not yet fed token, that token is dropped: include it in `tokens`.
    pub fn extend(&mut self, tokens: &[u32]) -> Result<StepResult> {
        let n = &self.nets;
        let (mil, seq) = (n.max_input_length, n.seq_length);
        let cached = self.history.saturating_sub(1);
        ensure!(!tokens.is_empty(), "the prompt is empty");
        ensure!(
            cached + tokens.len() < seq,
            "{} tokens do not fit the KV cache: {cached} cached + {} new must stay below SEQLEN {seq}",
            cached + tokens.len(),
            tokens.len()
        );
        ensure!(
            n.history_kv() || (cached == 0 && tokens.len() <= mil),
            "the prompt has {} tokens; this bmodel takes at most MAX_INPUT_LENGTH = {mil} at once and has no block_kv nets to continue (convert with --use_history_kv for longer prompts and multi-turn caches)",
            tokens.len()
        );
        let mut log = Vec::new();
        let mut block_outputs: Vec<Vec<f32>> = vec![Vec::new(); n.layers()];
        let mut old = cached;
        let mut last = None;
        let chunks = tokens.len().div_ceil(mil);
        let extras = self.extras.take().unwrap_or_default();
        for chunk in tokens.chunks(mil) {
            // Each chunk gets its tokens' positions and images (an image must not straddle
            // two chunks: prefill_chunk refuses it).
            let part = extras.slice(old - cached, chunk.len());
            let out = self.prefill_chunk(chunk, old, &part, &mut log, &mut block_outputs)?;
            old += chunk.len();
            last = Some((out, chunk.len()));
        }
        let (out, len) = last.context("no chunk ran")?;
        // The sampling penalty window looks at every token in the cache, then the new one.
        self.visited.truncate(cached);
        self.visited.extend_from_slice(tokens);
        let token = self.head(&out, (len - 1) * self.hidden_bytes, &mut log)?;
        self.visited.push(token);
        self.history = old + 1;
        if !self.capture {
            block_outputs.clear();
        }
        Ok(StepResult {
            token,
            block_outputs,
            launches: log,
            chunks,
            slots: 0,
        })
    }

    /// One prefill chunk of at most MAX_INPUT_LENGTH tokens at positions `old..`; copies its
    /// K/V into the cache and returns the last block's output.
    fn prefill_chunk(
        &self,
        tokens: &[u32],
        old: usize,
        extras: &PromptExtras,
        log: &mut Vec<(String, f64)>,
        block_outputs: &mut [Vec<f32>],
    ) -> Result<DeviceMem> {
        let n = &self.nets;
        let (len, mil) = (tokens.len(), n.max_input_length);
        let with_history = old > 0;
        let dynamic = with_history || n.dynamic;
        let rows = if dynamic { len } else { mil };
        // A static block reads all MAX_INPUT_LENGTH rows: the padding rows are fed too (the
        // embedding of id 0), never stale shared memory (a vit's activations left NaNs there,
        // and NaN survives the mask).
        // embedding: ids padded with 0 to MAX_INPUT_LENGTH.
        let mut ids = vec![0i32; mil];
        for (slot, &t) in ids.iter_mut().zip(tokens) {
            *slot = t as i32;
        }
        let emb_in = n.embedding.input_tensors(0)?;
        let emb_out = n.embedding.output_tensors(0)?;
        self.rt.s2d(&emb_in[0].mem, &ids)?;
        self.launch(&n.embedding, &emb_in, &emb_out, log)?;
        self.rt.d2d(
            &self.embedded,
            0,
            &emb_out[0].mem,
            0,
            rows * self.hidden_bytes,
        )?;
        // Image embeddings replace the image tokens' rows.
        for (at, bytes) in &extras.embeds {
            ensure!(
                at * self.hidden_bytes + bytes.len() <= len * self.hidden_bytes,
                "image embeddings at token {at} run past the {len} tokens of this prefill chunk (MAX_INPUT_LENGTH = {mil}): an image must fit one chunk"
            );
            let dst = self.embedded.sub(at * self.hidden_bytes, bytes.len())?;
            self.rt.s2d(&dst, bytes)?;
        }

        // Position ids (and the static mask) go to layer 0's buffers; every layer binds those.
        let nets = if with_history {
            &n.block_kvs
        } else {
            &n.blocks
        };
        let b0 = nets[0].input_tensors(0)?;
        let pos = if n.position_rows == 3 {
            // A cache's offset holds for what continues it; an empty cache starts at 0.
            let delta = if old > 0 { self.rope_delta.get() } else { 0 };
            let (pos, delta) = mrope_positions(extras.positions.as_deref(), old, len, rows, delta);
            self.rope_delta.set(delta);
            pos
        } else {
            (0..rows)
                .map(|i| if i < len { (old + i) as i32 } else { 0 })
                .collect()
        };
        self.rt.s2d_partial(&b0[1].mem, &pos)?;
        if !with_history && n.prefill_mask {
            let mut mask = vec![n.mask_value(); mil * mil];
            for i in 0..len {
                mask[i * mil..i * mil + i + 1].fill(0.0);
            }
            let bytes = b0[2].dtype.encode_f32(&mask)?;
            self.rt.s2d(&b0[2].mem, &bytes)?;
        }

        let mut prev: DeviceMem = *self.embedded;
        let kv_new = len * self.kv_bytes;
        for (i, block) in nets.iter().enumerate() {
            let mut inputs = block.input_tensors(0)?;
            let outputs = block.output_tensors(0)?;
            // Compiled with in-place hidden states, a block's input is the previous output.
            if inputs[0].mem.addr() != prev.addr() {
                self.rt
                    .d2d(&inputs[0].mem, 0, &prev, 0, rows * self.hidden_bytes)
                    .with_context(|| format!("feeding {}", block.name))?;
            }
            inputs[1].mem = b0[1].mem;
            if dynamic {
                inputs[0].shape[1] = len;
                inputs[1].shape[1] = len;
            }
            if with_history {
                // block_kv reads the cached tokens from its own history inputs (copied, as
                // the runtime does) and sees only `old` of them.
                let kv_old = old * self.kv_bytes;
                self.rt.d2d(&inputs[2].mem, 0, &self.past_k[i], 0, kv_old)?;
                self.rt.d2d(&inputs[3].mem, 0, &self.past_v[i], 0, kv_old)?;
                inputs[2].shape[1] = old;
                inputs[3].shape[1] = old;
            } else if n.prefill_mask {
                inputs[2].mem = b0[2].mem;
            }
            self.launch(block, &inputs, &outputs, log)?;
            // A shifted cache holds its tokens in the last slots (LLM-TPU's move2end).
            let at = match n.kv_out {
                KvOut::NewToken => old,
                KvOut::ShiftedCache => n.seq_length - len,
            } * self.kv_bytes;
            self.rt
                .d2d(&self.past_k[i], at, &outputs[1].mem, 0, kv_new)?;
            self.rt
                .d2d(&self.past_v[i], at, &outputs[2].mem, 0, kv_new)?;
            if self.capture {
                block_outputs[i].extend(self.read_rows(&outputs[0], len)?);
            }
            prev = outputs[0].mem;
        }
        Ok(prev)
    }

    /// Feeds the last generated token; returns the next one.
    pub fn decode(&mut self, token: u32) -> Result<StepResult> {
        let n = &self.nets;
        let (seq, hist) = (n.seq_length, self.history);
        anyhow::ensure!(
            hist >= 1 && hist <= seq,
            "the KV cache is full ({seq} tokens, SEQLEN of this bmodel)"
        );
        // The smallest decode stage whose history slots cover this step.
        let (stage, slots) = n
            .decode_stage(hist)
            .context("no decode stage covers this history")?;
        let mut log = Vec::new();
        let ec_in = n.embedding_cache.input_tensors(0)?;
        let ec_out = n.embedding_cache.output_tensors(0)?;
        self.rt.s2d(&ec_in[0].mem, &[token as i32])?;
        self.launch(&n.embedding_cache, &ec_in, &ec_out, &mut log)?;

        let c0 = n.block_caches[0].input_tensors(stage)?;
        let p = (hist - 1) as i32 + self.rope_delta.get();
        self.rt.s2d(&c0[1].mem, &vec![p; n.position_rows])?;
        // Visible: the hist-1 cached tokens and the new one (slot `slots`, concatenated last).
        let mut mask = vec![0f32; slots + 1];
        match n.kv_out {
            KvOut::NewToken => mask[hist - 1..slots].fill(n.mask_value()),
            KvOut::ShiftedCache => mask[..=slots - hist].fill(n.mask_value()),
        }
        let bytes = c0[2].dtype.encode_f32(&mask)?;
        self.rt.s2d(&c0[2].mem, &bytes)?;

        let mut prev = ec_out[0].mem;
        let mut block_outputs = Vec::new();
        let offset = (hist - 1) * self.kv_bytes;
        for (i, net) in n.block_caches.iter().enumerate() {
            let mut inputs = net.input_tensors(stage)?;
            let mut outputs = net.output_tensors(stage)?;
            inputs[0].mem = prev;
            inputs[1].mem = c0[1].mem;
            inputs[2].mem = c0[2].mem;
            match n.kv_out {
                KvOut::NewToken => {
                    // In-place KV append: the net writes its new K/V straight into the slot.
                    outputs[1].mem = self.past_k[i].sub(offset, self.kv_bytes)?;
                    outputs[2].mem = self.past_v[i].sub(offset, self.kv_bytes)?;
                    self.launch(net, &inputs, &outputs, &mut log)?;
                }
                KvOut::ShiftedCache => {
                    // The net reads the cache as its input: it writes the shifted one to its
                    // own outputs, copied back after (as LLM-TPU does).
                    self.launch(net, &inputs, &outputs, &mut log)?;
                    let bytes = slots * self.kv_bytes;
                    self.rt.d2d(&self.past_k[i], 0, &outputs[1].mem, 0, bytes)?;
                    self.rt.d2d(&self.past_v[i], 0, &outputs[2].mem, 0, bytes)?;
                }
            }
            if self.capture {
                block_outputs.push(self.read_rows(&outputs[0], 1)?);
            }
            prev = outputs[0].mem;
        }
        // The fed token replaces the last generated one if the caller chose another.
        match self.visited.last_mut() {
            Some(last) => *last = token,
            None => self.visited.push(token),
        }
        let token = self.head(&prev, 0, &mut log)?;
        self.visited.push(token);
        self.history += 1;
        Ok(StepResult {
            token,
            block_outputs,
            launches: log,
            chunks: 0,
            slots,
        })
    }

    /// lm_head on one row of `hidden` (at byte `offset`), then sample_head when sampling,
    /// else greedy_head if lm_head returns logits.
    fn head(
        &mut self,
        hidden: &DeviceMem,
        offset: usize,
        log: &mut Vec<(String, f64)>,
    ) -> Result<u32> {
        let n = &self.nets;
        let lm_in = n.lm_head.input_tensors(0)?;
        let lm_out = n.lm_head.output_tensors(0)?;
        self.rt
            .d2d(&lm_in[0].mem, 0, hidden, offset, self.hidden_bytes)?;
        self.launch(&n.lm_head, &lm_in, &lm_out, log)?;
        if self.sampling.is_some() {
            return self.sample(&lm_out[0], log);
        }
        let out = if n.lm_head_topk {
            lm_out[0].mem
        } else {
            let greedy = n
                .greedy_head
                .as_ref()
                .context("lm_head returns logits but there is no greedy_head")?;
            let g_in = greedy.input_tensors(0)?;
            let g_out = greedy.output_tensors(0)?;
            self.rt
                .d2d(&g_in[0].mem, 0, &lm_out[0].mem, 0, lm_out[0].bytes())?;
            self.launch(greedy, &g_in, &g_out, log)?;
            g_out[0].mem
        };
        let token: Vec<i32> = self.rt.read(&out, 1)?;
        Ok(token[0] as u32)
    }

    /// LLM-TPU's penalty_sample (llm-tpu.md §4.6): the last `window` visited tokens go to
    /// sample_head's dynamic input_ids, the scalars and the logits follow, and one of the
    /// returned top_k candidates is drawn on the host.
    fn sample(&mut self, logits: &Tensor, log: &mut Vec<(String, f64)>) -> Result<u32> {
        let Some((cfg, _)) = &self.sampling else {
            anyhow::bail!("sample() without a sampling configuration");
        };
        let head = self
            .nets
            .sample_head
            .as_ref()
            .context("sampling needs a sample_head net (convert with --do_sample)")?;
        let mut inputs = head.input_tensors(0)?;
        let outputs = head.output_tensors(0)?;
        let max_ids = inputs[1].shape.get(1).copied().unwrap_or(0);
        let count = cfg.repetition_window.min(self.visited.len()).min(max_ids);
        anyhow::ensure!(count > 0, "sampling before any token was seen");
        let ids: Vec<i32> = self.visited[self.visited.len() - count..]
            .iter()
            .map(|&t| t as i32)
            .collect();
        self.rt.s2d_partial(&inputs[1].mem, &ids)?;
        inputs[1].shape[1] = count;
        self.rt
            .s2d_partial(&inputs[2].mem, &[cfg.repetition_penalty])?;
        self.rt.s2d_partial(&inputs[3].mem, &[cfg.temperature])?;
        self.rt.s2d_partial(&inputs[4].mem, &[cfg.top_k as i32])?;
        self.rt.s2d_partial(&inputs[5].mem, &[cfg.top_p])?;
        self.rt
            .d2d(&inputs[0].mem, 0, &logits.mem, 0, logits.bytes())?;
        self.launch(head, &inputs, &outputs, log)?;
        let k = cfg.top_k;
        let probs: Vec<f32> = self.rt.read(&outputs[0].mem, k)?;
        let tokens: Vec<i32> = self.rt.read(&outputs[1].mem, k)?;
        let Some((_, rng)) = &mut self.sampling else {
            anyhow::bail!("sample() without a sampling configuration");
        };
        let token = sample::draw(&probs, &tokens, rng)?;
        self.candidates = tokens
            .iter()
            .zip(&probs)
            .map(|(&t, &p)| (t as u32, p))
            .collect();
        Ok(token)
    }

    /// The first `rows` rows of a `[1, rows.., H]` hidden-state tensor, as f32.
    fn read_rows(&self, t: &Tensor, rows: usize) -> Result<Vec<f32>> {
        let bytes = rows * self.hidden_bytes;
        let raw: Vec<u8> = self.rt.read(&t.mem, bytes)?;
        t.dtype.decode_f32(&raw)
    }
}
