#!/usr/bin/env bash
# Plants known bugs one at a time and reports which ones the test suite
# notices: the tests are only worth as much as the protections whose
# removal makes them fail.
#
#   scripts/mutants.sh            # every mutant below
#   scripts/mutants.sh NAME...    # only these
#   scripts/mutants.sh --list     # names and what each plants
#   scripts/mutants.sh --check    # only check that every mutant still applies
#
# For each mutant: apply one textual change to the source (the script stops
# if the text to change is not found, so a refactoring cannot turn a mutant
# into a no-op), build the binaries with fault injection as scripts/test.sh
# does, run the tests meant to catch it against a throwaway PostgreSQL, and
# restore the file. A mutant "survives" when those tests still pass. The
# full run is not part of CI (about a minute per mutant on 2 cores); run it
# before changing a protection, and after restructuring. `--check` is (CI's
# .ci/run calls it): it takes seconds.
#
# Needs a clean working tree for the files it mutates (it restores them
# with `git checkout`).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
features=synapse_compress_state/failpoints,synapse_auto_compressor/failpoints

# name | file | perl substitution (applied with -0: the whole file) | tests
# (cargo test arguments) | what the bug is
mutants=(
    "no-pending-bump|src/db/write.rs|s/if has_pending_table && !bases.is_empty\(\)/if false \&\& has_pending_table/|--test pending_deletion|the write no longer bumps new bases' pending deletion"
    "no-verify|src/core/verify.rs|s/(pub fn verify\(original: &GroupMap, changes: &GroupMap\) -> Result<Verified> \{)/\$1\n    return Ok(Verified { groups: original.len(), compared: 0 });/|--test faults verification|verification always succeeds"
    "run-lock-released|synapse_auto_compressor/src/manager.rs|s/(    lock::acquire\(&mut client\)\?;)/\$1\n    lock::release(\&mut client)?;/|--test concurrency a_second|the automatic tool releases its run lock right after taking it"
    "no-room-lock-manual|src/manual/run.rs|s/Some\(RoomLock::try_acquire\(&mut client, &config.room_id\)\?\)/None::<RoomLock>/|--test concurrency|the manual tool does not take the room lock"
    "no-room-lock-auto|synapse_auto_compressor/src/manager.rs|s/RoomLock::try_acquire\(client, &room\)/RoomLock::try_acquire(client, \"-\")/|--test concurrency locked_room_for_a_later|the automatic tool locks a fixed dummy room instead of the chunk's room"
    "scan-passes-left-rooms|synapse_auto_compressor/src/state_saving.rs|s/SET lowest_uncompressed_group = LEAST\(next.id, \\\$2\) FROM next/SET lowest_uncompressed_group = next.id + 0 * coalesce(\\\$2, 0) FROM next/|--test concurrency locked_room_for_a_later|the scan position moves past a room left for later"
    "recheck-ignores-edges|src/db/write.rs|s/\} else if edges.as_slice\(\) != loaded.prev.as_slice\(\) \{/} else if false {/|--test write_checks --test live_synapse|the write no longer re-checks a group's edge"
    "gone-base-counts|src/db/write.rs|s/rows.is_some_and\(\x7cn\x7c n > 0\)/rows.is_some_and(\x7cn\x7c n >= 0)/|--test write_checks|a base with no state_groups row, edge or rows counts as present"
    "recheck-ignores-rows|src/db/write.rs|s/rows.filter\(\x7c&n\x7c n != loaded.rows as i64\)/rows.filter(\x7c_\x7c false)/|--test write_checks --test live_synapse|the write no longer re-checks a group's row count"
    "delete-count-ignored|src/db/write.rs|s/expected.filter\(\x7c&rows\x7c rows != deleted\)/expected.filter(\x7c_\x7c false)/|--test write_checks|the write no longer checks the rows its delete removed against those loaded"
    "no-retry-on-conflict|src/db/write.rs|s/Err\(e\) if attempt < MAX_ATTEMPTS && worth_retrying\(&e\) =>/Err(e) if false \&\& attempt < MAX_ATTEMPTS \&\& worth_retrying(\&e) =>/|--test concurrency deadlock|a batch that meets a deadlock is not tried again"
    "cross-room-edges-followed|src/db/load.rs|s/if let Some\(other\) = other_room \{/if let Some(other) = other_room.and(None::<String>) {/|--test damaged edge_into|an edge into another room is followed, not reported as damage"
    "quote-no-escape|src/output/sql.rs|s/'\\\\'' => out.push_str\(\"''\"\),/'\\\\'' => out.push('\\\\''),/|--test properties|quotes in SQL literals are not doubled"
    "level-off-by-one|src/core/levels.rs|s/self.current_length < self.max_length/self.current_length <= self.max_length/|--test structure --test properties|a level takes one group more than its size"
    "progress-skipped-on-stop|synapse_auto_compressor/src/chunk.rs|s/(failpoint::stop_here\(\"auto::before-progress-save\"\);)/\$1\n            if interrupt::requested().is_some() { return Ok(()); }/|--test interrupt auto_tool_stopped_at_each_safe_point|a chunk during which a stop was asked for commits its write without its progress"
    "no-retry-on-serialization|src/db/write.rs|s/\s*SqlState::T_R_SERIALIZATION_FAILURE,//|--test concurrency serialization_failure|a batch refused with a serialization failure is not tried again"
    "no-retry-on-duplicate-edge|src/db/write.rs|s/\s*SqlState::UNIQUE_VIOLATION,//|--test concurrency duplicate_edge|a batch that meets a duplicate edge (unique violation) is not tried again"
    "manual-lock-key-differs|src/manual/run.rs|s/Some\(RoomLock::try_acquire\(&mut client, &config.room_id\)\?\)/Some(RoomLock::try_acquire(\&mut client, \&format!(\"manual {}\", config.room_id))?)/|--test concurrency automatic_tool_holds|the manual tool locks a room under another key than the automatic tool's"
    "in-flight-rooms-hold-nothing|synapse_auto_compressor/src/state_saving.rs|s/all.leave\(room.clone\(\), \*next\);/all.rooms.push(room.clone());\n            let _ = next;/|--test jobs in_flight_holds|--jobs: a room in flight no longer holds the saved scan position back"
    "skipped-chunk-figures-unwritten|synapse_auto_compressor/src/chunk.rs|s/figures.chains\(room, &chunk.original, None, last, chunk.more\)/figures.chains(room, \&chunk.original, Some(\&compressed), last, chunk.more)/|--test figures skipped|a skipped chunk's longest chain after is counted on the structure it did not write"
    "pass-final-position-low|synapse_auto_compressor/src/manager.rs|s/(        let position = walk.left.hold\(\).map_or\(first, .hold. hold.min\(first\)\);\n        )state_saving::raise_scan_position\(client, position\)\?;/\$1let _ = position;/|--test pass_reader over_the_pass_memory|after the pass, the scan position stays where the loop's last pick left it"
    "repeats-not-counted|src/core/group.rs|s/self.delta.len\(\) \+ self.repeated_rows as usize/self.delta.len()/|--test damaged repeat|a group's rows that repeat exactly are left out of its row count, so every write-time check sees them as changed"
    "two-events-last-wins|src/core/state_map.rs|s/if rows\[kept - 1\].1 != rows\[i\].1 \{/if false \&\& rows[kept - 1].1 != rows[i].1 {/|--test damaged two_events|a key with two events in one group is read as one of them instead of refused as damage"
    "pass-chunks-one-too-big|synapse_auto_compressor/src/pass/plan.rs|s/if \(chunk.groups as i64\) < chunk_size \{/if (chunk.groups as i64) <= chunk_size {/|--test pass_reader leaves_what_the_room|the pass plans chunks one group bigger than -c"
    "pass-auto-ignores-plan|synapse_auto_compressor/src/pass/mod.rs|s/self != Reader::Auto .. plan.groups\(\) as f64 >= plan.span_groups as f64 \* AUTO_SHARE/true/|--test pass_reader planned_chunks_are_few|the default reader takes the pass for a run whose chunks hold few of the groups it would read"
    "pass-queue-held-by-room-in-flight|synapse_auto_compressor/src/pass/writers.rs|s/while s.queue.len\(\) - self.blocked\(&s\) >= self.capacity && !s.stop \{/while s.queue.len() >= self.capacity \&\& !s.stop {/|--test jobs in_flight_holds|--jobs with the pass: chunks of a room in flight fill the queue and hold up the other rooms"
    "pass-queue-unbounded|synapse_auto_compressor/src/pass/writers.rs|s/if self.blocked\(&s\) > MAX_BLOCKED \{/if false \&\& self.blocked(\&s) > MAX_BLOCKED {/|--test jobs pile_up|--jobs with the pass: a waiting room's chunks pile up in the queue without bound"
    "pass-no-lead-check|synapse_auto_compressor/src/pass/given.rs|s/if !edges_unchanged\(&mut snapshot, &leads\)\? \{/if false \&\& !edges_unchanged(\&mut snapshot, \&leads)? {/|--test pass_reader rewrote_after_the_pass|the pass uses a chunk read before Synapse rewrote the group leading out of it"
    "damaged-room-not-left|synapse_auto_compressor/src/summary.rs|s/self.damaged = true;/self.damaged = false;/|--test damaged|a damaged room is not left alone (the run keeps loading it)"
    "survey-pass-no-fallback|synapse_auto_compressor/src/survey.rs|s/        self.scan = plan.chunks\[rest\].first;/        self.scan = plan.end().unwrap_or(0) + 1 + 0 * plan.chunks[rest].first;/|--test survey the_pass_surveys|after the pass, the survey's room-by-room loop starts past the plan, missing the chunks the pass left"
    "survey-pass-no-carry|synapse_auto_compressor/src/survey.rs|s/Some\(given\) => given.into_loaded\(client, &request, None\)\?,/Some(given) => given.into_loaded(client, \&ChunkRequest { carried: None, ..request.clone() }, None)?,/|--test survey the_pass_surveys|the survey's chunks from the pass forget the new structure their room's chunk before left"
    "sweep-progress-early|synapse_auto_compressor/src/pass/sweep.rs|s/let reached = batch.last\(\).copied\(\).unwrap_or\(i64::MAX\);/let reached = i64::MAX;/|--test kills auto_tool_with_big_chunks|the pass's sweep saves a chunk's progress before all its groups are written"
    "sweep-stale-progress|synapse_auto_compressor/src/pass/writers.rs|s/ahead.progress = sweep.progress_of\(room\);/ahead.progress = sweep.progress_of(\"-\");/|--test pass_reader leaves_what_the_room|the pass decides a room's next chunk from its saved progress while its chunk before waits in the sweep"
    "sweep-later-ignored|synapse_auto_compressor/src/pass/writers.rs|s/ahead.later = later.as_ref\(\)/ahead.later = later.as_ref().and(None::<&super::sweep::RoomLater>)/|--test pass_reader without_carries|a chunk decided while its room's chunks before wait in the sweep reads their groups as the database still shows them"
)

