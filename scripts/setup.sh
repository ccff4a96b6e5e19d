#!/usr/bin/env bash
# Builds llm-convert (release) and provisions everything it needs on a fresh machine:
# Debian packages, a Python 3.10 venv with TPU-MLIR 1.30.2, and the bundled models.
# Idempotent: a second run only rebuilds what changed and returns quickly.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
cargo build --release --locked
target/release/llm-convert toolchain install
