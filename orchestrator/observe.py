"""Observation: what happens after the injection, and the evidence gathered.

Waits on the console and QMP (cheap, local) rather than on SSH where it can;
runs the scenario's steps (probe commands, or writes the harness makes in the
guest); gathers the probe's report, kpageflags, meminfo, the kernel log and
sshd's log, each part its own SSH command with its own deadline, so one
failure costs one part. A guest that went down (panic, reset, QEMU gone) is
never waited for: the console stands in for the kernel log.
"""
from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import dataclass
from typing import Callable

from orchestrator import logmatch, mce
from orchestrator import probe as probe_build
from orchestrator.backends.base import Guest
from orchestrator.deadline import Deadline
from orchestrator.logmatch import LineExpectation
from orchestrator.outcome import HarnessError
from orchestrator.scenario import Scenario
from orchestrator.ssh import ProbeExited, RemoteProcess, SshSession
from orchestrator.verdict import Evidence

GUEST_DOWN_EVENTS = {"GUEST_PANICKED", "SHUTDOWN", "RESET"}
GATHER_PART_S = 5.0  # each piece of evidence gathered after the steps: its own budget
CE_SETTLE_S = 1.5  # a corrected error shows when the guest next polls (check_interval 1 s)
SETTLE_S = 2.0     # the "settle" step: time for kernel threads (ksmd, khugepaged) to act
PANIC_TEXT_S = 10.0  # at most this long for a resumed panicked guest's text to reach the console
PANIC_QUIET_S = 0.5  # the console quiet this long after the panic line: panic() has printed what it will
_HW_CORRUPTED = re.compile(r"^HardwareCorrupted:\s+(\d+) kB", re.M)

# Probe commands and the event each answers with.
STEP_EVENTS = {"touch": "touched", "fsync": "fsync", "reread": "reread", "collapse": "collapse"}

# Steps the harness does in the guest, on the target page: (file, what to write).
GUEST_STEPS = {
    "soft-offline": ("/sys/devices/system/memory/soft_offline_page", lambda pfn: f"{pfn << 12:#x}"),
    "soft-poison": ("/sys/kernel/debug/hwpoison/corrupt-pfn", lambda pfn: f"{pfn:#x}"),
    "unpoison": ("/sys/kernel/debug/hwpoison/unpoison-pfn", lambda pfn: f"{pfn:#x}"),
}

# A step the harness runs as a second process in the guest (the probe binary in
# another mode): fresh pages with the ksm kind's content, for ksmd to scan.
KSM_REMERGE_PAGES = 16
ANSWER_MARGIN_S = 5.0  # of the observe deadline, kept for the answer and the evidence gathering

_ERRNO_TEXT = {"Operation not supported": "EOPNOTSUPP", "Device or resource busy": "EBUSY",
               "Invalid argument": "EINVAL", "Operation not permitted": "EPERM", "I/O error": "EIO",
               "Input/output error": "EIO", "No such device or address": "ENXIO"}


def observe(scenario: Scenario, guest: Guest, ssh: SshSession, probe: RemoteProcess, ev: Evidence) -> None:
    deadline = Deadline(scenario.timeouts.observe, "observe")
    down = lambda: _guest_down(guest)  # noqa: E731
    if scenario.expect.guest == "panic":
        guest.wait_for_events(GUEST_DOWN_EVENTS, deadline.remaining())
    elif scenario.probe.mode == "wait":
        if scenario.inject.fields is None:
            pass  # nothing was injected: straight to the steps
        elif scenario.inject.fields.status & mce.MCI_STATUS_UC:
            # The kernel logs its result after it has signalled early-kill victims,
            # so once the line is on the console the probe can be asked to go on.
            wait_failure_logged(guest, ev.injected_address >> 12, deadline, occurrences=scenario.inject.count)
        else:
            # A corrected error is seen when the guest next polls its banks; there
            # is no line to wait for, so give it one more interval.
            deadline.sleep(scenario.inject.interval_s or CE_SETTLE_S)
        _run_steps(scenario.probe.after_inject, probe, ssh, ev, deadline, down)
    why_down = down()
    if why_down:
        _let_panic_print(guest, deadline)
        # Nothing more comes over SSH: the console is the kernel log now.
        ev.kernel_log = guest.console_log.read_text(errors="replace")
        ev.guest_answered_after = False
        for what in ("probe result", "kpageflags", "meminfo"):
            ev.unavailable[what] = why_down
        return
    _gather(ssh, probe, ev, deadline, send_report=scenario.probe.mode == "wait", abort=down)
    if ev.kernel_log is None:
        ev.kernel_log = guest.console_log.read_text(errors="replace")


def _guest_step(step: str, ssh: SshSession, ev: Evidence, deadline: Deadline) -> dict:
    path, value = GUEST_STEPS[step]
    status, output = ssh.run(f"echo {value(ev.checked_pfn)} > {path}", deadline, "observe")
    result = "ok" if status == 0 else next((name for text, name in _ERRNO_TEXT.items() if text in output), "other")
    return {"event": step, "result": result, "output": output.strip()}


