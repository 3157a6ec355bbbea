#!/usr/bin/env bash
# Rerunnable benchmarks (docs/performance.md). Loopback only.
#
#   bash scripts/bench.sh                # wopbox scenarios, each 3x, JSON lines on stdout
#   bash scripts/bench.sh postgres       # load: SQLite vs Postgres with 1 and 2 processes
#                                        # (throwaway cluster from scripts/pg.sh)
#   PYHOST=/tmp/pyhost/examples/hosts/python bash scripts/bench.sh python
#                                        # the same generator against the Python reference host
#
# Env: REPEAT (3), CONCURRENCY (32), DURATION (10), FIXTURES (conformance fixtures dir).
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT=${REPEAT:-3}
CONCURRENCY=${CONCURRENCY:-32}
DURATION=${DURATION:-10}
FIXTURES=${FIXTURES:-/work/shared/conformance-fixtures}
cargo build --release -p wopbox >&2
BIN=${CARGO_TARGET_DIR:-target}/release/wopbox
what=${1:-wopbox}

case "$what" in
  wopbox)
    for i in $(seq "$REPEAT"); do
      $BIN bench --scenario load --concurrency "$CONCURRENCY" --duration "$DURATION"
    done
    for i in $(seq "$REPEAT"); do $BIN bench --scenario memory; done
    for i in $(seq "$REPEAT"); do $BIN bench --scenario replay; done
    $BIN bench --scenario flood --concurrency "$CONCURRENCY" --duration "$DURATION"
    $BIN bench --scenario subworkflows --fanout-runs "$REPEAT"
    $BIN bench --scenario scale --concurrency "$CONCURRENCY" --duration "$DURATION"
    ;;
  postgres)
    source scripts/pg.sh
    trap pg_stop EXIT
    pg_start
    for i in $(seq "$REPEAT"); do
      $BIN bench --scenario load --concurrency "$CONCURRENCY" --duration "$DURATION"
      $BIN bench --scenario load --concurrency "$CONCURRENCY" --duration "$DURATION" \
        --database "$WOPBOX_TEST_PG_URL" --processes 1
      $BIN bench --scenario load --concurrency "$CONCURRENCY" --duration "$DURATION" \
        --database "$WOPBOX_TEST_PG_URL" --processes 2
      $BIN bench --scenario load --concurrency "$CONCURRENCY" --duration "$DURATION" \
        --database "$WOPBOX_TEST_PG_URL" --processes 2 --cross-process-wait
    done
    $BIN bench --scenario subworkflows --fanout-runs "$REPEAT" --database "$WOPBOX_TEST_PG_URL"
    ;;
  python)
    : "${PYHOST:?set PYHOST to examples/hosts/python of an openwop-examples checkout}"
    PORT=${PORT:-3737}
    OPENWOP_HOST=127.0.0.1 OPENWOP_PORT=$PORT OPENWOP_FIXTURES_DIR="$FIXTURES" \
      PYTHONPATH="$PYHOST/src" python3 -m openwop_host >/tmp/bench-pyhost.log 2>&1 &
    PY=$!
    trap 'kill $PY 2>/dev/null || true' EXIT
    for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/.well-known/openwop" >/dev/null && break; sleep 0.2; done
    for i in $(seq "$REPEAT"); do
      $BIN bench --scenario load --url "http://127.0.0.1:$PORT" --api-key openwop-inmem-dev-key \
        --workflow conformance-noop --concurrency "$CONCURRENCY" --duration "$DURATION"
    done
    ;;
  *) echo "usage: $0 [wopbox|postgres|python]" >&2; exit 2 ;;
esac
