#!/usr/bin/env python3
"""Test fixtures made by Hugging Face transformers (run with the toolchain venv's python).

    make_fixtures.py OUT_DIR [--smollm2 GGUF_PATH]

For each tiny model family it writes OUT_DIR/<name>/ (config.json + model.safetensors, as
transformers' save_pretrained writes them) and OUT_DIR/<name>/expected.json with what
transformers computes on it in float32 (eager attention):
  prompt           the prompt token ids
  prefill_logits   logits of the last prompt position
  hidden           hidden states after layers 0..L-2 for every prompt position
  tokens           16 greedy tokens (KV-cached decoding)
  step_logits      logits of every decode step (step i consumes tokens[i])

Families with a sliding window (mistral; gemma2 and gemma3_text: a window longer than the run) also get
  tokens_without_window  the 16 greedy tokens with the window disabled (same weights), so a
                         test can assert the window changes the tokens

Mixture-of-experts families (qwen2_moe, qwen3_moe) also get
  tokens_dense           the greedy tokens with every expert used (num_experts_per_tok =
                         num_experts: the softmax-weighted average of all experts)
  tokens_other_norm      the greedy tokens with norm_topk_prob flipped
so a test can assert the top-k routing and its renormalisation change the tokens.
qwen2_moe_stacked is qwen2_moe saved with its experts stacked, as transformers holds them
(save_pretrained(save_original_format=False)).

Gemma's bf16 fixture's expectation multiplies the embedding by sqrt(hidden) rounded to bf16, as
transformers does when it runs the checkpoint in its own dtype (the f32 run would not round).

MiniCPM is not in transformers: it is a llama whose math gets MiniCPM's three scalings via
module hooks (embedding x scale_emb, residual branches x scale_depth/sqrt(L), lm_head input
/ (hidden/dim_model_base)), exactly as the upstream modeling_minicpm.py computes them.

gemma3 is Gemma 3's vision-language layout (Gemma3ForConditionalGeneration) around the gemma3_text
fixture's weights: `language_model.model.*` names, a tiny SigLIP tower, and a text_config that
keeps only the keys differing from Gemma3TextConfig's defaults (as the hub's Gemma 3 configs do);
its expectation is transformers' VLM run on text tokens only.

With --smollm2, transformers loads the GGUF itself (its own dequantisation and q/k un-permute)
and writes OUT_DIR/smollm2/expected.json with the greedy continuation of a chat prompt.
"""
import json
import math
import os
import sys
import zlib

import torch
import transformers
from transformers import (AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, GemmaConfig, Glm4Config, GlmConfig,
                          LlamaConfig, MistralConfig, Phi3Config, Qwen2Config, Qwen2MoeConfig, Qwen3Config,
                          Qwen3MoeConfig)

STEPS = 16
PROMPT = [3, 17, 256, 999, 42, 7, 511, 128]
torch.manual_seed(0)


def dims(**kw):
    d = dict(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
             rms_norm_eps=1e-6, initializer_range=0.1, rope_theta=10000.0)
    d.update(kw)
    return d


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64, "rope_theta": 500000.0}

GEMMA3_TYPES = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]
def longrope(pairs):
    """longrope parameters with distinct short and long factors for `pairs` rotated pairs."""
    short = [round(1.0 + 0.05 * i, 3) for i in range(pairs)]
    long = [round(1.0 + 1.5 * i, 3) for i in range(pairs)]
    return {"rope_type": "longrope", "short_factor": short, "long_factor": long,
            "rope_theta": 10000.0}


# Phi3Config's and Glm4Config's default special ids are outside the tiny vocabulary.
PHI3_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)