def _ksm_remerge_step(ssh: SshSession, deadline: Deadline) -> dict:
    """The probe's --ksm-remerge mode waits in the guest for ksmd's full_scans to
    advance, bounded by what is left of the observe deadline."""
    seconds = max(1, int(deadline.remaining() - ANSWER_MARGIN_S))
    status, output = ssh.run(f"{probe_build.REMOTE_PATH} --ksm-remerge {KSM_REMERGE_PAGES} --timeout {seconds}",
                             deadline, "observe")
    for line in reversed(output.splitlines()):
        with contextlib.suppress(ValueError):
            answer = json.loads(line)
            if isinstance(answer, dict) and answer.get("event") == "ksm-remerge":
                return answer
    return {"event": "ksm-remerge", "result": "error", "output": output.strip()[-500:], "status": status}


def _run_steps(steps: tuple[str, ...], probe: RemoteProcess, ssh: SshSession, ev: Evidence,
               deadline: Deadline, down) -> None:
    """Each step is a probe command (or a harness write in the guest); its answer goes
    into the evidence. A SIGBUS (or the guest going down) ends the sequence: the
    probe has reported and gone."""
    for step in steps:
        if down():
            return
        if step == "settle":
            deadline.sleep(SETTLE_S)
            continue
        if step in GUEST_STEPS or step == "ksm-remerge":
            try:
                ev.steps.append(_guest_step(step, ssh, ev, deadline) if step in GUEST_STEPS
                                else _ksm_remerge_step(ssh, deadline))
            except HarnessError:
                return
            continue
        if not probe.send(step):
            return
        try:
            answer = probe.read_event({STEP_EVENTS[step], "result"}, deadline, "observe", abort=down)
        except ProbeExited as exc:
            ev.probe_exit_status = exc.status  # its shell's report is read only once
            return
        except HarnessError:
            return  # the evidence gathering that follows says what is missing
        if answer["event"] == "result":
            probe.pushback(answer)
            return
        ev.steps.append(answer)


def _let_panic_print(guest: Guest, deadline: Deadline) -> None:
    """With -action panic=pause, a panic raised in machine-check context pauses
    the guest before its text reaches the serial port: resume it briefly."""
    if not guest.panicked() or guest.died():
        return
    with contextlib.suppress(Exception):
        guest.monitor.execute("cont", timeout=2)
    wait = Deadline(max(min(PANIC_TEXT_S, deadline.remaining()), 1.0), "panic text")
    if wait_console(guest, logmatch.compile_expectation(PANIC_PRINTED, {}), wait, stop_when_down=False):
        _wait_console_settled(guest, wait)


def _wait_console_settled(guest: Guest, deadline: Deadline) -> None:
    """Until the console ends with a whole line and has not grown for PANIC_QUIET_S.
    "Kernel panic" alone can be read while the rest of its line is still on its way
    through the serial port (seen on a loaded host: the message cut in the middle, a
    false FAIL). Waiting for panic()'s own last line does not work: in machine-check
    context it stays in the printk buffer and never reaches the console."""
    size, since = -1, time.monotonic()
    while not deadline.expired():
        try:
            now = guest.console_log.stat().st_size
            with guest.console_log.open("rb") as console:
                console.seek(max(now - 1, 0))
                whole_line = console.read(1) == b"\n"
        except OSError:
            return
        if now != size:
            size, since = now, time.monotonic()
        elif whole_line and time.monotonic() - since >= PANIC_QUIET_S:
            return
        deadline.sleep(0.05)


def _guest_down(guest: Guest) -> str | None:
    """Why the guest can no longer answer (panic, reset, QEMU gone), or None."""
    events = {e["event"] for e in guest.monitor.events()} if guest.monitor else set()
    if "GUEST_PANICKED" in events:
        return "the guest panicked"
    if events & {"SHUTDOWN", "RESET"}:
        return "the guest reset or shut down"
    return guest.died()


# memory_failure()'s messages on a page: "Memory failure: 0x671e: <what it did>".
FAILURE_LOGGED = LineExpectation("Memory failure: {pfn:#x}: .*", regex=True)
PANIC_PRINTED = LineExpectation("Kernel panic - not syncing: .*", regex=True)


def wait_failure_logged(guest: Guest, pfn: int, deadline: Deadline, occurrences: int = 1) -> bool:
    """Until memory_failure() has reported on `pfn` that many times (its pr_err lines reach the console)."""
    return wait_console(guest, logmatch.compile_expectation(FAILURE_LOGGED, {"pfn": pfn}), deadline,
                        occurrences=occurrences)


