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
# HumanEval/157: in creme's own greedy baseline its clean prompt passes, the C3 prompt fails, and
# the paper-settings edit of the traced layer (11) makes it pass while the clean prompt still
# passes (HumanEval/0, the oracle's example, already passes with C3 on creme's CPU backend).
# DEMO_TASK / DEMO_TYPE / DEMO_OUT override the defaults.
out="${DEMO_OUT:-$root/creme-demo}"
mkdir -p "$out"
"$creme" edit --task "${DEMO_TASK:-HumanEval/157}" --type "${DEMO_TYPE:-C3}" \
  --out "$out/patch.safetensors" --report "$out"
echo "open $out/report.html"
