#!/usr/bin/env bash
# Tests the Python modules against a PostgreSQL server:
#
#   SYNAPSE_TEST_PG=postgresql://postgres@127.0.0.1:PORT scripts/python-test.sh
#
# (scripts/test.sh runs this after the Rust tests, with its throwaway server.)
# Makes a throwaway virtualenv, installs maturin from PyPI into it, builds and
# installs both modules with `maturin develop` (debug builds, in
# target/python so their feature set does not fight the normal build's), and
# runs python_tests/ with unittest (python_tests/run.py). The tests create and
# drop their own databases and use the binaries `generate` and `state-digest`,
# which this script builds with the rest of the workspace's binaries.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [ -z "${SYNAPSE_TEST_PG:-}" ]; then
    echo "python-test.sh: set SYNAPSE_TEST_PG to a server's base URL (or run scripts/test.sh)" >&2
    exit 2
fi
python="${PYTHON:-python3}"
if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
    echo "python-test.sh: $python cannot make virtualenvs (on Debian: apt-get install python3-venv)" >&2
    exit 2
fi

# The tests run the workspace's binaries from the normal target directory.
cargo build --workspace --bins --quiet
export SYNAPSE_TEST_BIN_DIR="${CARGO_TARGET_DIR:-$root/target}/debug"

work="$(mktemp -d "${TMPDIR:-/tmp}/synapse-python-test.XXXXXX")"
trap 'rm -rf "$work"' EXIT
"$python" -m venv "$work/venv"
# shellcheck disable=SC1091 # created just above
source "$work/venv/bin/activate"
pip install --quiet --disable-pip-version-check 'maturin>=1.9.4,<2'

export CARGO_TARGET_DIR="$root/target/python"
for dir in . synapse_auto_compressor; do
    (cd "$dir" && maturin develop --quiet)
done

python python_tests/run.py
