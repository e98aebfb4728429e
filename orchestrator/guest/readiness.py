"""When a booted guest's sshd can be asked for its banner: the runner's boot and
the boot that saves a guest (snapshot.py) wait the same way.

QEMU's user-mode network accepts a TCP connection before the guest listens, and
short connection attempts made too early pile up in slirp until the banner never
comes through: polling starts once our image's /init has printed READY (or after
BANNER_FALLBACK_S), and a systemd guest, which prints no marker, gets one long
wait per connection instead.
"""
from __future__ import annotations

import re
import time

from orchestrator.guest import images
from orchestrator.guest.base import Guest
from orchestrator.guest.images.distro import DiskGuestImage
from orchestrator.guest.qemu import TAIL_BYTES, tail
from orchestrator.guest.ssh import BANNER_POLL_S, wait_for_banner
from orchestrator.observe import ConsoleFollower, guest_down, panic_line
from orchestrator.plumbing.deadline import Deadline
from orchestrator.plumbing.outcome import HarnessError

BANNER_FALLBACK_S = 10.0
# A user's disk image: sshd starts before cloud-init's last stage ends, so a
# guest whose cloud-init has finished this long ago without a banner has no sshd.
SSHD_AFTER_CLOUD_INIT_S = 30.0
CLOUD_INIT_STARTED = "Cloud-init v."
CLOUD_INIT_FINISHED = re.compile(r"Cloud-init v\. \S+ finished at .*Up ([0-9.]+) seconds")
SYSTEMD_BANNER_PATIENCE_S = 20.0  # one connection's wait for the banner of a guest with no READY line
def wait_sshd(guest: Guest, deadline: Deadline, since: float, restored: bool = False,
              lockups: bool = False) -> None:
    """Until the guest's sshd answers. `lockups`: a lockup report on the console ends the
    wait at once (BOOT_LOCKED_UP), as a panic does (the saving boot: it is tried again)."""
    cloud_init = CloudInitWatch(guest) if getattr(guest.image, "seed", None) is not None else None
    boot_panic = BootPanic(guest, lockups) if guest.boots and not restored else lambda: None
    try:
        init_ready = InitReady(guest, since)
        wait_for_banner(guest.ssh_port, deadline, host=guest.ssh_host, via=guest.ssh_via,
                        still_running=(lambda: guest_down(guest) or boot_panic() or cloud_init.no_sshd())
                        if cloud_init else lambda: guest_down(guest) or boot_panic(),
                        sshd_started=lambda: restored or not guest.boots or init_ready(),
                        patience=SYSTEMD_BANNER_PATIENCE_S if isinstance(guest.image, DiskGuestImage)
                        else BANNER_POLL_S)
    except HarnessError as exc:
        cause = None if restored or not guest.boots else boot_failure_cause(guest)
        if cause is not None:
            raise HarnessError(exc.phase, f"{cause}; {exc.message}") from None
        last = tail(guest.console_log, 1) or "(nothing on the console)"
        if cloud_init is not None and not cloud_init.no_sshd():
            cloud_init.look()
            if not cloud_init.started:
                raise HarnessError(exc.phase, f"no cloud-init on the console (is it installed and enabled in the "
                                              f"image?): {exc.message}; console ends with: {last.strip()}") from None
        if exc.message.startswith("the guest panicked"):
            # Paused at its panic (-action panic=pause) before the line reached the console:
            # let it out, so that the error says which panic (a restored guest's, too).
            try:
                line = panic_line(guest)
            except Exception:  # noqa: BLE001 -- the error below stands without it
                line = None
            if line:
                raise HarnessError(exc.phase, f"{exc.message}: {line}") from None
        raise HarnessError(exc.phase, f"{exc.message}; console ends with: {last.strip()}") from None


PANIC_LINE = re.compile(r"Kernel panic - not syncing: .*")
PANIC_LINE_WAIT_S = 2.0  # pvpanic's event can come before the panic line reaches the console


# The kernel's own reports of a CPU that has not scheduled for seconds (watchdog) or an RCU
# grace period that does not end: a boot that prints one is stuck, for now at least.
LOCKUP_LINE = re.compile(r"watchdog: BUG: soft lockup - CPU#\d+ stuck for .*|"
                         r"rcu: INFO: rcu_\w+ (?:self-)?detected stalls? on CPUs?.*")


