"""Start virtlogd and libvirtd on a host without systemd; idempotent.

    python -m orchestrator.guest.libvirt.daemons      # what .ci/run and the libvirt tests call

Debian's libvirt-daemon-system expects systemd to start its daemons; without
it, `virtlogd -d` and `libvirtd -d` do (without virtlogd, creating a domain
fails: "Failed to connect socket to '/run/libvirt/virtlogd-sock'"). First
/dev/kvm gets the owner and mode Debian's udev rule gives it (root:kvm 0660):
with root:root 0600, libvirt's capability probe throws its cache away and
probes again on every start (~50 s per domain instead of ~0.35 s).

libvirtd runs in the foreground under a small reaper of ours
(PR_SET_CHILD_SUBREAPER): libvirtd daemonizes each QEMU, so a QEMU that exits
is reaped by whoever adopted it, and libvirt waits for its pid to be gone
before a destroy returns. Without systemd that is the container's pid 1,
which may reap late or never: here a zombie QEMU stayed ~1.5 s, every domain
destroy took as long. The reaper adopts the QEMUs and reaps them at once.
"""
from __future__ import annotations

import ctypes
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
LIBVIRTD_LOG = Path("/var/log/libvirt/libvirtd-stderr.log")  # what the foreground libvirtd prints
_PR_SET_CHILD_SUBREAPER = 36


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
        reaper: int | None = None
        if daemon == "libvirtd":
            reaper = _start_under_reaper(binary)
        else:
            done = subprocess.run([binary, "-d"], capture_output=True, text=True)
            if done.returncode != 0:
                raise LibvirtdError(f"{daemon} -d failed: {(done.stderr or done.stdout).strip()}")
        end = time.monotonic() + timeout
        while not _answers(sock):
            if reaper is not None and not _running(reaper):
                raise LibvirtdError(f"{daemon} exited at start: {_log_tail(LIBVIRTD_LOG)}")
            if time.monotonic() > end:
                raise LibvirtdError(f"{daemon} started but {sock} does not answer within {timeout:g} s")
            time.sleep(0.1)
        started.append(daemon)
    return started


def _start_under_reaper(binary: str) -> int:
    """libvirtd in the foreground, a child of `python -m orchestrator.guest.libvirt.daemons --reap`,
    detached from us: that process forks once more and its first half exits at once,
    so the reaper is nobody's child here (a test's "no child process left" check, a
    Ctrl-C to our process group) and has its own session and no inherited stdio.
    Returns the reaper's pid."""
    LIBVIRTD_LOG.parent.mkdir(parents=True, exist_ok=True)
    with LIBVIRTD_LOG.open("ab") as log:
        done = subprocess.run([sys.executable, "-m", "orchestrator.guest.libvirt.daemons", "--detach", "--reap", binary],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True,
                              start_new_session=True, cwd="/", close_fds=True, timeout=30)
    if done.returncode != 0 or not done.stdout.strip().isdigit():
        raise LibvirtdError(f"libvirtd's reaper did not start: {_log_tail(LIBVIRTD_LOG)}")
    return int(done.stdout.strip())


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _log_tail(path: Path) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-3:]) or "no output"
    except OSError:
        return "no output"


def reap(argv: list[str]) -> int:
    """Run argv as our child and reap every process that ends up ours (a child
    subreaper adopts its descendants' orphans: libvirtd's daemonized QEMUs) as
    soon as it exits; return argv's exit status once it is gone."""
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"libvirtd reaper: prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}", file=sys.stderr)
    main_pid = os.posix_spawn(argv[0], argv, os.environ)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue
        if pid == main_pid:
            # QEMUs it leaves running are adopted by pid 1 once we are gone.
            return os.waitstatus_to_exitcode(status)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--detach"]:
        child = os.fork()
        if child > 0:
            print(child, flush=True)  # the caller waits for this half only, and learns the reaper's pid
            return 0
        # The reaper's stdout is the caller's pipe: let it go (libvirtd's output goes to stderr, the log).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
        argv = argv[1:]
    if argv[:1] == ["--reap"]:
        return reap(argv[1:])
    try:
        started = ensure_running()
    except LibvirtdError as exc:
        print(f"libvirtd: error: {exc}", file=sys.stderr)
        return 2
    print(f"libvirtd: started {', '.join(started)}" if started else "libvirtd: already running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
