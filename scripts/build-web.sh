#!/usr/bin/env bash
# Build creme-web for wasm32 with Debian's rustc-web (std rebuilt from source with build-std, since
# the rustup toolchain has no wasm32 target here), then run wasm-bindgen. Settings: wasm-pack.toml.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
CACHE="${CREME_CACHE_DIR:-$HOME/.cache/creme}"
read_setting() { python3 -c "import tomllib,sys; d=tomllib.load(open('wasm-pack.toml','rb')); v=d[sys.argv[1]][sys.argv[2]]; print(' '.join(v) if isinstance(v,list) else v)" "$1" "$2"; }
crate=$(read_setting build crate)
target=$(read_setting build target)
profile=$(read_setting build profile)
features=$(read_setting build features)
tdir="$CACHE/$(read_setting build target-dir)"
bg_version=$(read_setting bindgen version)
bg_target=$(read_setting bindgen target)
out_dir="$root/$(read_setting bindgen out-dir)"

pinned=$(grep -E '^wasm-bindgen = "=' Cargo.toml | sed -E 's/.*"=([^"]+)".*/\1/')
[ "$pinned" = "$bg_version" ] || { echo "error: wasm-pack.toml bindgen version $bg_version != Cargo.toml pin $pinned" >&2; exit 1; }
bindgen="${WASM_BINDGEN:-$(command -v wasm-bindgen || echo "$HOME/.cargo/bin/wasm-bindgen")}"
have=$("$bindgen" --version 2>/dev/null | awk '{print $2}' || true)
[ "$have" = "$bg_version" ] || { echo "error: wasm-bindgen CLI $bg_version needed (found '${have:-none}'); run scripts/setup.sh" >&2; exit 1; }

feat_args=()
[ -n "$features" ] && feat_args=(--features "$features")
echo "building $crate for $target ($profile) into $tdir"
env PATH="/usr/bin:$PATH" RUSTC_BOOTSTRAP=1 \
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld-19 \
  RUSTFLAGS="--cfg getrandom_backend=\"wasm_js\"" \
  /usr/bin/cargo build --profile "$profile" --target "$target" -Zbuild-std=std,panic_abort \
  --target-dir "$tdir" -p "$crate" "${feat_args[@]}"
wasm="$tdir/$target/$profile/${crate//-/_}.wasm"
mkdir -p "$out_dir"
"$bindgen" --target "$bg_target" --out-dir "$out_dir" "$wasm"
ls -la "$out_dir"
