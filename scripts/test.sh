#!/usr/bin/env bash
# Runs the whole test suite against a throwaway PostgreSQL server:
#
#   scripts/test.sh [EXTRA CARGO TEST ARGS...]     e.g. scripts/test.sh -- --nocapture
#
# Starts a server (scripts/pg-throwaway.sh) in a temporary directory, exports
# its base URL as SYNAPSE_TEST_PG, builds every binary (the integration tests
# run them from target/; with fault injection compiled in), runs
# `cargo test --workspace`, then, if that passed,
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

# The binaries the integration tests run are built with fault injection
# (the library's `failpoint` module; empty in any other build), and the
# tests with the same features so cargo never rebuilds them without.
features=synapse_compress_state/failpoints,synapse_auto_compressor/failpoints
status=0
cargo build --workspace --bins --features "$features" || status=$?
if [ "$status" -eq 0 ]; then
    cargo test --workspace --features "$features" "$@" || status=$?
fi
if [ "$status" -eq 0 ]; then
    bash "$root/scripts/python-test.sh" || status=$?
fi
exit "$status"
