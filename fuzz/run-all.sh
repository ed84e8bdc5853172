#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 600), one after another, starting from the
# committed seeds; the growing corpus goes to $FUZZ_WORK (default ~/.cache/creme/fuzz-corpus).
# Needs the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz). A crash stops that
# target: its input is saved under fuzz/artifacts/<target>/; copy it to fuzz/regressions/<target>/
# so that tests/tests/fuzz_corpus.rs replays it on every test run.
set -uo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
work=${FUZZ_WORK:-$HOME/.cache/creme/fuzz-corpus}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/creme/target-fuzz}
for t in gguf tokenizer_gguf safetensors dataset; do
  mkdir -p "$work/$t"
  echo "=== $t ($secs s)"
  cargo +nightly fuzz run "$t" "$work/$t" "corpus/$t" -- \
    -max_total_time="$secs" -malloc_limit_mb=1024 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 2>&1 \
    | grep -E "^(stat::|#[0-9]+ *DONE|==[0-9]+==|SUMMARY|Done|.*panicked|.*Test unit written)" 
  echo "=== $t exit ${PIPESTATUS[0]}"
done