# name -> (config class, config kwargs, dtype to store, minicpm scales or None)
FAMILIES = {
    "llama_tied": (LlamaConfig, dims(tie_word_embeddings=True), torch.float32, None),
    "llama_rope3": (LlamaConfig, dims(tie_word_embeddings=False, rope_theta=500000.0,
                                      rope_scaling=LLAMA3_ROPE), torch.float32, None),
    "llama_rope3_bf16": (LlamaConfig, dims(tie_word_embeddings=False, rope_theta=500000.0,
                                           rope_scaling=LLAMA3_ROPE), torch.bfloat16, None),
    "qwen2": (Qwen2Config, dims(tie_word_embeddings=False), torch.float32, None),
    "qwen2_bf16": (Qwen2Config, dims(tie_word_embeddings=True), torch.bfloat16, None),
    "qwen3": (Qwen3Config, dims(head_dim=64, tie_word_embeddings=True), torch.float32, None),
    "minicpm": (LlamaConfig, dims(tie_word_embeddings=True), torch.float32,
                {"scale_emb": 12.0, "scale_depth": 1.4, "dim_model_base": 32}),
    "minicpm_bf16": (LlamaConfig, dims(tie_word_embeddings=True), torch.bfloat16,
                     {"scale_emb": 12.0, "scale_depth": 1.4, "dim_model_base": 32}),
    # Windows shorter than the 8-token prompt + 16 steps; head_dim != 128/4.
    "mistral": (MistralConfig, dims(head_dim=48, sliding_window=5, tie_word_embeddings=False),
                torch.float32, None),
    "mistral_bf16": (MistralConfig, dims(head_dim=64, sliding_window=6, tie_word_embeddings=True),
                     torch.bfloat16, None),
    # gemma: zero-centred norm weights (the (1+w) norm), gelu_pytorch_tanh (the class default),
    # tied, MQA, head_dim 64 != 128/4 (real models: 256, the default).
    # Larger weights so the layers, not the scaled tied embedding, pick the tokens.
    "gemma": (GemmaConfig, dims(head_dim=64, num_key_value_heads=1, initializer_range=0.15),
              torch.float32, None),
    "gemma_bf16": (GemmaConfig, dims(head_dim=48, initializer_range=0.15), torch.bfloat16, None),
    # phi3: fused qkv_proj / gate_up_proj, rotary on 24 (then 16) of head_dim 32's elements.
    "phi3": (Phi3Config, dims(partial_rotary_factor=0.75, tie_word_embeddings=False, **PHI3_IDS),
             torch.float32, None),
    "phi3_bf16": (Phi3Config, dims(partial_rotary_factor=0.5, tie_word_embeddings=True, **PHI3_IDS),
                  torch.bfloat16, None),
    # glm4: q/k/v biases and rotary on half of head_dim (the class defaults), interleaved
    # pairs, fused gate_up_proj, norms on the branch outputs. head_dim 48 (real models: 128).
    "glm4": (Glm4Config, dims(head_dim=48, tie_word_embeddings=False, **PHI3_IDS),
             torch.float32, None),
    "glm4_bf16": (Glm4Config, dims(head_dim=64, tie_word_embeddings=True, **PHI3_IDS),
                  torch.bfloat16, None),
    # glm: glm4's layer without the branch output norms; rotary on 32 of head_dim 64 (then 24 of
    # 48, with larger weights so that the pairing shows in the tied bf16 model's tokens).
    "glm": (GlmConfig, dims(head_dim=64, tie_word_embeddings=False, **PHI3_IDS), torch.float32, None),
    "glm_bf16": (GlmConfig, dims(head_dim=48, tie_word_embeddings=True, initializer_range=0.15,
                                 **PHI3_IDS), torch.bfloat16, None),
    # qwen2_moe: 8 experts of width 64, top 2, a shared expert of width 96; layer 1 dense
    # (mlp_only_layers). The bf16 one renormalises the top-k weights, every layer sparse.
    "qwen2_moe": (Qwen2MoeConfig, dims(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64,
                                       shared_expert_intermediate_size=96, mlp_only_layers=[1],
                                       tie_word_embeddings=False), torch.float32, None),
    "qwen2_moe_bf16": (Qwen2MoeConfig, dims(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
                                            shared_expert_intermediate_size=64, norm_topk_prob=True,
                                            tie_word_embeddings=True), torch.bfloat16, None),
    # qwen3_moe: q/k norms, head_dim 64, no shared expert; renormalised top 2 of 8. The bf16 one
    # has a dense layer 0 (decoder_sparse_step 2) and no renormalisation.
    "qwen3_moe": (Qwen3MoeConfig, dims(head_dim=64, num_experts=8, num_experts_per_tok=2,
                                       moe_intermediate_size=64, norm_topk_prob=True,
                                       tie_word_embeddings=False), torch.float32, None),
    "qwen3_moe_bf16": (Qwen3MoeConfig, dims(head_dim=32, num_experts=6, num_experts_per_tok=2,
                                            moe_intermediate_size=64, decoder_sparse_step=2,
                                            tie_word_embeddings=True), torch.bfloat16, None),
    # gemma2: sliding layers 0 and 2 (window 4 < the 8-token prompt), global layer 1, small
    # score and logit soft caps, query_pre_attn_scalar 16 != head_dim 64.
    "gemma2": (Gemma2Config, dims(head_dim=64, num_hidden_layers=3, sliding_window=4,
                                  attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
                                  query_pre_attn_scalar=16, initializer_range=0.15),
               torch.float32, None),
    "gemma2_bf16": (Gemma2Config, dims(head_dim=48, sliding_window=5, attn_logit_softcapping=4.0,
                                       final_logit_softcapping=5.0, query_pre_attn_scalar=24,
                                       initializer_range=0.15), torch.bfloat16, None),
    # gemma3_text: local layers 0, 1, 3 (window 4, rotary base 100), global layer 2 (base 10000,
    # linear scaling x4), q/k norms, query_pre_attn_scalar 16 != head_dim 32.
    "gemma3_text": (Gemma3TextConfig, dims(head_dim=32, num_hidden_layers=4, sliding_window=4,
                                           layer_types=GEMMA3_TYPES, rope_local_base_freq=100.0,
                                           rope_scaling={"rope_type": "linear", "factor": 4.0},
                                           query_pre_attn_scalar=16, initializer_range=0.15),
                    torch.float32, None),
    "gemma3_text_bf16": (Gemma3TextConfig, dims(head_dim=64, num_hidden_layers=3, sliding_window=5,
                                                layer_types=GEMMA3_TYPES[1:],
                                                rope_local_base_freq=50.0, query_pre_attn_scalar=32,
                                                initializer_range=0.15), torch.bfloat16, None),
    # internlm2 (remote code): a llama twin with q/k/v/o biases (InternLM2Config's `bias`),
    # repacked into grouped wqkv and renamed (see REMOTE).
    # 8 query heads in 2 groups of 4.
    "internlm2": (LlamaConfig, dims(num_attention_heads=8, attention_bias=True,
                                    tie_word_embeddings=False), torch.float32, None),
    # baichuan (remote code, Baichuan2-7B): a multi-head llama twin, q/k/v packed into W_pack,
    # expectation with NormHead (see REMOTE).
    # (initializer_range 0.09: no f32 top-2 margin near the bf16 verify's tie threshold.)
    "baichuan": (LlamaConfig, dims(num_key_value_heads=4, tie_word_embeddings=False,
                                   initializer_range=0.09),
                 torch.float32, None),
    # baichuan_alibi (remote code, Baichuan2-13B): the baichuan fixture's layout with ALiBi in
    # place of rotary; 6 heads, so the slopes follow the non-power-of-two rule (see REMOTE).
    "baichuan_alibi": (LlamaConfig, dims(hidden_size=192, num_attention_heads=6,
                                         num_key_value_heads=6, tie_word_embeddings=False,
                                         initializer_range=0.09),
                       torch.float32, None),
    # longrope: the 8-token prompt + 16 steps cross original_max_position_embeddings 16, so the
    # short factors turn the first 16 positions and the long ones the rest, and cos/sin are
    # x sqrt(1 + ln(64/16)/ln(16)) (see REMOTE for the check that the long factors matter).
    "phi3_longrope": (Phi3Config, dims(partial_rotary_factor=0.75, tie_word_embeddings=False,
                                       initializer_range=0.11,
                                       original_max_position_embeddings=16,
                                       max_position_embeddings=64,
                                       rope_scaling=longrope(12), **PHI3_IDS), torch.float32, None),
    # MiniCPM4: the minicpm fixture with longrope and a sparse_config (ignored at these lengths),
    # untied like MiniCPM4-8B (the tied minicpm fixture repeats the prompt's last token).
    "minicpm4": (LlamaConfig, dims(tie_word_embeddings=False,
                                   rope_scaling=dict(longrope(16), original_max_position_embeddings=16)),
                 torch.float32, {"scale_emb": 12.0, "scale_depth": 1.4, "dim_model_base": 32,
                                 "sparse_config": {"kernel_size": 32, "kernel_stride": 16,
                                                   "init_blocks": 1, "block_size": 64, "topk": 64,
                                                   "window_size": 2048, "dense_len": 8192}}),
    # chatglm (remote code, GLM-4 style): a glm twin (q/k/v bias, interleaved rotary on half of
    # head_dim 32) with base 10000 x rope_ratio 500, repacked (see REMOTE).
    "chatglm": (GlmConfig, dims(head_dim=32, rope_theta=10000.0 * 500, tie_word_embeddings=False,
                                initializer_range=0.11,
                                **PHI3_IDS), torch.float32, None),
}


