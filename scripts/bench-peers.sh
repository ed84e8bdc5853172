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

LLAMA_VERSION=0.3.36
ldir="$CREME_CACHE_DIR/llama.cpp/$LLAMA_VERSION"
lbench="$ldir/build-$flavour/bin/llama-bench"
# This CPU's SIMD features, spelled out instead of -march=native: AMX stays off, because virtual
# machines (these ones among them) advertise AMX yet trap its tile instructions (SIGILL).
cpu_flags() {
  local have f out=(-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
  have=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  for f in sse4_2:SSE42 avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx_vnni:AVX_VNNI avx512vbmi:AVX512_VBMI \
           avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
    case "$have" in *" ${f%%:*} "*) out+=("-DGGML_${f#*:}=ON") ;; *) out+=("-DGGML_${f#*:}=OFF") ;; esac
  done
  case "$have" in *" avx512f "*" avx512bw "*) out+=(-DGGML_AVX512=ON) ;; *) out+=(-DGGML_AVX512=OFF) ;; esac
  echo "${out[@]}"
}
# Debian 12's Vulkan headers (1.3.239) lack vk::LayerSettingEXT, which llama.cpp uses only to
# configure the validation layer at instance creation; create the instance without that list.
patch_vulkan_layer_settings() {
  python3 - "$1" <<'PY'
import re, sys
path = sys.argv[1]
src = open(path).read()
if "vk::LayerSettingsCreateInfoEXT layer_setting_info" not in src:
    sys.exit(0)
src = re.sub(r"\n    VkBool32 enable_best_practice = layer_settings;.*?vk::LayerSettingsCreateInfoEXT layer_setting_info\(settings\);",
             "", src, count=1, flags=re.S)
src = src.replace("layers, extensions, &layer_setting_info);", "layers, extensions);", 1)
open(path, "w").write(src)
PY
}
if [ ! -x "$lbench" ]; then
  echo "building llama-bench $LLAMA_VERSION (once, several minutes)" >&2
  mkdir -p "$ldir"
  python3 -m pip show scikit-build-core >/dev/null 2>&1 || python3 -m pip install -q scikit-build-core
  command -v cmake >/dev/null || python3 -m pip install -q cmake
  src="$ldir/llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp"
  if [ ! -d "$src" ]; then
    python3 -m pip download -q --no-deps --no-binary=:all: --no-build-isolation "llama-cpp-python==$LLAMA_VERSION" -d "$ldir"
    tar xzf "$ldir/llama_cpp_python-$LLAMA_VERSION.tar.gz" -C "$ldir"
  fi
  extra=()
  if [ "$flavour" = vulkan ]; then
    command -v glslc >/dev/null && [ -f /usr/include/vulkan/vulkan.hpp ] && [ -d /usr/include/spirv ] || apt-get install -y -q glslc libvulkan-dev spirv-headers >&2
    patch_vulkan_layer_settings "$src/ggml/src/ggml-vulkan/ggml-vulkan.cpp"
    extra=(-DGGML_VULKAN=ON)
  fi
  log="$ldir/build-$flavour.log"
  # shellcheck disable=SC2046
  cmake -S "$src" -B "$ldir/build-$flavour" -DCMAKE_BUILD_TYPE=Release $(cpu_flags) "${extra[@]}" -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_APP=OFF > "$log" 2>&1 || { tail -20 "$log" >&2; exit 1; }
  cmake --build "$ldir/build-$flavour" --target llama-bench -j"$(nproc)" >> "$log" 2>&1 || { tail -20 "$log" >&2; exit 1; }
fi

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
