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
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from orchestrator import probe as probe_build
from orchestrator.guest.base import Guest
from orchestrator.guest.qemu import tail
from orchestrator.guest.ssh import (OUTPUT_LIMIT, ProbeExited, RemoteProcess, SshSession, banner_answers, quote,
                                    shown_pid)
from orchestrator.inject import mce
from orchestrator.judge import crashes, logmatch
from orchestrator.judge.logmatch import LineExpectation
from orchestrator.judge.verdict import Evidence
from orchestrator.plumbing.bounded import read_head_tail, recorder_for
from orchestrator.plumbing.deadline import Deadline
from orchestrator.plumbing.guest_data import (KERNEL_LOG_COMMAND, MAX_LINE, Unreadable, hardware_corrupted,
                                              kernel_records, parse_kpageflags, shown)
from orchestrator.plumbing.outcome import HarnessError
from orchestrator.scenario import Scenario

GUEST_DOWN_EVENTS = {"GUEST_PANICKED", "SHUTDOWN", "RESET"}
GATHER_PART_S = 5.0  # each piece of evidence gathered after the steps: its own budget
STEP_MIN_S = 5.0     # a step's own time when the phase has less left
DMESG_LOOK_S = 0.5   # a console wait also looks in dmesg over SSH this often
BANNER_LOOK_S = 2.0  # after a part timed out: does sshd still greet a new connection?
KERNEL_LOG_LOOK_BYTES = 1 << 20  # what such a look reads at most
CONSOLE_READ_BYTES = 4 << 20     # what one console poll reads at most
SSHD_LOG_BYTES = 1 << 20         # the guest sshd's log kept (a flooded one is cut in the middle)
KERNEL_LOG_BYTES = 8 << 20       # the console standing in for the kernel log: first and last halves
CE_SETTLE_S = 1.5  # a corrected error shows when the guest next polls (check_interval 1 s)
SETTLE_S = 2.0     # the "settle" step: time for kernel threads (ksmd, khugepaged) to act
# Every guest expected alive is watched this long after its last step, before the
# evidence (dmesg included) is read: a kernel that oopses just after "Recovered"
# (a kernel thread meeting the poisoned page) must not pass.
AFTERMATH_S = 1.0
KERNEL_LOG_PART = "kernel log"
PANIC_TEXT_S = 10.0  # at most this long for a resumed panicked guest's text to reach the console
PANIC_QUIET_S = 0.5  # the console quiet this long after the panic line: panic() has printed what it will

