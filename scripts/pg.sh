#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests and benchmarks.
#
#   source scripts/pg.sh && pg_start     # exports WOPBOX_TEST_PG_URL; pg_stop removes it again
#   bash scripts/pg.sh -- CMD ARGS...    # runs CMD with the cluster up, then stops it
#
# Installs Debian's `postgresql` package when no server binaries are found. The cluster lives
# in a temp dir, listens on a free loopback port only, trusts local connections (it holds test
# data for the lifetime of one command) and runs as the `postgres` OS user when started by
# root, because the server refuses to run as root. fsync is off: a crash of the machine loses
# a test cluster, nothing else.

pg_bindir() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
            echo "$d"
            return 0
        fi
    done
    return 1
}

pg_install() {
    pg_bindir >/dev/null && return 0
    echo "pg.sh: PostgreSQL server not found; installing Debian's postgresql package" >&2
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    pg_bindir >/dev/null
}

# Run a server binary as the cluster's OS user.
_pg_as() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u "$_PG_USER" -- "$@"
    else
        "$@"
    fi
}

pg_start() {
    pg_install || { echo "pg.sh: cannot install PostgreSQL" >&2; return 1; }
    local bin
    bin="$(pg_bindir)"
    _PG_USER="$(id -un)"
    if [ "$(id -u)" -eq 0 ]; then
        _PG_USER=postgres
        id -u postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    fi
    _PG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/wopbox-pg.XXXXXX")"
    chown "$_PG_USER" "$_PG_DIR"
    local port
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    _pg_as "$bin/initdb" -D "$_PG_DIR/data" -U wopbox -A trust -E UTF8 --locale=C.UTF-8 --no-sync >"$_PG_DIR/initdb.log" 2>&1 \
        || { cat "$_PG_DIR/initdb.log" >&2; return 1; }
    _pg_as "$bin/pg_ctl" -D "$_PG_DIR/data" -l "$_PG_DIR/server.log" -w -t 60 \
        -o "-p $port -c listen_addresses=127.0.0.1 -k $_PG_DIR -c fsync=off -c max_connections=300" start >/dev/null \
        || { cat "$_PG_DIR/server.log" >&2; return 1; }
    _PG_BIN="$bin"
    export WOPBOX_TEST_PG_URL="postgres://wopbox@127.0.0.1:$port/postgres"
    echo "pg.sh: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') at $WOPBOX_TEST_PG_URL" >&2
}

pg_stop() {
    if [ -n "${_PG_DIR:-}" ] && [ -d "$_PG_DIR/data" ]; then
        _pg_as "$_PG_BIN/pg_ctl" -D "$_PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
        rm -rf "$_PG_DIR"
    fi
    _PG_DIR=""
    unset WOPBOX_TEST_PG_URL
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    [ "${1:-}" = "--" ] && shift
    [ $# -gt 0 ] || { echo "usage: bash scripts/pg.sh -- CMD ARGS..." >&2; exit 2; }
    trap pg_stop EXIT
    pg_start
    "$@"
fi
