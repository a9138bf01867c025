#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests and demos.
#
#   scripts/pg-throwaway.sh start DIR   # prints postgresql://postgres@127.0.0.1:PORT
#   scripts/pg-throwaway.sh stop DIR    # stops the server and deletes DIR
#
# Options after `start DIR` (for the TLS tests):
#   --ssl CERT KEY    serve TLS with this certificate (chain) and key (PEM)
#   --hostssl-only    accept TCP connections only over TLS (pg_hba.conf
#                     `hostssl`); the unix socket stays open (trust)
#   --set NAME=VALUE  a server setting of its own (e.g. max_connections=24),
#                     after the defaults below; may be repeated
#
# `start` creates a fresh cluster in DIR (trust auth, UTF8, C locale, no
# fsync: data is disposable), listening on 127.0.0.1 at a free port with its
# unix socket inside DIR, and a database `synapse_template` holding Synapse's
# state schema (compressor_integration_tests/sql/synapse_state_schema.sql),
# from which the tests clone their databases. It prints one line, the base
# URL without a database name, and also writes it to DIR/url.
#
# Run as root, the cluster is owned by and run as the `postgres` user (initdb
# refuses root). The PostgreSQL binaries are taken from $PG_BIN if set, else
# from the directory of `initdb` on PATH, else from the newest
# /usr/lib/postgresql/*/bin.
#
# The script can also be sourced (from any directory); it then only defines
# the functions `pg_throwaway_start DIR [OPTIONS]` and `pg_throwaway_stop DIR`.

_pgt_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_pgt_schema="$_pgt_here/../compressor_integration_tests/sql/synapse_state_schema.sql"

_pgt_err() {
    echo "pg-throwaway: $*" >&2
    return 1
}

# runuser (run as root) lives in /usr/sbin, which a bare environment such as
# cron's (PATH=/usr/bin:/bin) leaves out.
case ":$PATH:" in
*:/usr/sbin:*) ;;
*) PATH="$PATH:/usr/sbin:/sbin" ;;
esac

# Sets _pgt_bin to the directory holding initdb, pg_ctl and psql.
_pgt_find_bin() {
    local candidate
    if [ -n "${PG_BIN:-}" ]; then
        _pgt_bin="$PG_BIN"
    elif candidate="$(command -v initdb 2>/dev/null)" && [ -n "$candidate" ]; then
        _pgt_bin="$(dirname "$(readlink -f "$candidate")")"
    else
        candidate="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
        [ -n "$candidate" ] || _pgt_err "no PostgreSQL server binaries found (install postgresql, or set PG_BIN)" || return 1
        _pgt_bin="$candidate"
    fi
    local tool
    for tool in initdb pg_ctl psql; do
        [ -x "$_pgt_bin/$tool" ] || _pgt_err "$_pgt_bin/$tool is missing (set PG_BIN to the directory holding initdb, pg_ctl and psql)" || return 1
    done
}

# Runs a command as the cluster's owner: `postgres` when we are root.
_pgt_as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# True when nothing accepts connections on 127.0.0.1:$1.
_pgt_port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pg_throwaway_start() {
    local dir="${1:-}"
    [ -n "$dir" ] || _pgt_err "usage: pg-throwaway.sh start DIR [--ssl CERT KEY] [--hostssl-only] [--set NAME=VALUE]..." || return 1
    shift
    local ssl_cert="" ssl_key="" hostssl_only="" settings=""
    while [ $# -gt 0 ]; do
        case "$1" in
        --ssl)
            [ $# -ge 3 ] || _pgt_err "--ssl needs a certificate and a key file" || return 1
            ssl_cert="$2"
            ssl_key="$3"
            [ -r "$ssl_cert" ] && [ -r "$ssl_key" ] || _pgt_err "cannot read $ssl_cert or $ssl_key" || return 1
            shift 3
            ;;
        --hostssl-only)
            hostssl_only=1
            shift
            ;;
        --set)
            [ $# -ge 2 ] && [[ "$2" == ?*=* ]] || _pgt_err "--set needs NAME=VALUE" || return 1
            settings+="${2%%=*} = '${2#*=}'"$'\n'
            shift 2
            ;;
        *)
            _pgt_err "unknown option: $1"
            return 1
            ;;
        esac
    done
    [ -z "$hostssl_only" ] || [ -n "$ssl_cert" ] || _pgt_err "--hostssl-only needs --ssl" || return 1
    _pgt_find_bin || return 1
    [ -f "$_pgt_schema" ] || _pgt_err "schema file not found: $_pgt_schema" || return 1

    mkdir -p "$dir" || return 1
    dir="$(cd "$dir" && pwd)" || return 1
    [ ! -e "$dir/data" ] || _pgt_err "$dir already holds a cluster" || return 1
    : >"$dir/.pg-throwaway" || return 1
    if [ "$(id -u)" = 0 ]; then
        id -u postgres >/dev/null 2>&1 || _pgt_err "running as root needs a 'postgres' user to own the cluster" || return 1
        command -v runuser >/dev/null 2>&1 || _pgt_err "running as root needs runuser (util-linux) to run PostgreSQL as 'postgres'" || return 1
        chown -R postgres: "$dir" || return 1
        runuser -u postgres -- test -w "$dir" ||
            _pgt_err "the postgres user cannot enter $dir (a parent directory is private?); use a directory under /tmp" ||
            return 1
    fi

    if ! _pgt_as_owner "$_pgt_bin/initdb" -D "$dir/data" -U postgres -E UTF8 --locale=C \
        -A trust --no-sync >"$dir/initdb.log" 2>&1; then
        cat "$dir/initdb.log" >&2
        _pgt_err "initdb failed (is $dir readable by the postgres user?)"
        return 1
    fi
    _pgt_as_owner mkdir "$dir/sock" || return 1

    # Disposable data: trade durability for speed.
    cat >>"$dir/data/postgresql.conf" <<EOF

