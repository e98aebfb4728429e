"""A scenario's known failures: verdict outcome + the mark for this kernel -> outcome. Pure.

A mark names one crash report as a kernel developer triages it: the report's
first line (`signature`), the task it hit (`task`, the report's "Comm:") and
the function it was in (`function`, its "RIP:"). It explains the `no kernel
bugs` check when the kernel log holds exactly that report and no other (a
"note: TASK[PID] exited with ..." line of the same task belongs to it), and
the checks it lists in `explains` (what that crash breaks, e.g. ksmd's
rescan). KNOWN-FAIL only when every failed check is explained; anything else
stays FAIL, naming the checks the mark does not explain. A pass on a marked
kernel is XPASS, so the mark goes once the kernel is fixed. An ERROR stays an
ERROR: the harness could not tell, whatever is marked.
"""
from __future__ import annotations

import re

from orchestrator.judge import crashes

from orchestrator.plumbing.outcome import Outcome


from orchestrator.scenario import KnownFailure


from orchestrator.judge.verdict import Check



HEALTH_CHECK = "no kernel bugs"


def describe(known: KnownFailure) -> str:
    return f"'{known.signature}' in {known.task} at {known.function}"


def _is_the_report(finding: crashes.Finding, known: KnownFailure) -> bool:
    comm = re.compile(rf"\bComm: {re.escape(known.task)}(?:\s|$)")
    rip = re.compile(rf"RIP: (?:[0-9a-f]{{4}}:)?{re.escape(known.function)}\+0x")
    return (finding.head[0].startswith(known.signature)
            and any(comm.search(line) for line in finding.head)
            and any(rip.match(line) for line in finding.head))


def _its_exit_note(finding: crashes.Finding, known: KnownFailure) -> bool:
    return finding.signature.name == "task exited in bad state" and finding.head[0].startswith(f"note: {known.task}[")


def crash_explained(kernel_log: str | None, known: KnownFailure) -> str | None:
    """None when the log holds exactly the marked report and nothing else; else why not."""
    if kernel_log is None:
        return "no kernel log to look for the marked report in"
    found = crashes.scan(kernel_log)
    marked = [f for f in found if _is_the_report(f, known)]
    others = [f for f in found if f not in marked and not _its_exit_note(f, known)]
    if not marked:
        return f"the kernel log has no report {describe(known)}"
    if len(marked) > 1:
        return f"the kernel log has {len(marked)} reports {describe(known)}, the mark explains one"
    if others:
        return f"the kernel log has another report: {others[0].summary()[:300]}"
    return None


def apply_known_failure(outcome: Outcome, checks: tuple[Check, ...], known: KnownFailure | None,
                        kernel_log: str | None = None) -> tuple[Outcome, str | None]:
    """The outcome on a kernel with `known` marked (None: not marked), and a note saying why."""
    if known is None or outcome not in (Outcome.PASS, Outcome.FAIL):
        return outcome, None
    marked = f"marked as known to fail on kernel {known.condition} ({describe(known)})"
    if outcome == Outcome.PASS:
        return Outcome.XPASS, f"{marked}, but every check passed: the kernel no longer fails, drop the mark"
    why_not = crash_explained(kernel_log, known)
    explained = set() if why_not else {HEALTH_CHECK, *known.explains}
    failed = [c.name for c in checks if c.outcome == Outcome.FAIL]
    unexplained = [name for name in failed if name not in explained]
    if not unexplained:
        return Outcome.KNOWN_FAIL, f"known failure on kernel {known.condition}: {describe(known)} " \
                                   f"explains {', '.join(failed)}; {known.because}"
    return Outcome.FAIL, f"{marked}, but the mark does not explain {', '.join(unexplained)}" \
                         + (f" ({why_not})" if why_not else "")
