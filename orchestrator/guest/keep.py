"""A kept guest (`run --keep`): left running after its scenario for a developer to poke, with
`mce-orchestrator inject` (a machine check by guest-physical address, or by guest PID and
virtual address) and `mce-orchestrator ssh` (a shell, the host key pinned).

The running orchestrator's own QMP connection is one end of a socketpair, which no other
process can reach. A kept guest therefore gets a second QMP monitor on a unix socket in a
private 0700 folder: only the user who ran the orchestrator can open it (a TCP monitor port,
even on loopback, would give every local user control of a root QEMU). The folder's path
and what a client needs (SSH port, key path, pinned host key line, the guest's shape for
validating an injection) go to kept.json in the scenario's artifacts; no key material does.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import time
import shutil
import socket
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator.guest.monitor import Monitor, MonitorError
from orchestrator.guest.ssh import SshSession, quote
from orchestrator.inject import Injection, inject
from orchestrator.inject import mce
from orchestrator.plumbing.deadline import Deadline
from orchestrator.plumbing.outcome import HarnessError, InputError

STATE_FILE = "kept.json"
SSH_CONNECT_TIMEOUT_S = 10
WATCH_S = 5.0           # after an inject: how long to watch what the guest does
PANIC_TEXT_S = 3.0      # a panicked (paused) guest resumed this long for its panic line to reach the console
DOWN_EVENTS = {"GUEST_PANICKED", "SHUTDOWN", "RESET"}
RESULT_LINE = re.compile(r"Memory failure: .*|mce: .*|MCE: .*|Kernel panic - not syncing: .*|"
                         r"Machine check events logged.*|Hardware Error.*")
KEEP_CHOICES = ("on-failure", "always")


@dataclass(frozen=True)
class KeptGuest:
    scenario: str
    artifacts: str
    qemu_pid: int
    qmp_socket: str
    ssh_port: int
    client_key: str
    host_key_line: str
    known_hosts: str
    vcpus: int
    memory_mib: int
    machine: str
    kernel_release: str
    # The guest's RAM as its own QEMU reported it ([start, end) pairs), read when it was kept.
    ram_ranges: tuple[tuple[int, int], ...] = ()
    # Why the guest can no longer answer (a panic, a reset), once the run or an inject saw it.
    down: str | None = None

    @property
    def limits(self) -> mce.MceLimits:
        return mce.MceLimits(vcpus=self.vcpus, banks=mce.QEMU_MCE_BANKS,
                             ram_ranges=tuple(tuple(r) for r in self.ram_ranges))

    def save(self) -> Path:
        path = Path(self.artifacts) / STATE_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> "KeptGuest":
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise InputError(f"{path}: not a kept guest's state ({exc})") from None


def private_socket_folder() -> Path:
    """A fresh 0700 folder for the kept guest's QMP socket (short path: sun_path is 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix="mce-kept-"))


def remove_socket_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def find(results: Path, given: Path | None) -> KeptGuest:
    """The kept guest named by --guest (its kept.json or artifacts folder), else the only one
    still running among the results."""
    if given is not None:
        path = given / STATE_FILE if given.is_dir() else given
        if not path.is_file():
            raise InputError(f"--guest {given}: no {STATE_FILE} there (was the run started with --keep?)")
        guest = KeptGuest.load(path)
        if not _alive(guest.qemu_pid):
            raise InputError(f"--guest {given}: its QEMU (pid {guest.qemu_pid}) is gone")
        return _answering(guest)
    # results/latest is a symlink to one of the runs: count each state file once.
    files = sorted({p.resolve() for p in results.glob(f"*/*/{STATE_FILE}")})
    running = [g for g in (KeptGuest.load(p) for p in files) if _alive(g.qemu_pid)]
    if not running:
        raise InputError(f"no kept guest is running (results in {results}); start one with `run --keep always`")
    if len(running) > 1:
        raise InputError(f"{len(running)} kept guests are running; name one with --guest "
                         f"({', '.join(g.artifacts for g in running)})")
    return _answering(running[0])


def _answering(guest: KeptGuest) -> KeptGuest:
    if guest.down:
        raise InputError(f"the kept guest is down: {guest.down}; its QEMU (pid {guest.qemu_pid}) holds it for a "
                         f"look until the run is stopped (Ctrl-C); console: {Path(guest.artifacts) / 'console.log'}")
    return guest