def wait_console(guest: Guest, pattern: re.Pattern, deadline: Deadline, occurrences: int = 1,
                 stop_when_down: bool = True) -> bool:
    """Until `occurrences` complete console messages match `pattern` whole (see logmatch;
    the console is a local file: cheap to poll)."""
    while not deadline.expired():
        if len(logmatch.find(guest.console_log.read_text(errors="replace"), pattern, complete_only=True)) >= occurrences:
            return True
        if stop_when_down and _guest_down(guest):
            return False
        deadline.sleep(0.02)
    return False


def _gather(ssh: SshSession, probe: RemoteProcess, ev: Evidence, deadline: Deadline, send_report: bool,
            abort) -> None:
    try:
        if send_report:
            probe.send("report")
        while True:
            result = probe.read_event({"result"}, deadline, "observe", abort=abort)
            if result.get("process") != "child":
                ev.probe_result = result
                break
            ev.child_results.append(result)
    except ProbeExited as exc:
        if ev.probe_exit_status is None:
            ev.probe_exit_status = exc.status
        ev.unavailable["probe result"] = exc.message
    except HarnessError as exc:
        ev.unavailable["probe result"] = exc.message
    else:
        # Let the probe's channel end before opening the next one (see SshSession._open_exec);
        # how it ended is judged too.
        ev.probe_exit_status = probe.wait_exit(Deadline(min(2.0, deadline.remaining()), "probe exit"))
    gather_parts(ssh, ev, abort)


@dataclass(frozen=True)
class Part:
    """One piece of evidence gathered over SSH: its own command, its own deadline."""
    name: str                                # as named in Evidence.unavailable
    command: Callable[[Evidence], str]
    store: Callable[[Evidence, str], None]   # parses the output; ValueError when it is unreadable


def _store_kpageflags(ev: Evidence, output: str) -> None:
    ev.kpageflags = parse_kpageflags(output, ev.checked_pfn)


def _store_meminfo(ev: Evidence, output: str) -> None:
    kb = hardware_corrupted(output)
    if kb is None:
        raise ValueError(f"no HardwareCorrupted line in /proc/meminfo: {shown(output)}")
    ev.hardware_corrupted_kb_after = kb


PARTS = (
    Part("kpageflags", lambda ev: f"{probe_build.REMOTE_PATH} --kpageflags {ev.checked_pfn}", _store_kpageflags),
    Part("meminfo", lambda ev: "cat /proc/meminfo", _store_meminfo),
    Part("kernel log", lambda ev: "dmesg", lambda ev, output: setattr(ev, "kernel_log", output)),
    Part("sshd log", lambda ev: "cat /run/dropbear.log 2>/dev/null; true",
         lambda ev, output: setattr(ev, "sshd_log", output)),
)


def gather_parts(ssh: SshSession, ev: Evidence, abort, parts=PARTS, part_s: float = GATHER_PART_S) -> None:
    """Each part is its own command with a fresh budget of `part_s` seconds, whatever is
    left of the phase's deadline (a hung probe may have spent it all), so one failure
    costs one part. Once SSH itself is gone, or the guest went down, the parts left
    are not tried: they would fail the same way."""
    failed: str | None = None
    for part in parts:
        why_down = abort()
        if why_down:
            ev.unavailable[part.name] = why_down
            ev.guest_answered_after = False
            continue
        if failed is not None and not ssh.connected():
            ev.unavailable[part.name] = failed
            continue
        try:
            output = ssh.check(part.command(ev), Deadline(part_s, part.name), "observe")
        except HarnessError as exc:
            # No panic, no reset, QEMU running, yet no answer: a dead sshd and a hung
            # kernel look the same from here, so this is not evidence against the kernel.
            failed = abort() or f"{exc.message} (no panic or reset seen; QEMU still running)"
            ev.unavailable[part.name] = failed
            continue
        ev.guest_answered_after = True
        try:
            part.store(ev, output)
        except ValueError as exc:
            ev.unavailable[part.name] = f"the guest's answer was unreadable: {exc}"
    if ev.guest_answered_after is None and failed is not None:
        ev.unavailable["liveness check"] = failed
        if abort():
            ev.guest_answered_after = False


def parse_kpageflags(output: str, pfn: int | None) -> int:
    """The flags word from the probe's `--kpageflags PFN` line; other lines are ignored,
    anything that is not one clear answer for that PFN is a ValueError."""
    found = set()
    for line in output.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("event") == "kpageflags":
            flags = message.get("flags")
            if message.get("pfn") != pfn or type(flags) is not int or not 0 <= flags < 1 << 64:
                raise ValueError(f"page-flags answer for PFN {pfn}: {shown(line)}")
            found.add(flags)
    if len(found) != 1:
        raise ValueError(f"{'no' if not found else 'more than one'} page-flags answer for PFN {pfn}: {shown(output)}")
    return found.pop()


def shown(text: str, limit: int = 120) -> str:
    """A guest-provided value quoted for a message, cut to `limit` characters."""
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)")


def hardware_corrupted(meminfo: str) -> int | None:
    match = _HW_CORRUPTED.search(meminfo)
    return int(match.group(1)) if match else None