if [ "${1:-}" = "--check" ]; then
    # Only checks that every mutant's text is still found (no build, no test).
    status=0
    for m in "${mutants[@]}"; do
        IFS='|' read -r name file subst _ _ <<<"$m"
        if ! git diff --quiet -- "$file"; then
            echo "mutants: $file has uncommitted changes; commit or stash them first" >&2
            exit 2
        fi
        perl -0pi -e "$subst" "$file"
        if git diff --quiet -- "$file"; then
            echo "$name: text not found in $file"
            status=1
        else
            echo "$name: ok"
            git diff -U0 -- "$file" | grep '^[-+][^-+]' | sed 's/^/    /'
        fi
        git checkout -- "$file"
    done
    exit "$status"
fi
if [ "${1:-}" = "--list" ]; then
    for m in "${mutants[@]}"; do
        IFS='|' read -r name _ _ _ what <<<"$m"
        printf '%-28s %s\n' "$name" "$what"
    done
    exit 0
fi
wanted=("$@")

pgdir="$(mktemp -d "${TMPDIR:-/tmp}/synapse-mutants-pg.XXXXXX")"
current_file=""
cleanup() {
    [ -n "$current_file" ] && git checkout -- "$current_file"
    bash "$root/scripts/pg-throwaway.sh" stop "$pgdir" || true
}
trap cleanup EXIT
SYNAPSE_TEST_PG="$(bash "$root/scripts/pg-throwaway.sh" start "$pgdir")"
export SYNAPSE_TEST_PG CI=true

