#!/usr/bin/env bash
# Start (or reuse) a throwaway PostgreSQL cluster for the storage tests.
#
#   eval "$(scripts/test-postgres.sh)"        # exports PULID_BOT_TEST_PG_URL
#   scripts/test-postgres.sh --stop           # stops the cluster
#
# Installs Debian's postgresql when initdb/pg_ctl are missing (needs root). The cluster lives in
# ./.tmp/pg (or $PULID_BOT_PG_DIR), listens on 127.0.0.1 on a free port, trusts local logins and
# runs without fsync: it is for tests only. Everything but the export lines goes to stderr.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGDIR="${PULID_BOT_PG_DIR:-$ROOT/.tmp/pg}"
DATA="$PGDIR/data"
PG_USER_OS="postgres"

say() { echo "test-postgres: $*" >&2; }

find_bindir() {
    if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v pg_ctl)")"
        return
    fi
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    [[ -n "$dir" && -x "$dir/initdb" ]] && echo "$dir"
}

install_postgres() {
    if [[ "$(id -u)" != 0 ]]; then
        say "initdb/pg_ctl not found and not root: install postgresql first"
        exit 1
    fi
    say "installing postgresql with apt-get"
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql >&2
}

# Run a command as the cluster's owner (initdb refuses root).
as_owner() {
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u "$PG_USER_OS" -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

print_exports() {
    local port
    port="$(cat "$PGDIR/port")"
    echo "export PULID_BOT_TEST_PG_URL=postgresql+asyncpg://postgres@127.0.0.1:${port}/postgres"
}

is_running() {
    [[ -f "$PGDIR/port" && -d "$DATA" ]] && as_owner "$BIN/pg_ctl" status -D "$DATA" >/dev/null 2>&1
}

init_cluster() {
    mkdir -p "$PGDIR"
    if [[ "$(id -u)" == 0 ]]; then
        id "$PG_USER_OS" >/dev/null 2>&1 || useradd --system --no-create-home "$PG_USER_OS"
        chown "$PG_USER_OS" "$PGDIR"
    fi
    if [[ ! -f "$DATA/PG_VERSION" ]]; then
        say "creating cluster in $DATA"
        as_owner "$BIN/initdb" -D "$DATA" -U postgres -A trust -E UTF8 --no-sync >&2
    fi
}

start_cluster() {
    local port
    port="$(free_port)"
    echo "$port" >"$PGDIR/port"
    mkdir -p "$PGDIR/sock"
    [[ "$(id -u)" == 0 ]] && chown "$PG_USER_OS" "$PGDIR/sock" "$PGDIR/port"
    say "starting on 127.0.0.1:$port"
    as_owner "$BIN/pg_ctl" -D "$DATA" -l "$PGDIR/server.log" -w -t 60 start -o \
        "-h 127.0.0.1 -p $port -k $PGDIR/sock -c fsync=off -c synchronous_commit=off \
         -c full_page_writes=off -c max_connections=200" >&2
}

BIN="$(find_bindir || true)"
if [[ -z "$BIN" ]]; then
    install_postgres
    BIN="$(find_bindir)"
fi

if [[ "${1:-}" == "--stop" ]]; then
    if is_running; then as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >&2; fi
    exit 0
fi

if is_running; then
    say "reusing the cluster in $DATA"
else
    init_cluster
    start_cluster
fi
print_exports
