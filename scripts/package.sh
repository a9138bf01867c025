#!/usr/bin/env bash
# Builds the Debian package of both tools:
#
#   scripts/package.sh        # prints the path of the .deb (in target/debian/)
#
# Builds both binaries in release mode, writes their man pages and shell
# completions from the clap definitions (packaging/docgen, so they always
# match --help) into target/release/packaging, then runs `cargo deb
# --no-build`, whose settings are [package.metadata.deb] in Cargo.toml.
# Needs cargo-deb, the version below (`cargo install cargo-deb --version
# 3.8.0 --locked`, as the README says); debug symbols are stripped from the
# packaged binaries.
set -euo pipefail

# The cargo-deb the package is built and tested with (scripts/package-test.sh
# installs this one).
cargo_deb_version=3.8.0

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if ! cargo deb --version >/dev/null 2>&1; then
    echo "package.sh: cargo-deb is missing; install it with: cargo install cargo-deb --version $cargo_deb_version --locked" >&2
    exit 2
fi

target="${CARGO_TARGET_DIR:-$root/target}"
generated="$target/release/packaging"
# One cargo invocation for the binaries and the generator, so they share one
# feature resolution and the library is compiled once.
cargo build --release --locked -p synapse_compress_state -p synapse_auto_compressor \
    -p synapse_compress_docgen --bins
rm -rf "$generated"
"$target/release/synapse_compress_docgen" "$generated"
# Debian ships man pages compressed; -n keeps the timestamp out.
gzip -9n "$generated"/man/*.1

cargo deb --no-build --strip -p synapse_compress_state --output "$target/debian/" --quiet |
    tail -n 1
