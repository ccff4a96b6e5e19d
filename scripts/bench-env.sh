# Sourced by the bench-convert scripts: builds llm-convert (release), provisions the toolchain
# and sets BIN, PY, SITE, TPUC_ROOT and tpu_env (the environment TPU-MLIR's own llm_convert.py
# needs; llm-convert sets it for its own children).
bash scripts/system-deps.sh
cargo build --release --locked -q
BIN=target/release/llm-convert
$BIN toolchain install >/dev/null
PY=$($BIN toolchain show | sed -n 's/.*"python": "\(.*\)".*/\1/p')
SITE=$($BIN toolchain show | sed -n 's/.*"site_packages": "\(.*\)".*/\1/p')
TPUC_ROOT="$SITE/tpu_mlir"
tpu_env=(env "TPUC_ROOT=$TPUC_ROOT"
  "PATH=$(dirname "$PY"):$TPUC_ROOT/bin:$TPUC_ROOT/python/tools:$PATH"
  "LD_LIBRARY_PATH=$TPUC_ROOT/lib:$TPUC_ROOT/lib/capi:$TPUC_ROOT/lib/third_party"
  "PYTHONPATH=$SITE:$TPUC_ROOT:$TPUC_ROOT/python:$TPUC_ROOT/python/tools:$TPUC_ROOT/python/utils")
measure() { "$PY" scripts/measure.py "$@"; }
