#!/usr/bin/env bash
# The whole test suite (the README's test command; CI's .ci/run calls it):
#   no machine paths -> setup (installs what is missing) -> native tests on lavapipe (Vulkan)
#   and llvmpipe (GL) -> the real-model tests -> the wasm32 build -> the headless-Chromium
#   WebGPU tests.
# Build outputs go to per-compiler target dirs in the cache, outside the clone.
# Tests that read the reference data (../shared, or $CREME_DATA_DIR) skip where it is missing
# and are listed at the end; under CI (CI=true), where the data is always present, they fail.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CREME_CACHE_DIR="${CREME_CACHE_DIR:-$HOME/.cache/creme}"
export CARGO_TARGET_DIR="$CREME_CACHE_DIR/target-native"
export CREME_REQUIRE_GL=1          # the GL backend exists here: do not let its test skip
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
t0=$(date +%s)
step() { echo; echo "=== $* ($(( $(date +%s) - t0 )) s)"; }

# The tests that could not run for want of the reference data (creme_tests::require_shared
# appends to this list), said at the end however the script ends.
shared=$(realpath -m "${CREME_DATA_DIR:-$root/../shared}")
mkdir -p "$CARGO_TARGET_DIR"
export CREME_SKIP_LIST="$CARGO_TARGET_DIR/skipped-tests.txt"
: >"$CREME_SKIP_LIST"
skip() { echo "SKIPPED $1: needs $2" >&2; echo "$1" >>"$CREME_SKIP_LIST"; }
skipped() {
  [ -s "$CREME_SKIP_LIST" ] || return 0
  echo
  echo "=== could not run $(sort -u "$CREME_SKIP_LIST" | wc -l) test(s): no reference data in $shared"
  sort -u "$CREME_SKIP_LIST" | sed 's/^/  /'
  echo "put the data at ../shared beside the repository, or set CREME_DATA_DIR to where it is"
}
trap skipped EXIT
# Where the data must be there (CI=true, or CREME_REQUIRE_SHARED=1), a test that misses it fails
# instead (the same rule as creme_tests::require_shared).
required() { [[ "${CI:-}" =~ ^(true|1)$ || "${CREME_REQUIRE_SHARED:-}" = 1 ]]; }
if required && [ ! -d "$shared" ]; then
  echo "the reference data is missing ($shared): under CI the tests that need it fail"
fi

step "no machine paths in the repository"
scripts/check-paths.sh

step setup
scripts/setup.sh

step "native build and tests (lavapipe Vulkan + llvmpipe GL)"
cargo build --workspace --exclude creme-web
scripts/check-paths.sh --binary "$CARGO_TARGET_DIR/debug/creme"
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
if [ -f "$shared/datasets/humaneval-nlpert/HumanEval.jsonl" ] || required; then
  (cd web && CREME_BIN="$CARGO_TARGET_DIR/debug/creme" node tests/verdicts.mjs)
else
  skip web/tests/verdicts.mjs "$shared/datasets/humaneval-nlpert"
fi

if [ -s "$CREME_SKIP_LIST" ]; then
  if required; then
    step "FAILED: tests were skipped where the reference data is required"
    exit 1
  fi
  step "all tests passed but the ones listed below"
else
  step "all tests passed"
fi