# Probe commands and the event each answers with.
STEP_EVENTS = {"touch": "touched", "fsync": "fsync", "reread": "reread", "collapse": "collapse",
               "madvise-hwpoison": "madvise-hwpoison"}

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
    down = lambda: guest_down(guest)  # noqa: E731
    if scenario.expect.guest == "panic":
        sleep_watching(deadline, deadline.remaining(), down)
    elif scenario.probe.mode == "wait":
        if scenario.inject.fields is None:
            pass  # nothing was injected: straight to the steps
        elif scenario.inject.fields.status & mce.MCI_STATUS_UC:
            # The kernel logs its result after it has signalled early-kill victims,
            # so once the line is in its log the probe can be asked to go on.
            wait_failure_logged(guest, ev.injected_address >> 12, deadline, occurrences=scenario.inject.count,
                                ssh=ssh)
        else:
            # A corrected error is seen when the guest next polls its banks; there
            # is no line to wait for, so give it one more interval.
            sleep_watching(deadline, scenario.inject.interval_s or CE_SETTLE_S, down)
        _run_steps(scenario.probe.after_inject, probe, ssh, ev, deadline, down)
    # The aftermath watch runs while the evidence is gathered; the kernel log is read
    # last, once the guest has been watched AFTERMATH_S since the last step.
    watch_until = time.monotonic() + (AFTERMATH_S if scenario.expect.guest != "panic" else 0.0)
    why_down = down()
    if why_down:
        _let_panic_print(guest, deadline)
        # Nothing more comes over SSH: the console is the kernel log now.
        ev.kernel_log = read_head_tail(guest.console_log, KERNEL_LOG_BYTES)
        ev.guest_answered_after = False
        ev.down = why_down
        lost = ("probe result", "kpageflags", "meminfo")
        for what in lost:
            ev.unavailable[what] = why_down
        ev.add_cause(f"{why_down}: cost the {', '.join(lost)} and the kernel log over SSH (the console stands in; "
                     f"its lines could also have come from userspace)")
        return
    _gather(ssh, probe, ev, deadline, send_report=scenario.probe.mode == "wait", abort=down,
            parts=gathering_order(PARTS + (ras_part(bool(scenario.expect.ras_record)),)), watch_until=watch_until)
    why_down = down()
    if why_down:
        _let_panic_print(guest, deadline)
        ev.down = why_down
        lost = [what for what in ("probe result", *(part.name for part in PARTS)) if what in ev.unavailable]
        ev.add_cause(f"{why_down}" + (f": cost the {', '.join(lost)}" if lost else "")
                     + ("; the console stands in for the kernel log (its lines could also have come from "
                        "userspace)" if ev.kernel_log is None else ""))
    if ev.kernel_log is None:
        ev.kernel_log = read_head_tail(guest.console_log, KERNEL_LOG_BYTES)
    for text in console_text_ignored(guest):
        ev.add_cause(f"'{text}' on the console while the vCPUs kept running: text userspace wrote to the "
                     f"console, not the kernel's halt (ignored)")


def own_time(deadline: Deadline, what: str) -> Deadline:
    """The phase's deadline, or a fresh STEP_MIN_S when less is left: a wait that spent
    the phase (a console line that never came) does not leave the next step no time."""
    return deadline if deadline.remaining() >= STEP_MIN_S else Deadline(STEP_MIN_S, what)


def sleep_watching(deadline: Deadline, seconds: float, down) -> str | None:
    """Sleep up to `seconds` within the deadline, ending early when the guest goes down (and why)."""
    end = Deadline(min(seconds, deadline.remaining()), "sleep")
    while not end.expired():
        why = down()
        if why:
            return why
        end.sleep(0.05)
    return down()


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
            sleep_watching(deadline, SETTLE_S, down)
            continue
        if step in GUEST_STEPS or step == "ksm-remerge":
            try:
                ev.steps.append(_guest_step(step, ssh, ev, own_time(deadline, step)) if step in GUEST_STEPS
                                else _ksm_remerge_step(ssh, own_time(deadline, step)))
            except HarnessError:
                return
            continue
        if not probe.send(step):
            return
        try:
            answer = probe.read_event({STEP_EVENTS[step], "result"}, own_time(deadline, step), "observe", abort=down)
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


def guest_down(guest: Guest) -> str | None:
    """Why the guest can no longer answer, named as QEMU or the console said it
    (panic, reboot, power-off, halt, a reset from the host, QEMU gone), or None."""
    why = _down_in_events(guest) or _console_says_halted(guest)
    if why:
        return why
    gone = guest.died()
    if gone is None:
        return None
    if guest.monitor:
        # QEMU gone: its last events first. A guest that reboots under -no-reboot sends
        # SHUTDOWN and exits at once, and QEMU can exit between the look at the events
        # above and died() (CI under stress: such a reboot named "QEMU exited with code 0",
        # its SHUTDOWN recorded a moment later).
        guest.monitor.read_to_end(QEMU_GONE_EVENTS_S)
        why = _down_in_events(guest)
    return why or gone


def _down_in_events(guest: Guest) -> str | None:
    events = guest.monitor.events() if guest.monitor else []
    for event in events:
        why = _down_event(event)
        if why:
            return _qemu_reset(events) or why
    return None


