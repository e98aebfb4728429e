"""Linux crash reports in a kernel log: signatures kept as data, and a scanner. Pure.

The list follows the kinds of report syzkaller's Linux report parser
(google/syzkaller pkg/report/linux.go) knows, reduced to the first line each
report starts with, as 6.1 and 6.12 print it. A signature matches a kernel
message (timestamp removed, see logmatch.messages) from its START, with the
subsystem prefix the kernel puts there ("watchdog: ", "rcu: "), so text that
merely mentions a word ("RETBleed: WARNING: Spectre v2 mitigation leaves CPU
vulnerable ...", printed at every boot) is not a crash.
Each signature has a unit test with real kernel output (tests/unit/test_crashes.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from orchestrator.judge.logmatch import messages


# A report's head, as a kernel developer reads it: its first line, then what the
# fault was, which task, where (#PF, Oops, CPU, RIP ...), up to RIP or the call trace.
HEAD_WINDOW = 16
# (refcount_t's line comes before its WARNING; a task's two exit notes go together.)
_HEAD_KEEP = re.compile(r"^(#PF: |Oops|invalid opcode: |WARNING: CPU: |CPU: |RIP: |(Read|Write) of size |note: .+ exited with )")
_HEAD_END = re.compile(r"\bRIP: |Call Trace:")


@dataclass(frozen=True)
class Signature:
    name: str
    pattern: str   # matched with re.match against a whole message


# Specific kinds first: the first signature that matches names the finding.
SIGNATURES: tuple[Signature, ...] = (
    Signature("kernel BUG", r"kernel BUG at \S+:\d+!"),
    Signature("Oops", r"Oops: "),                                   # 6.9+: "Oops: invalid opcode: 0000 [#1] ..."
    Signature("invalid opcode", r"invalid opcode: [0-9a-f]{4} \[#\d+\]"),    # 6.1 after BUG()/BUG_ON
    Signature("general protection fault", r"general protection fault\b.*: [0-9a-f]{4} \[#\d+\]"),
    Signature("divide error", r"divide error: [0-9a-f]{4} \[#\d+\]"),
    Signature("stack segment fault", r"stack segment: [0-9a-f]{4} \[#\d+\]"),
    Signature("double fault", r"PANIC: double fault"),
    Signature("KASAN", r"BUG: KASAN: "),
    Signature("KFENCE", r"BUG: KFENCE: "),
    Signature("KMSAN", r"BUG: KMSAN: "),
    Signature("UBSAN", r"UBSAN: \S"),
    Signature("soft lockup", r"(?:watchdog: )?BUG: soft lockup - CPU#\d+ stuck for \d+s!"),
    Signature("hard lockup", r"(?:NMI watchdog|watchdog): Watchdog detected hard LOCKUP on cpu \d+"),
    Signature("RCU stall", r"(?:rcu: )?INFO: rcu_(?:sched|preempt|bh) (?:self-)?detected (?:expedited )?stalls?\b"),
    Signature("hung task", r"INFO: task .+:\d+ blocked for more than \d+ seconds\."),
    Signature("bad page state", r"BUG: Bad page (?:state|map) in process "),
    Signature("page fault in kernel", r"BUG: (?:unable to handle (?:page fault|kernel)|kernel NULL pointer dereference)"),
    Signature("slab corruption", r"BUG [\w.:-]+ (?:\(.*\))?: \S"),   # SLUB: "BUG kmalloc-128 (Not tainted): Poison overwritten"
    Signature("list corruption", r"list_(?:add|del)(?:_rcu)? (?:corruption|double add)\b"),
    Signature("refcount_t", r"refcount_t: (?:underflow|overflow|saturated|addition on 0|decrement hit 0)"),
    Signature("BUG", r"BUG: \S"),
    Signature("WARNING", r"WARNING: \S"),                          # WARN(): "WARNING: CPU: 0 PID: 1 at FILE:LINE func"
    Signature("Unable to handle kernel", r"Unable to handle kernel \S"),
    Signature("task exited in bad state", r"note: .+\[\d+\] exited with (?:irqs disabled|preempt_count \d+)"),
    Signature("recursive fault", r"Fixing recursive fault but reboot is needed!"),
    Signature("kernel panic", r"Kernel panic - not syncing: "),
)

_COMPILED = tuple((s, re.compile(s.pattern)) for s in SIGNATURES)


@dataclass(frozen=True)
class Finding:
    signature: Signature
    index: int                # the message's position in the log
    head: tuple[str, ...]     # the report's first lines (see _HEAD_KEEP), starting with the matching message
    end: int                  # the position of the head's last message

    def summary(self) -> str:
        return " | ".join(line.strip() for line in self.head)


def classify(message: str) -> Signature | None:
    """The signature a kernel message (timestamp removed) starts a report of, if any."""
    for signature, pattern in _COMPILED:
        if pattern.match(message):
            return signature
    return None


def scan(log: str) -> list[Finding]:
    """Every crash report in `log`, in log order. A match inside the head of the
    report before it (6.1's "invalid opcode" after "kernel BUG at", 6.12's "Oops"
    after "BUG: unable to handle page fault") belongs to that report."""
    found: list[Finding] = []
    lines = messages(log)
    for i, message in enumerate(lines):
        if found and i <= found[-1].end:
            continue
        signature = classify(message)
        if signature is not None:
            head, end = _head(lines, i)
            found.append(Finding(signature, i, head, end))
    return found


def _head(lines: list[str], first: int) -> tuple[tuple[str, ...], int]:
    head, end = [], first
    for n, line in enumerate(lines[first:first + HEAD_WINDOW]):
        text = line.strip()
        if n and head[0].startswith("note: ") and not text.startswith("note: "):
            break  # a task's exit notes that start a report are all of it: what follows is another
        if n == 0 or _HEAD_KEEP.match(text):
            head.append(text)
            end = first + n
        if n and (_HEAD_END.search(text) or classify(text) and not _HEAD_KEEP.match(text)):
            break
    return tuple(head), end
