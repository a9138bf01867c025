"""synapse_compress_state.run_compression against generated rooms: the
figures it returns are what the database shows, and no group's state
changes."""

import json
import os
import subprocess
import tempfile

import synapse_compress_state

from support import DatabaseTest, assert_signals_left_to_python, binary, changed_groups, literal, psql

KEYS = {
    "room_id", "groups", "groups_in_range", "last_group", "rows_before", "rows_after",
    "rows_saved", "percent_after", "groups_changed", "forced_resets", "forced_reset_rows",
    "groups_written", "groups_skipped_live", "missing_predecessors", "outcome", "verified",
    "groups_compared", "seconds", "peak_rss_mib", "groups_to_write", "rows_deleted",
    "table_rows_before", "table_rows_after", "longest_chain_before", "longest_chain_after",
    "table_bytes", "estimated_free_bytes", "vacuum_seconds", "interrupted",
}
SECONDS = {"load", "compress", "verify", "write", "total"}
# Figures that depend on the run, not on the data.
VARYING = {"seconds", "peak_rss_mib"}


class ManualTest(DatabaseTest):
    def test_commit_changes_matches_the_database(self):
        room = self.rooms[0]
        rows_before, stored_before = self.db.rows(room), self.db.stored()

        result = synapse_compress_state.run_compression(
            self.db.url, room, commit_changes=True)

        self.assertEqual(set(result), KEYS)
        self.assertEqual(set(result["seconds"]), SECONDS)
        self.assertEqual(result["outcome"], "done")
        self.assertFalse(result["interrupted"])
        assert_signals_left_to_python(self)
        self.assertTrue(result["verified"])
        self.assertEqual(result["room_id"], room)
        self.assertEqual(result["groups"], self.db.groups(room))
        self.assertEqual(result["rows_before"], rows_before)
        self.assertEqual(result["rows_after"], self.db.rows(room))
        self.assertEqual(result["rows_saved"], rows_before - self.db.rows(room))
        self.assertGreater(result["rows_saved"], 0)
        self.assertEqual(result["table_rows_before"], rows_before)
        self.assertEqual(result["table_rows_after"], self.db.rows(room))
        self.assertIsNone(result["vacuum_seconds"])
        changed = changed_groups(stored_before, self.db.stored())
        self.assertEqual(result["groups_written"], len(changed))
        self.assertGreater(result["groups_written"], 0)
        self.assertEqual(result["groups_skipped_live"], 0)
        # Only the room's groups were touched.
        room_groups = {int(g) for g in psql(
            self.db.url, f"SELECT id FROM state_groups WHERE room_id = {literal(room)}")}
        self.assertLessEqual(set(changed), room_groups)
        self.assertStatesUnchanged()

    def test_dry_run_changes_nothing_and_matches_the_cli(self):
        room = self.rooms[1]
        stored_before = self.db.stored()

        result = synapse_compress_state.run_compression(self.db.url, room)

        self.assertEqual(self.db.stored(), stored_before)
        self.assertEqual(result["outcome"], "done")
        self.assertGreater(result["rows_saved"], 0)
        self.assertEqual(result["groups_skipped_live"], 0)
        # Same figures as the command line's --json for the same run.
        done = subprocess.run(
            [binary("synapse_compress_state"), "-p", self.db.url, "-r", room,
             "--json", "--no-progress"], capture_output=True, text=True, check=True)
        cli = json.loads(done.stdout)
        self.assertEqual(set(cli), set(result))
        for key in set(cli) - VARYING:
            self.assertEqual(result[key], cli[key], key)
        self.assertStatesUnchanged()

    def test_output_file_writes_sql_that_psql_applies(self):
        room = self.rooms[2]
        rows_before, stored_before = self.db.rows(room), self.db.stored()
        handle, path = tempfile.mkstemp(prefix="changes-", suffix=".sql")
        os.close(handle)
        self.addCleanup(os.unlink, path)

        result = synapse_compress_state.run_compression(
            self.db.url, room, output_file=path, level_sizes="10,10")

        self.assertEqual(self.db.stored(), stored_before, "-o alone must not write")
        with open(path, encoding="utf-8") as sql:
            text = sql.read()
        # transactions=True by default, as in the reference module.
        self.assertIn("BEGIN;", text)
        self.assertIn("DELETE FROM state_groups_state", text)
        self.assertIn("INSERT INTO state_groups_state", text)
        subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", self.db.url, "-f", path],
                       capture_output=True, text=True, check=True)
        self.assertEqual(self.db.rows(room), result["rows_after"])
        self.assertEqual(rows_before - self.db.rows(room), result["rows_saved"])
        self.assertEqual(len(changed_groups(stored_before, self.db.stored())),
                         result["groups_written"])
        self.assertStatesUnchanged()

    def test_range_and_minimum_arguments(self):
        room = self.rooms[0]
        first = int(psql(self.db.url, f"SELECT min(id) FROM state_groups WHERE room_id = {literal(room)}")[0])
        stored_before = self.db.stored()

        # Keyword arguments, a range of the room, and a minimum it cannot reach.
        result = synapse_compress_state.run_compression(
            db_url=self.db.url, room_id=room, min_state_group=first + 9,
            groups_to_compress=100, min_saved_rows=10 ** 9, commit_changes=True,
            transactions=False, verify=True)

        self.assertEqual(result["outcome"], "too_few_saved")
        self.assertEqual(result["groups_in_range"], 100)
        self.assertEqual(self.db.stored(), stored_before)
        self.assertStatesUnchanged()
