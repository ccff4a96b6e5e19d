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
def expected(model, prompt):
    ids = torch.tensor([prompt])
    out = model(ids, use_cache=True, output_hidden_states=True)
    n_layers = model.config.num_hidden_layers
    # hidden_states[i] is the input of layer i; the last one is after the final norm.
    hidden = [out.hidden_states[i][0].tolist() for i in range(1, n_layers)]
    result = {"prompt": prompt, "prefill_logits": out.logits[0, -1].tolist(), "hidden": hidden,
              "tokens": [], "step_logits": []}
    past, logits = out.past_key_values, out.logits[0, -1]
    for _ in range(STEPS):
        tok = int(torch.argmax(logits))
        result["tokens"].append(tok)
        out = model(torch.tensor([[tok]]), past_key_values=past, use_cache=True)
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
    if "--smollm2" in sys.argv:
        make_smollm2(out_dir, sys.argv[sys.argv.index("--smollm2") + 1])
        print("fixture smollm2", flush=True)


if __name__ == "__main__":
    main()