def _qemu_reset(events: list[dict]) -> str | None:
    """QEMU's own reset of the guest for a machine check it could not deliver
    (target/i386 do_inject_x86_mce: MEMORY_FAILURE action 'reset', then the reset): not
    the guest kernel's doing."""
    for event in events:
        data = event.get("data") or {}
        if event.get("event") == "MEMORY_FAILURE" and data.get("action") == "reset":
            if (data.get("flags") or {}).get("recursive"):
                return ("QEMU reset the guest: a machine check came while a previous one was still in progress "
                        "on that vCPU (MCG_STATUS.MCIP set; QEMU MEMORY_FAILURE action reset, recursive: a "
                        "triple fault)")
            return ("QEMU reset the guest: a vCPU had machine checks disabled (CR4.MCE clear: 'MCE capability is "
                    "not enabled', e.g. a vCPU the guest kernel never brought online; QEMU MEMORY_FAILURE action "
                    "reset)")
    return None


def _down_event(event: dict) -> str | None:
    name, data = event.get("event"), event.get("data") or {}
    reason = data.get("reason", "no reason given")
    if name == "GUEST_PANICKED":
        return "the guest panicked"
    if name == "SHUTDOWN":
        if reason == "guest-reset":
            return "the guest rebooted (QEMU SHUTDOWN, reason guest-reset; -no-reboot keeps it down)"
        if reason == "guest-shutdown":
            return "the guest powered off (QEMU SHUTDOWN, reason guest-shutdown)"
        if reason == "guest-panic":
            return "the guest panicked"
        if reason.startswith("host-") and "reset" in reason:
            return f"the guest was reset from the host (QEMU SHUTDOWN, reason {reason}; -no-reboot keeps it down)"
        return f"QEMU was shut down (SHUTDOWN, reason {reason})"
    if name == "RESET":
        if data.get("guest") is False:
            return f"the guest was reset from the host (QEMU RESET, reason {reason})"
        return f"the guest reset (QEMU RESET, reason {reason})"
    return None


QEMU_GONE_EVENTS_S = 5.0  # at most this long for an exited QEMU's last events to be read (its socket is closed: fast unless starved)
HALT_LINES = ("reboot: System halted", "reboot: Power down", "reboot: Restarting system")
HALT_CONFIRM_S = 2.0  # a halt line on the console counts once every vCPU is seen stopped within this long
_EFLAGS_IF = 0x200


@dataclass
class _ConsoleWatch:
    follower: "ConsoleFollower"
    found: str | None = None                     # a halt line the vCPUs confirmed
    pending: tuple[str, float] | None = None     # a halt line seen, not yet confirmed: (line, since)
    userspace: list[str] = field(default_factory=list)  # halt lines the vCPUs did not confirm


_consoles: "weakref.WeakKeyDictionary[Guest, _ConsoleWatch]" = weakref.WeakKeyDictionary()


def _console_says_halted(guest: Guest) -> str | None:
    """A halt stops the vCPUs without any QEMU event: only the console tells (read on
    from where the last look stopped). The console also carries what userspace writes
    to it, so a halt line counts only once every vCPU is seen halted with interrupts
    off (the kernel's halt loop); one the vCPUs do not confirm within HALT_CONFIRM_S
    is set aside as userspace text (console_text_ignored)."""
    watch = _consoles.get(guest)
    if watch is None:
        watch = _consoles[guest] = _ConsoleWatch(ConsoleFollower(guest.console_log))
    if watch.found is None and watch.pending is None:
        for line in watch.follower.new_lines():
            halt = next((halt for halt in HALT_LINES if halt in line), None)
            if halt:
                watch.pending = (halt, time.monotonic())
                break
    if watch.pending is not None:
        if _vcpus_halted(guest):
            watch.found, watch.pending = watch.pending[0], None
        elif time.monotonic() - watch.pending[1] > HALT_CONFIRM_S:
            watch.userspace.append(watch.pending[0])
            watch.pending = None
    return f"the guest halted (console: '{watch.found}')" if watch.found else None


