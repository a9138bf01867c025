#!/usr/bin/env bash
# The benchmark: how fast the two tools compress generated Synapse-like data,
# compared with what PostgreSQL needs just to read and write the same rows.
#
#   scripts/bench.sh [--cold SIZES] [PRESET...]   # PRESET: 200k, 3m (default), 20m
#
# Builds the release binaries, starts a throwaway PostgreSQL
# (scripts/pg-throwaway.sh; fsync is off there, which the output says), tunes
# it for bulk work (shared_buffers, see BENCH_SHARED_BUFFERS below), and runs
# `target/release/bench` for the presets, which for each one generates the
# data set and then runs:
#
#   manual:  synapse_compress_state -p URL -r BIGGEST_ROOM -c
#   auto:    synapse_auto_compressor -p URL -c 500 -n ENOUGH_TO_FINISH --reader R
#   nightly: synapse_auto_compressor -p URL -c 500 -n 100 --reader R
#            (with --nightly: on a copy compressed to completion first, with
#            about 2% new groups appended; see docs/benchmark.md)
#
# once per reader R of --readers (default auto; rows named e.g. `auto pass`,
# `auto auto:pass` when the tool chose), each on a fresh copy of the data, and prints one table row per run (wall
# time, the tools' time per phase, peak RSS, rows before/after, rows/s, and
# the ratio to the honest I/O floor: read + delete + insert, see
# compressor_integration_tests/src/bin/bench/floor.rs). Stops the server on
# exit. The tools' logs and the table are kept in target/bench/.
#
# Cold mode (`--cold 256MiB,1GiB`, as root, with the cgroup v1 memory and
# blkio hierarchies mounted): the server runs in a memory group and a blkio
# group of its own, made here before it starts (so the postmaster and every
# backend are in them from their first read) and removed on exit. Each run
# is done once per size, each preceded by a server restart, `sync`, dropped
# caches and the group's memory capped at that size (page cache included);
# the table then adds the disk bytes and read operations the server did for
# the tool and for a cold floor (see compressor_integration_tests/src/bin/
# bench/cold.rs). shared_buffers defaults to 128MB there and work_mem is
# PostgreSQL's default 4MB, so the server's shared memory fits under the cap. Dropping caches slows everything else on the machine for a while.
#
# Time on 2 cores (after the build): 200k about 20 s, 3m about a minute, 20m
# about 10 minutes (4 of them generating and loading 20 million rows). Disk:
# the data set twice (its source and one copy): about 12 GB for 20m; three
# times with --nightly (its compressed copy).
#
# Environment: BENCH_SHARED_BUFFERS (default 512MB, 128MB cold), BENCH_ARGS (extra
# arguments for the bench binary, e.g. "--runs manual", "--samples 0",
# "--jobs 1,2,4" for one automatic run per worker count and reader,
# "--readers auto,pass,rooms" for one automatic run per reader, "--nightly"
# for the nightly case),
# PG_BIN (PostgreSQL's binaries), CARGO_TARGET_DIR.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}/release"

usage() {
    echo "usage: $0 [--cold SIZES] [200k|3m|20m]...   (SIZES e.g. 256MiB,1GiB)" >&2
    exit 2
}
cold=""
preset_args=()
while [ $# -gt 0 ]; do
    case "$1" in
    --cold)
        [ $# -ge 2 ] || usage
        cold="$2"
        shift 2
        ;;
    200k | 3m | 20m)
        preset_args+=(--preset "$1")
        shift
        ;;
    *) usage ;;
    esac
done
[ "${#preset_args[@]}" -gt 0 ] || preset_args=(--preset 3m)
cgroup=""
if [ -n "$cold" ]; then
    [ "$(id -u)" = 0 ] || {
        echo "bench: --cold needs root (cgroups, dropping caches)" >&2
        exit 2
    }
    for h in memory blkio; do
        [ -f "/sys/fs/cgroup/$h/cgroup.procs" ] || {
            echo "bench: --cold needs the cgroup v1 $h hierarchy at /sys/fs/cgroup/$h" >&2
            exit 2
        }
    done
    cgroup="synapse-bench-$$"
fi

echo "bench: building (release)" >&2
cargo build --release --workspace --bins

