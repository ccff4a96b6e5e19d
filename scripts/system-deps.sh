#!/usr/bin/env bash
# Installs the Debian packages llm-convert needs before cargo can even build it (bindgen needs
# libclang at build time), when they are missing. The list is APT_PACKAGES in
# src/toolchain/install.rs, the installer's own list, so there is one source of truth.
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=$(sed -n 's/^pub const APT_PACKAGES: &\[&str\] = &\[\(.*\)\];/\1/p' src/toolchain/install.rs | tr -d '",')
if [ -z "$pkgs" ]; then
  echo "system-deps.sh: cannot read APT_PACKAGES from src/toolchain/install.rs" >&2
  exit 1
fi
missing=()
for p in $pkgs; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -ne 0 ] && sudo=sudo
echo "installing Debian packages: ${missing[*]}" >&2
$sudo apt-get update -q
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
