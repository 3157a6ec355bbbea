#!/usr/bin/env bash
# The whole test suite: what the README's second command and .ci/run both run.
set -euo pipefail
cd "$(dirname "$0")/.."
# --no-fail-fast: one failing test binary must not hide the results of the others.
cargo test --workspace --locked --no-fail-fast