results=()
for m in "${mutants[@]}"; do
    IFS='|' read -r name file subst tests what <<<"$m"
    if [ "${#wanted[@]}" -gt 0 ] && [[ ! " ${wanted[*]} " == *" $name "* ]]; then
        continue
    fi
    if ! git diff --quiet -- "$file"; then
        echo "mutants: $file has uncommitted changes; commit or stash them first" >&2
        exit 2
    fi
    current_file="$file"
    perl -0pi -e "$subst" "$file"
    if git diff --quiet -- "$file"; then
        echo "mutants: $name: the text to change was not found in $file (update the script)" >&2
        exit 2
    fi
    echo "=== mutant $name: $what" >&2
    # shellcheck disable=SC2086 # $tests holds several cargo arguments
    if ! cargo build --workspace --bins --features "$features" -q 2>/dev/null; then
        verdict="caught (does not compile)"
    elif cargo test --workspace --features "$features" $tests >"$pgdir/$name.log" 2>&1; then
        verdict="SURVIVED ($tests)"
    else
        failed="$(grep -E '^test .* FAILED$' "$pgdir/$name.log" | sed -E 's/^test (.*) \.\.\. FAILED$/\1/' | head -n 3 | paste -sd, - || true)"
        verdict="caught by ${failed:-a failing test} ($tests)"
        # Why: the first failed assertion's message (the log goes with the
        # throwaway database).
        grep -m1 -A1 ' panicked at ' "$pgdir/$name.log" | tail -n 1 | cut -c1-200 | sed 's/^/    why: /' >&2 || true
    fi
    git checkout -- "$file"
    current_file=""
    results+=("$(printf '%-28s %s' "$name" "$verdict")")
    echo "    $verdict" >&2
done
cargo build --workspace --bins --features "$features" -q

echo
echo "mutant                       verdict"
printf '%s\n' "${results[@]}"
if printf '%s\n' "${results[@]}" | grep -q SURVIVED; then
    exit 1
fi
