#!/usr/bin/env bash
# Tests the container image as admins run it.
#
#   scripts/image-test.sh        (as root: podman's store and the throwaway
#                                 PostgreSQL's files are root's)
#
# Run by .ci/run after the package checks. Without podman (or IMAGE_ENGINE)
# it skips, or fails when CI=true. Steps, each failing the script on a wrong
# result:
#
# 1. builds the image with scripts/image.sh (a stand-in base when no
#    registry answers), prints its layers and size;
# 2. both tools' --version inside it name the checkout's commit, --help
#    works, the labels carry the commit, the default user is not root;
# 3. against a throwaway PostgreSQL holding a generated database, where the
#    test role must give a password (scram), every run inside the container
#    with --user 65534:65534 --cap-drop=ALL --read-only --network host, the
#    connection from PG* variables and a password file mounted at
#    /run/secrets/pgpass:
#    - the file with mode 0644, then owned by root: one line saying why it
#      was ignored, and a failed run;
#    - a first run held at its first write (a psql session locks the tables
#      it writes): a second container exits 75; `podman stop` on the first,
#      once released, exits 143, `podman kill -s INT` on a third 130;
#    - a run to completion with --json: exit 0, the JSON object on stdout,
#      rows saved, every group's state as before (Synapse's query);
#    - the playbook's command shape, `-p "host=... user=... password=...
#      dbname=..."`, on a copy of the database: exit 0, state unchanged;
#    - the manual tool's `-o - | psql` and `-c` give the same rows and edges.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

check_name="image-test"
# shellcheck source=scripts/check-steps.sh
. scripts/check-steps.sh

# shellcheck source=scripts/image-engine.sh
. scripts/image-engine.sh
if ! image_engine_setup 2>/dev/null; then
    [ "${CI:-}" = true ] && fail "podman is missing (apt install podman runc mmdebstrap)"
    echo "image-test: skipped: podman is not installed" >&2
    exit 0
fi
[ "$(id -u)" = 0 ] || fail "run as root"