def add_minicpm_hooks(model, s):
    """MiniCPM's three scalings on a llama, as module hooks."""
    cfg = model.config
    branch = s["scale_depth"] / math.sqrt(cfg.num_hidden_layers)
    model.model.embed_tokens.register_forward_hook(lambda m, i, o: o * s["scale_emb"])
    for layer in model.model.layers:
        layer.self_attn.o_proj.register_forward_hook(lambda m, i, o: o * branch)
        layer.mlp.down_proj.register_forward_hook(lambda m, i, o: o * branch)
    width = cfg.hidden_size / s["dim_model_base"]
    model.lm_head.register_forward_pre_hook(lambda m, i: (i[0] / width,))


def save_tensors(d, tensors):
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, "model.safetensors"),
              metadata={"format": "pt"})


def load_tensors(d):
    from safetensors.torch import load_file
    return load_file(os.path.join(d, "model.safetensors"))


def write_config(d, config):
    json.dump(config, open(os.path.join(d, "config.json"), "w"), indent=2)


@torch.no_grad()
def tokens_with_weights(d, replace):
    """The twin's greedy tokens with some of its weights replaced (the quirk dropped)."""
    twin = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32,
                                                attn_implementation="eager").eval()
    params = dict(twin.named_parameters())
    for name, value in replace.items():
        params[name].copy_(value)
    return expected(twin, PROMPT)["tokens"]