# --- pg-throwaway.sh ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir/sock'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
wal_level = minimal
max_wal_senders = 0
max_wal_size = 4GB
checkpoint_timeout = 1h
shared_buffers = 128MB
work_mem = 32MB
maintenance_work_mem = 128MB
jit = off
log_min_messages = warning
log_min_error_statement = panic
$settings
EOF

    if [ -n "$ssl_cert" ]; then
        install -m 0644 "$ssl_cert" "$dir/data/server.crt" || return 1
        install -m 0600 "$ssl_key" "$dir/data/server.key" || return 1
        if [ "$(id -u)" = 0 ]; then
            chown postgres: "$dir/data/server.crt" "$dir/data/server.key" || return 1
        fi
        cat >>"$dir/data/postgresql.conf" <<EOF
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
EOF
    fi
    if [ -n "$hostssl_only" ]; then
        cat >"$dir/data/pg_hba.conf" <<EOF
# pg-throwaway.sh --hostssl-only: TCP only over TLS, the socket as usual.
local   all all               trust
hostssl all all 127.0.0.1/32  trust
hostssl all all ::1/128       trust
EOF
    fi

    local attempt port="" started=""
    for attempt in $(seq 1 30); do
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
        _pgt_port_free "$port" || continue
        if _pgt_as_owner "$_pgt_bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 120 \
            -o "-p $port" start >"$dir/pg_ctl.log" 2>&1; then
            started=1
            break
        fi
        # Someone took the port between the check and the start: try another.
        if grep -q "could not bind\|Address already in use" "$dir/server.log" 2>/dev/null; then
            continue
        fi
        cat "$dir/pg_ctl.log" "$dir/server.log" >&2 2>/dev/null
        _pgt_err "the server did not start"
        return 1
    done
    [ -n "$started" ] || _pgt_err "found no free port to listen on" || return 1

    local url="postgresql://postgres@127.0.0.1:$port"
    if ! "$_pgt_bin/psql" -X -q -v ON_ERROR_STOP=1 -d "$url/postgres" \
        -c "CREATE DATABASE synapse_template ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0" \
        >/dev/null 2>"$dir/schema.log" ||
        ! "$_pgt_bin/psql" -X -q -v ON_ERROR_STOP=1 -d "$url/synapse_template" -f "$_pgt_schema" \
            >/dev/null 2>>"$dir/schema.log"; then
        cat "$dir/schema.log" >&2
        _pgt_as_owner "$_pgt_bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1
        _pgt_err "could not create the synapse_template database"
        return 1
    fi

    echo "$url" >"$dir/url"
    echo "$url"
}

pg_throwaway_stop() {
    local dir="${1:-}"
    [ -n "$dir" ] || _pgt_err "usage: pg-throwaway.sh stop DIR" || return 1
    [ -d "$dir" ] || return 0
    [ -e "$dir/.pg-throwaway" ] || _pgt_err "$dir was not made by pg-throwaway.sh; not deleting it" || return 1
    if [ -f "$dir/data/postmaster.pid" ]; then
        _pgt_find_bin || return 1
        _pgt_as_owner "$_pgt_bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null 2>&1 ||
            _pgt_err "pg_ctl stop failed for $dir/data (deleting it anyway)"
    fi
    rm -rf "$dir"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    case "${1:-}" in
    start)
        shift
        pg_throwaway_start "$@"
        ;;
    stop) pg_throwaway_stop "${2:-}" ;;
    *)
        echo "usage: $0 start DIR [--ssl CERT KEY] [--hostssl-only] | stop DIR" >&2
        exit 2
        ;;
    esac
fi