def _vcpus_halted(guest: Guest) -> bool:
    """Every vCPU in HLT with interrupts off (HMP `info registers`: HLT=1, RFL/EFL without IF)."""
    if guest.monitor is None:
        return False
    try:
        for cpu in range(guest.spec.vcpus):
            text = guest.monitor.hmp_query("info registers", timeout=1, cpu=cpu)
            eflags = re.search(r"\b[ER]FL=([0-9a-fA-F]+)", text)  # RFL= in 64-bit mode
            if not re.search(r"\bHLT=1\b", text) or not eflags or int(eflags.group(1), 16) & _EFLAGS_IF:
                return False
    except Exception:  # noqa: BLE001 -- no answer is no confirmation
        return False
    return True


def console_text_ignored(guest: Guest) -> list[str]:
    """Halt lines seen on the console that the vCPUs did not confirm (userspace's text). A line
    still awaiting confirmation is settled first (at most HALT_CONFIRM_S): the evidence may be
    gathered faster than that, and an unsettled line must not vanish from the account."""
    watch = _consoles.get(guest)
    if watch is None:
        return []
    settle = Deadline(HALT_CONFIRM_S + 0.5, "halt line")
    while watch.pending is not None and not settle.expired():
        _console_says_halted(guest)
        if watch.pending is not None:
            settle.sleep(0.1)
    return list(watch.userspace)


def panic_line(guest: Guest, deadline: Deadline | None = None) -> str | None:
    """The console's 'Kernel panic - not syncing: ...' line of a panicked guest (resumed
    briefly to print it, see _let_panic_print), or None."""
    _let_panic_print(guest, deadline or Deadline(2.0, "panic text"))
    return next((line[line.index("Kernel panic"):].strip() for line in tail(guest.console_log, 60).splitlines()
                 if "Kernel panic - not syncing" in line), None)


# memory_failure()'s messages on a page: "Memory failure: 0x671e: <what it did>".
FAILURE_LOGGED = LineExpectation("Memory failure: {pfn:#x}: .*", regex=True)
PANIC_PRINTED = LineExpectation("Kernel panic - not syncing: .*", regex=True)


def wait_failure_logged(guest: Guest, pfn: int, deadline: Deadline, occurrences: int = 1,
                        ssh: SshSession | None = None) -> bool:
    """Until memory_failure() has reported on `pfn` that many times: its pr_err lines reach
    the console, or, with a quiet console (loglevel=0), are found in dmesg over `ssh`."""
    pattern = logmatch.compile_expectation(FAILURE_LOGGED, {"pfn": pfn})
    prefix = f"Memory failure: {pfn:#x}:"  # what dmesg is grepped for, before the whole-message match
    return wait_console(guest, pattern, deadline, occurrences=occurrences,
                        kernel_log=(lambda: _kernel_log_lines(ssh, prefix, deadline)) if ssh else None)


def _kernel_log_lines(ssh: SshSession, text: str, deadline: Deadline) -> list[str] | None:
    """The guest kernel log's lines holding `text` (dmesg over SSH), or None when SSH does not answer."""
    try:
        status, output = ssh.run(f"{{ {KERNEL_LOG_COMMAND}; }} | grep -F -e {quote(text)}",
                                 Deadline(min(DMESG_LOOK_S * 4, max(deadline.remaining(), 0.5)), "dmesg"), "observe",
                                 limit=KERNEL_LOG_LOOK_BYTES)
    except HarnessError:
        return None
    return kernel_records(output)[0].splitlines() if status in (0, 1) else None


