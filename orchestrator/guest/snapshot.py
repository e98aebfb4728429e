"""Saved guests: boot once, then restore per scenario instead of cold-booting.

A snapshot is QEMU's migration stream of a guest that has booted, started
sshd and loaded its modules, saved while stopped. A guest launched with
`-incoming` from it resumes where it stopped in about 0.1 s; only the host
side (QMP, the forwarded port) is new.

Keyed by everything that shapes the saved state (Guest.state_identity: for
QEMU, the command line the guest is started with -- kernel command line, CPU
model, machine, memory, devices, firmware -- minus what differs per run, plus
the firmware's and QEMU's builds), the image build and the probe build. Beside the state lie its SHA-256 (checked before the first restore in
a process) and the saving boot's console, which a restored run
puts in front of its own (so a verdict sees the same span of the guest's life
either way), and a lock per key: one run saves, the others wait a bounded
time, then find it.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from orchestrator.guest.base import Guest
from orchestrator.guest.monitor import MonitorError
from orchestrator.guest.readiness import BOOT_LOCKED_UP, wait_sshd
from orchestrator.guest.ssh import SshSession
from orchestrator.plumbing.deadline import Deadline
from orchestrator.plumbing.digest import file_sha256
from orchestrator.plumbing.outcome import HarnessError

# Our image's /init loads the modules sshd does not need while the client logs
# in; wait (at most 10 s) until it is done. Other images have no /etc/mceorch.
GUEST_SETTLED = ("{ [ ! -d /etc/mceorch ] || { i=0; while [ ! -e /run/mceorch/modules-loaded ] && [ $i -lt 1000 ]; "
                 "do usleep 10000; i=$((i + 1)); done; [ -e /run/mceorch/modules-loaded ]; }; }")
# Saving is a cold boot to a settled guest plus the migration: its own phase and
# deadline (the "save" phase), not the scenario's boot time. Waiting for
# another run's save of the same configuration is bounded by the same time.
SAVE_TIMEOUT_S = 240.0
WAIT_PROGRESS_S = 10.0
_VERIFIED: set[tuple] = set()
MAX_AGE_DAYS = 14
DEFAULT_CACHE_MIB = 4096
RECENT_S = 3600.0
CONSOLE_SEAM = ("==== mce-orchestrator: above, the console of the boot that saved this guest ({name}); "
                "below, the restored guest ====\n")


def snapshot_key(identity: list[str], *, image_build: str, probe_build: str, procedure: str = "") -> str:
    """Everything that shapes a saved guest, hashed. Pure."""
    parts = identity + [f"image={image_build}", f"probe={probe_build}", f"procedure={procedure}"]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


# How a guest is brought to the saved point (GUEST_SETTLED, the order of the
# steps) is this file: a change to it must not reuse states saved the old way.
_PROCEDURE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def guest_key(guest: Guest, probe_binary: Path) -> str:
    return snapshot_key(guest.state_identity(), image_build=image_build(guest.image),
                        probe_build=probe_binary.name, procedure=_PROCEDURE)


def image_build(image) -> str:
    """One build of an image. Its host key too: a rebuild with the same inputs (the local
    image after a prune, or a cache folder removed by hand) keeps the digest, and so the
    folder name, but gets new keys, and a guest saved from the old build would present a
    host key the new image does not pin."""
    return f"{image.directory.name} {image.kernel_release} {image.host_key_line}"


@dataclass(frozen=True)
class SavedGuest:
    state: Path    # QEMU's migration stream
    console: Path  # the saving boot's serial console, up to the save
    digest: Path   # the state's SHA-256 (first line), then "SHA-256 name" of each saved disk
    root: Path | None = None     # a disk image's overlay as it was at the save (when it boots from one)
    scratch: Path | None = None  # the scenario's scratch disk as it was at the save (when it has one)

    def disks(self) -> list[Path]:
        """Where the disks saved with it go (whether or not this configuration has them)."""
        return [p for p in (self.root, self.scratch) if p is not None]

    def damage(self, wanted_disks: tuple[bool, bool] = (False, False)) -> str | None:
        """Why the state (or a disk saved with it) is not the one that was saved (changed,
        cut short, missing), or None. RAM pages in a migration stream carry no checksum:
        a flipped byte would load. `wanted_disks`: (root, scratch) this guest needs."""
        for path, wanted in zip((self.root, self.scratch), wanted_disks):
            if wanted and (path is None or not path.is_file()):
                return f"the disk saved with it, {path.name if path else 'a disk'}, is missing"
        try:
            lines = self.digest.read_text().splitlines()
            for path, want in [(self.state, lines[0].strip() if lines else "")] + [
                    (self.state.with_name(line.split()[1]), line.split()[0]) for line in lines[1:] if line.strip()]:
                st = path.stat()
                identity = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
                if identity in _VERIFIED:  # once per process: a catalog run restores it often
                    continue
                got = file_sha256(path)
                if got != want:
                    return f"{'its' if path == self.state else path.name} SHA-256 is {got[:12]}..., " \
                           f"saved as {want[:12]}..."
                _VERIFIED.add(identity)
        except (OSError, IndexError) as exc:
            return f"cannot read it: {getattr(exc, 'strerror', None) or exc}"
        return None

    def console_for_restore(self) -> str:
        """What a restored run's console.log starts with."""
        return self.console.read_text(errors="replace") + CONSOLE_SEAM.format(name=self.state.name)