def group_qkv(q, k, v, kvh):
    """q | k | v rows → internlm2's wqkv rows: per kv head, its q heads, its k, its v."""
    d, rest = k.shape[0] // kvh, q.shape[1:]
    heads = lambda t: t.reshape(kvh, -1, d, *rest)
    return torch.cat([heads(q), heads(k), heads(v)], 1).reshape(-1, *rest)


def to_internlm2(d, cfg, result):
    """The llama twin's folder rewritten as an internlm2 checkpoint (names, grouped wqkv,
    the upstream config keys). Also records the twin's tokens when wqkv is mis-read as plain
    q | k | v rows, so a test can assert the grouping matters."""
    t, out = load_tensors(d), {}
    kvh, L = cfg.num_key_value_heads, "model.layers.{}."
    names = {"input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1",
             "mlp.up_proj": "feed_forward.w3", "mlp.down_proj": "feed_forward.w2"}
    misread = {}
    q_rows = cfg.num_attention_heads * cfg.head_dim
    kv_rows = kvh * cfg.head_dim
    for i in range(cfg.num_hidden_layers):
        p = L.format(i)
        for kind in ("weight", "bias"):
            q, k, v = (t.pop(f"{p}self_attn.{m}_proj.{kind}") for m in "qkv")
            wqkv = group_qkv(q, k, v, kvh)
            out[f"{p}attention.wqkv.{kind}"] = wqkv
            for m, part in zip("qkv", wqkv.split([q_rows, kv_rows, kv_rows])):
                misread[f"{p}self_attn.{m}_proj.{kind}"] = part
        for old, new in names.items():
            for kind in ("weight", "bias"):
                if f"{p}{old}.{kind}" in t:
                    out[f"{p}{new}.{kind}"] = t.pop(f"{p}{old}.{kind}")
    out["model.tok_embeddings.weight"] = t.pop("model.embed_tokens.weight")
    out["model.norm.weight"] = t.pop("model.norm.weight")
    out["output.weight"] = t.pop("lm_head.weight")
    assert not t, f"internlm2: tensors left over: {list(t)}"
    result["tokens_quirk_dropped"] = tokens_with_weights(d, misread)
    save_tensors(d, out)
    write_config(d, {
        "architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2",
        "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config",
                     "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"},
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": kvh,
        "hidden_act": "silu", "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps, "bias": True, "rope_theta": 10000.0,
        "rope_scaling": None, "tie_word_embeddings": False, "torch_dtype": "float32",
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0})