work="$(mktemp -d "${TMPDIR:-/tmp}/image-test.XXXXXX")"
chmod 755 "$work"
pgdir="$work/pg"
containers=()
holder=""
cleanup() {
    local c
    for c in "${containers[@]}"; do
        "${engine[@]}" rm -f "$c" >/dev/null 2>&1 || true
    done
    [ -z "$holder" ] || kill "$holder" 2>/dev/null || true
    bash "$root/scripts/pg-throwaway.sh" stop "$pgdir" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# --- 1. build ------------------------------------------------------------------
step "building the image"
start=$SECONDS
image="$(bash scripts/image.sh | tail -n 1)"
echo "image-test: built $image in $((SECONDS - start)) s" >&2
"${engine[@]}" history "$image" >&2
"${engine[@]}" image ls "$image" >&2
ok "scripts/image.sh built $image"

# --- 2. the binaries, labels and user -------------------------------------------
step "--version, --help, labels"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
short="$(git rev-parse --short HEAD)"
for tool in synapse_auto_compressor synapse_compress_state; do
    said="$("${engine[@]}" run --rm --network none "$image" "/usr/local/bin/$tool" --version)"
    [ "$said" = "$tool $version (git $short)" ] || fail "$tool --version said '$said'; expected commit $short"
    # Read whole, then searched: `| grep -q` would close the pipe at the
    # first match, and podman fails on the broken pipe of a longer text.
    help="$("${engine[@]}" run --rm --network none "$image" "$tool" --help)" ||
        fail "$tool --help failed in the image"
    grep -q -- "--postgres-url" <<<"$help" || fail "$tool --help lacks --postgres-url"
    ok "$tool in the image: $said; --help"
done
label() { "${engine[@]}" image inspect --format "{{index .Config.Labels \"org.opencontainers.image.$1\"}}" "$image"; }
[ "$(label revision)" = "$(git rev-parse HEAD)" ] || fail "revision label: $(label revision)"
[ "$(label version)" = "$version (git $short)" ] || fail "version label: $(label version)"
[ "$(label licenses)" = Apache-2.0 ] || fail "licenses label: $(label licenses)"
ok "labels: version '$(label version)', revision $(label revision)"
uid="$("${engine[@]}" run --rm --network none "$image" id -u)"
[ "$uid" != 0 ] || fail "the image runs as root by default"
ok "default user: uid $uid"

# --- 3. against PostgreSQL ------------------------------------------------------
step "a database whose role needs a password"
url="$(bash scripts/pg-throwaway.sh start "$pgdir")"
port="${url##*:}"
su() { psql -X -q -v ON_ERROR_STOP=1 -d "$url/$1" "${@:2}"; }
su postgres -c "CREATE DATABASE image_test TEMPLATE synapse_template" >/dev/null
# The test binaries as scripts/package-test.sh builds them (already there).
if [ -z "${SYNAPSE_TEST_BIN_DIR:-}" ]; then
    cargo build --workspace --bins --quiet
fi
bin="${SYNAPSE_TEST_BIN_DIR:-${CARGO_TARGET_DIR:-$root/target}/debug}"
"$bin/generate" --url "$url/image_test" --preset demo --seed 7 >"$work/generated"
tail -n 1 "$work/generated" >&2
"$bin/state-digest" --url "$url/image_test" --out "$work/digest" >/dev/null
# Untouched copies for the playbook's command and the manual tool.
for db in image_playbook image_sql image_commit; do
    su postgres -c "CREATE DATABASE $db TEMPLATE image_test" >/dev/null
done
# The dedicated role of docs/privileges.md, the progress tables
# created by the owner (that page's block, as it stands).
password="c0ntainer-secret"
sed -n '/<!-- grants:owner-creates-tables -->/,/^```$/p' docs/privileges.md | sed '1,2d;$d' >"$work/grants.sql"
[ -s "$work/grants.sql" ] || fail "the grants block of docs/privileges.md is missing"
su postgres -c "CREATE ROLE synapse_compressor LOGIN PASSWORD '$password'" >/dev/null
for db in image_test image_playbook image_sql image_commit; do
    su "$db" -f "$work/grants.sql" >/dev/null
done
# The throwaway server trusts everyone: this role must give its password.
hba="$pgdir/data/pg_hba.conf"
{ echo "host all synapse_compressor 127.0.0.1/32 scram-sha-256" && cat "$hba"; } >"$work/hba"
cat "$work/hba" >"$hba"
su postgres -c "SELECT pg_reload_conf()" >/dev/null
if PGPASSWORD="" psql -X -w -d "postgresql://synapse_compressor@127.0.0.1:$port/image_test" -c "SELECT 1" >/dev/null 2>&1; then
    fail "the role connects without a password"
fi
ok "synapse_compressor needs its password (scram-sha-256)"

secrets="$work/secrets"
mkdir -m 755 "$secrets"
echo "127.0.0.1:$port:*:synapse_compressor:$password" >"$secrets/pgpass"
run=("${engine[@]}" run --network host --user 65534:65534 --cap-drop=ALL --read-only
    -v "$secrets/pgpass:/run/secrets/pgpass:ro" -e PGPASSFILE=/run/secrets/pgpass
    -e PGHOST=127.0.0.1 -e PGPORT="$port" -e PGUSER=synapse_compressor -e PGDATABASE=image_test)
auto=(/usr/local/bin/synapse_auto_compressor -n 1000 -c 100)

step "a password file the run may not use"
# shellcheck disable=SC2317 # called below
refused() { # mode owner expected-words
    chmod "$1" "$secrets/pgpass"
    chown "$2" "$secrets/pgpass"
    local status=0
    "${run[@]}" --rm "$image" "${auto[@]}" >/dev/null 2>"$work/refused.err" || status=$?
    [ "$status" = 1 ] || { cat "$work/refused.err" >&2 && fail "mode $1 owner $2: exit $status, expected 1"; }
    grep -q "ignoring password file \"/run/secrets/pgpass\": $3" "$work/refused.err" ||
        { cat "$work/refused.err" >&2 && fail "mode $1 owner $2: no line saying why the file was ignored"; }
    ok "password file mode $1, owner $2: $(grep -o 'ignoring password file.*' "$work/refused.err")"
}
refused 0644 65534:65534 "it has group or world access"
refused 0600 0:0 "this user may not read it (it belongs to uid 0, gid 0, mode 0600)"
chmod 0600 "$secrets/pgpass"
chown 65534:65534 "$secrets/pgpass"

# Holds the tables the automatic tool writes, so that a run waits at its
# first write (a psql session in a transaction, fed through a pipe).
hold() {
    mkfifo "$work/hold.in"
    psql -X -q -v ON_ERROR_STOP=1 -d "$url/image_test" <"$work/hold.in" >"$work/hold.out" 2>&1 &
    holder=$!
    exec 7>"$work/hold.in"
    printf '%s\n' "BEGIN; LOCK TABLE state_groups_state, state_compressor_state, state_compressor_progress IN SHARE MODE;" '\echo held' >&7
    until grep -qx held "$work/hold.out"; do
        kill -0 "$holder" 2>/dev/null || fail "the holding psql died: $(cat "$work/hold.out")"
        sleep 0.1
    done
}
release() {
    echo "COMMIT;" >&7
    exec 7>&-
    wait "$holder"
    holder=""
    rm -f "$work/hold.in" "$work/hold.out"
}
# Polls pg_locks until the automatic tool waits for a lock (bounded).
until_waiting() {
    local tries=0
    until [ "$(su postgres -At -c "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
            WHERE NOT l.granted AND a.application_name = 'synapse_auto_compressor'")" != 0 ]; do
        tries=$((tries + 1))
        [ "$tries" -lt 1200 ] || fail "$1 never waited for the held tables"
        kill -0 "$2" 2>/dev/null || fail "$1 ended before it waited for the held tables: $(cat "$work/$1.err")"
        sleep 0.1
    done
}
# Polls a container's stderr for a line (bounded).
until_logged() {
    local tries=0
    until grep -q "$2" "$work/$1.err"; do
        tries=$((tries + 1))
        [ "$tries" -lt 1200 ] || fail "$1 never logged '$2'"
        sleep 0.1
    done
}
# Runs the automatic tool in a named container in the background.
start_run() {
    containers+=("image-test-$1")
    "${run[@]}" --name "image-test-$1" "$image" "${auto[@]}" --json >"$work/$1.out" 2>"$work/$1.err" &
}
interrupted() {
    python3 -c 'import json, sys; d = json.loads(sys.stdin.read().strip().splitlines()[-1]); assert d["interrupted"] is True, d' <"$work/$1.out" ||
        fail "$1: no JSON object with \"interrupted\": true on stdout"
}

step "exit statuses: 75 while another run holds the lock, 143 on podman stop, 130 on SIGINT"
hold
start_run first
first=$!
until_waiting first "$first"
status=0
"${run[@]}" --rm "$image" "${auto[@]}" >/dev/null 2>"$work/second.err" || status=$?
[ "$status" = 75 ] || { cat "$work/second.err" >&2 && fail "the second container exited $status, expected 75"; }
grep -q "another synapse_auto_compressor holds advisory lock" "$work/second.err" ||
    fail "the second container did not say who holds the lock"
ok "a second container while the first runs: exit 75 ($(grep -o 'another synapse.*' "$work/second.err"))"
"${engine[@]}" stop -t 300 image-test-first >/dev/null &
stopper=$!
until_logged first "SIGTERM received"
release
status=0
wait "$first" || status=$?
wait "$stopper"
[ "$status" = 143 ] || { cat "$work/first.err" >&2 && fail "podman stop: exit $status, expected 143"; }
interrupted first
ok "podman stop mid-run: exit 143, JSON says interrupted"

hold
start_run third
third=$!
until_waiting third "$third"
"${engine[@]}" kill -s INT image-test-third >/dev/null
until_logged third "SIGINT received"
release
status=0
wait "$third" || status=$?
[ "$status" = 130 ] || { cat "$work/third.err" >&2 && fail "SIGINT: exit $status, expected 130"; }
interrupted third
ok "podman kill -s INT mid-run: exit 130"

step "a run to completion with --json"
rows() { su "$1" -At -c "SELECT count(*) FROM state_groups_state"; }
status=0
"${run[@]}" --rm "$image" "${auto[@]}" --json >"$work/full.out" 2>"$work/full.err" || status=$?
[ "$status" = 0 ] || { cat "$work/full.err" >&2 && fail "the run exited $status"; }
python3 - "$work/full.out" <<'PY' || fail "stdout holds no JSON summary of a finished run"
import json, sys
summary = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
assert summary["interrupted"] is False, summary
assert summary["rows_saved"] > 0, summary
print(f"image-test: JSON: rows_saved {summary['rows_saved']}, chunks {summary['chunks']}", file=sys.stderr)
PY
[ "$(rows image_test)" -lt "$(rows image_playbook)" ] || fail "nothing compressed"
"$bin/state-digest" --url "$url/image_test" --compare "$work/digest" >&2 || fail "a group's state changed"
ok "run to completion: exit 0, JSON on stdout, rows $(rows image_playbook) -> $(rows image_test), every group's state the same"

step "the playbook's command shape"
status=0
"${engine[@]}" run --rm --user=65534:65534 --cap-drop=ALL --network=host "$image" \
    /usr/local/bin/synapse_auto_compressor -n 100 -c 500 \
    -p "host=127.0.0.1 port=$port user=synapse_compressor password=$password dbname=image_playbook" \
    >/dev/null 2>"$work/playbook.err" || status=$?
[ "$status" = 0 ] || { cat "$work/playbook.err" >&2 && fail "the playbook's command exited $status"; }
[ "$(rows image_playbook)" -lt "$(rows image_sql)" ] || fail "the playbook's command compressed nothing"
"$bin/state-digest" --url "$url/image_playbook" --compare "$work/digest" >&2 || fail "a group's state changed"
ok "docker run --user --cap-drop=ALL ... -p \"host=... password=...\": exit 0, every group's state the same"

step "the manual tool: -o - | psql against -c"
room="$(su image_sql -At -c "SELECT room_id FROM state_groups GROUP BY room_id ORDER BY count(*) DESC, room_id LIMIT 1")"
manual() { # database, options
    "${run[@]}" --rm -e PGDATABASE="$1" "$image" /usr/local/bin/synapse_compress_state -r "$room" "${@:2}"
}
untouched="$(rows image_sql)"
manual image_sql -o - -t 2>"$work/sql.err" | su image_sql >/dev/null ||
    { cat "$work/sql.err" >&2 && fail "-o - | psql failed"; }
manual image_commit -c >/dev/null 2>"$work/commit.err" ||
    { cat "$work/commit.err" >&2 && fail "-c failed"; }
structure() {
    su "$1" -At -c "SELECT state_group, prev_state_group FROM state_group_edges ORDER BY 1, 2" &&
        su "$1" -At -c "SELECT state_group, room_id, type, state_key, event_id FROM state_groups_state
            ORDER BY state_group, type, state_key, event_id"
}
structure image_sql >"$work/sql.structure"
structure image_commit >"$work/commit.structure"
cmp -s "$work/sql.structure" "$work/commit.structure" || fail "-o - | psql and -c left different rows or edges"
[ "$(rows image_sql)" -lt "$untouched" ] || fail "-o - | psql compressed nothing"
for db in image_sql image_commit; do
    "$bin/state-digest" --url "$url/$db" --compare "$work/digest" >&2 || fail "$db: a group's state changed"
done
ok "synapse_compress_state -o - | psql and -c: the same rows and edges ($(wc -l <"$work/sql.structure") lines), every group's state the same"

echo "image-test: $checks passed, 0 failed"
