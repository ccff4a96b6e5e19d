#!/usr/bin/env python3
"""Pre-quantized test fixtures: GPTQ, AWQ and compressed-tensors checkpoints written by us (transformers cannot
write these formats without their packages). Run with the toolchain venv's python.

    make_quant_fixtures.py OUT_DIR

Each fixture is a tiny random model whose linear layers (q/k/v/o/gate/up/down of every layer)
are quantized with a known rule and stored in the method's exact packing:

  rule     per group of `group_size` input features of each output row: asym: s = (max-min)/15,
           z = clamp(round(-min/s), 0, 15); sym: s = max|w|/7.5 (rounded to f16 first), z = 8;
           q = clamp(round(w/s) + z, 0, 15); scales stored as f16 and used as stored.
  gptq     qweight int32 [K/8, N]: row 8r+i of q^T in bits 4i..4i+4 of row r; qzeros int32
           [K/g, N/8]: (z - 1) packed along N the same way; scales f16 [K/g, N]; g_idx int32 [K].
           With desc_act the groups follow g_idx, a random permutation of k // group_size.
           8-bit (gptq8_*): the rule with 255 / 127.5 / 128 for 15 / 7.5 / 8, four values per
           word (value i in bits 8i..8i+8), (z - 1) mod 256 in qzeros.
  awq      AutoAWQ GEMM: qweight int32 [K, N/8]: column 8c+j of q^T in bits 4*ORDER[j] of
           column c, ORDER = [0, 4, 1, 5, 2, 6, 3, 7]; qzeros int32 [K/g, N/8]: z packed the
           same way; scales f16 [K/g, N]; no g_idx.
  ct       compressed-tensors pack-quantized (llm-compressor, as its pack_to_int32 writes it):
           the signed value q - 8 (range -8..7) plus the offset 8, i.e. q; weight_packed int32
           [N, K/8]: input feature 8c+i of row n in bits 4i..4i+4 of [n, c]; weight_zero_point
           int32 [N/8, K/g] (asym only): the signed zero z - 8 plus 8, packed along N the same
           way; weight_scale [N, K/g] in the model's dtype (bf16 here, the rule's rounding too);
           weight_shape int32 [2] = [N, K]; lm_head in `ignore`. 8-bit (ct8_*): offset 128, four
           values per word (value i in bits 8i..8i+8).

  fp8      transformers' FineGrainedFP8 layout (DeepSeek-V3, Qwen3-FP8): per block of
           weight_block_size [bn, bk] of W [N, K] (edge blocks partial), s = max|w| / 448 (f32),
           weight = (w / s) as float8_e4m3fn [N, K], weight_scale_inv f32 [ceil(N/bn),
           ceil(K/bk)] = s; the layer computes with weight * s. The rest of the model is bf16.
           Also e4m3_table.json: torch's float value of each of the 256 e4m3fn bytes (NaN: null),
           and instead of dequantized.safetensors (its names would clash with the fp8 weights
           in one folder) a sibling folder <name>_float: the same model as a float32 checkpoint
           with the dequantized weights and no quantization_config.

Every fixture also gets
  dequantized.safetensors  each quantized layer's float weight (q - z) * s, torch order [N, K]
  expected.json            what transformers computes (float32, eager attention) with those
                           weights: prompt, prefill_logits, 16 greedy tokens, step_logits
"""
import json
import math
import os
import sys
import zlib

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

STEPS = 16
PROMPT = [3, 17, 256, 999, 42, 7, 511, 128]
AWQ_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]
LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]

# name: (config class, method, group_size, sym, desc_act[, bits])
FIXTURES = {
    "gptq_sym_g128": (Qwen2Config, "gptq", 128, True, False),
    "gptq_asym_desc_g32": (LlamaConfig, "gptq", 32, False, True),
    "gptq8_asym_g64": (Qwen2Config, "gptq", 64, False, False, 8),
    "awq_g64": (LlamaConfig, "awq", 64, False, False),
    "ct_asym_g64": (Qwen2Config, "ct", 64, False, False),
    "ct_sym_g32": (LlamaConfig, "ct", 32, True, False),
    "ct8_asym_g32": (LlamaConfig, "ct", 32, False, False, 8),
}
# name: (config class, weight_block_size); blocks that do not divide 128 / 256 leave partial
# edge blocks, and non-square ones catch a transposed scale grid.
FP8_FIXTURES = {
    "fp8_b32x48": (LlamaConfig, [32, 48]),
}
# compressed-tensors checkpoints ship in bf16 (llm-compressor keeps the model's dtype).
BF16 = {"ct"}


def dims():
    return dict(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                rms_norm_eps=1e-6, initializer_range=0.1, rope_theta=10000.0,
                tie_word_embeddings=False)


def f16(x):
    return x.astype(np.float16).astype(np.float32)


def bf16(x):
    return torch.from_numpy(np.ascontiguousarray(x, np.float32)).bfloat16().float().numpy()


