"""synapse_auto_compressor.run_compression and compress_largest_rooms over a
generated database of several rooms: the figures match the database, runs
continue where the last one stopped, and no group's state changes."""


import synapse_auto_compressor

from support import (GROUPS_PER_ROOM, ROOMS, DatabaseTest, assert_signals_left_to_python,
                     changed_groups, literal, psql)


KEYS = {
    "chunks", "chunks_skipped", "rooms_finished", "groups", "rows_before", "rows_after",
    "rows_saved", "groups_changed", "forced_resets", "groups_written", "groups_skipped_live",
    "levels_reset", "rooms_busy", "rooms_damaged", "seconds", "peak_rss_mib", "rows_deleted",
    "table_rows_before", "table_rows_after", "rooms_touched", "longest_chain_before",
    "longest_chain_after", "table_bytes", "estimated_free_bytes", "vacuum_seconds", "interrupted",
    "workers",
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
        self.assertFalse(result["interrupted"])
        self.assertStatesUnchanged()
        assert_signals_left_to_python(self)

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

    def test_number_of_rooms_compresses_whole_rooms(self):
        rows_before, stored_before = self.db.rows(), self.db.stored()

        # The reference's first version: number_of_rooms, each room to its end.
        result = synapse_auto_compressor.compress_largest_rooms(
            db_url=self.db.url, chunk_size=CHUNK, default_levels="20,10", number_of_rooms=2)

        self.assertEqual(result["chunks"], 2 * CHUNKS_PER_ROOM)
        self.assertEqual(result["rooms_finished"], 2)
        self.assertMatchesDatabase(result, rows_before, stored_before)
        finished = psql(self.db.url, "SELECT room_id, last_compressed FROM state_compressor_progress")
        self.assertEqual(len(finished), 2)
        for line in finished:
            room, last = line.split("|")
            self.assertIn(room, self.rooms)
            self.assertEqual(int(last), int(psql(
                self.db.url, f"SELECT max(id) FROM state_groups WHERE room_id = {literal(room)}")[0]))

        # With number_of_chunks too, it caps the chunks.
        capped = synapse_auto_compressor.compress_largest_rooms(
            self.db.url, CHUNK, "20,10", 1, number_of_rooms=1)
        self.assertEqual((capped["chunks"], capped["rooms_finished"]), (1, 0))

        with self.assertRaisesRegex(ValueError, "number_of_chunks or number_of_rooms"):
            synapse_auto_compressor.compress_largest_rooms(self.db.url, CHUNK, "20,10")
        with self.assertRaisesRegex(ValueError, "number_of_rooms: must be at least 1"):
            synapse_auto_compressor.compress_largest_rooms(
                self.db.url, CHUNK, "20,10", number_of_rooms=0)
