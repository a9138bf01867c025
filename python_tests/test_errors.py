"""Bad input raises an exception carrying the command line's message and
changes nothing; log lines reach Python's `logging`."""

import logging
import os
import socket
import unittest

import synapse_auto_compressor
import synapse_compress_state

from support import Database, base_url, cli_error

MANUAL = "synapse_compress_state"
AUTO = "synapse_auto_compressor"


def closed_port_url():
    """A URL of a local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/synapse"


class ErrorTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.db = Database("errors")
        cls.rooms = cls.db.generate()
        cls.stored = cls.db.stored()

    @classmethod
    def tearDownClass(cls):
        cls.db.drop()

    def tearDown(self):
        self.assertEqual(self.db.stored(), self.stored, "a failed call changed the database")

    def manual_error(self, exception, *args, **kwargs):
        with self.assertRaises(exception) as raised:
            synapse_compress_state.run_compression(*args, **kwargs)
        return str(raised.exception)

    def auto_error(self, exception, *args, **kwargs):
        with self.assertRaises(exception) as raised:
            synapse_auto_compressor.run_compression(*args, **kwargs)
        return str(raised.exception)

    def test_exception_classes(self):
        for module in (synapse_compress_state, synapse_auto_compressor):
            self.assertTrue(issubclass(module.CompressionError, RuntimeError))
            self.assertEqual(module.CompressionError.__module__, module.__name__)

    def test_bad_level_lists_give_the_cli_message(self):
        room = self.rooms[0]
        for levels in ["a,b", "", "0", "10,0", "-5"]:
            with self.subTest(levels=levels):
                message = self.manual_error(ValueError, self.db.url, room, level_sizes=levels)
                # The CLI prints clap's "invalid value ... for '--level-sizes
                # <LEVELS>': " and then the same message.
                self.assertIn(message, cli_error(MANUAL, ["-p", self.db.url, "-r", room,
                                                          f"--level-sizes={levels}"]))
                self.assertTrue(message.startswith(f"invalid level sizes {levels!r}".replace("'", '"')),
                                message)
                message = self.auto_error(ValueError, self.db.url, 10, 1, default_levels=levels)
                self.assertIn(message, cli_error(AUTO, ["-p", self.db.url, "-c", "10", "-n", "1",
                                                        f"--levels={levels}"]))

    def test_numbers_out_of_range(self):
        url, room = self.db.url, self.rooms[0]
        cases = [
            (dict(min_state_group=-1), "min_state_group", -1, 0, "--min-state-group"),
            (dict(max_state_group=-1), "max_state_group", -1, 0, "--max-state-group"),
            (dict(groups_to_compress=0), "groups_to_compress", 0, 1, "--groups-to-compress"),
            (dict(min_saved_rows=-3), "min_saved_rows", -3, 0, "--min-saved-rows"),
        ]
        for kwargs, name, value, minimum, option in cases:
            with self.subTest(name=name):
                message = self.manual_error(ValueError, url, room, commit_changes=True, **kwargs)
                self.assertEqual(message, f"invalid value {value} for {name}: must be at least {minimum}")
                cli = cli_error(MANUAL, ["-p", url, "-r", room, f"{option}={value}", "-c"])
                self.assertTrue(cli.endswith(f": must be at least {minimum} (see --help)"), cli)
        for args, name, value, option in [((url, 0, 1), "chunk_size", 0, "--chunk-size"),
                                          ((url, -5, 1), "chunk_size", -5, "--chunk-size"),
                                          ((url, 10, 0), "number_of_chunks", 0, "--chunks-to-compress")]:
            with self.subTest(name=name, value=value):
                message = self.auto_error(ValueError, *args)
                self.assertEqual(message, f"invalid value {value} for {name}: must be at least 1")
                cli = cli_error(AUTO, ["-p", url, "-c", str(args[1]), "-n", str(args[2])])
                self.assertIn(f"invalid value '{value}' for '{option} <", cli)
                self.assertTrue(cli.endswith(": must be at least 1 (see --help)"), cli)
        # The older name checks its arguments the same way.
        with self.assertRaisesRegex(ValueError, "^invalid value 0 for chunk_size: must be at least 1$"):
            synapse_auto_compressor.compress_largest_rooms(url, 0, "100,50,25", 1)

    def test_wrong_python_types(self):
        with self.assertRaises(TypeError):
            synapse_auto_compressor.run_compression(self.db.url, "10", 1)
        with self.assertRaises(TypeError):
            synapse_compress_state.run_compression(self.db.url)
        with self.assertRaises(OverflowError):
            synapse_auto_compressor.run_compression(self.db.url, 2 ** 70, 1)

    def test_run_failures_give_the_cli_line(self):
        url = self.db.url
        cases = [
            # (exception, manual arguments, auto arguments or None)
            (synapse_compress_state.CompressionError, [url, "!unknown:example.org"], None),
            (ValueError, ["not a url", self.rooms[0]], ["not a url", 10, 1]),
            (synapse_compress_state.CompressionError, [closed_port_url(), self.rooms[0]],
             [closed_port_url(), 10, 1]),
            # A database without Synapse's tables.
            (synapse_compress_state.CompressionError, [f"{base_url()}/postgres", self.rooms[0]],
             [f"{base_url()}/postgres", 10, 1]),
        ]
        for exception, manual, auto in cases:
            with self.subTest(manual=manual):
                message = self.manual_error(exception, *manual)
                self.assertNotIn("\n", message)
                self.assertEqual(f"error: {message}",
                                 cli_error(MANUAL, ["-p", manual[0], "-r", manual[1]]))
            if auto is None:
                continue
            auto_exception = exception
            if exception is synapse_compress_state.CompressionError:
                auto_exception = synapse_auto_compressor.CompressionError
            with self.subTest(auto=auto):
                message = self.auto_error(auto_exception, *auto)
                self.assertEqual(f"error: {message}",
                                 cli_error(AUTO, ["-p", auto[0], "-c", str(auto[1]),
                                                  "-n", str(auto[2])]))

    def test_unwritable_output_file(self):
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "no such dir", "out.sql")
        message = self.manual_error(synapse_compress_state.CompressionError,
                                    self.db.url, self.rooms[0], output_file=path)
        self.assertTrue(message.startswith("cannot write "), message)


class LoggingTest(unittest.TestCase):
    """The tools' log lines go to Python loggers named after their modules."""

    def capture(self, logger_name):
        records = []

        class Keep(logging.Handler):
            def emit(self, record):
                records.append(record)

        logger = logging.getLogger(logger_name)
        handler, level = Keep(), logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        self.addCleanup(logger.removeHandler, handler)
        self.addCleanup(logger.setLevel, level)
        return records

    def setUp(self):
        self.db = Database("logging")
        self.addCleanup(self.db.drop)
        self.rooms = self.db.generate()

    def test_manual_log_lines(self):
        records = self.capture("synapse_compress_state")
        synapse_compress_state.run_compression(self.db.url, self.rooms[0])
        messages = [r.getMessage() for r in records]
        self.assertTrue(any(m.startswith("Fetching state from DB for room") for m in messages),
                        messages)
        self.assertTrue(all(r.name.startswith("synapse_compress_state.") for r in records))
        self.assertTrue(all(r.levelno >= logging.INFO for r in records))

    def test_auto_log_lines(self):
        records = self.capture("synapse_auto_compressor")
        synapse_auto_compressor.run_compression(self.db.url, 100, 2)
        messages = [r.getMessage() for r in records]
        self.assertTrue(any(m.startswith("Finished: saved") for m in messages), messages)

    def test_levels_set_after_a_call_take_effect(self):
        # A first call while the level lets nothing through...
        logger = logging.getLogger("synapse_compress_state")
        old = logger.level
        logger.setLevel(logging.ERROR)
        try:
            synapse_compress_state.run_compression(self.db.url, self.rooms[0])
        finally:
            logger.setLevel(old)
        # ...must not stop the next call's info lines.
        records = self.capture("synapse_compress_state")
        synapse_compress_state.run_compression(self.db.url, self.rooms[1])
        self.assertTrue(records)
