import time

import pytest

from orchestrator.plumbing.deadline import Deadline, DeadlineExceeded


def test_sleep_never_passes_the_deadline():
    d = Deadline(0.1, "phase")
    start = time.monotonic()
    d.sleep(5)
    assert time.monotonic() - start < 1
    assert d.expired() and d.remaining() == 0
    with pytest.raises(DeadlineExceeded, match="phase: no result within 0.1 s"):
        d.check()
