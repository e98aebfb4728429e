"""Progress lines for the integration tests.

`make test` sets MCE_PROGRESS_LOG and shows that file as it grows, so a hung CI
job names the test, scenario and phase it hangs in (pytest-xdist workers
report nothing until a test ends).
"""
from orchestrator.report import progress

_is_xdist_controller = False


def pytest_configure(config):
    # Under pytest-xdist the controller replays each worker's test start: log only where it runs.
    global _is_xdist_controller
    _is_xdist_controller = bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


def pytest_runtest_logstart(nodeid, location):
    if nodeid.startswith("tests/integration/") and not _is_xdist_controller:  # unit tests take milliseconds
        progress(f"test {nodeid}")