def to_baichuan(d, cfg, result, alibi=None):
    """The llama twin's folder rewritten as a Baichuan2-7B checkpoint (W_pack, the upstream
    config keys). The twin's lm_head rows get random norms first, so that NormHead matters; the
    expectation is the twin with its lm_head rows L2-normalised (what NormHead computes), and
    the twin's own tokens are the quirk dropped. With `alibi` (a twin_alibi), the twin runs
    with ALiBi instead of rotary and the folder is written as a Baichuan2-13B checkpoint."""
    t = load_tensors(d)
    head = t["lm_head.weight"]
    t["lm_head.weight"] = head * (0.5 + torch.rand(head.shape[0], 1))
    save_tensors(d, t)
    twin = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32,
                                                attn_implementation="eager").eval()
    with torch.no_grad():
        twin.lm_head.weight.copy_(torch.nn.functional.normalize(twin.lm_head.weight))
    if alibi:
        alibi(twin, result)
    else:
        result["tokens_quirk_dropped"] = tokens_with_weights(d, {})
        result.update(expected(twin, PROMPT))
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}.self_attn."
        t[p + "W_pack.weight"] = torch.cat([t.pop(f"{p}{m}_proj.weight") for m in "qkv"])
    save_tensors(d, t)
    # Baichuan2-13B's config class has no max_position_embeddings, only model_max_length.
    positions = {} if alibi else {"max_position_embeddings": cfg.max_position_embeddings}
    write_config(d, {
        "architectures": ["BaichuanForCausalLM"], "model_type": "baichuan",
        "auto_map": {"AutoConfig": "configuration_baichuan.BaichuanConfig",
                     "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM"},
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads, "hidden_act": "silu", **positions,
        "model_max_length": cfg.max_position_embeddings, "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": False, "torch_dtype": "float32", "z_loss_weight": 0,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0})


def alibi_slopes(n):
    """Baichuan2-13B's `_get_interleave` (modeling_baichuan.py), as the remote code has it."""
    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start ** i for i in range(n)]
    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + alibi_slopes(2 * closest)[0::2][:n - closest]


def alibi_mask(slopes):
    """A 4D float mask function for `expected`: causal, plus `slope_h * (k - q)` per head (the
    remote code adds `slope_h * k`, the same after softmax)."""
    def mask(query_positions, keys):
        k = torch.arange(keys, dtype=torch.float32)
        q = torch.tensor(list(query_positions), dtype=torch.float32)
        rel = k[None, :] - q[:, None]
        bias = torch.tensor(slopes, dtype=torch.float32)[:, None, None] * rel[None]
        return bias.masked_fill(rel[None] > 0, torch.finfo(torch.float32).min)[None]
    return mask


class NoRotary:
    """Within the block, llama's rotary embedding turns nothing (ALiBi models have none)."""
    def __enter__(self):
        from transformers.models.llama import modeling_llama
        self.module, self.saved = modeling_llama, modeling_llama.apply_rotary_pos_emb
        modeling_llama.apply_rotary_pos_emb = lambda q, k, *args, **kw: (q, k)

    def __exit__(self, *exc):
        self.module.apply_rotary_pos_emb = self.saved


def twin_alibi(twin, result):
    """Baichuan2-13B's math on the llama twin: no rotary, ALiBi biases as a 4D float mask.
    Records the tokens with no position information at all (ALiBi dropped) and with the
    power-of-two slope formula applied to the head count (the interleave rule dropped)."""
    heads = twin.config.num_attention_heads
    assert not math.log2(heads).is_integer(), "the fixture must exercise the interleave rule"
    with NoRotary():
        result.update(expected(twin, PROMPT, mask=alibi_mask(alibi_slopes(heads))))
        result["tokens_quirk_dropped"] = expected(twin, PROMPT, mask=alibi_mask([0.0] * heads))["tokens"]
        start = 2 ** (-8 / heads)
        geometric = [start ** (i + 1) for i in range(heads)]
        result["tokens_geometric_slopes"] = expected(twin, PROMPT, mask=alibi_mask(geometric))["tokens"]


