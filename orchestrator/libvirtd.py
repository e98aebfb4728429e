"""Start virtlogd and libvirtd on a host without systemd; idempotent.

    python -m orchestrator.libvirtd      # what .ci/run and the libvirt tests call

Debian's libvirt-daemon-system expects systemd to start its daemons; without
it, `virtlogd -d` and `libvirtd -d` do (without virtlogd, creating a domain
fails: "Failed to connect socket to '/run/libvirt/virtlogd-sock'"). First
/dev/kvm gets the owner and mode Debian's udev rule gives it (root:kvm 0660):
with root:root 0600, libvirt's capability probe throws its cache away and
probes again on every start (~50 s per domain instead of ~0.35 s).
"""
from __future__ import annotations

import fcntl
import grp
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

RUN = Path("/run/libvirt")
LOCK = Path("/run/lock/mce-orchestrator-libvirtd.lock")  # test workers may all ask at once
SOCKETS = {"virtlogd": RUN / "virtlogd-sock", "libvirtd": RUN / "libvirt-sock"}


class LibvirtdError(RuntimeError):
    pass


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


def fix_dev_kvm(device: Path = Path("/dev/kvm")) -> None:
    try:
        kvm = grp.getgrnam("kvm").gr_gid
    except KeyError:
        return
    if device.exists():
        os.chown(device, 0, kvm)
        os.chmod(device, 0o660)


def ensure_running(timeout: float = 30) -> list[str]:
    """Start whichever of virtlogd and libvirtd does not answer on its socket; returns those started."""
    if os.geteuid() != 0:
        raise LibvirtdError("starting libvirtd needs root")
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _start_missing(timeout)


def _start_missing(timeout: float) -> list[str]:
    fix_dev_kvm()
    started = []
    for daemon, sock in SOCKETS.items():
        if _answers(sock):
            continue
        binary = shutil.which(daemon) or f"/usr/sbin/{daemon}"
        if not Path(binary).exists():
            raise LibvirtdError(f"{daemon} is not installed (Debian: libvirt-daemon-system)")
        done = subprocess.run([binary, "-d"], capture_output=True, text=True)
        if done.returncode != 0:
            raise LibvirtdError(f"{daemon} -d failed: {(done.stderr or done.stdout).strip()}")
        end = time.monotonic() + timeout
        while not _answers(sock):
            if time.monotonic() > end:
                raise LibvirtdError(f"{daemon} started but {sock} does not answer within {timeout:g} s")
            time.sleep(0.1)
        started.append(daemon)
    return started


def main() -> int:
    try:
        started = ensure_running()
    except LibvirtdError as exc:
        print(f"libvirtd: error: {exc}", file=sys.stderr)
        return 2
    print(f"libvirtd: started {', '.join(started)}" if started else "libvirtd: already running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
