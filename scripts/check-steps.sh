# shellcheck shell=bash
# Sourced by the scripts that check what an admin installs
# (scripts/package-test.sh, scripts/image-test.sh), after setting
# `check_name`: `step` announces a step, `ok` counts a passed check, `fail`
# ends the script with the reason.

: "${check_name:?set check_name before sourcing check-steps.sh}"
step() { echo "=== $check_name: $* ($(date -u +%H:%M:%S))" >&2; }
fail() {
    echo "$check_name: FAILED: $*" >&2
    exit 1
}
checks=0
ok() {
    checks=$((checks + 1))
    echo "$check_name: ok: $*" >&2
}
