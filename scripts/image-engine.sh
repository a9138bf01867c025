# shellcheck shell=bash
# Sourced by scripts/image.sh and scripts/image-test.sh: sets `engine`, the
# command that builds and runs containers, and the settings it needs.
#
# IMAGE_ENGINE chooses it (`podman` or `docker`, with any global options,
# e.g. "podman --storage-driver vfs"); by default podman when it is on PATH,
# else docker. For podman, two settings that any machine accepts and some
# need (this project's CI machine among them):
#
# - `--runtime runc` when runc is installed: crun, podman's default, refuses
#   hosts with hybrid cgroups;
# - unless CONTAINERS_CONF names a file already, a containers.conf with
#   `default_ulimits = []`, so containers keep podman's own limits instead of
#   setting ones such a host refuses ("error setting rlimits").

image_engine_setup() {
    if [ -n "${IMAGE_ENGINE:-}" ]; then
        # shellcheck disable=SC2206 # words on purpose: a command and options
        engine=($IMAGE_ENGINE)
    elif command -v podman >/dev/null 2>&1; then
        engine=(podman)
    elif command -v docker >/dev/null 2>&1; then
        engine=(docker)
    else
        echo "image: neither podman nor docker is installed (apt install podman runc)" >&2
        return 1
    fi
    command -v "${engine[0]}" >/dev/null 2>&1 ||
        { echo "image: ${engine[0]} is not installed" >&2 && return 1; }
    if [ "$(basename "${engine[0]}")" = podman ]; then
        if command -v runc >/dev/null 2>&1 && [[ " ${engine[*]} " != *" --runtime "* ]]; then
            engine+=(--runtime runc)
        fi
        if [ -z "${CONTAINERS_CONF:-}" ]; then
            local conf="${TMPDIR:-/tmp}/synapse-compress-state-containers.conf"
            printf '[containers]\ndefault_ulimits = []\n' >"$conf"
            export CONTAINERS_CONF="$conf"
        fi
    fi
}

# True when the image $1 is in the local store.
image_exists() {
    "${engine[@]}" image inspect "$1" >/dev/null 2>&1
}
