"""synapse_auto_compressor.run_compression and compress_largest_rooms over a
generated database of several rooms: the figures match the database, runs
continue where the last one stopped, and no group's state changes."""

import synapse_auto_compressor

from support import GROUPS_PER_ROOM, ROOMS, DatabaseTest, changed_groups

KEYS = {
    "chunks", "chunks_skipped", "rooms_finished", "groups", "rows_before", "rows_after",
    "rows_saved", "groups_changed", "forced_resets", "groups_written", "groups_skipped_live",
    "levels_reset", "rooms_busy", "rooms_damaged", "seconds", "peak_rss_mib", "rows_deleted",
    "table_rows_before", "table_rows_after", "rooms_touched", "longest_chain_before",
    "longest_chain_after", "table_bytes", "estimated_free_bytes", "vacuum_seconds",
}
SECONDS = {"load", "compress", "verify", "write", "total"}
CHUNK = 100
CHUNKS_PER_ROOM = GROUPS_PER_ROOM // CHUNK


class AutoTest(DatabaseTest):
    def assertMatchesDatabase(self, result, rows_before, stored_before):
        """The figures that the database can confirm."""
        self.assertEqual(set(result), KEYS)
        self.assertEqual(set(result["seconds"]), SECONDS)
        self.assertEqual(result["rows_saved"], rows_before - self.db.rows())
        self.assertEqual(result["rows_before"] - result["rows_after"], result["rows_saved"])
        self.assertEqual(result["table_rows_before"] - result["table_rows_after"],
                         result["rows_saved"])
        self.assertEqual(result["groups_written"],
                         len(changed_groups(stored_before, self.db.stored())))
        self.assertEqual(result["groups_skipped_live"], 0)
        self.assertEqual(result["rooms_busy"], 0)
        self.assertEqual(result["rooms_damaged"], 0)
        self.assertStatesUnchanged()

    def test_whole_database(self):
        rows_before, stored_before = self.db.rows(), self.db.stored()

        result = synapse_auto_compressor.run_compression(self.db.url, CHUNK, 1000)

        # Every room is walked in chunks; the run stops when nothing is left.
        self.assertEqual(result["chunks"], ROOMS * CHUNKS_PER_ROOM)
        self.assertEqual(result["rooms_finished"], ROOMS)
        self.assertEqual(result["groups"], self.db.groups())
        self.assertGreater(result["rows_saved"], 0)
        self.assertGreater(result["groups_written"], 0)
        self.assertMatchesDatabase(result, rows_before, stored_before)

        # A second run finds nothing left to do, and vacuums the table.
        again = synapse_auto_compressor.run_compression(
            db_url=self.db.url, chunk_size=CHUNK, number_of_chunks=5, default_levels="100,50,25",
            vacuum=True)
        self.assertEqual((again["chunks"], again["rows_saved"]), (0, 0))
        self.assertIsNone(again["table_rows_before"])
        self.assertGreaterEqual(again["vacuum_seconds"], 0)

    def test_older_name_and_resuming(self):
        rows_before, stored_before = self.db.rows(), self.db.stored()

        # The older name takes default_levels before number_of_chunks.
        first = synapse_auto_compressor.compress_largest_rooms(self.db.url, CHUNK, "20,10", 2)

        self.assertEqual(first["chunks"], 2)
        self.assertEqual(first["groups"], 2 * CHUNK)
        self.assertMatchesDatabase(first, rows_before, stored_before)

        rows_between, stored_between = self.db.rows(), self.db.stored()
        rest = synapse_auto_compressor.compress_largest_rooms(
            db_url=self.db.url, chunk_size=CHUNK, default_levels="20,10", number_of_chunks=1000)

        self.assertEqual(rest["chunks"], ROOMS * CHUNKS_PER_ROOM - 2)
        self.assertEqual(first["groups"] + rest["groups"], self.db.groups())
        self.assertMatchesDatabase(rest, rows_between, stored_between)
