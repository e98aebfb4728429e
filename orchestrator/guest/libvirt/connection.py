"""The connection to libvirtd: libvirt-python imported on first use, its event loop
(once per process), and open_connection() with keepalive and a one-line reason when
it fails. Below both the backend (this package's __init__) and volumes.py's command.
"""
from __future__ import annotations

import contextlib
import re
import threading

from orchestrator.guest.libvirt import tunnel as hypervisor_ssh
from orchestrator.plumbing.outcome import HarnessError, InputError

DEFAULT_URI = "qemu:///system"
_loop_lock = threading.Lock()
_loop_started = False


def _libvirt():
    """libvirt and libvirt_qemu, imported on first use: the QEMU backend does not need them."""
    try:
        import libvirt
        import libvirt_qemu
    except ImportError as exc:
        raise InputError(f"--backend libvirt needs libvirt-python ({exc}); make setup installs it") from None
    return libvirt, libvirt_qemu


def start_event_loop() -> None:
    """libvirt's default event loop in a daemon thread, once per process; it must
    exist before a connection is opened for that connection to deliver events."""
    global _loop_started
    libvirt, _ = _libvirt()
    with _loop_lock:
        if _loop_started:
            return
        # libvirt prints every error to stderr by default; ours are reported as one line.
        libvirt.registerErrorHandler(lambda ctx, err: None, None)
        libvirt.virEventRegisterDefaultImpl()

        def run():
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


KEEPALIVE_S = 5
KEEPALIVE_COUNT = 6

_TCG_WARNING = re.compile(r"\S+ qemu-system-\S+: warning: TCG doesn't support requested feature: \S+ \[bit \d+\]\s*")


def _message(exc) -> str:
    text = exc.get_error_message() if hasattr(exc, "get_error_message") else str(exc)
    # QEMU's harmless TCG CPUID warnings would bury the line that says what went wrong.
    # ssh's output (a remote URI) comes with CRs and a wall of '@': one line, no frame.
    text = " ".join(re.sub(r"@{3,}", " ", text or str(exc)).split())
    return _TCG_WARNING.sub("", text)


def open_connection(uri: str):
    """A libvirt connection, or InputError with one line (wrong URI, libvirtd down)."""
    libvirt, _ = _libvirt()
    start_event_loop()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise InputError(f"--connect {uri}: cannot connect to libvirt: {_why_not(uri, exc)}") from None
    # libvirt calls have no timeout of their own: a daemon that stops answering (drowned
    # by a guest's event storm, stopped, its host gone) would hang the run. With keepalive
    # the connection is closed after KEEPALIVE_S * KEEPALIVE_COUNT s of silence, and every
    # call waiting on it fails, so the run ends as ERROR instead.
    with contextlib.suppress(libvirt.libvirtError):  # drivers without keepalive (test:///)
        conn.setKeepAlive(KEEPALIVE_S, KEEPALIVE_COUNT)
    return conn


def _why_not(uri: str, exc) -> str:
    """Why libvirt could not connect. Over SSH, libvirt reads ssh's complaint from a pipe and
    does not always get it (a refused host key came out as "Cannot recv data: Value too large
    for defined data type" under load): ask the host's sshd ourselves, with the same pinning."""
    tunnel = hypervisor_ssh.HypervisorTunnel.for_uri(uri)
    if tunnel is not None:
        try:
            tunnel.check(timeout=10)
        except (HarnessError, OSError) as ssh_exc:
            return getattr(ssh_exc, "message", None) or str(ssh_exc)
    return _message(exc)
