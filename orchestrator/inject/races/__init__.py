"""The forced races: the harness stops the guest's vCPUs through QEMU's gdbstub
(gdbstub.py) so that the machine check lands inside a kernel window the probe
opens: highorder.py (take-free-block) and recompound.py (retake-thp-block).

A race the harness could not force is the harness's ERROR, never a verdict on the
kernel; the runner tries it again in a fresh guest, at most ATTEMPTS times."""
from __future__ import annotations

from pathlib import Path

from orchestrator.plumbing.outcome import HarnessError

NOT_FORCED = "could not force the interleaving"  # every such HarnessError's message starts so
ATTEMPTS = 3  # seen: 1 not forced in a make matrix (8 of 8 reruns forced it), 1 in a CI run


def not_forced(exc: HarnessError) -> bool:
    return exc.phase == "inject" and exc.message.startswith(NOT_FORCED)


def set_aside(artifacts: Path, attempt: int) -> Path:
    """Move an attempt's artifacts into race-attempt-N/ (a fixed name no input can
    take), so the next attempt's guest writes its own beside them."""
    folder = artifacts / f"race-attempt-{attempt}"
    folder.mkdir()
    for entry in artifacts.iterdir():
        if not entry.name.startswith("race-attempt-"):
            entry.rename(folder / entry.name)
    return folder
