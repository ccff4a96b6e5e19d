#!/usr/bin/env bash
# Benchmark (not a test): ONNX export wall time, weight throughput and peak RSS for the bundled
# SmolLM2-135M (GGUF) and a synthetic ~1.1B-parameter llama (bf16 safetensors made by
# transformers with random weights). Needs `scripts/setup.sh` first. Prints one line per model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
cargo build --release --locked -q
BIN=target/release/llm-convert
PY=$($BIN toolchain show | python3 -c 'import json,sys; print(json.load(sys.stdin)["python"])')
WORK=${BENCH_DIR:-$(mktemp -d)}
SYN=$WORK/llama-1b
if [ ! -f "$SYN/config.json" ]; then
  "$PY" - "$SYN" <<'PY'
import sys, torch
from transformers import LlamaConfig, AutoModelForCausalLM
cfg = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                  num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False)
torch.manual_seed(0)
with torch.device("meta"):
    m = AutoModelForCausalLM.from_config(cfg)
m = m.to_empty(device="cpu").to(torch.bfloat16)
with torch.no_grad():
    for p in m.parameters():
        p.normal_(0, 0.02)
m.save_pretrained(sys.argv[1], safe_serialization=True)
print("params", sum(p.numel() for p in m.parameters()))
PY
fi
run() {
  local name=$1 model=$2
  local out=$WORK/out-$name
  rm -rf "$out"
  /usr/bin/time -f "%e %M" -o "$WORK/time-$name" $BIN export-onnx -m "$model" -s 512 -o "$out" 2> "$WORK/log-$name"
  read -r secs rss_kb < "$WORK/time-$name"
  bytes=$(du -sb "$out/onnx" | cut -f1)
  python3 -c "import sys; s,b,r=float(sys.argv[1]),int(sys.argv[2]),int(sys.argv[3]); print(f'{sys.argv[4]}: {s:.1f} s wall, {b/1e9:.2f} GB of ONNX written, {b/1e9/s:.2f} GB/s, peak RSS {r/1024:.0f} MB')" "$secs" "$bytes" "$rss_kb" "$name"
}
run smollm2-135m models/smollm2-135m-instruct
run llama-1.1b-synthetic "$SYN"
