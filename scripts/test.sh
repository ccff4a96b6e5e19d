#!/usr/bin/env bash
# Runs the whole test suite, provisioning included (this is what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages first: bindgen needs libclang to build the crate at all.
bash scripts/system-deps.sh
cargo build --locked
# One source of truth for provisioning: the tool's own installer.
target/debug/llm-convert toolchain install
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
# Simulator-backed tests must not run concurrently (the cmodel uses both cores).
cargo test --locked -- --test-threads=1
