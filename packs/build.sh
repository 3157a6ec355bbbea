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

# --- Core-module packs (RFC 0008 ABI v1, hand-written WAT) ------------------
# WAT -> wasm through sandbox/examples/wat2wasm.rs (the `wat` crate): needs
# only cargo, no wabt and no wasm target.
build_wat() {
  local wat="$1" wasm="$2"
  "$WAT2WASM" "$wat" "$wasm"
}
(
  cd ..
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
  cargo build -q -p wopbox-sandbox --example wat2wasm
)
WAT2WASM="${CARGO_TARGET_DIR:-$(cd .. && pwd)/target}/debug/examples/wat2wasm"
build_wat greet/greet.wat                    greet/greet.wasm
build_wat rust-hello/rust-hello.wat          rust-hello/rust-hello.wasm
build_wat misbehaving-memory/memory-bomb.wat misbehaving-memory/memory-bomb.wasm
build_wat misbehaving-abi/abi-bomb.wat       misbehaving-abi/abi-bomb.wasm

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
  if ! (cd "$dir" && CARGO_TARGET_DIR=target cargo build --release --locked --target wasm32-wasip2); then
    echo "FAILED to build ${dir} (see cargo output above); keeping the committed ${artifact}" >&2
    return 1
  fi
  cp "$dir/target/wasm32-wasip2/release/${artifact}" "$dir/${artifact}"
  echo "  -> packs/${dir}/${artifact} ($(wc -c <"$dir/${artifact}") bytes)"
}

build_component files-component files_component.wasm
build_component http-component http_component.wasm
