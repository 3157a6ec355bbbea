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

# --- Rust packs: wasm32-wasip2 components (wit-bindgen against ../wit) and ---
# --- wasm32-unknown-unknown RFC 0008 core modules (wopbox-pdk) --------------
build_rust() {
  local dir="$1" artifact="$2" target="$3"
  if ! command -v cargo >/dev/null 2>&1; then
    echo "skipped ${dir}: cargo not found" >&2
    return 0
  fi
  if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    echo "skipped ${dir}: rust target ${target} is not installed (rustup target add ${target}); keeping the committed ${artifact}" >&2
    return 0
  fi
  echo "building ${dir} (${target})"
  # Own target dir inside the pack (gitignored); never the workspace's.
  if ! (cd "$dir" && CARGO_TARGET_DIR=target cargo build --release --locked --target "$target"); then
    echo "FAILED to build ${dir} (see cargo output above); keeping the committed ${artifact}" >&2
    return 1
  fi
  cp "$dir/target/${target}/release/${artifact}" "$dir/${artifact}"
  echo "  -> packs/${dir}/${artifact} ($(wc -c <"$dir/${artifact}") bytes)"
}

build_rust files-component files_component.wasm wasm32-wasip2
build_rust http-component http_component.wasm wasm32-wasip2
build_rust examples/rust-text rust_text.wasm wasm32-unknown-unknown

# --- Python and JavaScript component packs -----------------------------------
# componentize-py (PyPI) and componentize-js (npm) are taken from PATH, else
# from packs/.toolchain/ (gitignored), which WOPBOX_FETCH_TOOLCHAINS=1 fills
# with the pinned versions below. A componentized pack is several MiB:
# rebuilding changes its bytes, so commit a rebuilt one only when its source
# changed (each such binary is committed once per change, never "refreshed").
COMPONENTIZE_PY_VERSION=0.25.1
COMPONENTIZE_JS_VERSION=0.23.0
TOOLCHAIN="$PWD/.toolchain"
WIT="$(cd .. && pwd)/wit"

find_tool() {
  local name="$1" local_path="$2"
  if command -v "$name" >/dev/null 2>&1; then
    command -v "$name"
  elif [ -x "$local_path" ]; then
    echo "$local_path"
  fi
}

fetch_python_tool() {
  [ "${WOPBOX_FETCH_TOOLCHAINS:-0}" = 1 ] || return 0
  echo "installing componentize-py ${COMPONENTIZE_PY_VERSION} into packs/.toolchain/.venv" >&2
  python3 -m venv "$TOOLCHAIN/.venv" &&
    "$TOOLCHAIN/.venv/bin/pip" install -q "componentize-py==${COMPONENTIZE_PY_VERSION}" >&2 ||
    echo "could not install componentize-py" >&2
}

fetch_js_tool() {
  [ "${WOPBOX_FETCH_TOOLCHAINS:-0}" = 1 ] || return 0
  echo "installing componentize-js ${COMPONENTIZE_JS_VERSION} into packs/.toolchain" >&2
  mkdir -p "$TOOLCHAIN" &&
    (cd "$TOOLCHAIN" && npm install -s --no-audit --no-fund --no-save \
      "@bytecodealliance/componentize-js@${COMPONENTIZE_JS_VERSION}" >&2) ||
    echo "could not install componentize-js" >&2
}

# build_python DIR MODULE ARTIFACT: componentize-py against ../wit, every WASI
# import stubbed (--stub-wasi) so the pack needs no grant.
build_python() {
  local dir="$1" module="$2" artifact="$3" tool
  tool="$(find_tool componentize-py "$TOOLCHAIN/.venv/bin/componentize-py")"
  if [ -z "$tool" ]; then
    fetch_python_tool
    tool="$(find_tool componentize-py "$TOOLCHAIN/.venv/bin/componentize-py")"
  fi
  if [ -z "$tool" ]; then
    echo "skipped ${dir}: componentize-py not found (pip install componentize-py==${COMPONENTIZE_PY_VERSION}, or WOPBOX_FETCH_TOOLCHAINS=1); keeping the committed ${artifact}" >&2
    return 0
  fi
  echo "building ${dir} (componentize-py)"
  if ! (cd "$dir" && "$tool" -d "$WIT" -w node-pack componentize "$module" -o "${artifact%.wasm}.new.wasm" --stub-wasi); then
    echo "FAILED to build ${dir}; keeping the committed ${artifact}" >&2
    return 1
  fi
  mv "$dir/${artifact%.wasm}.new.wasm" "$dir/$artifact"
  echo "  -> packs/${dir}/${artifact} ($(wc -c <"$dir/${artifact}") bytes)"
}

# build_js DIR SOURCE ARTIFACT: componentize-js against ../wit with the
# engine features that would import wasi:filesystem / wasi:http disabled.
build_js() {
  local dir="$1" source="$2" artifact="$3" tool
  tool="$(find_tool componentize-js "$TOOLCHAIN/node_modules/.bin/componentize-js")"
  if [ -z "$tool" ]; then
    fetch_js_tool
    tool="$(find_tool componentize-js "$TOOLCHAIN/node_modules/.bin/componentize-js")"
  fi
  if [ -z "$tool" ]; then
    echo "skipped ${dir}: componentize-js not found (npm install @bytecodealliance/componentize-js@${COMPONENTIZE_JS_VERSION}, or WOPBOX_FETCH_TOOLCHAINS=1); keeping the committed ${artifact}" >&2
    return 0
  fi
  echo "building ${dir} (componentize-js)"
  if ! (cd "$dir" && "$tool" "$source" --wit "$WIT" --world-name node-pack -d stdio http fetch-event -o "${artifact%.wasm}.new.wasm"); then
    echo "FAILED to build ${dir}; keeping the committed ${artifact}" >&2
    return 1
  fi
  mv "$dir/${artifact%.wasm}.new.wasm" "$dir/$artifact"
  echo "  -> packs/${dir}/${artifact} ($(wc -c <"$dir/${artifact}") bytes)"
}

build_python examples/python-stats app pystats.wasm
build_js examples/js-render app.js jsrender.wasm
