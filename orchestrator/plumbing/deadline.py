"""One deadline per phase; retries tick inside it and never extend it."""
from __future__ import annotations

import time


class DeadlineExceeded(Exception):
    pass


class Deadline:
    def __init__(self, seconds: float, what: str):
        self.seconds = seconds
        self.what = what
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self._end

    def check(self) -> None:
        if self.expired():
            raise DeadlineExceeded(f"{self.what}: no result within {self.seconds:g} s")

    def sleep(self, seconds: float) -> None:
        """Sleep, but never past the deadline."""
        time.sleep(min(seconds, self.remaining()))