def quantize(w, group_size, sym, g_idx, rnd, bits=4):
    """w [N, K] f32 → q [N, K] (0..2^bits-1), z [N, G], s [N, G] f32 (rounded by `rnd` to the
    stored dtype), by the rule above."""
    top, mid = (1 << bits) - 1, 1 << (bits - 1)
    n, k = w.shape
    groups = k // group_size
    q = np.zeros((n, k), np.int64)
    z = np.zeros((n, groups), np.int64)
    s = np.zeros((n, groups), np.float32)
    for g in range(groups):
        cols = np.nonzero(g_idx == g)[0]
        wg = w[:, cols]
        if sym:
            sg = rnd(np.abs(wg).max(axis=1) / (top / 2))
            zg = np.full(n, mid)
        else:
            lo, hi = np.minimum(wg.min(axis=1), 0), np.maximum(wg.max(axis=1), 0)
            sg = rnd((hi - lo) / top)
            zg = np.clip(np.round(-lo / sg), 0, top).astype(np.int64)
        q[:, cols] = np.clip(np.round(wg / sg[:, None]) + zg[:, None], 0, top)
        z[:, g], s[:, g] = zg, sg
    return q, z, s


def pack_to_int32(signed, num_bits, packed_dim):
    """compressed-tensors' packing: signed values plus 2^(bits-1), 32/bits per int32 word along
    `packed_dim`, value i of a word at bit num_bits * i."""
    return pack(signed + (1 << (num_bits - 1)), packed_dim, range(8), num_bits)


def pack(values, axis, order, bits=4):
    """Packs `bits`-bit values 32/bits per int32 along `axis`; value j of a word at shift
    bits*order[j]."""
    per = 32 // bits
    v = np.moveaxis(values.astype(np.uint32), axis, -1)
    v = v.reshape(*v.shape[:-1], v.shape[-1] // per, per)
    word = np.zeros(v.shape[:-1], np.uint32)
    for j in range(per):
        word |= v[..., j] << np.uint32(bits * order[j])
    return np.moveaxis(word, -1, axis).view(np.int32)


def make(out_dir, name, cls, method, group_size, sym, desc_act, bits=4):
    d = os.path.join(out_dir, name)
    torch.manual_seed(zlib.crc32(name.encode()))
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    cfg = cls(**dims())
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    dtype = torch.bfloat16 if method in BF16 else torch.float16
    rnd = bf16 if method in BF16 else f16
    model.to(dtype).save_pretrained(d, safe_serialization=True)
    from safetensors.torch import load_file
    stored = load_file(os.path.join(d, "model.safetensors"))
    dequantized = {}
    for layer in range(cfg.num_hidden_layers):
        for lin in LINEARS:
            prefix = f"model.layers.{layer}.{lin}"
            w = stored.pop(prefix + ".weight").float().numpy()
            n, k = w.shape
            g_idx = np.arange(k) // group_size
            if desc_act:
                g_idx = g_idx[rng.permutation(k)]
            q, z, s = quantize(w, group_size, sym, g_idx, rnd, bits)
            deq = (q - z[:, g_idx]) * s[:, g_idx]
            dequantized[prefix + ".weight"] = torch.from_numpy(deq.astype(np.float32))
            if method == "gptq":
                stored[prefix + ".qweight"] = torch.from_numpy(pack(q.T, 0, range(8), bits))
                # v1 format: zero - 1, kept in its bits (a zero of 0 wraps to the top value).
                zm1 = (z - 1) % (1 << bits)
                stored[prefix + ".qzeros"] = torch.from_numpy(pack(zm1.T, 1, range(8), bits))
                stored[prefix + ".g_idx"] = torch.from_numpy(g_idx.astype(np.int32))
            elif method == "awq":
                stored[prefix + ".qweight"] = torch.from_numpy(pack(q.T, 1, AWQ_ORDER))
                stored[prefix + ".qzeros"] = torch.from_numpy(pack(z.T, 1, AWQ_ORDER))
            if method in ("gptq", "awq"):
                stored[prefix + ".scales"] = torch.from_numpy(np.ascontiguousarray(s.T)).half()
            else:
                mid = 1 << (bits - 1)
                stored[prefix + ".weight_packed"] = torch.from_numpy(
                    pack_to_int32(q - mid, bits, 1))
                if not sym:
                    stored[prefix + ".weight_zero_point"] = torch.from_numpy(
                        pack_to_int32(z - mid, bits, 0))
                stored[prefix + ".weight_scale"] = torch.from_numpy(s).to(dtype)
                stored[prefix + ".weight_shape"] = torch.tensor([n, k], dtype=torch.int32)
    save_file({k: v.contiguous() for k, v in stored.items()}, os.path.join(d, "model.safetensors"),
              metadata={"format": "pt"})
    save_file(dequantized, os.path.join(d, "dequantized.safetensors"))
    path = os.path.join(d, "config.json")
    c = json.load(open(path))
    if method == "gptq":
        qc = {"quant_method": "gptq", "bits": bits, "group_size": group_size, "sym": sym,
              "desc_act": desc_act, "checkpoint_format": "gptq", "true_sequential": True}
    elif method == "awq":
        qc = {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True,
              "version": "gemm", "modules_to_not_convert": None}
    else:
        weights = {"num_bits": bits, "type": "int", "symmetric": sym, "strategy": "group",
                   "group_size": group_size, "actorder": None, "dynamic": False,
                   "observer": "minmax", "block_structure": None}
        qc = {"quant_method": "compressed-tensors", "format": "pack-quantized",
              "quantization_status": "compressed", "ignore": ["lm_head"],
              "kv_cache_scheme": None, "global_compression_ratio": None,
              "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights,
                                            "input_activations": None,
                                            "output_activations": None}}}
    c["quantization_config"] = qc
    json.dump(c, open(path, "w"), indent=2)

    # The expectation: the model in f32 with the stored float tensors and the dequantized ones.
    with torch.no_grad():
        model.float()
        params = dict(model.named_parameters())
        for k, v in stored.items():
            if k in params:
                params[k].copy_(v.float())
        for k, v in dequantized.items():
            params[k].copy_(v)
    json.dump(expected(model, PROMPT), open(os.path.join(d, "expected.json"), "w"))