def why_unreachable(guest: KeptGuest) -> str:
    """After ssh failed: is the guest gone (QEMU exited, or the run saw it go down)?"""
    if not _alive(guest.qemu_pid):
        return f"the kept guest is gone: its QEMU (pid {guest.qemu_pid}) has exited"
    path = Path(guest.artifacts) / STATE_FILE
    now = KeptGuest.load(path) if path.is_file() else guest
    if now.down:
        return f"the kept guest is down: {now.down}"
    return (f"no SSH answer from the kept guest within {SSH_CONNECT_TIMEOUT_S} s although its QEMU (pid "
            f"{guest.qemu_pid}) runs: a hung kernel or a dead sshd (console: {Path(guest.artifacts) / 'console.log'})")


def mark_down(guest: KeptGuest, why: str) -> None:
    """Record in kept.json that the guest no longer answers (ssh and inject then say so)."""
    path = Path(guest.artifacts) / STATE_FILE
    if path.is_file():
        dataclasses.replace(KeptGuest.load(path), down=why).save()


def ssh_argv(guest: KeptGuest, command: list[str]) -> list[str]:
    """The OpenSSH client line for a kept guest: its key, the pinned host key, nothing else trusted."""
    return ["ssh", "-i", guest.client_key, "-p", str(guest.ssh_port),
            "-o", f"UserKnownHostsFile={guest.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR",
            # A guest that stopped answering ends the session instead of hanging it.
            "-o", f"ConnectTimeout={SSH_CONNECT_TIMEOUT_S}", "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=3",
            "root@127.0.0.1", *command]


PAGEMAP_PRESENT = 1 << 63
PAGEMAP_SWAPPED = 1 << 62
PAGEMAP_PFN_MASK = (1 << 55) - 1


def pagemap_pfn(entry: int, pid: int, va: int) -> int:
    """A /proc/PID/pagemap entry -> the PFN (Documentation/admin-guide/mm/pagemap.rst)."""
    if entry & PAGEMAP_SWAPPED:
        # memory_failure() replaces a poisoned page's PTE by a hwpoison swap entry.
        raise InputError(f"pid {pid} VA {va:#x}: no page there now (swapped out, or already poisoned)")
    if not entry & PAGEMAP_PRESENT:
        raise InputError(f"pid {pid} VA {va:#x}: no page is mapped there (not touched yet?)")
    pfn = entry & PAGEMAP_PFN_MASK
    if pfn == 0:
        raise InputError(f"pid {pid} VA {va:#x}: the guest hid the PFN (needs root in the guest)")
    return pfn


def translate_command(pid: int, va: int) -> str:
    """Shell (busybox) that prints the 8-byte pagemap entry of pid's page at va as hex."""
    return (f"dd if=/proc/{int(pid)}/pagemap bs=8 skip={va >> 12} count=1 2>/dev/null | od -An -tx8")


def executable_ranges(maps: str) -> tuple[tuple[int, int], ...]:
    """The executable mappings of a /proc/PID/maps text: where the process's own code runs."""
    ranges = []
    for line in maps.splitlines():
        fields = line.split()
        if len(fields) >= 2 and "x" in fields[1]:
            start, end = fields[0].split("-")
            ranges.append((int(start, 16), int(end, 16)))
    return tuple(ranges)


def connect_monitor(guest: KeptGuest, timeout: float = 10) -> Monitor:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(guest.qmp_socket)
    except OSError as exc:
        sock.close()
        raise HarnessError("inject", f"cannot reach the kept guest's QMP socket {guest.qmp_socket}: "
                                     f"{exc.strerror}") from None
    artifacts = Path(guest.artifacts)
    monitor = Monitor(sock, artifacts / "kept-qmp-events.jsonl", artifacts / "kept-monitor-commands.log")
    try:
        monitor.connect(timeout)
    except (MonitorError, OSError, EOFError) as exc:
        monitor.close()
        raise HarnessError("inject", f"QMP on {guest.qmp_socket}: {exc}") from None
    return monitor


