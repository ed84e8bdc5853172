#!/usr/bin/env bash
# The whole test suite (the README's test command; CI's .ci/run calls it):
#   setup (installs what is missing) -> native tests on lavapipe (Vulkan) and llvmpipe (GL)
#   -> the real-model tests -> the wasm32 build -> the headless-Chromium WebGPU tests.
# Build outputs go to per-compiler target dirs in the cache, outside the clone.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CREME_CACHE_DIR="${CREME_CACHE_DIR:-$HOME/.cache/creme}"
export CARGO_TARGET_DIR="$CREME_CACHE_DIR/target-native"
export CREME_REQUIRE_GL=1          # the GL backend exists here: do not let its test skip
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
t0=$(date +%s)
step() { echo; echo "=== $* ($(( $(date +%s) - t0 )) s)"; }

step setup
scripts/setup.sh

step "native build and tests (lavapipe Vulkan + llvmpipe GL)"
cargo build --workspace --exclude creme-web
cargo test --workspace --exclude creme-web 2>&1 | grep -v "XDG_RUNTIME_DIR"
test "${PIPESTATUS[0]}" = 0

if [ "${CREME_SLOW:-0}" = 1 ]; then
  step "slow tests (CREME_SLOW=1): the real Qwen model on lavapipe, 24 HumanEval tasks"
  cargo test --workspace --exclude creme-web -- --ignored --test-threads=1 2>&1 | grep -v "XDG_RUNTIME_DIR"
  test "${PIPESTATUS[0]}" = 0
fi

step "wasm32 build"
scripts/build-web.sh >/dev/null

step "browser tests (Chromium, WebGPU on SwiftShader)"
(cd web && CREME_BIN="$CARGO_TARGET_DIR/debug/creme" node tests/browser.mjs)
step "browser tests: verdicts in the page (Pyodide)"
(cd web && CREME_BIN="$CARGO_TARGET_DIR/debug/creme" node tests/verdicts.mjs)

step "all tests passed"
