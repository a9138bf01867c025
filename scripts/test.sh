#!/usr/bin/env bash
# Runs the whole test suite against a throwaway PostgreSQL server:
#
#   scripts/test.sh [EXTRA CARGO TEST ARGS...]     e.g. scripts/test.sh -- --nocapture
#
# Starts a server (scripts/pg-throwaway.sh) in a temporary directory, exports
# its base URL as SYNAPSE_TEST_PG, builds every binary (the integration tests
# run them from target/), runs `cargo test --workspace`, then, if that passed,
# the Python modules' tests (scripts/python-test.sh), and stops the server on
# exit. Exits non-zero if any step failed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

pgdir="$(mktemp -d "${TMPDIR:-/tmp}/synapse-test-pg.XXXXXX")"
trap 'bash "$root/scripts/pg-throwaway.sh" stop "$pgdir" || true' EXIT

SYNAPSE_TEST_PG="$(bash "$root/scripts/pg-throwaway.sh" start "$pgdir")"
export SYNAPSE_TEST_PG
echo "test.sh: PostgreSQL at $SYNAPSE_TEST_PG (data in $pgdir)" >&2

status=0
cargo build --workspace --bins || status=$?
if [ "$status" -eq 0 ]; then
    cargo test --workspace "$@" || status=$?
fi
if [ "$status" -eq 0 ]; then
    bash "$root/scripts/python-test.sh" || status=$?
fi
exit "$status"