class ConsoleFollower:
    """Reads the console log on from where it stopped, so a poll costs only what is new.
    With the recorder that writes the file at hand, it follows the stream's offsets: a cut
    of a flooded console (bounded.ConsoleRecorder) moves what it has not read yet to a new
    place in the file, and the reader goes on there, missing only what was cut."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.partial = b""  # the line being written
        self.lost = 0       # bytes the recorder cut before this reader got to them

    def new_lines(self) -> list[str]:
        lines: list[str] = []
        recorder = recorder_for(self.path)
        try:
            if recorder is not None:
                data, self.offset, lost = recorder.read_from(self.offset, CONSOLE_READ_BYTES)
                if lost:  # what came before the cut ends where it was cut
                    self.lost += lost
                    if self.partial:
                        lines.append(self.partial.decode(errors="replace"))
                    self.partial = b""
            else:
                with self.path.open("rb") as f:
                    if f.seek(0, 2) < self.offset:
                        # Cut under us by a writer we cannot ask: go on from its end
                        # (what was cut is gone; a wait still has dmesg).
                        self.offset, self.partial = f.tell(), b""
                    f.seek(self.offset)
                    data = f.read(CONSOLE_READ_BYTES)
                self.offset += len(data)
        except OSError:
            return lines
        *complete, self.partial = (self.partial + data).split(b"\n")
        if len(self.partial) > MAX_LINE:  # a line without end: judged in pieces
            complete.append(self.partial)
            self.partial = b""
        return lines + [line.decode(errors="replace") for line in complete]


def _matching(lines: list[str], pattern: re.Pattern) -> int:
    """How many of these log lines are whole messages `pattern` matches (see logmatch)."""
    return len(logmatch.find("".join(line + "\n" for line in lines), pattern))


def wait_console(guest: Guest, pattern: re.Pattern, deadline: Deadline, occurrences: int = 1,
                 stop_when_down: bool = True, kernel_log=None) -> bool:
    """Until `occurrences` complete console messages match `pattern` whole (see logmatch;
    the console is a local file: cheap to poll, read on from the last offset).
    `kernel_log`, when given, is asked every DMESG_LOOK_S for candidate lines of the
    kernel log: a line that never reaches the console is found there. Ends early when
    the guest goes down."""
    console = ConsoleFollower(guest.console_log)
    seen = 0
    next_look = time.monotonic() + DMESG_LOOK_S
    while True:
        seen += _matching(console.new_lines(), pattern)
        if seen >= occurrences:
            return True
        if stop_when_down and guest_down(guest):
            return False
        if kernel_log is not None and (time.monotonic() >= next_look or deadline.expired()):
            lines = kernel_log()
            if lines is not None and _matching(lines, pattern) >= occurrences:
                return True
            next_look = time.monotonic() + DMESG_LOOK_S
        if deadline.expired():
            return False
        deadline.sleep(0.02)


def _gather(ssh: SshSession, probe: RemoteProcess, ev: Evidence, deadline: Deadline, send_report: bool,
            abort, parts=None, watch_until: float = 0.0) -> None:
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
        if probe.flood:
            ev.add_cause(f"{probe.flood}: cost the probe result")
    else:
        # Let the probe's channel end before opening the next one (see SshSession._open_exec);
        # how it ended is judged too.
        ev.probe_exit_status = probe.wait_exit(Deadline(min(2.0, deadline.remaining()), "probe exit"))
    if probe.ignored:
        ev.add_cause(f"{probe.ignored_count} result line(s) not from the probe the harness started were ignored "
                     f"({', '.join(probe.ignored)}; the probe's pids: {sorted(probe.owners or ())})")
    note_forged_lines(probe, ev)
    gather_parts(ssh, ev, abort, PARTS if parts is None else parts, watch_until=watch_until)


def note_forged_lines(probe: RemoteProcess, ev: Evidence) -> None:
    """Lines on the probe's stream that cannot be the probe's own, for the verdict and the causes."""
    ev.second_ready = list(probe.second_ready)
    ready_pid = ev.ready.get("pid") if ev.ready else None
    if probe.started_pid is not None and ready_pid is not None and ready_pid != probe.started_pid:
        ev.add_cause(f"the ready report came from pid {shown_pid(ready_pid)}, not the probe the harness "
                     f"started (pid {probe.started_pid}): a wrapper around the probe, or another process")
    others = [what for what in probe.forged if not what.startswith("a second ready report")]
    if others:
        ev.add_cause(f"ignored on the probe's stream: {'; '.join(others)}")


@dataclass(frozen=True)
class Part:
    """One piece of evidence gathered over SSH: its own command, its own deadline."""
    name: str                                # as named in Evidence.unavailable
    command: Callable[[Evidence], str]
    store: Callable[[Evidence, str], None]   # parses the output; Unreadable when it is unreadable
    limit: int = OUTPUT_LIMIT                # output kept: first and last halves
    seconds: float | None = None             # its own budget, when GATHER_PART_S is too little


def _store_kpageflags(ev: Evidence, output: str) -> None:
    ev.kpageflags = parse_kpageflags(output, ev.checked_pfn)


def _store_meminfo(ev: Evidence, output: str) -> None:
    kb = hardware_corrupted(output)
    if kb is None:
        raise Unreadable(f"no HardwareCorrupted line in /proc/meminfo: {shown(output)}")
    ev.hardware_corrupted_kb_after = kb


def _store_kernel_log(ev: Evidence, output: str) -> None:
    """The kernel's own records only: text a user process wrote to /dev/kmsg is not the
    kernel's; one that looks like a crash report or a halt is named, never judged."""
    ev.kernel_log, user = kernel_records(output)
    posing = [line.strip() for line in user
              if any(halt in line for halt in HALT_LINES) or crashes.scan(line)]
    if posing:
        ev.add_cause(f"{len(posing)} line(s) a user process wrote to /dev/kmsg posing as the kernel's were "
                     f"left out of the kernel log: {shown(posing[0])}")