def to_chatglm(d, cfg, result):
    """The glm twin's folder rewritten as a ChatGLM3/GLM-4 checkpoint (transformer.* names,
    packed query_key_value, the ChatGLMConfig keys with rope_ratio = theta / 10000, and the
    stale base-10000 inv_freq buffer real checkpoints carry). Also records the twin's tokens
    with base 10000 (rope_ratio ignored, as llm_convert.py does)."""
    import copy
    plain = copy.deepcopy(cfg)
    plain.rope_parameters["rope_theta"] = 10000.0
    twin = AutoModelForCausalLM.from_pretrained(d, config=plain, dtype=torch.float32,
                                                attn_implementation="eager").eval()
    result["tokens_quirk_dropped"] = expected(twin, PROMPT)["tokens"]
    t, out = load_tensors(d), {}
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}.", f"transformer.encoder.layers.{i}."
        for kind in ("weight", "bias"):
            out[f"{q}self_attention.query_key_value.{kind}"] = torch.cat(
                [t.pop(f"{p}self_attn.{m}_proj.{kind}") for m in "qkv"])
        for old, new in [("input_layernorm", "input_layernorm"),
                         ("post_attention_layernorm", "post_attention_layernorm"),
                         ("self_attn.o_proj", "self_attention.dense"),
                         ("mlp.gate_up_proj", "mlp.dense_h_to_4h"),
                         ("mlp.down_proj", "mlp.dense_4h_to_h")]:
            out[f"{q}{new}.weight"] = t.pop(f"{p}{old}.weight")
    out["transformer.embedding.word_embeddings.weight"] = t.pop("model.embed_tokens.weight")
    out["transformer.encoder.final_layernorm.weight"] = t.pop("model.norm.weight")
    out["transformer.output_layer.weight"] = t.pop("lm_head.weight")
    assert not t, f"chatglm: tensors left over: {list(t)}"
    n_elem = cfg.head_dim // 2
    out["transformer.rotary_pos_emb.inv_freq"] = 1.0 / (
        10000 ** (torch.arange(0, n_elem, 2, dtype=torch.float) / n_elem))
    save_tensors(d, out)
    write_config(d, {
        "architectures": ["ChatGLMModel"], "model_type": "chatglm",
        "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                     "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"},
        "num_layers": cfg.num_hidden_layers, "padded_vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size, "ffn_hidden_size": cfg.intermediate_size,
        "kv_channels": cfg.head_dim, "num_attention_heads": cfg.num_attention_heads,
        "multi_query_attention": True, "multi_query_group_num": cfg.num_key_value_heads,
        "layernorm_epsilon": cfg.rms_norm_eps, "rmsnorm": True, "add_qkv_bias": True,
        "add_bias_linear": False, "post_layer_norm": True,
        "apply_residual_connection_post_layernorm": False, "original_rope": True,
        "rope_ratio": cfg.rope_parameters["rope_theta"] / 10000.0,
        "seq_length": cfg.max_position_embeddings, "tie_word_embeddings": False,
        "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0})


@torch.no_grad()
def short_factors_only(d, cfg, result):
    """longrope's quirk: the same model turning every position with the short factors (what
    a converter that ignores long_factor computes) picks other tokens."""
    import copy
    cfg = copy.deepcopy(cfg)
    cfg.rope_parameters["long_factor"] = list(cfg.rope_parameters["short_factor"])
    model = AutoModelForCausalLM.from_pretrained(d, config=cfg, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    if cfg.model_type == "llama":
        add_minicpm_hooks(model, FAMILIES["minicpm4"][3])
    result["tokens_quirk_dropped"] = expected(model, PROMPT)["tokens"]


# Remote-code families: the fixture is a native twin with the same math, its folder rewritten
# into the family's layout after the expectation is computed from the twin.
REMOTE = {"internlm2": to_internlm2, "baichuan": to_baichuan,
          "baichuan_alibi": lambda d, cfg, result: to_baichuan(d, cfg, result, alibi=twin_alibi),
          "phi3_longrope": short_factors_only, "minicpm4": short_factors_only,
          "chatglm": to_chatglm}


def randomise(model):
    """Non-trivial norms and biases, so every weight path is exercised. Gemma stores its norm
    weights zero-centred (it scales by 1 + w)."""
    centre = 0.0 if model.config.model_type.startswith("gemma") else 1.0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(centre + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))


def amplify_branch_norms(model):
    """gemma2/gemma3 norm each branch's output to unit scale, which the scaled tied embedding
    (the token itself) would outweigh: larger output-norm weights let the layers pick the
    tokens, so their quirks show."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "post_attention_layernorm" in name or "post_feedforward_layernorm" in name:
                p.copy_(3.0 + 0.5 * torch.randn_like(p))


@torch.no_grad()
def use_native_embed_scale(reloaded, d, dtype):
    """Gemma multiplies the embedding by sqrt(hidden) cast to the weight dtype. Run in its own
    dtype, a bf16 checkpoint rounds that scale; the f32 expectation uses the same rounded
    scale (taken from transformers loading the checkpoint natively)."""
    native = AutoModelForCausalLM.from_pretrained(d, dtype=dtype).model.embed_tokens
    scale = native.embed_scale.to(native.weight.dtype).float()
    reloaded.model.embed_tokens.embed_scale.copy_(scale)


@torch.no_grad()
def expected(model, prompt, mask=None):
    """With `mask(query_positions, keys)`, every call gets that 4D float attention mask."""
    def masked(queries, keys):
        return {"attention_mask": mask(queries, keys)} if mask else {}
    ids = torch.tensor([prompt])
    out = model(ids, use_cache=True, output_hidden_states=True, **masked(range(len(prompt)), len(prompt)))
    n_layers = model.config.get_text_config().num_hidden_layers
    # hidden_states[i] is the input of layer i; the last one is after the final norm.
    hidden = [out.hidden_states[i][0].tolist() for i in range(1, n_layers)]
    result = {"prompt": prompt, "prefill_logits": out.logits[0, -1].tolist(), "hidden": hidden,
              "tokens": [], "step_logits": []}
    past, logits = out.past_key_values, out.logits[0, -1]
    for step in range(STEPS):
        tok = int(torch.argmax(logits))
        result["tokens"].append(tok)
        pos = len(prompt) + step
        out = model(torch.tensor([[tok]]), past_key_values=past, use_cache=True,
                    **masked([pos], pos + 1))
        past, logits = out.past_key_values, out.logits[0, -1]
        result["step_logits"].append(logits.tolist())
    return result


# These fixtures draw their weights from the one stream seeded at the top, in this order; every
# later fixture seeds its own stream from its name, so fixtures added in any order (or by
# another script) leave every other fixture byte-identical.
SHARED_STREAM = ["llama_tied", "llama_rope3", "llama_rope3_bf16", "qwen2", "qwen2_bf16", "qwen3",
                 "minicpm", "minicpm_bf16", "mistral", "mistral_bf16", "gemma", "gemma_bf16",
                 "phi3", "phi3_bf16", "glm4", "glm4_bf16", "glm", "glm_bf16"]


def seed_for(name):
    """Gives a fixture outside SHARED_STREAM its own seeded random stream."""
    if name not in SHARED_STREAM:
        torch.manual_seed(zlib.crc32(name.encode()))


def make_family(out_dir, name, cls, kwargs, dtype, minicpm):
    d = os.path.join(out_dir, name)
    seed_for(name)
    cfg = cls(**kwargs)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
    randomise(model)
    if cfg.model_type in ("gemma2", "gemma3_text"):
        amplify_branch_norms(model)
    model.to(dtype).save_pretrained(d, safe_serialization=True)
    if minicpm:
        path = os.path.join(d, "config.json")
        c = json.load(open(path))
        c.update(minicpm, model_type="minicpm", architectures=["MiniCPMForCausalLM"])
        json.dump(c, open(path, "w"), indent=2)
    # The expectation is computed in f32 from the stored weights (bf16 ones up-cast).
    reloaded = AutoModelForCausalLM.from_pretrained(
        d, dtype=torch.float32, attn_implementation="eager",
        **({"config": cfg} if minicpm else {})).eval()
    if minicpm:
        add_minicpm_hooks(reloaded, minicpm)
    if cfg.model_type.startswith("gemma"):
        use_native_embed_scale(reloaded, d, dtype)
    result = expected(reloaded, PROMPT)
    if name in REMOTE:
        REMOTE[name](d, cfg, result)
    if getattr(cfg, "sliding_window", None):
        # Gemma's sliding layers need a window: one longer than anything the test runs.
        window = 4096 if cfg.model_type.startswith("gemma") else None
        plain = AutoModelForCausalLM.from_pretrained(
            d, dtype=torch.float32, attn_implementation="eager", sliding_window=window).eval()
        assert plain.config.sliding_window == window
        if cfg.model_type.startswith("gemma"):
            use_native_embed_scale(plain, d, dtype)
        result["tokens_without_window"] = expected(plain, PROMPT)["tokens"]
    if cfg.model_type.endswith("_moe"):
        def variant(**kw):
            m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager",
                                                     **kw).eval()
            return expected(m, PROMPT)["tokens"]
        result["tokens_dense"] = variant(num_experts_per_tok=cfg.num_experts)
        result["tokens_other_norm"] = variant(norm_topk_prob=not cfg.norm_topk_prob)
        if name == "qwen2_moe":
            # transformers' in-memory layout: experts stacked (gate_up_proj, down_proj).
            reloaded.save_pretrained(d + "_stacked", save_original_format=False)
            json.dump(result, open(os.path.join(d + "_stacked", "expected.json"), "w"))
    json.dump(result, open(os.path.join(d, "expected.json"), "w"))


@torch.no_grad()
def make_gemma3(out_dir):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration
    text_dir, d = os.path.join(out_dir, "gemma3_text"), os.path.join(out_dir, "gemma3")
    text = AutoModelForCausalLM.from_pretrained(text_dir, dtype=torch.float32).eval()
    defaults = Gemma3TextConfig().to_dict()
    full = text.config.to_dict()
    minimal = {k: v for k, v in full.items()
               if k == "model_type" or (k not in ("transformers_version", "architectures", "dtype",
                                                  "_name_or_path") and defaults.get(k) != v)}
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=28, patch_size=14)
    torch.manual_seed(zlib.crc32(b"gemma3"))
    vlm = Gemma3ForConditionalGeneration(Gemma3Config(text_config=minimal, vision_config=vision,
                                                      mm_tokens_per_image=4)).eval()
    vlm.model.language_model.load_state_dict(text.model.state_dict())
    vlm.save_pretrained(d, safe_serialization=True)
    path = os.path.join(d, "config.json")
    c = json.load(open(path))
    c["text_config"] = minimal
    json.dump(c, open(path, "w"), indent=2)
    # transformers fills the dropped keys with its defaults when it reads the file back.
    reloaded = Gemma3ForConditionalGeneration.from_pretrained(d, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    json.dump(expected(reloaded, PROMPT), open(os.path.join(d, "expected.json"), "w"))


@torch.no_grad()
def make_smollm2(out_dir, gguf):
    d = os.path.join(out_dir, "smollm2")
    os.makedirs(d, exist_ok=True)
    folder, name = os.path.split(gguf)
    # gguf's wheel does not map its import name to its distribution, so transformers reads
    # its version as "N/A" and refuses it; give the module the version its metadata has.
    import importlib.metadata
    import gguf as gguf_pkg
    gguf_pkg.__version__ = importlib.metadata.version("gguf")
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    prompt = tok(text, add_special_tokens=False)["input_ids"]
    gen = model.generate(torch.tensor([prompt]), max_new_tokens=STEPS, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    tokens = gen[0, len(prompt):].tolist()
    json.dump({"text": text, "prompt": prompt, "tokens": tokens,
               "decoded": tok.decode(tokens)}, open(os.path.join(d, "expected.json"), "w"))


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    for name, (cls, kwargs, dtype, minicpm) in FAMILIES.items():
        make_family(out_dir, name, cls, kwargs, dtype, minicpm)
        print("fixture", name, flush=True)
    make_gemma3(out_dir)
    print("fixture gemma3", flush=True)
    if "--smollm2" in sys.argv:
        make_smollm2(out_dir, sys.argv[sys.argv.index("--smollm2") + 1])
        print("fixture smollm2", flush=True)


if __name__ == "__main__":
    main()
