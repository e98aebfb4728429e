"""A QEMU guest: one process, its QMP monitor, its console; cleanup always runs.

Modelled on QEMU's python/qemu/machine/machine.py: the constructor only
stores configuration, launch() starts everything and on any failure cleans up
and raises one error carrying the exit code, the whole command line and the
log tail; shutdown() asks politely, then kills.
"""
from __future__ import annotations

import contextlib
import dataclasses
import ctypes
import hashlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
from functools import lru_cache
from pathlib import Path

from orchestrator.guest.base import Guest
from orchestrator.guest.images import GuestImage
from orchestrator.guest.images.distro import DiskGuestImage
from orchestrator.guest.images.overlay import DiskOverlay, OverlayError
from orchestrator.guest.monitor import Monitor, MonitorError
from orchestrator.guest.qemu import argv as qemu_args
from orchestrator.guest.qemu.install import firmware_layout
from orchestrator.plumbing.bounded import ConsoleRecorder
from orchestrator.plumbing.deadline import Deadline
from orchestrator.plumbing.outcome import HarnessError
from orchestrator.scenario import GuestSpec

_PR_SET_PDEATHSIG = 1
PORT_ATTEMPTS = 3


def _die_with_parent() -> None:
    # If the orchestrator itself is killed outright, QEMU must not outlive it.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@lru_cache(maxsize=None)
def qemu_build(binary: str) -> str:
    """The QEMU binary's version line plus its file identity (a rebuilt QEMU of the
    same version gets new saved guests too)."""
    path = shutil.which(binary) or binary
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        st = os.stat(path)
    except (OSError, IndexError):
        return "unknown"
    return f"{version} {path} {st.st_size} {st.st_mtime_ns}"


def file_digest(path: Path | None) -> str:
    if path is None:
        return "none"
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "unreadable"


CONSOLE_LIMIT = 16 << 20  # console.log never holds more (first 4 MiB, a marker, the latest part)
TAIL_BYTES = 256 << 10  # the last lines of a log are looked for in its last part only


# QEMU's serial port sends one byte per write: a unix stream socket holds ~280 of them
# by default (each byte its own skb against SO_SNDBUF), so a reader stalled for a moment
# on a loaded host blocks the port, the guest's 8250 driver gives up waiting and drops
# characters (CI under stress: "Kernel command linensole=ttyS0", and a negative control
# PASSed on the mangled line). 16 MiB holds ~44,000.
CONSOLE_SNDBUF = 16 << 20
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


def console_socketpair() -> tuple[socket.socket, socket.socket]:
    """(ours, QEMU's): the serial console's socketpair, QEMU's end with room to write ahead."""
    ours, theirs = socket.socketpair()
    try:
        theirs.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, CONSOLE_SNDBUF)
    except OSError:  # not root: capped at net.core.wmem_max
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CONSOLE_SNDBUF)
    return ours, theirs


def tail(path: Path, lines: int = 20) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(f.seek(0, 2) - TAIL_BYTES, 0))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class QemuGuest(Guest):
    def __init__(self, *, image: GuestImage, spec: GuestSpec, artifacts: Path, accel: str | None = None,
                 qemu_binary: str = "qemu-system-x86_64", extra_cmdline: str = "", disk: Path | None = None,
                 incoming: Path | None = None, kept_qmp_socket: Path | None = None):
        super().__init__(image=image, spec=spec, artifacts=artifacts, accel=accel, qemu_binary=qemu_binary,
                         extra_cmdline=extra_cmdline, disk=disk, incoming=incoming)
        self.kept_qmp_socket = kept_qmp_socket  # --keep: a QMP socket other processes can reach
        self.console: ConsoleRecorder | None = None
        self.console_flood: str | None = None  # once shut down: what a flooded console cost
        self.monitor: Monitor | None = None
        self._process: subprocess.Popen | None = None
        self._qemu_log = artifacts / "qemu.log"
        self.argv: list[str] = []
        self._root_overlay: DiskOverlay | None = None  # a disk image's copy-on-write layer, this run's only
        # Restoring a guest saved with disks: its overlay and scratch disk as they were at the save.
        self.incoming_root: Path | None = None
        self.incoming_scratch: Path | None = None
        self._disks_ready = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def launch(self, deadline: Deadline) -> None:
        """Start QEMU and connect its monitor. A forwarded port another process took
        between our probe of it and QEMU's bind is retried with a new port."""
        for attempt in range(PORT_ATTEMPTS):
            try:
                return self._launch_once(max(deadline.remaining(), 0.1))
            except HarnessError as exc:
                if "host forwarding rule" not in exc.message or attempt == PORT_ATTEMPTS - 1 or deadline.expired():
                    raise

    saves_disks = True  # a saved guest carries its overlay and scratch disk (snapshot.py)

    @property
    def root_disk(self) -> Path | None:
        """The overlay this guest boots from (a disk image), or None."""
        return self._root_overlay.path if self._root_overlay is not None else None

    def _launch_once(self, timeout: float) -> None:
        if isinstance(self.image, DiskGuestImage) and self._root_overlay is None:
            try:
                self._root_overlay = DiskOverlay(self.image.disk, getattr(self.image, "disk_format", "qcow2"),
                                                 copy_of=self.incoming_root if self.incoming is not None else None)
            except OverlayError as exc:
                raise HarnessError("boot", str(exc)) from None
        if self.incoming is not None and self.incoming_scratch is not None and not self._disks_ready:
            # This run's scratch disk becomes a copy of the one saved with the state.
            copied = subprocess.run(["cp", "--sparse=always", str(self.incoming_scratch), str(self.disk)],
                                    capture_output=True, text=True)
            if copied.returncode != 0:
                raise HarnessError("boot", f"copying the saved scratch disk: "
                                           f"{(copied.stderr.strip() or 'no output').splitlines()[-1]}")
            self._disks_ready = True
        ours, theirs = socket.socketpair()
        hmp_ours, hmp_theirs = socket.socketpair()
        console_ours, console_theirs = console_socketpair()
        self.ssh_port = free_loopback_port()
        self.argv = qemu_args.build_argv(dataclasses.replace(
            self.config(qmp_fd=theirs.fileno(), ssh_port=self.ssh_port, hmp_fd=hmp_theirs.fileno(),
                        console_fd=console_theirs.fileno()), paused=True))
        (self.artifacts / "qemu-cmdline.txt").write_text(shlex.join(self.argv) + "\n")
        try:
            with self._qemu_log.open("wb") as log:
                self._process = subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    pass_fds=[theirs.fileno(), hmp_theirs.fileno(), console_theirs.fileno()],
                    preexec_fn=_die_with_parent,
                    # Its own session: the terminal's Ctrl-C reaches us, and we shut QEMU down.
                    start_new_session=True)
        except OSError as exc:
            ours.close()
            hmp_ours.close()
            console_ours.close()
            raise HarnessError("boot", f"cannot start {self.qemu_binary}: {exc.strerror}") from None
        finally:
            theirs.close()
            hmp_theirs.close()
            console_theirs.close()
        self.console = ConsoleRecorder(console_ours, self.console_log, CONSOLE_LIMIT,
                                      keep_existing=self.incoming is not None)
        self.console.start()
        self.launched_pid = self._process.pid
        self.monitor = Monitor(ours, self.artifacts / "qmp-events.jsonl", self.artifacts / "monitor-commands.log")
        try:
            self.monitor.connect(timeout)
            self.monitor.attach_hmp(hmp_ours, timeout)
            if self.incoming is None:
                # Paused (-S): what the guest has is read before it runs (milliseconds);
                # a restored guest's once its state is loaded (resume_incoming).
                self.read_limits()
                self.monitor.execute("cont")
        except (MonitorError, OSError, EOFError) as exc:
            hmp_ours.close()
            # A QEMU that exits at start-up (a saved state it cannot load) may fail the QMP
            # greeting before or after we see it exit, as load decides: give it a moment, so
            # that what we report never depends on which came first.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(2)
            why = self._launch_failure(str(exc))
            if self.incoming is not None and self.exit_summary() is not None:
                why = f"restoring the guest failed: {why}"
            self.shutdown()
            raise HarnessError("boot", why) from None

    def config(self, qmp_fd: int = -1, ssh_port: int = 0, hmp_fd: int | None = None,
               console_fd: int | None = None) -> qemu_args.QemuConfig:
        """This guest's QEMU configuration (per-run parts as given)."""
        return qemu_args.QemuConfig(
            kernel=self.image.kernel, initrd=self.image.initrd, console_log=self.console_log,
            qmp_fd=qmp_fd, ssh_port=ssh_port, hmp_fd=hmp_fd, console_fd=console_fd, memory_mib=self.spec.memory_mib,
            vcpus=self.spec.vcpus, numa_nodes=self.spec.numa_nodes, machine=self.spec.machine, accel=self.accel,
            qemu_binary=self.qemu_binary, extra_cmdline=self.extra_cmdline, pmem_mib=self.spec.pmem_mib,
            disk=self.disk, incoming=self.incoming,
            # A restored guest's console.log already holds the saving boot's console.
            console_append=self.incoming is not None, kept_qmp_socket=self.kept_qmp_socket,
            # A disk image boots from its overlay (made at launch) with its own root= arguments.
            root_disk=self._root_overlay.path if self._root_overlay is not None else None,
            root_cmdline=self.image.kernel_cmdline if isinstance(self.image, DiskGuestImage) else "",
            seed=getattr(self.image, "seed", None),  # a user's disk image: its cloud-init seed
            # The chosen QEMU's own ROMs and qboot: its compiled-in path would find the system QEMU's.
            data_dirs=firmware_layout(self.qemu_binary)[0],
            firmware=firmware_layout(self.qemu_binary)[1] if self.accel == "tcg" else None)

    def _launch_failure(self, why: str) -> str:
        gone = self.exit_summary()
        state = f"QEMU {gone}" if gone is not None else f"QEMU did not start ({why})"
        # TCG's "doesn't support requested feature: CPUID..." warnings are every boot's: not the cause.
        log = " | ".join([line for line in tail(self._qemu_log, 40).splitlines()
                          if line.strip() and ": warning: " not in line][-3:])
        return f"{state}: {log or 'no other output'}; command line: {self.artifacts / 'qemu-cmdline.txt'}"

    def fails_without_kernel(self, run_s: float = 1.0) -> str | None:
        """After a failed boot: does this QEMU (same binary, accelerator, CPU model, machine,
        memory, vCPUs, firmware) fail with no kernel at all? Then the host or QEMU is at
        fault, not the kernel: its error line, else None (the kernel's trouble)."""
        argv = [self.qemu_binary, "-machine", f"{self.spec.machine},accel={self.accel}",
                "-cpu", qemu_args.cpu_model(self.accel), "-m", str(self.spec.memory_mib),
                "-smp", str(self.spec.vcpus), "-nodefaults", "-no-user-config", "-display", "none",
                "-S", "-monitor", "stdio", "-serial", "none", "-parallel", "none"]
        firmware = qemu_args.default_firmware() if self.accel == "tcg" else None
        if firmware is not None:
            argv += ["-bios", str(firmware)]
        try:
            process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True, preexec_fn=_die_with_parent)
        except OSError as exc:
            return f"cannot start {self.qemu_binary}: {exc.strerror}"
        try:
            process.stdin.write("cont\n")
            process.stdin.flush()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(run_s)  # the firmware runs; a broken accelerator fails here
            if process.poll() is None:
                with contextlib.suppress(OSError):
                    process.stdin.write("quit\n")
                    process.stdin.flush()
            _, errors = process.communicate(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            _, errors = process.communicate()
            return None  # it ran, and did not quit: not a failure to start
        if process.returncode == 0:
            return None
        lines = [line for line in errors.splitlines() if line.strip() and ": warning: " not in line]
        how = f"killed by signal {-process.returncode}" if process.returncode < 0 else f"exit code {process.returncode}"
        return f"{'; '.join(lines[-2:]) or 'no output'} ({how})"

    def save(self, path: Path, deadline: Deadline) -> None:
        """Stop the guest and write its whole state to `path` (QEMU's migration stream).
        The caller writes to a temporary name and renames: a half-written state is never used."""
        assert self.monitor
        self.monitor.execute("stop")
        # QEMU hands exec: URIs to /bin/sh: quoted, any path works.
        self.monitor.execute("migrate", {"uri": f"exec:cat > {shlex.quote(str(path))}"})
        self._wait_migration(deadline, "saving the guest")

    def resume_incoming(self, deadline: Deadline) -> None:
        """After launch() with `incoming`: wait until the state is loaded, then run."""
        assert self.monitor
        try:
            self._wait_migration(deadline, "restoring the guest")
            self.read_limits()  # still stopped: loaded, not yet running
            self.monitor.execute("cont")
        except MonitorError as exc:
            # QEMU exits when the stream does not load (truncated, garbage, another version).
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(2)  # QMP drops a moment before QEMU has exited
            gone = self.exit_summary()
            why = f"QEMU {gone}: {tail(self._qemu_log, 2).replace(chr(10), ' | ') or 'no output'}" if gone else exc
            raise HarnessError("boot", f"restoring the guest failed: {why}") from None

    def state_identity(self) -> list[str]:
        config = self.config()
        if isinstance(self.image, DiskGuestImage):
            config = dataclasses.replace(config, root_disk=Path("root.qcow2"))  # made at launch
        return qemu_args.state_argv(config) + [f"scratch_mib={self.spec.disk_mib}",
                                               f"firmware={file_digest(config.firmware)}",
                                               f"qemu={qemu_build(self.qemu_binary)}"]

    def fresh(self, artifacts: Path, disk: Path | None = None) -> "QemuGuest":
        return QemuGuest(image=self.image, spec=self.spec, artifacts=artifacts, accel=self.accel,
                         qemu_binary=self.qemu_binary, extra_cmdline=self.extra_cmdline, disk=disk)

    def exit_summary(self) -> str | None:
        """'exited with code 1' / 'was killed by signal 9', or None while QEMU runs."""
        code = self._process.poll() if self._process else None
        if code is None:
            return None
        return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"

    def died(self) -> str | None:
        """Why QEMU is gone, or None while it runs."""
        if self._process is None or self._process.poll() is None:
            return None
        return self._launch_failure("exited")

    def shutdown(self, timeout: float = 5) -> None:
        """Ask QEMU to quit, then kill it; always closes the monitor. Idempotent."""
        process, self._process = self._process, None
        monitor, self.monitor = self.monitor, None
        try:
            if process is not None and process.poll() is None and monitor is not None:
                try:
                    monitor.execute("quit", timeout=2)
                except MonitorError:
                    pass
            if process is not None:
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        finally:
            if monitor is not None:
                monitor.close()
            console, self.console = self.console, None
            if console is not None:
                console.close()
                self.console_flood = console.flood
            if self._root_overlay is not None:
                self._root_overlay.remove()
                self._root_overlay = None
            self._disks_ready = False  # a launch after this one copies the saved scratch disk again