NO_RAS_DAEMON = "MCEORCH-NO-RAS-DAEMON"
RAS_ONE_LOOK_S = 20.0
# rasdaemon stores what it read from the kernel's mce_record trace event in its
# database a moment after the kernel logged the error: ask again for a while.
# One look, or (when a scenario expects a record) up to `tries` looks.
def ras_command(tries: int) -> str:
    return ("command -v ras-mc-ctl >/dev/null || { echo " + NO_RAS_DAEMON + "; exit 0; }; "
            "i=0; while :; do out=$(ras-mc-ctl --errors 2>&1); i=$((i + 1)); "
            f"case $out in *status=*) break;; esac; [ $i -ge {int(tries)} ] && break; sleep 0.5; done; "
            "printf '%s\\n' \"$out\"")
_RAS_FIELD = re.compile(r"\b(bank|status|addr)=(0x[0-9a-fA-F]+|\d+)")


def parse_ras_errors(output: str) -> list[dict]:
    """`ras-mc-ctl --errors` -> its machine-check records as {bank, status, addr} (absent: None)."""
    records = []
    for line in output.splitlines():
        fields = {key: int(value, 0) for key, value in _RAS_FIELD.findall(line)}
        if "status" in fields:
            # ras-mc-ctl leaves out zero fields: bank 0 prints no bank=.
            records.append({"bank": fields.get("bank", 0), "status": fields["status"], "addr": fields.get("addr")})
    return records


def _store_ras(ev: Evidence, output: str) -> None:
    if NO_RAS_DAEMON in output:
        ev.unavailable["ras record"] = "the guest has no RAS daemon (no ras-mc-ctl; use an image with rasdaemon)"
        return
    ev.ras_log = output
    ev.ras_records = parse_ras_errors(output)


PARTS = (
    Part("kpageflags", lambda ev: f"{probe_build.REMOTE_PATH} --kpageflags {ev.checked_pfn}", _store_kpageflags),
    Part("meminfo", lambda ev: "cat /proc/meminfo", _store_meminfo),
    Part(KERNEL_LOG_PART, lambda ev: KERNEL_LOG_COMMAND, lambda ev, output: _store_kernel_log(ev, output)),
    Part("sshd log", lambda ev: "cat /run/dropbear.log 2>/dev/null; true",
         lambda ev, output: setattr(ev, "sshd_log", output), limit=SSHD_LOG_BYTES),
)


