#!/usr/bin/env bash
# The benchmark: how fast the two tools compress generated Synapse-like data,
# compared with what PostgreSQL needs just to read and write the same rows.
#
#   scripts/bench.sh [PRESET...]     # PRESET: 200k, 3m (default), 20m
#
# Builds the release binaries, starts a throwaway PostgreSQL
# (scripts/pg-throwaway.sh; fsync is off there, which the output says), tunes
# it for bulk work (shared_buffers, see BENCH_SHARED_BUFFERS below), and runs
# `target/release/bench` for the presets, which for each one generates the
# data set and then runs:
#
#   manual: synapse_compress_state -p URL -r BIGGEST_ROOM -c
#   auto:   synapse_auto_compressor -p URL -c 500 -n ENOUGH_TO_FINISH
#
# each on a fresh copy of the data, and prints one table row per run (wall
# time, the tools' time per phase, peak RSS, rows before/after, rows/s, and
# the ratio to the honest I/O floor: read + delete + insert, see
# compressor_integration_tests/src/bin/bench/floor.rs). Stops the server on
# exit. The tools' logs and the table are kept in target/bench/.
#
# Time on 2 cores (after the build): 200k about 20 s, 3m about a minute, 20m
# about 10 minutes (4 of them generating and loading 20 million rows). Disk:
# the data set twice (its source and one copy): about 12 GB for 20m.
#
# Environment: BENCH_SHARED_BUFFERS (default 512MB), BENCH_ARGS (extra
# arguments for the bench binary, e.g. "--runs manual", "--samples 0", or
# "--jobs 1,2,4" for one automatic run per worker count),
# PG_BIN (PostgreSQL's binaries), CARGO_TARGET_DIR.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}/release"

presets=("$@")
[ "${#presets[@]}" -gt 0 ] || presets=(3m)
preset_args=()
for p in "${presets[@]}"; do
    case "$p" in
    200k | 3m | 20m) preset_args+=(--preset "$p") ;;
    *)
        echo "usage: $0 [200k|3m|20m]..." >&2
        exit 2
        ;;
    esac
done

echo "bench: building (release)" >&2
cargo build --release --workspace --bins

# shellcheck source=scripts/pg-throwaway.sh
source "$root/scripts/pg-throwaway.sh"

# As root the server runs as `postgres`, which must be able to enter it.
pgdir="$(mktemp -d "${TMPDIR:-/tmp}/synapse-bench-pg.XXXXXX")"
chmod 755 "$pgdir"
cleanup() {
    pg_throwaway_stop "$pgdir" || true
}
trap cleanup EXIT

base="$(pg_throwaway_start "$pgdir")"
_pgt_find_bin
psql_admin() {
    "$_pgt_bin/psql" -X -q -v ON_ERROR_STOP=1 -d "$base/postgres" "$@" >/dev/null
}

# Bulk-friendly settings (on top of pg-throwaway's fsync=off and friends);
# shared_buffers needs a restart.
psql_admin \
    -c "ALTER SYSTEM SET shared_buffers = '${BENCH_SHARED_BUFFERS:-512MB}'" \
    -c "ALTER SYSTEM SET effective_cache_size = '4GB'" \
    -c "ALTER SYSTEM SET maintenance_work_mem = '512MB'" \
    -c "ALTER SYSTEM SET max_wal_size = '16GB'"
_pgt_as_owner "$_pgt_bin/pg_ctl" -D "$pgdir/data" -l "$pgdir/server.log" -w -t 120 \
    -m fast restart >/dev/null

logs="$root/target/bench"
mkdir -p "$logs"
stamp="$(date +%Y%m%d-%H%M%S)"
# shellcheck disable=SC2086 # BENCH_ARGS is a list of words
"$target/bench" --url "$base" "${preset_args[@]}" --log-dir "$logs" ${BENCH_ARGS:-} |
    tee "$logs/results-$stamp.txt"
echo "bench: results in $logs/results-$stamp.txt, the tools' output beside it" >&2
