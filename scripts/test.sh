#!/usr/bin/env bash
# The whole test suite: what the README's second command and .ci/run both run.
set -euo pipefail
cd "$(dirname "$0")/.."
# The storage tests run on SQLite and on a throwaway PostgreSQL cluster (scripts/pg.sh, which
# installs the server when it is missing); the trap stops the cluster however the tests end.
# WOPBOX_TEST_PG_URL may point at an existing server instead.
source scripts/pg.sh
if [ -z "${WOPBOX_TEST_PG_URL:-}" ]; then
    trap pg_stop EXIT
    if ! pg_start; then
        # Under CI the Postgres tests then fail (they never skip there); elsewhere they skip.
        echo "scripts/test.sh: no PostgreSQL cluster; Postgres tests will skip (fail under CI=true)" >&2
    fi
fi
# --no-fail-fast: one failing test binary must not hide the results of the others.
cargo test --workspace --locked --no-fail-fast