def ras_part(expect_record: bool) -> Part:
    """The RAS daemon's records, in the artifacts of every run on an image that has one."""
    # ras-mc-ctl (perl) took 4.6 s per call under TCG on a loaded host, and more than 5 s
    # with two CPU hogs beside the guest (a CI run: the one look of a scenario expecting no
    # record ran out of GATHER_PART_S, an ERROR where the negative control must FAIL).
    if expect_record:
        return Part("ras record", lambda ev: ras_command(6), _store_ras, seconds=45.0)
    return Part("ras record", lambda ev: ras_command(1), _store_ras, seconds=RAS_ONE_LOOK_S)


def gathering_order(parts: tuple[Part, ...]) -> tuple[Part, ...]:
    """The kernel log last: it is the look that ends the aftermath watch."""
    return tuple(sorted(parts, key=lambda part: part.name == KERNEL_LOG_PART))


def gather_parts(ssh: SshSession, ev: Evidence, abort, parts=PARTS, part_s: float = GATHER_PART_S,
                 watch_until: float = 0.0) -> None:
    """Each part is its own command with a fresh budget of `part_s` seconds, whatever is
    left of the phase's deadline (a hung probe may have spent it all), so one failure
    costs one part. Once SSH itself is gone, or the guest went down, the parts left
    are not tried: they would fail the same way. The kernel log is not read before
    `watch_until` (time.monotonic()): the guest is watched until then."""
    failed: str | None = None
    unreachable: str | None = None  # sshd no longer greets: the parts left are not tried
    for part in parts:
        if part.name == KERNEL_LOG_PART:
            sleep_watching(Deadline(max(watch_until - time.monotonic(), 0.0), "aftermath"),
                           watch_until - time.monotonic(), abort)
        why_down = abort()
        if why_down:
            ev.unavailable[part.name] = why_down
            ev.guest_answered_after = False
            continue
        if unreachable is not None or (failed is not None and not ssh.connected()):
            ev.unavailable[part.name] = unreachable or failed
            continue
        try:
            output = ssh.check(part.command(ev), Deadline(part.seconds or part_s, part.name), "observe", limit=part.limit)
        except HarnessError as exc:
            # No panic, no reset, QEMU running, yet no answer: a dead sshd and a hung
            # kernel look the same from here, so this is not evidence against the kernel.
            failed = abort() or f"{exc.message} (no panic or reset seen; QEMU still running)"
            ev.unavailable[part.name] = failed
            if "kept printing" in exc.message:
                ev.add_cause(f"SSH output flood: {exc.message}: cost the {part.name}")
            if not abort() and not banner_answers(ssh.port, BANNER_LOOK_S, ssh.host, ssh.via):
                unreachable = (f"{exc.message}, and sshd gave no banner within {BANNER_LOOK_S:g} s: "
                               f"sshd stalled or the guest's network is down (no panic or reset seen; "
                               f"QEMU still running)")
                ev.unavailable[part.name] = unreachable
            continue
        ev.guest_answered_after = True
        try:
            part.store(ev, output)
        except Unreadable as exc:
            ev.unavailable[part.name] = f"the guest's answer was unreadable: {exc}"
    if ev.guest_answered_after is None and failed is not None:
        ev.unavailable["liveness check"] = unreachable or failed
        if abort():
            ev.guest_answered_after = False
    if unreachable is not None:
        lost = [part.name for part in parts if ev.unavailable.get(part.name) == unreachable]
        ev.add_cause(f"sshd stalled or the guest's network is down (no SSH banner within {BANNER_LOOK_S:g} s): "
                     f"cost the {', '.join(lost)}")
