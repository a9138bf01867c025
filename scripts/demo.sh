#!/usr/bin/env bash
# The demo: compress one realistic, busy room and prove that every state
# group still has exactly the same state.
#
#   scripts/demo.sh
#
# Starts a throwaway PostgreSQL (scripts/pg-throwaway.sh), creates a database
# `demo` from Synapse's schema, fills it with the generator's `demo` preset
# (one room: 3,000 state groups, 2,000 members, a few forks and state
# resolutions, Synapse's 100-hop snapshots: about 50,000 rows), records every group's resolved state with
# Synapse's own query, runs
#
#   synapse_compress_state -p URL/demo -r ROOM -c
#
# (timed, with peak memory when /usr/bin/time is available), then reads every
# group's state again and compares. Stops the server on exit.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}/release"

echo "demo: building (release)" >&2
cargo build --release --workspace --bins

work="$(mktemp -d "${TMPDIR:-/tmp}/synapse-demo.XXXXXX")"
# Its own directory: as root the server runs as `postgres`, which cannot
# enter $work (mode 0700).
pgdir="$(mktemp -d "${TMPDIR:-/tmp}/synapse-demo-pg.XXXXXX")"
cleanup() {
    bash "$root/scripts/pg-throwaway.sh" stop "$pgdir" || true
    rm -rf "$work"
}
trap cleanup EXIT

base="$(bash "$root/scripts/pg-throwaway.sh" start "$pgdir")"
url="$base/demo"
psql -X -q -v ON_ERROR_STOP=1 -d "$base/postgres" \
    -c "CREATE DATABASE demo TEMPLATE synapse_template" >/dev/null

echo "demo: generating a busy room" >&2
# Scale it with DEMO_GROUPS / DEMO_MEMBERS / DEMO_SEED (e.g. DEMO_GROUPS=10000
# gives about 250,000 rows).
"$target/generate" --url "$url" --preset demo \
    --groups "${DEMO_GROUPS:-3000}" --members "${DEMO_MEMBERS:-2000}" --seed "${DEMO_SEED:-1}" |
    tee "$work/generated.txt"
room="$(awk -F'\t' '$1 == "room" { print $2; exit }' "$work/generated.txt")"
[ -n "$room" ] || { echo "demo: the generator reported no room" >&2; exit 1; }

rows_before="$(psql -X -A -t -d "$url" -c "SELECT count(*) FROM state_groups_state")"
echo "demo: recording every group's state (Synapse's query)" >&2
"$target/state-digest" --url "$url" --out "$work/before.digest"

echo "demo: compressing room $room" >&2
compress=("$target/synapse_compress_state" -p "$url" -r "$room" -c)
if [ -x /usr/bin/time ]; then
    /usr/bin/time -v -o "$work/time.txt" "${compress[@]}"
    wall="$(sed -n 's/^\s*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$work/time.txt")"
    rss="$(sed -n 's/^\s*Maximum resident set size (kbytes): //p' "$work/time.txt")"
    echo "demo: compressor wall time $wall (m:ss), max RSS $((rss / 1024)) MiB ($rss kB)"
else
    start="$(date +%s%N)"
    "${compress[@]}"
    end="$(date +%s%N)"
    echo "demo: compressor wall time $(((end - start) / 1000000)) ms (install GNU time for max RSS)"
fi
rows_after="$(psql -X -A -t -d "$url" -c "SELECT count(*) FROM state_groups_state")"
echo "demo: state_groups_state rows: $rows_before before, $rows_after after"

echo "demo: re-reading every group's state" >&2
if ! result="$("$target/state-digest" --url "$url" --compare "$work/before.digest")"; then
    echo "demo FAILED: state changed" >&2
    exit 1
fi
echo "demo OK: $result"