# shellcheck source=scripts/pg-throwaway.sh
source "$root/scripts/pg-throwaway.sh"

# As root the server runs as `postgres`, which must be able to enter it.
pgdir="$(mktemp -d "${TMPDIR:-/tmp}/synapse-bench-pg.XXXXXX")"
chmod 755 "$pgdir"
cleanup() {
    pg_throwaway_stop "$pgdir" || true
    if [ -n "$cgroup" ]; then
        # Empty once the server is stopped; its page cache moves to the parent.
        rmdir "/sys/fs/cgroup/memory/$cgroup" "/sys/fs/cgroup/blkio/$cgroup" 2>/dev/null || true
    fi
}
trap cleanup EXIT

base="$(pg_throwaway_start "$pgdir")"
_pgt_find_bin
restart=(_pgt_as_owner "$_pgt_bin/pg_ctl" -D "$pgdir/data" -l "$pgdir/server.log" -w -t 300 -m fast restart)
cold_args=()
if [ -n "$cold" ]; then
    mkdir "/sys/fs/cgroup/memory/$cgroup" "/sys/fs/cgroup/blkio/$cgroup"
    # The kernel counts a blkio group's reads only on disks with a throttle
    # rule: give the data's disk one too high to ever throttle.
    disk="$(findmnt -no MAJ:MIN -T "$pgdir" | tr -d ' ')"
    if [ -f "/sys/dev/block/$disk/partition" ]; then
        disk="$(cat "/sys/dev/block/$disk/../dev")"
    fi
    echo "$disk 1099511627776" >"/sys/fs/cgroup/blkio/$cgroup/blkio.throttle.read_bps_device"
    # Restarts the server from inside the groups: this shell joins them, so
    # the new postmaster and its backends start in them.
    cat >"$pgdir/restart-cold.sh" <<EOF
#!/bin/sh
set -e
echo \$\$ >/sys/fs/cgroup/memory/$cgroup/cgroup.procs
echo \$\$ >/sys/fs/cgroup/blkio/$cgroup/cgroup.procs
exec runuser -u postgres -- "$_pgt_bin/pg_ctl" -D "$pgdir/data" -l "$pgdir/server.log" -w -t 300 -m fast restart >/dev/null
EOF
    chmod 755 "$pgdir/restart-cold.sh"
    restart=("$pgdir/restart-cold.sh")
    cold_args=(--cold "$cold" --cgroup "$cgroup" --restart-server "$pgdir/restart-cold.sh")
fi
psql_admin() {
    "$_pgt_bin/psql" -X -q -v ON_ERROR_STOP=1 -d "$base/postgres" "$@" >/dev/null
}

# Bulk-friendly settings (on top of pg-throwaway's fsync=off and friends);
# shared_buffers needs a restart.
default_buffers=512MB
[ -z "$cold" ] || default_buffers=128MB
if [ -n "$cold" ]; then
    # PostgreSQL's default: with pg-throwaway's 32MB, a parallel hash's
    # shared memory alone can go over a 256 MiB cap (the kernel then kills
    # a backend, as seen on 20m).
    psql_admin -c "ALTER SYSTEM SET work_mem = '4MB'"
fi
psql_admin \
    -c "ALTER SYSTEM SET shared_buffers = '${BENCH_SHARED_BUFFERS:-$default_buffers}'" \
    -c "ALTER SYSTEM SET effective_cache_size = '4GB'" \
    -c "ALTER SYSTEM SET maintenance_work_mem = '512MB'" \
    -c "ALTER SYSTEM SET max_wal_size = '16GB'"
# (Cold: the first restart inside the groups, before the server reads data.)
"${restart[@]}" >/dev/null

logs="$root/target/bench"
mkdir -p "$logs"
stamp="$(date +%Y%m%d-%H%M%S)"
# shellcheck disable=SC2086 # BENCH_ARGS is a list of words
"$target/bench" --url "$base" "${preset_args[@]}" "${cold_args[@]}" --log-dir "$logs" ${BENCH_ARGS:-} |
    tee "$logs/results-$stamp.txt"
echo "bench: results in $logs/results-$stamp.txt, the tools' output beside it" >&2
