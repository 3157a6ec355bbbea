#!/usr/bin/env bash
# Rebuild the committed pack binaries from their sources.
#
#   packs/build.sh            # everything that can be built here
#
# Each section is independent; a section whose toolchain is missing prints a
# clear "skipped" line and leaves the committed binary in place (the test
# suite only ever uses committed binaries or inline WAT, never this script).
set -euo pipefail
cd "$(dirname "$0")"

# --- Rust component packs (wasm32-wasip2, wit-bindgen against ../wit) -------
build_component() {
  local dir="$1" artifact="$2"
  if ! command -v cargo >/dev/null 2>&1; then
    echo "skipped ${dir}: cargo not found" >&2
    return 0
  fi
  if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    echo "skipped ${dir}: rust target wasm32-wasip2 is not installed (rustup target add wasm32-wasip2); keeping the committed ${artifact}" >&2
    return 0
  fi
  echo "building ${dir} (wasm32-wasip2)"
  # Own target dir inside the pack (gitignored); never the workspace's.
  (cd "$dir" && CARGO_TARGET_DIR=target cargo build --release --locked --target wasm32-wasip2)
  cp "$dir/target/wasm32-wasip2/release/${artifact}" "$dir/${artifact}"
  echo "  -> packs/${dir}/${artifact} ($(wc -c <"$dir/${artifact}") bytes)"
}

build_component files-component files_component.wasm