class BootPanic:
    """A panic line on the console of a booting guest: it will never answer (panic=0 waits
    forever, and the pvpanic driver may not be loaded yet to tell QEMU). With `lockups`, a
    lockup report too (see LOCKUP_LINE): a boot worth abandoning and trying again."""

    def __init__(self, guest: Guest, lockups: bool = False):
        self.console = ConsoleFollower(guest.console_log)
        self.lockups = lockups

    def __call__(self) -> str | None:
        for line in self.console.new_lines():
            if PANIC_LINE.search(line):
                return "stopped waiting for SSH: a panicked kernel never answers"
            lockup = LOCKUP_LINE.search(line) if self.lockups else None
            if lockup:
                return f"{BOOT_LOCKED_UP}: {lockup.group(0).strip()[:200]}"
        return None


BOOT_LOCKED_UP = "stopped waiting for SSH: the booting kernel locked up"


def boot_failure_cause(guest: Guest) -> str | None:
    """What went wrong in a boot that never reached sshd, said first: the kernel's panic
    line, or, with nothing at all on the console, that the image is not a bootable kernel."""
    until = time.monotonic() + (PANIC_LINE_WAIT_S if guest.panicked() else 0)
    while True:
        try:
            console = guest.console_log.read_bytes()[-TAIL_BYTES:].decode(errors="replace")
        except OSError:
            return None
        panic = PANIC_LINE.search(console)
        if panic is not None:
            return f"the kernel panicked during boot: {panic.group(0).strip()}"
        if time.monotonic() >= until:
            break
        time.sleep(0.1)
    if not console.strip():
        return "the image is not a bootable kernel: nothing at all on the console"
    if guest.panicked():
        return "the kernel panicked during boot (QEMU event GUEST_PANICKED; no panic line on the console)"
    return None


class CloudInitWatch:
    """A user's disk image: what its console says of cloud-init, read on as it grows."""

    def __init__(self, guest: Guest):
        self.console = ConsoleFollower(guest.console_log)
        self.image = guest.image
        self.started = False
        self.finished_at: float | None = None   # our clock, when we saw the line
        self.finished_up = ""                   # the guest's uptime the line gives

    def look(self) -> None:
        for line in self.console.new_lines():
            self.started = self.started or CLOUD_INIT_STARTED in line
            found = CLOUD_INIT_FINISHED.search(line)
            if found and self.finished_at is None:
                self.finished_at, self.finished_up = time.monotonic(), found.group(1)

    def no_sshd(self) -> str | None:
        """Why waiting on is pointless (cloud-init ended long ago, no sshd answered), or None."""
        self.look()
        if self.finished_at is None or time.monotonic() - self.finished_at < SSHD_AFTER_CLOUD_INIT_S:
            return None
        return (f"cloud-init finished (guest up {self.finished_up} s) but no SSH server answered in "
                f"{SSHD_AFTER_CLOUD_INIT_S:g} s more: is an SSH server installed and enabled in "
                f"{getattr(self.image, 'source', self.image.disk).name}?")


class InitReady:
    """Our image's /init prints READY once sshd runs, or ERROR naming the step that failed.
    Past BANNER_FALLBACK_S we poll anyway: an image without the marker, or a console
    that could not be written, must not cost the whole boot deadline. The console is
    read on from where the last look stopped."""

    def __init__(self, guest: Guest, since: float):
        self.console = ConsoleFollower(guest.console_log)
        self.guest = guest
        self.since = since
        self.ready = False

    def __call__(self) -> bool:
        # A systemd guest prints no marker: its readiness is the SSH banner alone.
        if self.ready or isinstance(self.guest.image, DiskGuestImage) or time.monotonic() - self.since > BANNER_FALLBACK_S:
            return True
        for line in self.console.new_lines():
            if line.startswith(images.ERROR_MARKER):
                raise HarnessError("boot", f"guest init failed: {line.strip()}")
            self.ready = self.ready or images.READY_MARKER in line
        return self.ready or images.READY_MARKER in self.console.partial.decode(errors="replace")
