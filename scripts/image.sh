#!/usr/bin/env bash
# Builds the container image of both tools (the Containerfile) and prints
# its name as the last line:
#
#   scripts/image.sh            # e.g. synapse-compress-state:0.1.0-1a2b3c4
#
# Steps: builds both binaries in release mode (the same cargo command as
# scripts/package.sh, so one build serves both), copies them stripped to
# target/image/, builds the Containerfile with the version, commit and
# source as labels, and checks that both binaries start inside the image
# (a binary built on a host with a newer glibc than bookworm's would not).
#
# The base image, debian:bookworm-slim, is used from the local store, else
# pulled; when no registry answers, a stand-in of the same name is made from
# the Debian archive (mmdebstrap, or debootstrap: bookworm, minbase, without
# documentation and locales, as the slim image is) and imported. The image
# built on it then carries the label
# org.synapse-compress-state.base=stand-in.
#
# Environment: IMAGE_ENGINE (see scripts/image-engine.sh), IMAGE_NAME (the
# name to give instead of synapse-compress-state:VERSION-COMMIT),
# DEBIAN_MIRROR (for the stand-in; http://deb.debian.org/debian).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/image-engine.sh
. scripts/image-engine.sh
image_engine_setup

base=docker.io/library/debian:bookworm-slim
say() { echo "image: $*" >&2; }

# --- the binaries -------------------------------------------------------------
target="${CARGO_TARGET_DIR:-$root/target}"
cargo build --release --locked -p synapse_compress_state -p synapse_auto_compressor \
    -p synapse_compress_docgen --bins
mkdir -p target/image
for tool in synapse_auto_compressor synapse_compress_state; do
    strip --strip-unneeded -o "target/image/$tool" "$target/release/$tool"
done

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
tag="$version"
label_version="$version"
if [ "$revision" != unknown ]; then
    tag="$version-$(git rev-parse --short HEAD)"
    label_version="$version (git $(git rev-parse --short HEAD))"
fi
name="${IMAGE_NAME:-synapse-compress-state:$tag}"
source="$(git config --get remote.origin.url 2>/dev/null || true)"

# --- the base image -----------------------------------------------------------
standin() {
    local mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}" work
    work="$(mktemp -d "${TMPDIR:-/tmp}/image-base.XXXXXX")"
    # shellcheck disable=SC2064 # expand now: the directory of this call
    trap "rm -rf '$work'" RETURN
    # What debian:bookworm-slim leaves out.
    local slim=('/usr/share/doc/*' '/usr/share/man/*' '/usr/share/info/*' '/usr/share/locale/*'
        '/usr/share/lintian/*' '/usr/share/linda/*')
    if command -v mmdebstrap >/dev/null 2>&1; then
        local opts=() path
        for path in "${slim[@]}"; do opts+=("--dpkgopt=path-exclude=$path"); done
        opts+=("--dpkgopt=path-include=/usr/share/doc/*/copyright")
        # Once more if the archive failed it (a download cut short).
        mmdebstrap --variant=minbase --quiet "${opts[@]}" bookworm "$work/rootfs.tar" "$mirror" >&2 ||
            mmdebstrap --variant=minbase --quiet "${opts[@]}" bookworm "$work/rootfs.tar" "$mirror" >&2
    elif command -v debootstrap >/dev/null 2>&1; then
        debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >&2
        rm -rf "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/cache/apt/"*.bin
        # shellcheck disable=SC2086 # the globs are for the root filesystem
        local path
        for path in "${slim[@]}"; do
            # shellcheck disable=SC2086 # the glob, inside the root filesystem
            rm -rf "$work/rootfs"$path
        done
        mkdir -p "$work/rootfs/usr/share/doc"
        tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
    else
        say "no registry answered and neither mmdebstrap nor debootstrap is installed to make a stand-in"
        return 1
    fi
    "${engine[@]}" import --change 'CMD ["bash"]' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'LABEL org.synapse-compress-state.base=stand-in' \
        "$work/rootfs.tar" "$base" >/dev/null
}

if image_exists "$base"; then
    :
elif timeout 120 "${engine[@]}" pull "$base" >&2; then
    :
else
    say "no registry answered: making a stand-in $base from the Debian archive"
    start=$SECONDS
    standin
    say "stand-in base made in $((SECONDS - start)) s"
fi

# --- the image ----------------------------------------------------------------
# --network host: the build's apt-get needs the network, and a host whose
# container networking is not set up still gives it that way.
"${engine[@]}" build --network host -f Containerfile \
    --build-arg VERSION="$label_version" --build-arg REVISION="$revision" \
    --build-arg SOURCE="$source" -t "$name" . >&2

for tool in synapse_auto_compressor synapse_compress_state; do
    if ! out="$("${engine[@]}" run --rm --network none --read-only --cap-drop=ALL \
        "$name" "/usr/local/bin/$tool" --version 2>&1)"; then
        say "$tool does not start in the image: $out"
        say "(build the binaries on Debian bookworm: a newer glibc or libssl than the image's is missing there)"
        exit 1
    fi
done
echo "$name"
