#!/usr/bin/env bash
# The whole test suite: what the README's second command and .ci/run both run.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked
