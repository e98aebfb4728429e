"""The guest-backend interface: what the runner, observe, inject and snapshot use.

A backend starts one guest and gives the pipeline its monitor (QMP commands,
HMP lines, QEMU's events), its serial console as a local file, an SSH port on
127.0.0.1, whether it panicked or went away, save/restore, and a shutdown that
always cleans up. The pipeline never asks which backend made the guest (tmt's
provision step is the model: one Guest class, several provisioners).
"""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Protocol

from orchestrator.guest import memory_map
from orchestrator.guest.images import GuestImage
from orchestrator.guest.monitor import MonitorError
from orchestrator.inject import mce
from orchestrator.plumbing.deadline import Deadline
from orchestrator.plumbing.outcome import HarnessError
from orchestrator.scenario import GuestSpec


class HypervisorUnavailable(HarnessError):
    """The hypervisor itself cannot be reached (libvirtd down, a dead endpoint):
    nothing is known about the guest, or about a saved state it was to restore."""

    def __init__(self, message: str):
        super().__init__("boot", message)


class GuestMonitor(Protocol):
    """QEMU's monitor as the pipeline sees it. Failures raise
    orchestrator.guest.monitor.MonitorError, whichever backend carries them."""

    log_error: str | None  # an event/command log that could not be written
    storm: str | None      # "event storm: ..." once QEMU sent events faster than any guest should

    def summary(self) -> str:
        """Events counted by name, and how many were not kept."""

    def execute(self, command: str, arguments: dict | None = None, timeout: float = 10) -> object:
        """A QMP command; its `return` value."""

    def hmp(self, line: str, timeout: float = 10) -> str:
        """An HMP command whose success is an empty reply."""

    def hmp_query(self, line: str, timeout: float = 10, cpu: int | None = None) -> str:
        """An HMP command's text reply, optionally about vCPU `cpu`."""

    def events(self) -> list[dict]:
        """Every QEMU event so far, in order, each with an `elapsed` timestamp."""

    def wait_for_event(self, names: set[str], timeout: float, start: int = 0) -> dict | None:
        """First event named in `names` at index >= start, or None when time runs out."""

    def read_to_end(self, timeout: float) -> None:
        """After QEMU exited: every event it sent before going is in events() (at most `timeout`)."""


class Guest(abc.ABC):
    """One guest for one scenario. The constructor only stores configuration;
    launch() starts it; shutdown() (also the context manager's exit) always
    cleans up and is idempotent."""

    image: GuestImage
    spec: GuestSpec
    artifacts: Path
    accel: str
    extra_cmdline: str
    disk: Path | None             # the scratch disk, the guest's /dev/vda
    incoming: Path | None         # a saved guest to restore instead of a cold boot
    qemu_binary: str              # keys saved guests (its version shapes the saved state)
    console_log: Path             # the serial console, a local file
    ssh_port: int                 # SSH on 127.0.0.1 (known once launched)
    monitor: GuestMonitor | None  # None before launch and after shutdown
    launched_pid: int | None      # QEMU's pid, kept after shutdown so callers can check it is gone

    boots: bool = True            # False: a guest someone else started (attached); it is up already
    remote: bool = False          # its QEMU runs on another host (a remote libvirt URI): no local gdbstub
    can_snapshot: bool = True     # False: --snapshot boots it cold (a remote libvirt host: no fd to hand over)
    kernel_release: str | None = None  # an attached guest's own (uname -r), read once SSH is up
    ssh_host: str = "127.0.0.1"
    ssh_user: str = "root"
    ssh_via = None                # a remote libvirt host: the tunnel (guest.libvirt.tunnel) ssh_host:ssh_port is reached through
    ram_ranges: memory_map.Ranges = ()  # read from the guest's own QEMU by read_limits()
    vcpus_present: int = 0

    def __init__(self, *, image: GuestImage, spec: GuestSpec, artifacts: Path, accel: str | None = None,
                 qemu_binary: str = "qemu-system-x86_64", extra_cmdline: str = "", disk: Path | None = None,
                 incoming: Path | None = None):
        """The configuration every backend's guest has; nothing started."""
        self.image = image
        self.spec = spec
        self.artifacts = artifacts
        from orchestrator.guest.qemu import argv as qemu_args  # not at the top: guest.qemu imports this module
        self.accel = accel or qemu_args.host_accel()
        self.qemu_binary = qemu_binary
        self.extra_cmdline = extra_cmdline
        self.disk = disk
        self.incoming = incoming
        self.console_log = artifacts / "console.log"
        self.ssh_port = 0
        self.monitor = None
        self.launched_pid = None

    def ssh_keys(self, image: GuestImage) -> tuple[Path, str]:
        """(client private key, the guest's pinned host key line): our image's own."""
        return image.client_key, image.host_key_line

    @property
    def limits(self) -> mce.MceLimits:
        """What an injection is checked against: the vCPUs and RAM the guest's QEMU
        reported (read_limits(), at launch), and the banks QEMU gives every vCPU."""
        return mce.MceLimits(vcpus=self.vcpus_present, banks=mce.QEMU_MCE_BANKS, ram_ranges=self.ram_ranges)

    def read_limits(self) -> None:
        """Ask the guest's QEMU for its vCPUs and its RAM map; backends call it while
        the guest is paused at launch, before firmware shadows ROMs into RAM."""
        assert self.monitor
        try:
            self.ram_ranges = memory_map.parse_flat_ram(self.monitor.hmp_query("info mtree -f"))
        except memory_map.MemoryMapError as exc:
            raise MonitorError(str(exc)) from None
        self.vcpus_present = len(self.monitor.execute("query-cpus-fast"))

    @property
    @abc.abstractmethod
    def pid(self) -> int | None:
        """QEMU's pid while it runs."""

    @abc.abstractmethod
    def is_running(self) -> bool: ...

    @abc.abstractmethod
    def launch(self, deadline: Deadline) -> None:
        """Start the guest (restoring `incoming` if set) and connect its monitor;
        on failure clean up and raise HarnessError('boot', ...)."""

    @abc.abstractmethod
    def resume_incoming(self, deadline: Deadline) -> None:
        """After launch() with `incoming`: wait until the state is loaded, then run."""

    @abc.abstractmethod
    def save(self, path: Path, deadline: Deadline) -> None:
        """Stop the guest and write its whole state to `path` (the caller writes to a
        temporary name and renames it: a half-written state is never used)."""

    @abc.abstractmethod
    def state_identity(self) -> list[str]:
        """Everything of this guest's configuration that shapes a saved state (the whole
        launch configuration, firmware and emulator builds), without per-run parts
        (ports, fds, artifact paths, the state to restore): saved guests are keyed by it."""

    def _wait_migration(self, deadline: Deadline, what: str) -> None:
        """Until QEMU's migration (a save or a restore) completed; both backends' guests migrate."""
        while not deadline.expired():
            status = self.monitor.execute("query-migrate").get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise HarnessError("boot", f"{what} failed (migration {status})")
            deadline.sleep(0.02)
        raise HarnessError("boot", f"{what} did not finish within {deadline.seconds:g} s")

    saves_disks = False  # True: --snapshot saves and restores a guest with a scratch disk or a root disk

    @abc.abstractmethod
    def fresh(self, artifacts: Path, disk: Path | None = None) -> "Guest":
        """A new, unlaunched guest like this one (no incoming state; `disk` its scratch
        disk), its files in `artifacts`: what a saved guest is booted from."""

    def fails_without_kernel(self) -> str | None:
        """After a failed boot: QEMU's error when it fails without the kernel too (the
        host's or QEMU's fault), else None. Backends that cannot tell say None."""
        return None

    @abc.abstractmethod
    def exit_summary(self) -> str | None:
        """'exited with code 1' / 'was killed by signal 9', or None while QEMU runs."""

    @abc.abstractmethod
    def died(self) -> str | None:
        """Why QEMU is gone (one line), or None while it runs."""

    @abc.abstractmethod
    def shutdown(self, timeout: float = 5) -> None:
        """Stop the guest whatever state it is in; always releases everything. Idempotent."""

    def wait_for_events(self, names: set[str], timeout: float, start: int = 0) -> dict | None:
        assert self.monitor
        return self.monitor.wait_for_event(names, timeout, start)

    def panicked(self) -> bool:
        return bool(self.monitor and any(e["event"] == "GUEST_PANICKED" for e in self.monitor.events()))

    def __enter__(self) -> "Guest":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
