"""Saved guests: boot once, then restore per scenario instead of cold-booting.

A snapshot is QEMU's migration stream of a guest that has booted, started
sshd and loaded its modules, saved while stopped. A guest launched with
`-incoming` from it resumes where it stopped in about 0.1 s; only the host
side (QMP, the forwarded port) is new. Keyed by everything that shapes the
saved state: the image build, memory, vCPUs, machine, accelerator, kernel
arguments and the QEMU binary's version.
"""
from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Callable

from orchestrator.backends.base import Guest
from orchestrator.backends.qemu import QemuGuest
from orchestrator.deadline import Deadline
from orchestrator.image import GuestImage
from orchestrator.outcome import HarnessError
from orchestrator.scenario import GuestSpec
from orchestrator.ssh import SshSession, wait_for_banner

# Our image's /init loads the modules sshd does not need while the client logs
# in; wait (at most 10 s) until it is done. Other images have no /etc/mceorch.
GUEST_SETTLED = ("{ [ ! -d /etc/mceorch ] || { i=0; while [ ! -e /run/mceorch/modules-loaded ] && [ $i -lt 1000 ]; "
                 "do usleep 10000; i=$((i + 1)); done; [ -e /run/mceorch/modules-loaded ]; }; }")


@lru_cache(maxsize=None)
def qemu_version(binary: str) -> str:
    try:
        return subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "unknown"


def snapshot_key(image: GuestImage, spec: GuestSpec, accel: str, extra_cmdline: str, binary: str) -> str:
    parts = [image.directory.name, image.name, str(spec.memory_mib), str(spec.vcpus), spec.machine, accel,
             extra_cmdline, qemu_version(binary)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def ensure_snapshot(image: GuestImage, spec: GuestSpec, *, accel: str, cache_root: Path, extra_cmdline: str = "",
                    binary: str = "qemu-system-x86_64", deadline: Deadline,
                    progress: Callable[[str], None] = lambda m: None,
                    new_guest: Callable[[Path], Guest] | None = None) -> Path:
    """The saved guest for this configuration, booting and saving it first if needed.
    `new_guest(folder)` makes the guest that boots and is saved (default: a QemuGuest)."""
    folder = cache_root / "snapshots"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    state = folder / f"{image.name}-{snapshot_key(image, spec, accel, extra_cmdline, binary)}.state"
    with (folder / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others then find it
        if state.is_file():
            return state
        progress(f"saving a booted {image.name} guest for later runs ({state.name})")
        work = Path(tempfile.mkdtemp(prefix="mce-snapshot-"))
        try:
            guest = new_guest(work) if new_guest else QemuGuest(
                image=image, spec=spec, artifacts=work, accel=accel, qemu_binary=binary, extra_cmdline=extra_cmdline)
            with guest:
                guest.launch(deadline)
                wait_for_banner(guest.ssh_port, deadline, still_running=guest.died)
                ssh = SshSession(guest.ssh_port, image.client_key, image.host_key_line)
                try:
                    ssh.connect(deadline)
                    ssh.check(GUEST_SETTLED, deadline, "boot")
                finally:
                    ssh.close()
                deadline.sleep(0.3)  # let dropbear's session process for that login end
                guest.save(state, deadline)
        except HarnessError as exc:
            raise HarnessError("boot", f"saving a booted guest failed: {exc.message}") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return state

