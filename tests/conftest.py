"""Progress lines for the integration tests.

`make test` sets MCE_PROGRESS_LOG and shows that file as it grows, so a hung CI
job names the test, scenario and phase it hangs in (pytest-xdist workers
report nothing until a test ends).
"""
import os

from orchestrator.report import progress

# pytest-xdist runs tests side by side already: a command-line run inside a test takes
# one guest at a time unless the test asks for -j (tests/integration/test_jobs.py does).
os.environ.setdefault("MCE_JOBS", "1")

_is_xdist_controller = False


def pytest_configure(config):
    # Under pytest-xdist the controller replays each worker's test start: log only where it runs.
    global _is_xdist_controller
    _is_xdist_controller = bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


def pytest_runtest_logstart(nodeid, location):
    if nodeid.startswith("tests/integration/") and not _is_xdist_controller:  # unit tests take milliseconds
        progress(f"test {nodeid}")
