#!/usr/bin/env bash
# The main job: set up what the demo needs (the model, HumanEval, a GPU driver only where there
# is a GPU), show the backend it runs on and check its matmul there, then the CREME demo.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CREME_CACHE_DIR="${CREME_CACHE_DIR:-$HOME/.cache/creme}"
export CARGO_TARGET_DIR="$CREME_CACHE_DIR/target-native"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
scripts/setup.sh --demo
echo "demo: building creme (release)"
cargo build --release -q -p creme-cli
creme="$CARGO_TARGET_DIR/release/creme"
"$creme" info
"$creme" check-matmul

# The CREME demo on the real code model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M): a HumanEval task
# whose perturbed prompt (C3: keyboard typo + deleted character) breaks the model. Shows both
# completions and their test results, traces the layer (logprob restoration), edits its W_down,
# shows the completions after the edit, and writes a patch and an HTML report.
# HumanEval/88 (sort_array): in creme's own greedy baseline its clean prompt passes and the C3
# prompt fails (the typo makes the model swap the odd and even branches, a near-tie decision
# 58 tokens into the completion, past the paper's 32-token target). The demo uses the edit
# variant of docs/efficacy-dev.md: the target runs 8 tokens past that decision, the aligned
# trace (scored by the decision margin) picks the layer, and a ridge fit of the prompt rows
# after the typo moves them to the clean prompt's states (--rows prompt --solver ridge
# --ridge 100). On the released C3 prompt this makes the perturbed prompt pass and the clean
# one still pass (development result; the paper's settings repair none of the C3 pairs tried
# with these kernels). Without ../shared the perturbed prompt comes from creme's perturbator,
# and whether that prompt fails at all depends on the typo drawn; the demo then says what it saw.
# DEMO_TASK / DEMO_TYPE / DEMO_OUT / DEMO_EDIT_FLAGS override the defaults.
out="${DEMO_OUT:-$root/creme-demo}"
mkdir -p "$out"
# shellcheck disable=SC2086 # DEMO_EDIT_FLAGS is a list of flags
"$creme" edit --task "${DEMO_TASK:-HumanEval/88}" --type "${DEMO_TYPE:-C3}" \
  ${DEMO_EDIT_FLAGS:---rows prompt --solver ridge --ridge 100 --past-divergence 8} \
  --out "$out/patch.safetensors" --report "$out"
echo "open $out/report.html"
