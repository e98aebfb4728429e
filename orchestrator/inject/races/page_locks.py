"""The lock race of the fuse-mlock kinds (the probe's lock_race.c) needs to know how often
memory_failure() takes the page lock before it reads the page flags: once on 6.1, twice
on 6.12 (hwpoison_filter()'s lock first). Nothing is assumed from the version: the
probe learns it from the kernel the first time (a reader queued behind memory_failure()
shows whether it waits for the lock again or goes on), and the count is remembered
here per kernel build (its /proc/version banner). Where the kernel takes it once, the
learning guest's interleaving is lost: that run is not forced, and the runner tries
again in a fresh guest, which now knows."""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from orchestrator.inject.races import NOT_FORCED
from orchestrator.plumbing.outcome import HarnessError

FILE = "page-locks.json"
VERSION_COMMAND = "cat /proc/version"
# How the probe's race names an interleaving lost to learning (lock_race.c).
LEARNED_ONCE = "1b: memory_failure() took the page lock once and went on"


class PageLockCounts:
    """{kernel banner: page locks} in one JSON file, written whole (a rename)."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / FILE

    def _read(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and v in (1, 2)} if isinstance(data, dict) else {}

    def get(self, banner: str) -> int:
        """What is known of this kernel: 1 or 2, or 0 (not known: the probe learns it)."""
        return self._read().get(banner.strip(), 0)

    def learn(self, banner: str, locks: int) -> None:
        if locks not in (1, 2):
            raise ValueError(f"page locks: {locks!r}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Guests in parallel (run -j, make matrix) learn at once: one writer at a time.
        with open(self.path.with_name(f".{FILE}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read()
            data[banner.strip()] = locks
            partial = self.path.with_name(f".{FILE}.{os.getpid()}")
            partial.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
            partial.replace(self.path)


def learned(lock_race: object) -> int | None:
    """The count the probe's race learned, where it is proven: 1 when memory_failure()
    left without a second wait, 2 only when the whole interleaving was then seen."""
    if not isinstance(lock_race, dict):
        return None
    got = lock_race.get("learned_page_locks")
    if got == 1:
        return 1
    if got == 2 and lock_race.get("error", "") is None:
        return 2
    return None


def lost_to_learning(lock_race: object) -> HarnessError | None:
    """The run's ERROR when the interleaving was lost while learning: not forced (the
    runner tries again in a fresh guest), never a verdict on the kernel."""
    if isinstance(lock_race, dict) and str(lock_race.get("error") or "").startswith(LEARNED_ONCE):
        return HarnessError("inject", f"{NOT_FORCED}: {lock_race['error']}")
    return None
