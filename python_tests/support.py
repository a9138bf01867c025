"""Shared helpers of the Python tests: throwaway databases, generated rooms,
and ways to see what a run changed, all through psql and the project's own
binaries (no Python database driver).

Environment (scripts/python-test.sh sets both):
  SYNAPSE_TEST_PG       base URL of a server where we may create databases,
                        e.g. postgresql://postgres@127.0.0.1:5432 (no db name)
  SYNAPSE_TEST_BIN_DIR  where `generate`, `state-digest` and the two tools
                        are (default: target/debug of this repository)
"""

import itertools
import logging
import os
import signal
import subprocess
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = os.path.join(ROOT, "compressor_integration_tests", "sql", "synapse_state_schema.sql")
BIN_DIR = os.environ.get("SYNAPSE_TEST_BIN_DIR") or os.path.join(ROOT, "target", "debug")

# Rooms of 300 groups whose delta chains Synapse would have cut every 10
# hops: they compress well, and three of them take well under a second.
ROOMS = 3
GROUPS_PER_ROOM = 300
GENERATOR_ARGS = ["--preset", "small", "--rooms", str(ROOMS), "--groups", str(GROUPS_PER_ROOM),
                  "--max-hops", "10", "--seed", "7"]

# Python's own SIGINT handler, or SIG_IGN when this process started with
# SIGINT ignored (as a background job of a non-interactive shell does): the
# modules under test must leave it as it was.
SIGINT_AT_START = signal.getsignal(signal.SIGINT)


def caught_signals():
    """This process's mask of signals with a handler (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("SigCgt:"):
                return int(line.split()[1], 16)
    return 0


def assert_signals_left_to_python(test):
    """The modules leave Ctrl-C and SIGTERM to Python: SIGINT's handler is
    the one the process started with, and caught by the kernel's account
    only if that is Python's; SIGTERM has no handler (Python catches none)."""
    test.assertIs(signal.getsignal(signal.SIGINT), SIGINT_AT_START)
    sigint_caught = bool(caught_signals() & (1 << (signal.SIGINT - 1)))
    test.assertEqual(sigint_caught, SIGINT_AT_START is signal.default_int_handler)
    test.assertFalse(caught_signals() & (1 << (signal.SIGTERM - 1)))


_names = itertools.count()

# Without a handler, Python prints the tools' warnings (such as a skipped
# chunk) over the test report; the logging tests add their own handlers.
for _name in ("synapse_compress_state", "synapse_auto_compressor"):
    logging.getLogger(_name).addHandler(logging.NullHandler())


def base_url():
    url = os.environ.get("SYNAPSE_TEST_PG", "").strip()
    if not url:
        raise unittest.SkipTest("SYNAPSE_TEST_PG is not set (run scripts/python-test.sh)")
    return url.rstrip("/")


def binary(name):
    return os.path.join(BIN_DIR, name)


def psql(url, sql):
    """Runs `sql`, returns psql's unaligned output lines."""
    done = subprocess.run(
        ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", url, "-c", sql],
        capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


def literal(text):
    """An SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


class Database:
    """A database of its own for one test: created with Synapse's state
    schema, dropped by `drop()`."""

    def __init__(self, hint):
        self.name = f"py_{os.getpid()}_{next(_names)}_{hint}"
        self.url = f"{base_url()}/{self.name}"
        admin = f"{base_url()}/postgres"
        psql(admin, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        psql(admin, f"CREATE DATABASE \"{self.name}\" TEMPLATE template0 ENCODING 'UTF8' "
                    "LC_COLLATE 'C' LC_CTYPE 'C'")
        subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", self.url, "-f", SCHEMA],
                       capture_output=True, text=True, check=True)

    def drop(self):
        psql(f"{base_url()}/postgres", f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def generate(self):
        """Fills the database with generated rooms; returns their ids."""
        done = subprocess.run([binary("generate"), "--url", self.url, *GENERATOR_ARGS],
                              capture_output=True, text=True, check=True)
        return [line.split("\t")[1] for line in done.stdout.splitlines()
                if line.startswith("room\t")]

    def rows(self, room=None):
        """Rows of state_groups_state (of one room, or all)."""
        where = f" WHERE room_id = {literal(room)}" if room else ""
        return int(psql(self.url, f"SELECT count(*) FROM state_groups_state{where}")[0])

    def groups(self, room=None):
        where = f" WHERE room_id = {literal(room)}" if room else ""
        return int(psql(self.url, f"SELECT count(*) FROM state_groups{where}")[0])

    def stored(self):
        """Each group's stored form: its predecessor(s) and its delta rows.
        Two calls differ exactly in the groups a run rewrote."""
        lines = psql(self.url, """
            SELECT g.id, md5(
                coalesce((SELECT string_agg(prev_state_group::text, ',' ORDER BY prev_state_group)
                          FROM state_group_edges e WHERE e.state_group = g.id), '-')
                || '|' ||
                coalesce((SELECT string_agg(type || chr(1) || state_key || chr(1) || event_id,
                                            chr(2) ORDER BY type, state_key, event_id)
                          FROM state_groups_state s WHERE s.state_group = g.id), ''))
            FROM state_groups g""")
        return dict(line.split("|", 1) for line in lines)

    def record_states(self):
        """Records every group's resolved state (Synapse's own query, one per
        group) in a file; `assert_states_unchanged` compares against it."""
        handle, path = tempfile.mkstemp(prefix="states-", suffix=".txt")
        os.close(handle)
        subprocess.run([binary("state-digest"), "--url", self.url, "--out", path],
                       capture_output=True, text=True, check=True)
        return path

    def states_unchanged(self, recording):
        """None when every group resolves as recorded, else the difference."""
        done = subprocess.run([binary("state-digest"), "--url", self.url, "--compare", recording],
                              capture_output=True, text=True)
        return None if done.returncode == 0 else (done.stderr.strip() or done.stdout.strip())


def changed_groups(before, after):
    """Group ids whose stored form differs between two `Database.stored()`."""
    return sorted(int(g) for g in before.keys() | after.keys() if before.get(g) != after.get(g))


def cli_error(tool, args):
    """The one `error: ` line a command-line tool prints for `args`."""
    done = subprocess.run([binary(tool), *args], capture_output=True, text=True)
    assert done.returncode != 0, f"{tool} {args} succeeded"
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, done.stderr
    return lines[0]


class DatabaseTest(unittest.TestCase):
    """A test case with a generated database, dropped afterwards."""

    def setUp(self):
        self.db = Database(self.id().rsplit(".", 1)[-1][:30].lower())
        self.addCleanup(self.db.drop)
        self.rooms = self.db.generate()
        self.recording = self.db.record_states()
        self.addCleanup(os.unlink, self.recording)

    def assertStatesUnchanged(self):
        difference = self.db.states_unchanged(self.recording)
        self.assertIsNone(difference, f"a group's state changed: {difference}")