def copy_sparse(source: Path, target: Path) -> None:
    """A copy that keeps holes (a scratch disk is mostly holes; an overlay too)."""
    done = subprocess.run(["cp", "--sparse=always", str(source), str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        raise HarnessError("save", f"copying {source.name}: {(done.stderr.strip() or 'no output').splitlines()[-1]}")


class SnapshotStore:
    """The saved guests in one folder: <image>-<key>.state, .console, and a lock per key."""

    def __init__(self, folder: Path):
        self.folder = folder

    def paths(self, image_name: str, key: str) -> SavedGuest:
        stem = f"{image_name}-{key}"
        return SavedGuest(self.folder / f"{stem}.state", self.folder / f"{stem}.console",
                          self.folder / f"{stem}.sha256", self.folder / f"{stem}.root.qcow2",
                          self.folder / f"{stem}.scratch.img")

    def find(self, image_name: str, key: str) -> SavedGuest | None:
        saved = self.paths(image_name, key)
        if not _complete(saved):
            return None
        self._mark_used(saved.state.stem)
        return saved

    def discard(self, saved: SavedGuest) -> None:
        for path in (saved.state, saved.console, saved.digest, *saved.disks(), *self._partials(saved)):
            path.unlink(missing_ok=True)

    def ensure(self, guest: Guest, key: str, deadline: Deadline,
               progress: Callable[[str], None] = lambda m: None) -> SavedGuest:
        """The saved guest for `key`, booting `guest`'s configuration and saving it
        first if no run has; waits (bounded by `deadline`) for a run saving it now."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        saved = self.paths(guest.image.name, key)
        with (self.folder / f".{saved.state.stem}.lock").open("w") as lock:
            self._lock(lock, saved, deadline, progress)
            if _complete(saved):
                return saved  # another run saved it while we waited
            self.discard(saved)  # what a failed or killed save left, or a half set
            progress(f"saving a booted {guest.image.name} guest for later runs ({saved.state.name})")
            for attempt in (1, 2):
                try:
                    _boot_and_save(guest, saved, deadline)
                    break
                except BaseException as exc:
                    self.discard(saved)  # a failed or interrupted save leaves nothing behind
                    # Seen under make test with stress-ng beside it: a 4-vCPU 6.12 boot under TCG
                    # stuck 209 s in stop_machine ("soft lockup ... [migration/3]"), and the next
                    # boot of the same guest saved in 9 s. A boot that locks up is tried once more;
                    # one that does again, or fails otherwise, is the error.
                    if attempt == 2 or not isinstance(exc, HarnessError) or BOOT_LOCKED_UP not in exc.message:
                        raise
                    progress(f"the boot to save locked up ({exc.message.split(BOOT_LOCKED_UP + ': ', 1)[-1]}); "
                             f"booting it again")
                    deadline = Deadline(deadline.seconds, "save")  # the boot again gets the time of one
            self._mark_used(saved.state.stem)
        pruned = self.prune(keep={saved.state.stem})
        if pruned:
            progress(f"pruned {len(pruned)} saved guest(s) unused the longest "
                     f"({sum(size for _, size in pruned) / 2**20:.0f} MiB): {', '.join(s for s, _ in pruned)}")
        return saved

    def prune(self, keep: set[str], now: float | None = None) -> list[tuple[str, int]]:
        """Remove what prune_plan picks, skipping states a run holds the lock of; returns
        (stem, bytes) of what went."""
        setting = os.environ.get("MCE_SNAPSHOT_CACHE_MIB", str(DEFAULT_CACHE_MIB))
        if not setting.isdigit():
            raise HarnessError("save", f"MCE_SNAPSHOT_CACHE_MIB={setting!r}: expected a whole number of MiB")
        limit = int(setting) * 2**20
        entries = []
        for state in self.folder.glob("*.state"):
            try:
                lock = self.folder / f".{state.stem}.lock"
                used = lock.stat().st_mtime if lock.exists() else state.stat().st_mtime
                entries.append((state.stem, _stored_bytes(self.paths(*state.stem.rsplit("-", 1))), used))
            except OSError:
                continue  # removed meanwhile by another run's prune
        pruned = []
        for stem in prune_plan(entries, time.time() if now is None else now, limit,
                               MAX_AGE_DAYS * 86400.0, keep):
            image_name, key = stem.rsplit("-", 1)
            saved = self.paths(image_name, key)
            with (self.folder / f".{stem}.lock").open("a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # being saved or waited for right now
                size = _stored_bytes(saved)
                self.discard(saved)
                pruned.append((stem, size))
        return pruned

    def _mark_used(self, stem: str) -> None:
        # The lock file exists for every state a save made (ensure); its mtime is the last use.
        try:
            os.utime(self.folder / f".{stem}.lock")
        except OSError:
            pass  # no lock file (copied in by hand) or a read-only store: aged by the state's mtime

    def _lock(self, lock, saved: SavedGuest, deadline: Deadline, progress: Callable[[str], None]) -> None:
        start = last_note = time.monotonic()
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if deadline.expired():
                raise HarnessError("save", f"another run has been saving {saved.state.name} for "
                                           f"{time.monotonic() - start:.0f} s; gave up waiting")
            if time.monotonic() - last_note >= WAIT_PROGRESS_S:
                last_note = time.monotonic()
                progress(f"waiting for another run saving {saved.state.name} ({last_note - start:.0f} s)")
            deadline.sleep(0.2)

    def _partials(self, saved: SavedGuest) -> list[Path]:
        return [p for f in (saved.state, saved.console, saved.digest, *saved.disks())
                for p in self.folder.glob(f".{f.name}.*")]


def prune_plan(entries: list[tuple[str, int, float]], now: float, max_bytes: int,
               max_age_s: float, keep: set[str], recent_s: float = RECENT_S) -> list[str]:
    """Which saved guests to remove, from (stem, bytes, last used): those unused for
    max_age_s, then the least recently used while the rest exceed max_bytes. Never one
    in `keep`, nor one used within recent_s: a run may be restoring it (the size limit
    gives way to that). Pure."""
    doomed = [stem for stem, _, used in entries if stem not in keep and now - used > max_age_s]
    left = sorted((e for e in entries if e[0] not in doomed), key=lambda e: e[2])
    total = sum(size for _, size, _ in left)
    for stem, size, used in left:
        if total <= max_bytes:
            break
        if stem not in keep and now - used > recent_s:
            doomed.append(stem)
            total -= size
    return doomed


def _stored_bytes(saved: SavedGuest) -> int:
    """The state's size and what its disks (sparse copies) take on disk."""
    total = 0
    for path in (saved.state, *saved.disks()):
        try:
            st = path.stat()
        except OSError:
            continue
        total += st.st_size if path == saved.state else st.st_blocks * 512
    return total


def _complete(saved: SavedGuest) -> bool:
    # The console and the digest are written before the state is renamed into place.
    return saved.console.is_file() and saved.digest.is_file() and saved.state.is_file()


def _boot_and_save(template: Guest, saved: SavedGuest, deadline: Deadline) -> None:
    work = Path(tempfile.mkdtemp(prefix="mce-snapshot-"))
    try:
        scratch = None
        if template.disk is not None:
            # The saving boot's own copy of this run's fresh scratch disk: saved with the state.
            scratch = work / "scratch.img"
            copy_sparse(template.disk, scratch)
        with template.fresh(work, disk=scratch) as guest:
            guest.launch(deadline)
            # As a scenario's boot waits: a 2-vCPU save boot polled from the start once never
            # got its banner within 240 s (early connections piled up in slirp). A lockup
            # report ends it at once (ensure() boots again).
            wait_sshd(guest, deadline, since=time.monotonic(), lockups=True)
            ssh = SshSession(guest.ssh_port, guest.image.client_key, guest.image.host_key_line)
            try:
                ssh.connect(deadline)
                ssh.check(GUEST_SETTLED, deadline, "save")
            finally:
                ssh.close()
            deadline.sleep(0.3)  # let dropbear's session process for that login end
            partial = saved.state.with_name(f".{saved.state.name}.{os.getpid()}")
            guest.save(partial, deadline)
            # The migration has flushed the disks and QEMU no longer writes them: copy them as
            # they are now, the state's other half.
            digests = [file_sha256(partial)]
            for disk, final in ((getattr(guest, "root_disk", None), saved.root), (scratch, saved.scratch)):
                if disk is not None:
                    temporary = final.with_name(f".{final.name}.{os.getpid()}")
                    copy_sparse(disk, temporary)
                    digests.append(f"{file_sha256(temporary)} {final.name}")
                    temporary.replace(final)
            for final, text in ((saved.console, guest.console_log.read_text(errors="replace")),
                                (saved.digest, "\n".join(digests) + "\n")):
                temporary = final.with_name(f".{final.name}.{os.getpid()}")
                temporary.write_text(text)
                temporary.replace(final)
            partial.replace(saved.state)  # last: a state on disk always has its console and digest
    except (HarnessError, MonitorError) as exc:
        raise HarnessError("save", f"saving a booted guest failed: {getattr(exc, 'message', exc)}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)

