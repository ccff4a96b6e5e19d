#!/usr/bin/env bash
# Benchmark (not a test): pre-quantized checkpoints on a real-shaped random model (one
# Llama-2-7B layer: hidden 4096, intermediate 11008, 32 heads; vocab 4096), bf16 activations.
#   unpack: the packed bytes (weights, scales, zero points) of the layer's 7 linears over the
#     time to read and unpack them. Ours: examples/unpack_throughput.rs, which reads every
#     quantized linear's A16MatMul operands (integers two per byte, scales, zero points) as a
#     conversion does and nothing else. Also shown: `llm-convert reference --steps 0` (reads
#     every tensor, unpacks and exactly dequantizes each linear to f32, one 1-token forward;
#     the same run on the bf16 checkpoint is the cost of everything but the unpacking). Theirs: TPU-MLIR llm_convert.py's own
#     SafetensorsModelHandle.set_linear_weight on the same files (read + unpack into the
#     A16MatMul operands), imported from the toolchain's python.
#     For GPTQ (sym, g128) and compressed-tensors pack-quantized (asym, g128).
#   convert: wall time of `llm-convert` on the GPTQ checkpoint (its own w4bf16) against the
#     same-shaped bf16 checkpoint at -q w4bf16 (-s 64, fresh output and piece cache each).
#   PROFILE=dev: time the dev build instead of the release one (no release build needed).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
cargo build --profile "$PROFILE" --locked -q --bin llm-convert --example unpack_throughput
OUT=target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
BIN=$OUT/llm-convert
PY=$($BIN toolchain show | sed -n 's/.*"python": "\(.*\)".*/\1/p')
SITE=$($BIN toolchain show | sed -n 's/.*"site_packages": "\(.*\)".*/\1/p')
WORK=$(mktemp -d /tmp/bench-quant.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# The checkpoints, packed as scripts/make_quant_fixtures.py documents (its pack functions).
HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error "$PY" - "$WORK" <<'PYEOF'
import importlib.util, json, os, sys
import numpy as np, torch
from safetensors.torch import save_file
spec = importlib.util.spec_from_file_location("fx", "scripts/make_quant_fixtures.py")
fx = importlib.util.module_from_spec(spec); spec.loader.exec_module(fx)
work = sys.argv[1]
H, I, V, G = 4096, 11008, 4096, 128
cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H,
       "intermediate_size": I, "num_hidden_layers": 1, "num_attention_heads": 32,
       "num_key_value_heads": 32, "vocab_size": V, "max_position_embeddings": 256,
       "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu",
       "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
rng = np.random.default_rng(0)
lin = {"self_attn.q_proj": (H, H), "self_attn.k_proj": (H, H), "self_attn.v_proj": (H, H),
       "self_attn.o_proj": (H, H), "mlp.gate_proj": (I, H), "mlp.up_proj": (I, H),
       "mlp.down_proj": (H, I)}
common = {"model.embed_tokens.weight": torch.randn(V, H).bfloat16() * 0.02,
          "lm_head.weight": torch.randn(V, H).bfloat16() * 0.02,
          "model.norm.weight": torch.ones(H).bfloat16(),
          "model.layers.0.input_layernorm.weight": torch.ones(H).bfloat16(),
          "model.layers.0.post_attention_layernorm.weight": torch.ones(H).bfloat16()}
def write(name, tensors, qc=None):
    d = os.path.join(work, name); os.makedirs(d)
    save_file({k: v.contiguous() for k, v in {**common, **tensors}.items()},
              os.path.join(d, "model.safetensors"))
    json.dump({**cfg, **({"quantization_config": qc} if qc else {})},
              open(os.path.join(d, "config.json"), "w"))
bf16, gptq, ct, packed = {}, {}, {}, {"gptq": 0, "ct": 0}
for l, (n, k) in lin.items():
    p = f"model.layers.0.{l}"
    bf16[p + ".weight"] = (torch.randn(n, k) * 0.02).bfloat16()
    q = rng.integers(0, 16, (n, k))
    s = (rng.random((n, k // G)) * 0.01 + 1e-3).astype(np.float32)
    z = rng.integers(0, 16, (n, k // G))
    gptq[p + ".qweight"] = torch.from_numpy(fx.pack(q.T, 0, range(8)))
    gptq[p + ".qzeros"] = torch.from_numpy(fx.pack(np.full((k // G, n), 7), 1, range(8)))
    gptq[p + ".scales"] = torch.from_numpy(np.ascontiguousarray(s.T)).half()
    gptq[p + ".g_idx"] = torch.from_numpy((np.arange(k) // G).astype(np.int32))
    ct[p + ".weight_packed"] = torch.from_numpy(fx.pack_to_int32(q - 8, 4, 1))
    ct[p + ".weight_zero_point"] = torch.from_numpy(fx.pack_to_int32(z - 8, 4, 0))
    ct[p + ".weight_scale"] = torch.from_numpy(s).bfloat16()
    ct[p + ".weight_shape"] = torch.tensor([n, k], dtype=torch.int32)
    for method, t in (("gptq", gptq), ("ct", ct)):
        packed[method] += sum(v.numel() * v.element_size() for key, v in t.items()
                              if key.startswith(p + ".") and not key.endswith(("g_idx", "shape")))
write("bf16", bf16)
write("gptq", gptq, {"quant_method": "gptq", "bits": 4, "group_size": G, "sym": True,
                     "desc_act": False, "checkpoint_format": "gptq"})
write("ct", ct, {"quant_method": "compressed-tensors", "format": "pack-quantized",
                 "quantization_status": "compressed", "ignore": ["lm_head"],
                 "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
                     "num_bits": 4, "type": "int", "symmetric": False, "strategy": "group",
                     "group_size": G, "actorder": None, "dynamic": False},
                     "input_activations": None, "output_activations": None}}})
json.dump(packed, open(os.path.join(work, "packed.json"), "w"))
PYEOF

measure() { "$PY" scripts/measure.py "$@"; }
{
  for m in gptq ct; do
    $OUT/examples/unpack_throughput "$WORK/$m" "ours_a16_$m"
  done
  for m in gptq ct bf16; do
    measure "ours_unpack_$m" -- $BIN reference -m "$WORK/$m" --tokens 1 --steps 0
  done
  measure convert_gptq -- $BIN -m "$WORK/gptq" -s 64 -c bm1684x -o "$WORK/out-gptq" --cache-dir "$WORK/cache-gptq"
  measure convert_bf16 -- $BIN -m "$WORK/bf16" -s 64 -q w4bf16 -c bm1684x -o "$WORK/out-bf16" --cache-dir "$WORK/cache-bf16"
} > "$WORK/results.jsonl"

# Theirs: llm_convert.py's per-linear reader on the same files, in-process timing.
PYTHONPATH="$SITE/tpu_mlir/python:$SITE/tpu_mlir/python/tools:$SITE" "$PY" - "$WORK" <<'PYEOF' >> "$WORK/results.jsonl"
import json, os, sys, time, types
from llm.ModelHandle import SafetensorsModelHandle
work = sys.argv[1]
for method, mode in (("gptq", "gptq"), ("ct", "compressed-tensors")):
    conv = types.SimpleNamespace(quant_mode=mode, quant_bits=4, q_group_size=128, fused_mlp=False,
                                 llm_type=None, compressed_with_zp=(method == "ct"))
    h = SafetensorsModelHandle(os.path.join(work, method))
    t = time.perf_counter()
    out = {}
    for l in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
        h.set_linear_weight(conv, f"model.layers.0.{l}", out)
    print(json.dumps({"label": f"theirs_unpack_{method}", "wall_s": time.perf_counter() - t}))
PYEOF

PROFILE=$PROFILE "$PY" - "$WORK" <<'PYEOF'
import json, os, sys
work = sys.argv[1]
rows = {r["label"]: r for r in map(json.loads, open(os.path.join(work, "results.jsonl")))}
packed = json.load(open(os.path.join(work, "packed.json")))
print(f"unpack of one Llama-2-7B layer's 7 linears (4-bit, g128); llm-convert {os.environ.get('PROFILE', 'release')} build")
base = rows["ours_unpack_bf16"]["wall_s"]
print(f"  `reference --steps 0` on the bf16 checkpoint (no unpacking): {base:.2f} s")
for m in ("gptq", "ct"):
    o, t = rows[f"ours_unpack_{m}"]["wall_s"], rows[f"theirs_unpack_{m}"]["wall_s"]
    a = rows[f"ours_a16_{m}"]["wall_s"]
    gb, extra = packed[m] / 1e9, o - base
    print(f"  {m:<5} read + unpack only: ours {a:.3f} s = {gb / a:.3f} GB/s, "
          f"llm_convert.py {t:.3f} s = {gb / t:.3f} GB/s: {t / a:.1f}x faster")
    # A difference under 10% of the run is noise, not a throughput.
    over = (f"{extra:.2f} s over bf16 = {gb / extra:.3f} GB/s" if extra > 0.1 * base
            else f"{extra:+.2f} s over bf16: within the noise")
    print(f"  {m:<5} {packed[m] / 1e6:.1f} MB packed: ours {o:.2f} s whole run = {gb / o:.3f} GB/s "
          f"(unpacked and dequantized to f32; {over}); "
          f"llm_convert.py {t:.2f} s = {gb / t:.3f} GB/s (read + unpack only)")
q, b = rows["convert_gptq"], rows["convert_bf16"]
print(f"convert -s 64, bm1684x, w4bf16: GPTQ checkpoint {q['wall_s']:.1f} s ({q['peak_rss_mb']} MB), "
      f"bf16 checkpoint {b['wall_s']:.1f} s ({b['peak_rss_mb']} MB): {q['wall_s'] / b['wall_s']:.2f}x")
for m in ("gptq", "bf16"):
    t = json.load(open(os.path.join(work, f"out-{m}", "manifest.json")))["timings"]
    print(f"  {m}: export {t['export_s']:.2f} s, compile {t['compile_s']:.1f} s, combine {t['combine_s']:.1f} s")
PYEOF
