#!/usr/bin/env bash
# creme against its peer, llama.cpp, on the same GGUF, the same threads, the same protocol
# (llama-bench's: ppN = one prompt of N tokens, logits of the last row only; tgN = N greedy
# tokens from an empty context at batch 1), interleaved run by run, median of R runs each.
#   scripts/bench-peers.sh [--model M.gguf] [--threads T] [--reps R] [--backend cpu|vulkan]
#                          [--pp 150,512] [--tg 128]
# --backend vulkan compares creme's wgpu backend on the first Vulkan adapter (lavapipe here) with
# llama.cpp's own Vulkan backend on the same device (default tests then pp150 and tg32: lavapipe
# is slow). llama-bench is built once per flavour from the source the llama-cpp-python sdist on
# PyPI vendors, into $CREME_CACHE_DIR/llama.cpp (recipe: ../shared/toolchain.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CREME_CACHE_DIR="${CREME_CACHE_DIR:-$HOME/.cache/creme}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CREME_CACHE_DIR/target-native}"
model="$CREME_CACHE_DIR/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
threads=$(nproc)
reps=5
backend=cpu
pp=""
tg=""
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --reps) reps="$2"; shift 2 ;;
    --backend) backend="$2"; shift 2 ;;
    --pp) pp="$2"; shift 2 ;;
    --tg) tg="$2"; shift 2 ;;
    *) echo "usage: $0 [--model M.gguf] [--threads T] [--reps R] [--backend cpu|vulkan] [--pp N,..] [--tg N]" >&2; exit 2 ;;
  esac
done
[ -f "$model" ] || scripts/fetch-models.sh qwen
case "$backend" in
  cpu) flavour=cpu; pp=${pp:-150,512}; tg=${tg:-128}; ngl=() ;;
  vulkan) flavour=vulkan; pp=${pp:-150}; tg=${tg:-32}; ngl=(-ngl 99)
    # llama.cpp skips CPU Vulkan devices (lavapipe) unless they are named visible.
    export GGML_VK_VISIBLE_DEVICES="${GGML_VK_VISIBLE_DEVICES:-0}" ;;
  *) echo "bench-peers: --backend must be cpu or vulkan" >&2; exit 2 ;;
esac

# llama-bench, built once per flavour (scripts/lib/llama-cpp.sh).
. scripts/lib/llama-cpp.sh
llama_build "$flavour" llama-bench
lbench="$LLAMA_BIN"

cargo build --release -q -p creme-cli
creme="$CARGO_TARGET_DIR/release/creme"
out=$(mktemp -d)
for r in $(seq 1 "$reps"); do
  echo "run $r/$reps" >&2
  "$lbench" -m "$model" -p "$pp" -n "$tg" "${ngl[@]}" -t "$threads" -r 1 -o json > "$out/llama-$r.json" 2>"$out/llama-$r.err" \
    || { tail -20 "$out/llama-$r.err" >&2; exit 1; }
  "$creme" bench --backend "$backend" --model "$model" --threads "$threads" --prefill "$pp" --prefill-batch 0 \
    --decode "" --tg "$tg" --trace false --humaneval 0 --json > "$out/creme-$r.json"
done
python3 - "$out" "$reps" "$threads" "$flavour" "$pp" "$tg" <<'PY'
import json, statistics, sys, glob
out, reps, threads, flavour = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
keys = [f"pp{n}" for n in sys.argv[5].split(",")] + [f"tg{n}" for n in sys.argv[6].split(",")]
llama, creme, device = {}, {}, ""
for r in range(1, reps + 1):
    for row in json.load(open(f"{out}/llama-{r}.json")):
        key = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
        llama.setdefault(key, []).append(row["avg_ts"])
    c = json.load(open(f"{out}/creme-{r}.json"))
    device = c["device"]
    for p in c["prefill"]:
        creme.setdefault(f"pp{p['tokens']}", []).append(p["tok_per_s"])
    for t in c["tg"]:
        creme.setdefault(f"tg{t['tokens']}", []).append(t["tok_per_s"])
llama_device = flavour if flavour == "cpu" else f"{flavour}, same device"
print(f"creme ({device}) vs llama.cpp {llama_device}, {threads} threads, median of {reps} interleaved runs (tok/s)\n")
print("| test | llama.cpp | creme | creme / llama.cpp |\n|---|---:|---:|---:|")
for key in keys:
    l, c = statistics.median(llama[key]), statistics.median(creme[key])
    print(f"| {key} | {l:.1f} | {c:.1f} | {c / l:.2f}x |")
PY
rm -rf "$out"
