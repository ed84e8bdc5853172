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

# The real code model on this adapter: greedy completion of HumanEval/2 (the CREME demo builds on this).
data="${CREME_DATA_DIR:-$root/../shared}"
prompt=$(mktemp)
python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).readlines()[2])['prompt'], end='')" \
  "$data/datasets/humaneval-nlpert/HumanEval.jsonl" > "$prompt"
echo "--- HumanEval/2 prompt + Qwen2.5-Coder-0.5B greedy completion:"
cat "$prompt"
"$creme" generate --prompt-file "$prompt" --humaneval-stops --stream 2>&1
rm -f "$prompt"
