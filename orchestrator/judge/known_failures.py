"""A scenario's known failures: verdict outcome + the mark for this kernel -> outcome. Pure.

KNOWN-FAIL only when a failed check's detail shows the marked signature, so a
kernel that fails some other way is still a FAIL; a pass on a marked kernel is
XPASS, so the mark goes once the kernel is fixed. An ERROR stays an ERROR: the
harness could not tell, whatever is marked.
"""
from __future__ import annotations

from orchestrator.judge.verdict import Check
from orchestrator.plumbing.outcome import Outcome
from orchestrator.scenario import KnownFailure


def apply_known_failure(outcome: Outcome, checks: tuple[Check, ...],
                        known: KnownFailure | None) -> tuple[Outcome, str | None]:
    """The outcome on a kernel with `known` marked (None: not marked), and a note saying why."""
    if known is None or outcome not in (Outcome.PASS, Outcome.FAIL):
        return outcome, None
    marked = f"marked as known to fail on kernel {known.condition} ('{known.signature}')"
    if outcome == Outcome.PASS:
        return Outcome.XPASS, f"{marked}, but every check passed: the kernel no longer fails, drop the mark"
    showing = [c.name for c in checks if c.outcome == Outcome.FAIL and known.signature in c.detail]
    if showing:
        return Outcome.KNOWN_FAIL, f"known failure on kernel {known.condition}: '{known.signature}' " \
                                   f"in {', '.join(showing)}; {known.because}"
    return Outcome.FAIL, f"{marked}, but it failed another way (no failed check shows the signature)"
