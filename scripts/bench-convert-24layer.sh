#!/usr/bin/env bash
# Benchmark (not a test): a random 24-layer checkpoint of Qwen2.5-0.5B's shape (untied 152k
# vocabulary; scripts/make_bench_model.py) at w4bf16, seq 512, for BM1684X, converted by
# llm-convert (native backend, compile-once the default, and --compile-once=false) and by TPU-MLIR's own llm_convert.py from the same folder with
# the same flags: cold (empty output folder and piece cache), then llm-convert's unchanged
# rerun. Prints wall time, the whole process tree's peak RSS, and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-env.sh
WORK=$(mktemp -d /tmp/bench-24layer.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
"$PY" scripts/make_bench_model.py "$WORK/model" >/dev/null
FLAGS=(-s 512 -q w4bf16 -c bm1684x)
{
  measure ours_cold -- $BIN -m "$WORK/model" "${FLAGS[@]}" -o "$WORK/ours" --cache-dir "$WORK/cache"
  cp "$WORK/ours/manifest.json" "$WORK/ours-cold-manifest.json"
  measure full_cold -- $BIN -m "$WORK/model" "${FLAGS[@]}" -o "$WORK/full" --cache-dir "$WORK/cache-full" --compile-once=false
  measure theirs_cold -- "${tpu_env[@]}" python3 "$TPUC_ROOT/python/tools/llm_convert.py" -m "$WORK/model" "${FLAGS[@]}" -o "$WORK/theirs"
  measure ours_warm -- $BIN -m "$WORK/model" "${FLAGS[@]}" -o "$WORK/ours" --cache-dir "$WORK/cache"
} | tee "$WORK/results.jsonl"
"$PY" - "$WORK/results.jsonl" "$WORK/ours-cold-manifest.json" <<'PYEOF'
import json, sys
rows = {r["label"]: r for r in map(json.loads, open(sys.argv[1]))}
m = json.load(open(sys.argv[2]))
o, t, w = rows["ours_cold"], rows["theirs_cold"], rows["ours_warm"]
print(f"\ncold: llm-convert {o['wall_s']:.1f} s {o['peak_rss_mb']} MB; llm_convert.py {t['wall_s']:.1f} s "
      f"{t['peak_rss_mb']} MB; wall ratio {o['wall_s'] / t['wall_s']:.2f}x, memory ratio "
      f"{o['peak_rss_mb'] / t['peak_rss_mb']:.2f}x")
f = rows["full_cold"]
print(f"cold, --compile-once=false: {f['wall_s']:.1f} s {f['peak_rss_mb']} MB; wall ratio {f['wall_s'] / t['wall_s']:.2f}x, "
      f"memory ratio {f['peak_rss_mb'] / t['peak_rss_mb']:.2f}x")
print(f"unchanged rerun: {w['wall_s']:.2f} s = {w['wall_s'] / o['wall_s']:.1%} of cold")
p = m["pieces"]
t = m["timings"]
print(f"llm-convert cold: export {t['export_s']:.1f} s, compile {t['compile_s']:.1f} s on {t['workers']} "
      f"workers, combine {t['combine_s']:.1f} s; {len(p)} pieces")
for kind in ("embedding", "embedding_cache", "lm_head", "block", "block_cache"):
    xs = [x for x in p if x["kind"] == kind]
    if xs:
        print(f"  {kind:<16} x{len(xs):<3} deploy {sum(x['deploy_s'] or 0 for x in xs) / len(xs):.2f} s per piece")
PYEOF
