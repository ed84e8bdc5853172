#!/usr/bin/env bash
# The main job: set up, then show the GPU and check the kernels on it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CREME_CACHE_DIR="${CREME_CACHE_DIR:-$HOME/.cache/creme}"
export CARGO_TARGET_DIR="$CREME_CACHE_DIR/target-native"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
scripts/setup.sh
cargo build --release -q -p creme-cli
creme="$CARGO_TARGET_DIR/release/creme"
"$creme" info
"$creme" check-matmul
