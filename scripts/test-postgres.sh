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

# A port nothing listens on (pure bash: no python needed).
free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    say "no free port found"
    exit 1
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
    if [[ "$(id -u)" == 0 ]]; then chown "$PG_USER_OS" "$PGDIR"; fi
    if [[ ! -f "$DATA/PG_VERSION" ]]; then
        say "creating cluster in $DATA"
        as_owner "$BIN/initdb" -D "$DATA" -U postgres -A trust -E UTF8 --no-sync >&2
    fi
}

start_cluster() {
    local port
    port="$(free_port)"
    echo "$port" >"$PGDIR/port"
    if [[ "$(id -u)" == 0 ]]; then chown "$PG_USER_OS" "$PGDIR/port"; fi
    say "starting on 127.0.0.1:$port"
    as_owner "$BIN/pg_ctl" -D "$DATA" -l "$PGDIR/server.log" -w -t 60 start -o \
        "-h 127.0.0.1 -p $port -k '' -c fsync=off -c synchronous_commit=off \
         -c full_page_writes=off -c max_connections=200" >&2
}

# As root the cluster belongs to the postgres user, who must be able to reach it; a checkout
# under a private home (e.g. /root) gets its cluster under /tmp instead.
pick_dir() {
    if [[ -z "${PULID_BOT_PG_DIR:-}" && "$(id -u)" == 0 ]] &&
        ! runuser -u "$PG_USER_OS" -- test -x "$ROOT" 2>/dev/null; then
        PGDIR="/tmp/pulid-bot-pg-$(echo "$ROOT" | md5sum | cut -c1-8)"
        DATA="$PGDIR/data"
    fi
}

BIN="$(find_bindir || true)"
if [[ -z "$BIN" ]]; then
    install_postgres
    BIN="$(find_bindir)"
fi

if [[ "$(id -u)" == 0 ]] && ! id "$PG_USER_OS" >/dev/null 2>&1; then
    useradd --system --no-create-home "$PG_USER_OS"
fi
pick_dir

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
