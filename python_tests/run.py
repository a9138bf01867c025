"""Runs every test in this directory with unittest and ends with one plain
count line ("python: N passed, N failed, N skipped") that CI logs can be
read by. Exits non-zero on a failure, and when no test ran at all."""

import os
import sys
import unittest

here = os.path.dirname(os.path.abspath(__file__))
suite = unittest.defaultTestLoader.discover(here, top_level_dir=here)
result = unittest.TextTestRunner(verbosity=2).run(suite)
problems = result.failures + result.errors
# A class or module set-up that fails is reported as an error of no test.
failed_tests = sum(isinstance(test, unittest.TestCase) for test, _ in problems)
failed = len(problems) + len(result.unexpectedSuccesses)
skipped = len(result.skipped)
passed = result.testsRun - failed_tests - len(result.unexpectedSuccesses) - skipped
print(f"python: {passed} passed, {failed} failed, {skipped} skipped", flush=True)
sys.exit(0 if result.wasSuccessful() and passed > 0 else 1)
