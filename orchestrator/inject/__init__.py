"""Sending the machine check: validated, optionally gated on the vCPU's mode.

An SRAR that lands while the vCPU runs kernel code is fatal to the guest, so a
gated injection stops the VM, looks at the target vCPU's registers and sends
the MCE only while that vCPU is in user mode inside the probe's own loop; the
MCE is then delivered as the vCPU resumes, to the probe.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.guest.monitor import MonitorError
from orchestrator.inject import mce
from orchestrator.plumbing.deadline import Deadline
from orchestrator.plumbing.outcome import HarnessError

if TYPE_CHECKING:
    from orchestrator.guest.base import GuestMonitor

_RIP = re.compile(r"\bRIP=([0-9a-fA-F]+)")
_CPL = re.compile(r"\bCPL=(\d)")


@dataclass(frozen=True)
class Injection:
    command: str
    address: int
    attempts: int
    rip: int | None = None


def parse_registers(text: str) -> tuple[int, int]:
    """(CPL, RIP) from HMP `info registers`."""
    rip, cpl = _RIP.search(text), _CPL.search(text)
    if not rip or not cpl:
        raise ValueError("no RIP/CPL in 'info registers' output")
    return int(cpl.group(1)), int(rip.group(1), 16)


def inject(monitor: GuestMonitor, fields: mce.MceFields, *, cpu: int, address: int, broadcast: bool,
           limits: mce.MceLimits, deadline: Deadline, user_loop: tuple[int, int] | None,
           kernel_mode: bool = False, down=lambda: None, outside_ram: bool = False,
           user_ranges: tuple[tuple[int, int], ...] | None = None) -> Injection:
    """`down` says why the guest can no longer take the machine check (a panic, a reset,
    QEMU gone), or None: a gate that sees it stops at once and says so. outside_ram:
    the address is meant to lie outside guest RAM (mce.validate). user_loop: inject only
    while the vCPU runs the probe's loop in user mode. user_ranges (for a live guest's
    process): only in user mode, inside one of these ranges if any."""
    try:
        mce.validate(fields, cpu=cpu, address=address, limits=limits, outside_ram=outside_ram)
    except mce.MceError as exc:
        raise HarnessError("inject", str(exc)) from None
    command = mce.hmp_command(fields, cpu=cpu, address=address, broadcast=broadcast)
    try:
        if kernel_mode:
            return _inject_when(monitor, command, address, cpu, deadline, "in kernel code",
                                lambda cpl, rip: cpl == 0, down)
        if user_ranges is not None:
            return _inject_when(monitor, command, address, cpu, deadline,
                                "in user mode" + (" in the target's code" if user_ranges else ""),
                                lambda cpl, rip: cpl == 3 and (not user_ranges
                                                               or any(a <= rip < b for a, b in user_ranges)), down)
        if user_loop is None:
            monitor.hmp(command)
            return Injection(command, address, attempts=1)
        return _inject_when(monitor, command, address, cpu, deadline, "in the probe's loop in user mode",
                            lambda cpl, rip: cpl == 3 and user_loop[0] <= rip < user_loop[1], down)
    except MonitorError as exc:
        # A monitor that fails under the injection: the guest (or QEMU) may be going down with
        # it, its events a moment behind the reply (QEMU answers the mce command, then resets).
        why = _going_down(down, DOWN_AFTER_MONITOR_ERROR_S)
        raise HarnessError("inject", f"{why}; the monitor then failed: {exc}" if why else str(exc)) from None


DOWN_AFTER_MONITOR_ERROR_S = 2.0


def _going_down(down, seconds: float) -> str | None:
    deadline = Deadline(seconds, "the guest going down")
    while not (why := down()) and not deadline.expired():
        deadline.sleep(0.05)
    return why


def _inject_when(monitor: GuestMonitor, command: str, address: int, cpu: int, deadline: Deadline,
                 where: str, ready, down=lambda: None) -> Injection:
    """Stop the VM, look at the vCPU, inject only if ready(cpl, rip); cont either way."""
    attempts = 0
    last = "never looked"
    while not deadline.expired():
        why = down()
        if why:
            raise HarnessError("inject", f"{why} before the machine check was sent "
                                         f"(vCPU {cpu} looked at {attempts} times; last {last})")
        attempts += 1
        monitor.hmp("stop")
        try:
            cpl, rip = parse_registers(monitor.hmp_query("info registers", cpu=cpu))
            if ready(cpl, rip):
                monitor.hmp(command)
                return Injection(command, address, attempts, rip)
            last = f"CPL={cpl} RIP={rip:#x}"
        finally:
            monitor.hmp("cont")
        # Let the vCPU run a little before looking again.
        deadline.sleep(min(0.002 * attempts, 0.05))
    raise HarnessError("inject", f"vCPU {cpu} was never {where} "
                                 f"({attempts} looks in {deadline.seconds:g} s; last {last})")