def inject_into(guest: KeptGuest, fields: mce.MceFields, *, cpu: int, broadcast: bool, gpa: int | None,
                pid: int | None, va: int | None, gate: bool, timeout: float,
                watch_s: float = WATCH_S) -> tuple[Injection, str, "AfterInjection"]:
    """Send one machine check into a kept guest; returns the injection, how the GPA was found
    and what the guest did afterwards."""
    deadline = Deadline(timeout, "inject")
    ranges: tuple[tuple[int, int], ...] = ()
    how = "given"
    if pid is not None:
        ssh = SshSession(guest.ssh_port, Path(guest.client_key), guest.host_key_line)
        try:
            ssh.connect(deadline)
            output = ssh.check(translate_command(pid, va), deadline, "locate").split()
            if not output:
                raise InputError(f"pid {pid}: no such process in the guest")
            pfn = pagemap_pfn(int(output[0], 16), pid, va)
            gpa = pfn * 4096 + (va & 0xFFF)
            ranges = executable_ranges(ssh.check(f"cat /proc/{int(pid)}/maps", deadline, "locate"))
            how = f"pid {pid} VA {va:#x} -> PFN {pfn:#x} (through /proc/{pid}/pagemap)"
        finally:
            ssh.close()
    action_required = bool(fields.status & mce.MCI_STATUS_AR)
    monitor = connect_monitor(guest)
    console = Path(guest.artifacts) / "console.log"
    offset = _size(console)
    try:
        # Counted before the mce line: a guest that panics at once sends its events while
        # inject() is still returning, and a count taken after would skip them.
        events_before = len(monitor.events())
        injection = inject(monitor, fields, cpu=cpu, address=gpa, broadcast=broadcast, limits=guest.limits,
                           deadline=deadline, user_loop=None,
                           user_ranges=ranges if (action_required and gate) else None)
        injection_outcome = watch(monitor, console, offset, gpa >> 12, watch_s, events_before)
    finally:
        monitor.close()
    if injection_outcome.down:
        mark_down(guest, injection_outcome.down)
    return injection, how, injection_outcome


@dataclasses.dataclass
class AfterInjection:
    down: str | None     # the guest panicked / reset / powered off: why, from QEMU's events
    lines: list[str]     # what the kernel printed on the console since (its result lines)
    watched_s: float = 0.0  # how long it was watched (a slow guest may go down later)

    def report(self) -> list[str]:
        said = [f"kernel: {line}" for line in self.lines] or ["kernel: nothing on the console about it"]
        panic = next((line for line in self.lines if line.startswith("Kernel panic")), None)
        state = (f"DOWN: {self.down}" + (f": {panic}" if panic else "") if self.down
                 else f"still running (watched {self.watched_s:.1f} s; --watch for longer)")
        return [f"guest: {state}", *said]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _new_result_lines(console: Path, offset: int) -> list[str]:
    try:
        with console.open("rb") as f:
            f.seek(offset)
            text = f.read(1 << 20).decode(errors="replace")
    except OSError:
        return []
    found = (RESULT_LINE.search(line) for line in text.splitlines())
    return [m.group(0).strip() for m in found if m]


def watch(monitor: Monitor, console: Path, offset: int, pfn: int, seconds: float,
          events_before: int) -> AfterInjection:
    """What the guest did after the machine check: a panic, reset or power-off (QMP events
    on the kept monitor), else still running; and the kernel's lines on the console. Ends
    early on a down event or the kernel's memory_failure() line for the page. `events_before`:
    how many events the monitor had before the machine check was sent."""
    from orchestrator.observe import _down_event  # the run's wording of a down guest
    began = time.monotonic()
    end = began + seconds
    down = None
    while time.monotonic() < end and down is None:
        down = next((why for e in monitor.events()[events_before:] if e["event"] in DOWN_EVENTS
                     for why in [_down_event(e)] if why), None)
        if down is None and any(line.startswith(f"Memory failure: {pfn:#x}:")
                                for line in _new_result_lines(console, offset)):
            break
        time.sleep(0.1)
    if down is not None and any(e["event"] == "GUEST_PANICKED" for e in monitor.events()[events_before:]):
        # -action panic=pause stops the guest before its panic text reaches the serial
        # port: resume it briefly to let the line out (it stays panicked).
        try:
            monitor.execute("cont", timeout=2)
        except MonitorError:
            pass
        until = time.monotonic() + PANIC_TEXT_S
        while time.monotonic() < until and not any("Kernel panic" in line
                                                   for line in _new_result_lines(console, offset)):
            time.sleep(0.1)
        time.sleep(0.3)  # the rest of the line
    return AfterInjection(down, _new_result_lines(console, offset)[:8], time.monotonic() - began)


def keep_summary(guest: KeptGuest, command: str = "mce-orchestrator") -> list[str]:
    """What the console says about a kept guest: how to reach it, with `command` as the
    user can type it (the path they ran, --results when not the default)."""
    return [f"guest kept running (QEMU pid {guest.qemu_pid}); state in {Path(guest.artifacts) / STATE_FILE}",
            f"  {command} ssh                       # a shell in it (host key pinned)",
            f"  {command} inject --gpa 0x... --preset srao   # or --pid PID --va 0x...",
            "  " + " ".join(quote(a) for a in ssh_argv(guest, [])),
            "press Ctrl-C to shut it down"]