@torch.no_grad()
def make_fp8(out_dir, name, cls, block):
    d = os.path.join(out_dir, name)
    torch.manual_seed(zlib.crc32(name.encode()))
    cfg = cls(**dims())
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
    for p in model.parameters():
        p.normal_(0, 0.1)
    model.to(torch.bfloat16).save_pretrained(d, safe_serialization=True)
    from safetensors.torch import load_file
    stored = load_file(os.path.join(d, "model.safetensors"))
    dequantized = {}
    bn, bk = block
    for layer in range(cfg.num_hidden_layers):
        for lin in LINEARS:
            prefix = f"model.layers.{layer}.{lin}"
            w = stored.pop(prefix + ".weight").float()
            n, k = w.shape
            rows, cols = -(-n // bn), -(-k // bk)
            s = torch.zeros(rows, cols)
            f8 = torch.zeros(n, k, dtype=torch.float8_e4m3fn)
            for i in range(rows):
                for j in range(cols):
                    blk = w[i * bn:(i + 1) * bn, j * bk:(j + 1) * bk]
                    s[i, j] = blk.abs().max() / 448.0
                    f8[i * bn:(i + 1) * bn, j * bk:(j + 1) * bk] = (blk / s[i, j]).to(torch.float8_e4m3fn)
            grid = s.repeat_interleave(bn, 0)[:n].repeat_interleave(bk, 1)[:, :k]
            dequantized[prefix + ".weight"] = f8.float() * grid
            stored[prefix + ".weight"] = f8
            stored[prefix + ".weight_scale_inv"] = s
    save_file({k: v.contiguous() for k, v in stored.items()}, os.path.join(d, "model.safetensors"),
              metadata={"format": "pt"})
    path = os.path.join(d, "config.json")
    c = json.load(open(path))
    float_dir = d + "_float"
    os.makedirs(float_dir)
    floats = {k: v.float() for k, v in stored.items() if v.dtype != torch.float8_e4m3fn
              and not k.endswith(".weight_scale_inv")}
    save_file({**floats, **dequantized}, os.path.join(float_dir, "model.safetensors"),
              metadata={"format": "pt"})
    json.dump(dict(c, dtype="float32"), open(os.path.join(float_dir, "config.json"), "w"), indent=2)
    c["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                "weight_block_size": block}
    json.dump(c, open(path, "w"), indent=2)
    table = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    json.dump([None if math.isnan(v) else v for v in table.tolist()],
              open(os.path.join(d, "e4m3_table.json"), "w"))
    model.float()
    params = dict(model.named_parameters())
    for k, v in stored.items():
        if k in params and v.dtype != torch.float8_e4m3fn:
            params[k].copy_(v.float())
    for k, v in dequantized.items():
        params[k].copy_(v)
    json.dump(expected(model, PROMPT), open(os.path.join(d, "expected.json"), "w"))


@torch.no_grad()
def expected(model, prompt):
    out = model(torch.tensor([prompt]), use_cache=True)
    result = {"prompt": prompt, "prefill_logits": out.logits[0, -1].tolist(), "tokens": [],
              "step_logits": []}
    past, logits = out.past_key_values, out.logits[0, -1]
    for _ in range(STEPS):
        tok = int(torch.argmax(logits))
        result["tokens"].append(tok)
        out = model(torch.tensor([[tok]]), past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[0, -1]
        result["step_logits"].append(logits.tolist())
    return result


def main():
    out_dir = sys.argv[1]
    for name, spec in FIXTURES.items():
        make(out_dir, name, *spec)
    for name, spec in FP8_FIXTURES.items():
        make_fp8(out_dir, name, *spec)


if __name__ == "__main__":
    main()
