# Sourced, not run: builds one target of llama.cpp, the peer creme is checked against, once per
# flavour, from the source that the llama-cpp-python sdist on PyPI vendors (recipe:
# ../shared/toolchain.md). Used by scripts/bench-peers.sh (llama-bench) and scripts/llama-check.sh
# (llama-simple).
#
#   . scripts/lib/llama-cpp.sh
#   llama_build cpu llama-bench      # sets LLAMA_BIN to the built binary
#
# Layout: $CREME_CACHE_DIR/llama.cpp/<version>/{the sdist, its source, build-<flavour>/bin/<target>,
# build-<flavour>.log}. A target already built is reused as is; another target reuses the same
# configured tree, so only its own files compile.

LLAMA_VERSION=0.3.36

# This CPU's SIMD features, spelled out instead of -march=native: AMX stays off, because virtual
# machines (these ones among them) advertise AMX yet trap its tile instructions (SIGILL).
llama_cpu_flags() {
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
llama_patch_vulkan_layer_settings() {
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

# llama_build FLAVOUR TARGET: FLAVOUR is cpu or vulkan, TARGET a cmake target (llama-bench,
# llama-simple, ...). Sets LLAMA_BIN; on a failed step prints the log's tail and returns 1.
llama_build() {
  local flavour="$1" target="$2"
  local ldir="${CREME_CACHE_DIR:?CREME_CACHE_DIR is not set}/llama.cpp/$LLAMA_VERSION"
  local build="$ldir/build-$flavour" log="$ldir/build-$flavour.log"
  LLAMA_BIN="$build/bin/$target"
  [ -x "$LLAMA_BIN" ] && return 0
  echo "building $target of llama.cpp $LLAMA_VERSION ($flavour; once, several minutes)" >&2
  mkdir -p "$ldir"
  # The sdist's build backend is read to get its metadata, and it wants cmake >= 3.21.
  python3 -m pip show scikit-build-core >/dev/null 2>&1 || python3 -m pip install -q scikit-build-core
  command -v cmake >/dev/null || python3 -m pip install -q cmake
  local src="$ldir/llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp"
  if [ ! -d "$src" ]; then
    python3 -m pip download -q --no-deps --no-binary=:all: --no-build-isolation "llama-cpp-python==$LLAMA_VERSION" -d "$ldir"
    tar xzf "$ldir/llama_cpp_python-$LLAMA_VERSION.tar.gz" -C "$ldir"
  fi
  local extra=()
  if [ "$flavour" = vulkan ]; then
    command -v glslc >/dev/null && [ -f /usr/include/vulkan/vulkan.hpp ] && [ -d /usr/include/spirv ] || apt-get install -y -q glslc libvulkan-dev spirv-headers >&2
    llama_patch_vulkan_layer_settings "$src/ggml/src/ggml-vulkan/ggml-vulkan.cpp"
    extra=(-DGGML_VULKAN=ON)
  fi
  # Examples on: llama-simple is one. Configuring them adds targets only; nothing compiles that the
  # target asked for does not need, and reconfiguring an existing tree keeps what it built.
  # shellcheck disable=SC2046
  cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release $(llama_cpu_flags) "${extra[@]}" -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_APP=OFF > "$log" 2>&1 || { tail -20 "$log" >&2; return 1; }
  cmake --build "$build" --target "$target" -j"$(nproc)" >> "$log" 2>&1 || { tail -20 "$log" >&2; return 1; }
  [ -x "$LLAMA_BIN" ] || { echo "llama.cpp build finished without $LLAMA_BIN (see $log)" >&2; return 1; }
}
