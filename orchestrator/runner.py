"""The pipeline: load, boot, locate, inject, observe, judge, report.

Each scenario runs in its own guest; cleanup always runs; the artifacts are
written whatever happened. Harness trouble before the injection is an ERROR;
after it, whatever evidence was gathered is still judged (a guest that
panicked where it should not have is a FAIL, not an ERROR).
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from orchestrator import probe as probe_build
from orchestrator.guest import DEFAULT_BACKEND, new_guest
from orchestrator.guest import images
from orchestrator.guest import keep as keeping
from orchestrator.guest.base import Guest, HypervisorUnavailable
from orchestrator.guest.images import bzimage, pmem
from orchestrator.guest.images.disk import SeededDiskImage, prepare_disk_image, private_workdir
from orchestrator.guest.images.distro import DiskGuestImage, ensure_guest_image
from orchestrator.guest.images.kernels import LocalKernel
from orchestrator.guest.qemu import tail
from orchestrator.guest.qemu.install import qemu_version
from orchestrator.guest.readiness import wait_sshd
from orchestrator.guest.snapshot import GUEST_SETTLED, SAVE_TIMEOUT_S, SnapshotStore, guest_key
from orchestrator.guest.ssh import GuestWentDown, RemoteProcess, SshSession, probe_shell, quote
from orchestrator.inject import Injection, inject
from orchestrator.inject import mce
from orchestrator.inject import races
from orchestrator.inject.races import highorder, page_locks, recompound
from orchestrator.judge import printk
from orchestrator.judge.known_failures import apply_known_failure
from orchestrator.judge.verdict import LOCK_RACE_KINDS, Check, Evidence, Verdict, judge
from orchestrator.observe import guest_down, hardware_corrupted, observe, panic_line, wait_failure_logged
from orchestrator.plumbing.deadline import Deadline
from orchestrator.plumbing.guest_data import Unreadable, check_ready
from orchestrator.plumbing.outcome import HarnessError, InputError, Outcome, SetupError
from orchestrator.report import ConsoleReporter, ScenarioResult
from orchestrator.report import repro
from orchestrator.scenario import Scenario
from orchestrator.scenario import kconfig




REPO_ROOT = Path(__file__).resolve().parent.parent
GUEST_MOUNT = "/mnt"
PROBE_FILE = f"{GUEST_MOUNT}/mce-probe.data"
# Tried again for up to 5 s: a mount right after boot failed now and then with "Device
# or resource busy" (once in a catalog run, under load), a block device's first
# exclusive open overlapping another; the last failure's message is what is reported.
# The scratch disk is /dev/vda, or /dev/vdb after an image's root disk. busybox has
# usleep; a full Debian has not, its coreutils sleep takes fractions.
def mount_scratch_disk(device: str) -> str:
    # Idempotent, also against a twin running at the same time: the SSH client sends a
    # command again when dropbear closed its channel at once, and the first copy may be
    # running (seen under load: 50 tries of "Device or resource busy" while the other
    # copy's mount was there). Mounted, by either, is done.
    mounted = f"grep -qs '^{device} {GUEST_MOUNT} ' /proc/mounts"
    return (f"{{ i=0; until {mounted} || mount -t ext4 {device} {GUEST_MOUNT} 2>/tmp/mount.err; do i=$((i + 1)); "
            f"if [ $i -ge 50 ]; then cat /tmp/mount.err; exit 1; fi; usleep 100000 2>/dev/null || sleep 0.1; done; }}")


def mount_pmem() -> str:
    """Format the guest.pmem device in the guest and mount it at /mnt with DAX.

    nd_pmem binds the namespace asynchronously after insmod: wait for the device.
    busybox mke2fs writes ext2, which the ext4 driver mounts (CONFIG_EXT4_USE_FOR_EXT2);
    -o dax (dax=always) makes the mount fail on a device without DAX, never silently use
    the page cache. Idempotent like mount_scratch_disk: a second copy of the command
    finds the device mounted, or waits while the first (which took the lock) formats it."""
    mounted = f"grep -qs '^{pmem.DEVICE} {GUEST_MOUNT} ' /proc/mounts"
    pause = "usleep 100000 2>/dev/null || sleep 0.1"
    return (f"{{ {mounted} || if mkdir /run/mceorch-pmem 2>/dev/null; then "
            f"i=0; until [ -b {pmem.DEVICE} ]; do i=$((i + 1)); if [ $i -ge 100 ]; then "
            f"echo 'no {pmem.DEVICE} after 10 s (nd_e820/nd_pmem not loaded?)'; exit 1; fi; {pause}; done; "
            f"mke2fs -F -b 4096 {pmem.DEVICE} >/tmp/mke2fs.out 2>&1 || {{ cat /tmp/mke2fs.out; exit 1; }}; "
            f"mount -t ext4 -o dax {pmem.DEVICE} {GUEST_MOUNT}; "
            f"else i=0; until {mounted}; do i=$((i + 1)); if [ $i -ge 200 ]; then "
            f"echo '{pmem.DEVICE} not mounted by the other copy of this command'; exit 1; fi; {pause}; done; fi; }}")


EVENTS_CATCH_UP_S = 10.0  # after an event storm, to read what QEMU queued before judging
SWAP_FILE = f"{GUEST_MOUNT}/mce-swap"
# Present when the kernel handles machine checks (CONFIG_X86_MCE, not mce=off): looked
# at first in the set-up command, so a kernel without it fails there, by name.
MACHINECHECK_SYSFS = "/sys/devices/system/machinecheck"
NO_MCE_CHECK = f"[ -d {MACHINECHECK_SYSFS} ]"
# Guests boot with `quiet`: the console carries only messages above KERN_WARNING. When a
# guest goes down the console is the kernel log the judge has, so before anything the
# scenario does (its sysctl and sysfs writes, the injection) every level is sent there
# (as `dmesg -n 8`): a WARNING or an info line before an expected panic reaches the judge.
CONSOLE_EVERY_LEVEL = "echo 8 > /proc/sys/kernel/printk"
# The set-up command runs its steps in order and exits with SETUP_EXIT + the index of
# the first that failed: the step is known from the exit status, never from text in
# the output (which quotes commands and whatever the guest printed).
SETUP_EXIT = 100
MIN_FREE_ARTIFACT_BYTES = 4 << 20  # console, logs and evidence of one scenario stay well below


class KernelLacks(Exception):
    """The kernel lacks what the scenario needs (options, or behaviour a kernel_variants
    skip names): it is skipped, not booted."""

    def __init__(self, lines: list[str]):
        super().__init__("; ".join(lines))
        self.lines = lines


def lock_race(scenario: Scenario) -> bool:
    """The fuse-mlock kinds: the probe makes and observes a page-lock interleaving."""
    return scenario.probe.memory.startswith(LOCK_RACE_KINDS)


def skip_reason(variant) -> str:
    return f"cannot be set up on kernel {variant.condition}: {variant.because}"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C/SIGTERM during a scenario, with what that scenario got to."""

    def __init__(self, result: ScenarioResult):
        super().__init__()
        self.result = result


@dataclass
class RunContext:
    """What a hook can reach at the start of a phase (filled in as the run goes)."""
    scenario: Scenario
    artifacts: Path
    evidence: Evidence
    guest: Guest | None = None
    ssh: SshSession | None = None
    probe: RemoteProcess | None = None
    probe_hint: repro.ProbeHint | None = None  # how the probe was started, for qemu-by-hand.sh


# Called at the start of every phase with (phase, context); fault-injection
# tests use it to kill QEMU, drop SSH or stop the probe at a chosen moment.
PhaseHook = Callable[[str, RunContext], None]


@dataclass(frozen=True)
class RunOptions:
    cache_root: Path | None = None       # images and the probe; default guest-images/.cache
    accel: str | None = None             # None: KVM where it really works, else TCG
    keep_alive_on_failure: bool = False  # leave a failed guest running until Ctrl-C (= keep "on-failure")
    keep: str | None = None              # "on-failure" | "always": leave the guest running until Ctrl-C
    image: str | None = None             # override every scenario's guest.image
    extra_cmdline: str = ""              # appended to the guest kernel's command line
    snapshot: bool = False               # restore a saved booted guest instead of a cold boot
    backend: str = DEFAULT_BACKEND       # which kind of guest (orchestrator.guest)
    snapshot_dir: Path | None = None     # where saved guests live; default <cache_root>/snapshots
    connect: str | None = None           # libvirt URI for the libvirt backend (default qemu:///system)
    attach: tuple | None = None          # (domain, AttachConfig): run in a domain the user already has
    kernel: Path | None = None           # --kernel: a bzImage, vmlinux or build tree instead of the image's
    modules: Path | None = None          # --modules: that kernel's INSTALL_MOD_PATH
    disk_image: Path | None = None       # --disk-image: a user's cloud-init disk image for every scenario
    allow_backing: tuple[Path, ...] = ()  # --allow-backing: backing files a disk image may use
    command: str = "mce-orchestrator"    # the tool as the user typed it (with --results), for keep hints
    qemu_binary: str = "qemu-system-x86_64"  # --qemu, resolved to the binary that runs the guests
    qemu: str | None = None              # --qemu as given (a name or a path), for repro.sh
    hook: PhaseHook | None = None


class Phases:
    """Times each phase and reports it; the failing phase names the error."""

    def __init__(self, name: str, reporter: ConsoleReporter, context: RunContext, hook: PhaseHook | None = None):
        self.name = name
        self.reporter = reporter
        self.context = context
        self.hook = hook
        self.seconds: dict[str, float] = {}
        self.notes: dict[str, str] = {}
        self.current: str | None = None

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.monotonic()
        self.current = phase
        self.reporter.phase_started(self.name, phase)
        try:
            if self.hook is not None:
                self.hook(phase, self.context)
            yield
        except HarnessError as exc:
            self.seconds[phase] = time.monotonic() - start
            self.reporter.phase_failed(self.name, phase, self.seconds[phase], exc.message)
            raise
        except BaseException:
            self.seconds[phase] = time.monotonic() - start  # interrupted: the time still counts
            raise
        self.seconds[phase] = time.monotonic() - start
        self.reporter.phase_finished(self.name, phase, self.seconds[phase], self.notes.get(phase, ""))


def run_scenario(scenario: Scenario, run_dir: Path, options: RunOptions, reporter: ConsoleReporter,
                 label: str | None = None) -> ScenarioResult:
    """Run one scenario in its own guest. `label` names repeated runs apart (name.2, ...)."""
    label = label or scenario.name
    if Path(label).name != label or label in (".", ".."):  # names are checked on loading; this is the last guard
        raise InputError(f"scenario name {label!r} would put its artifacts outside {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    artifacts, n = run_dir / label, 1
    while True:
        try:
            artifacts.mkdir()
            break
        except FileExistsError:
            # The same scenario named twice in one run: each keeps its own folder (name.2, ...).
            n += 1
            artifacts = run_dir / f"{label}.{n}"
    label = artifacts.name
    free = _free_bytes(artifacts)
    reporter.scenario_started(label)
    ev = Evidence()
    phases = Phases(label, reporter, RunContext(scenario, artifacts, ev), options.hook)
    result = ScenarioResult(name=label, path=str(scenario.path), outcome=Outcome.ERROR,
                            artifacts=artifacts, description=scenario.description, evidence=ev)
    injection: Injection | None = None
    launched_argv: list[str] = []
    stack = contextlib.ExitStack()
    try:
        if free < MIN_FREE_ARTIFACT_BYTES:
            # Refused up front: a console log that cannot be written would hide everything.
            raise HarnessError("artifacts", f"only {free >> 10} KiB free in {artifacts} "
                                            f"(need {MIN_FREE_ARTIFACT_BYTES >> 20} MiB): No space left on device")
        with phases("image"):
            cache_root = options.cache_root or REPO_ROOT / "guest-images" / ".cache"
            disk_image = options.disk_image or scenario.guest.disk_image
            if disk_image is not None:
                if options.kernel is not None:
                    raise images.ImageError(f"disk image {disk_image}: --kernel applies to the initramfs images "
                                            f"(a disk image boots its own kernel)")
                # This run's keys and seed; removed with the scratch disk, whatever happens.
                workdir = private_workdir()
                stack.callback(shutil.rmtree, workdir, ignore_errors=True)
                guest_image = prepare_disk_image(disk_image, cache_root=cache_root, workdir=workdir,
                                                 saved_keys=options.snapshot, progress=reporter.note,
                                                 allow_backing=options.allow_backing)
            else:
                guest_image = ensure_guest_image(options.image or scenario.guest.image, repo_root=REPO_ROOT,
                                                 cache_root=cache_root, progress=reporter.note,
                                                 kernel=options.kernel, modules=options.modules)
            probe_binary = probe_build.build_probe(cache_root / "probe")
            phases.notes["image"] = (f"{guest_image.source} ({guest_image.kernel_release}, its own kernel; "
                                     f"cloud-init seed)" if isinstance(guest_image, SeededDiskImage)
                                     else f"{guest_image.name} ({guest_image.kernel_release})")
            as_written = scenario  # an attached guest's own kernel picks its expectations again
            kernel_config = kconfig.parse(guest_image.config.read_text()) \
                if getattr(guest_image, "config", None) is not None else None
            scenario, variant = scenario.for_kernel(guest_image.kernel_release, kernel_config)
            result.image, result.kernel_release = guest_image.name, guest_image.kernel_release
            result.kernel_source = getattr(guest_image, "kernel_source", None) or None
            result.qemu_version, result.qemu_binary = qemu_version(options.qemu_binary), options.qemu_binary
            phases.notes["image"] += f"; QEMU {result.qemu_version}"
            result.known_failure = scenario.known_failure(guest_image.kernel_release)
            if variant is not None and variant.skip:
                raise KernelLacks([skip_reason(variant)])
            if variant is not None:
                phases.notes["image"] += (f"; expectations for kernel {variant.condition}"
                                          + "".join(f" with CONFIG_{option}" for option in variant.config)
                                          + f": {variant.because}")
            if result.known_failure is not None:
                phases.notes["image"] += f"; known to fail on kernel {result.known_failure.condition}"
            printk_formats = _printk_formats(scenario, guest_image, ev)
            ev.printk_formats = printk_formats
            if guest_image.config is not None:
                phases.reporter.note(f"kernel options checked in "
                                     f"{_config_source(options) or guest_image.config_source or 'its .config'}")
                lacking = kconfig.missing(scenario, kernel_config, guest_image.modules)
                if lacking:
                    raise KernelLacks(lacking)
            elif not isinstance(guest_image, SeededDiskImage):
                phases.reporter.note("no config found: options not checked (those the booted guest shows are "
                                     "looked for there)")
        disk = stack.enter_context(_scratch_disk(scenario.guest.disk_mib)) if scenario.guest.disk_mib else None
        keep = options.keep or ("on-failure" if options.keep_alive_on_failure else None)
        kept_folder = keeping.private_socket_folder() if keep else None
        if kept_folder is not None:
            stack.callback(keeping.remove_socket_folder, kept_folder)
        attempt = 1
        while True:
            try:
                with new_guest(options.backend, options.connect, options.attach, image=guest_image, spec=scenario.guest,
                               artifacts=artifacts, accel=options.accel, extra_cmdline=options.extra_cmdline, disk=disk,
                               qemu_binary=options.qemu_binary,
                               **({"kept_qmp_socket": kept_folder / "qmp.sock"} if kept_folder else {})) as guest:
                    phases.context.guest = guest
                    try:
                        injection = _run_in_guest(scenario, guest, guest_image, probe_binary, phases, ev,
                                                  symbol_cache=cache_root / "kallsyms",
                                                  snapshots=(options.snapshot_dir or cache_root / "snapshots")
                                                  if options.snapshot else None)
                    finally:
                        if guest.kernel_release is not None and guest.kernel_release != result.kernel_release:
                            # An attached domain runs its own kernel, not --image's: judged as that kernel.
                            scenario, variant = as_written.for_kernel(guest.kernel_release)
                            result.kernel_release = guest.kernel_release
                            ev.printk_formats = None  # they were the image's kernel's
                            ev.unavailable["printk formats"] = (f"the attached guest runs {guest.kernel_release}, "
                                                                f"whose kernel image is not on this host")
                            result.known_failure = scenario.known_failure(guest.kernel_release)
                            phases.notes["image"] = (f"{guest_image.name} for the probe; the attached guest runs "
                                                     f"{guest.kernel_release}"
                                                     + (f"; expectations for kernel {variant.condition}: {variant.because}"
                                                        if variant is not None else "")
                                                     + (f"; known to fail on kernel {result.known_failure.condition}"
                                                        if result.known_failure is not None else ""))
                        result.qemu_pid = guest.launched_pid
                        launched_argv = getattr(guest, "argv", [])  # the QEMU backend's command line
                        ev.console_tail = tail(guest.console_log, 40)
                        console = getattr(guest, "console", None)
                        if console is not None and console.flood:
                            ev.add_cause(f"{console.flood}: kernel lines in the cut part can only be found in dmesg")
                        if guest.monitor:
                            if guest.monitor.storm:
                                # The events the scenario is judged on may still be queued behind it.
                                caught_up = guest.monitor.catch_up(EVENTS_CATCH_UP_S)
                                gone = not caught_up and not guest.is_running()
                                ev.add_cause(f"{guest.monitor.storm}: {guest.monitor.summary()}"
                                             + ("" if caught_up else "; the events QEMU had queued went with it (the guest "
                                                                     "no longer exists)" if gone else
                                                "; the events QEMU had queued were not all read "
                                                f"within {EVENTS_CATCH_UP_S:g} s"))
                                if not caught_up:
                                    ev.unavailable["QEMU events"] = guest.monitor.storm
                            ev.events = guest.monitor.events()
                        result.phases = phases.seconds
                        if keep:
                            _keep_running(keep, scenario, guest, ev, guest_image, reporter, options.command)
                break
            except HarnessError as exc:
                # A forced race the harness could not force says nothing about the kernel; its
                # guest is spent (the page may be poisoned), so the next try is a fresh guest.
                if not ((scenario.inject.race or lock_race(scenario)) and races.not_forced(exc)
                        and attempt < races.ATTEMPTS and not keep):
                    if attempt > 1 and races.not_forced(exc):
                        raise HarnessError(exc.phase, f"{exc.message} (attempt {attempt} of {races.ATTEMPTS}; "
                                                      f"the others are in {artifacts}/race-attempt-N)") from None
                    raise
                kept = races.set_aside(artifacts, attempt)
                reporter.note(f"race not forced in attempt {attempt} of {races.ATTEMPTS} ({exc.message}); its "
                              f"artifacts are in {kept}; trying again in a fresh guest")
                attempt += 1
                ev = Evidence(printk_formats=printk_formats,
                              unavailable={k: v for k, v in ev.unavailable.items() if k == "printk formats"})
                result.evidence = phases.context.evidence = ev
                phases.context.guest = phases.context.ssh = phases.context.probe = None
    except KernelLacks as exc:
        result.outcome, result.skip_reasons = Outcome.SKIP, exc.lines
    except HarnessError as exc:
        result.error = exc
    except images.ImageError as exc:
        # Without --kernel the image is all Debian's packages and this host's tools: a bisection stops.
        result.error = (HarnessError if options.kernel is not None else SetupError)("image", str(exc))
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM: the guest is already shut down (context manager);
        # hand the partial result up so it is reported.
        result.error = HarnessError(phases.current or "run", "interrupted (Ctrl-C or SIGTERM)")
        result.phases = phases.seconds
        _write_evidence(artifacts, ev)
        raise Interrupted(result) from None
    except MemoryError:
        result.error = HarnessError(phases.current or "run", "the host ran out of memory")
    except OSError as exc:
        # Artifacts disk full, a file we cannot write: the harness's trouble.
        where = exc.filename or f"artifacts in {artifacts}"
        result.error = HarnessError(phases.current or "run", f"cannot write {where}: {exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001 -- a harness bug is an ERROR with its traceback kept, not a crash
        (artifacts / "traceback.txt").write_text(traceback.format_exc())
        result.error = HarnessError(phases.current or "run", f"internal error {exc!r}; traceback in {artifacts / 'traceback.txt'}")
    finally:
        stack.close()  # the scratch disk goes, whatever happened
        result.phases = phases.seconds
        result.injection = asdict(injection) if injection else None
        try:
            _write_evidence(artifacts, ev)
            _write_repro(artifacts, scenario, options, launched_argv, result.kernel_release,
                         phases.context.probe_hint)
        except OSError as exc:
            result.error = result.error or HarnessError("artifacts", f"cannot write evidence: {exc.strerror}: {exc.filename}")

    if result.outcome != Outcome.SKIP and (result.error is None or injection is not None):
        with phases("verdict"):
            result.verdict = _judge_safely(scenario, ev, artifacts)
        result.outcome = result.verdict.outcome
        if result.error is not None and result.outcome == Outcome.PASS:
            # Every check passed, but the harness broke afterwards: say so.
            result.outcome = Outcome.ERROR
        result.outcome, result.known_note = apply_known_failure(result.outcome, result.verdict.checks,
                                                                result.known_failure, ev.kernel_log)
    result.phases = phases.seconds
    reporter.scenario_finished(result)
    return result


def _judge_safely(scenario: Scenario, ev: Evidence, artifacts: Path) -> Verdict:
    """The verdict, or an ERROR naming the harness bug: one scenario's judging never stops the run."""
    try:
        return judge(scenario, ev)
    except Exception as exc:  # noqa: BLE001
        with contextlib.suppress(OSError):
            (artifacts / "traceback.txt").write_text(traceback.format_exc())
        return Verdict(Outcome.ERROR, (Check("verdict", Outcome.ERROR,
                                             f"internal error judging the evidence: {exc!r}"[:300]
                                             + f"; traceback in {artifacts / 'traceback.txt'}"),))


def _printk_formats(scenario: Scenario, guest_image, ev: Evidence) -> dict[str, list[str]] | None:
    """For each printk phrase the scenario's expectations name, the formats of the image's
    kernel that hold it; None, with the reason in ev.unavailable, where they cannot be read."""
    expect = scenario.expect
    phrases = [e.text for e in (*expect.kernel_log, *expect.kernel_log_absent) if e.printk]
    if not phrases:
        return None
    try:
        strings = _kernel_strings(guest_image.kernel)
    except (OSError, images.ImageError) as exc:
        ev.unavailable["printk formats"] = f"the kernel image {guest_image.kernel} could not be read: {exc}"
        return None
    return {phrase: printk.formats_with(strings, phrase) for phrase in phrases}


@functools.lru_cache(maxsize=2)
def _kernel_strings_cached(path: Path, size: int, mtime_ns: int) -> tuple[str, ...]:
    return tuple(bzimage.rodata_strings(path.read_bytes(), str(path)))


def _kernel_strings(path: Path) -> tuple[str, ...]:
    stat = path.stat()
    return _kernel_strings_cached(path, stat.st_size, stat.st_mtime_ns)


def _run_in_guest(scenario: Scenario, guest: Guest, guest_image, probe_binary: Path,
                  phases: Phases, ev: Evidence, snapshots: Path | None = None,
                  symbol_cache: Path | None = None) -> Injection | None:
    # A saved guest carries its disks (overlay, scratch disk) where the backend saves them;
    # a user's disk image with per-run keys in its seed, and a guest that cannot be saved
    # (a remote libvirt host), always boot.
    restore = (snapshots is not None and guest.can_snapshot and getattr(guest_image, "per_run_keys", False) is False
               and (guest.saves_disks or (guest.disk is None and not isinstance(guest_image, DiskGuestImage))))
    if restore:
        _restore_saved_guest(scenario, guest, probe_binary, phases, SnapshotStore(snapshots))
    else:
        with phases("boot"):
            # One deadline for launch and banner together; a systemd image boots for longer.
            deadline = Deadline(max(scenario.timeouts.boot, getattr(guest_image, "boot_timeout_s", 0)), "boot")
            try:
                guest.launch(deadline)
                wait_sshd(guest, deadline, since=time.monotonic())
            except HarnessError:
                # The kernel's trouble, or QEMU's? QEMU alone, with no kernel, tells them apart.
                alone = guest.fails_without_kernel() if guest.boots else None
                if alone is None:
                    raise
                raise SetupError("boot", f"QEMU fails without the kernel too, so the host or QEMU is at fault, "
                                         f"not the kernel: {alone}") from None
            phases.notes["boot"] = (f"{guest.accel}, {'booted' if guest.boots else 'attached'}, "
                                    f"ssh on {guest.ssh_host}:{guest.ssh_port}{_through(guest)}")
    try:
        return _run_after_boot(scenario, guest, guest_image, probe_binary, phases, ev, restored=restore,
                               symbol_cache=symbol_cache)
    except GuestWentDown as exc:
        if exc.phase in ("ssh", "locate"):
            # Before the machine check: nothing the scenario judges happened yet, so this is
            # the run's ERROR, not the kernel's FAIL (a probe or a race process that brings
            # the kernel down is a kernel bug the harness can name but not judge here).
            raise HarnessError(exc.phase, _before_injection(guest, exc.message)) from None
        raise
    except HarnessError as exc:
        gone = guest.exit_summary()
        if gone and "QEMU" not in exc.message:
            raise HarnessError(exc.phase, f"QEMU {gone}: {exc.message}") from None
        raise


def _before_injection(guest: Guest, message: str) -> str:
    """A guest that went down before the machine check, named with what its console said."""
    line = panic_line(guest) if "panicked" in message else None
    where = "before the machine check was sent" + (f" (console: {line!r})" if line else "")
    return message.replace(":", f" {where}:", 1) if ":" in message else f"{message} {where}"


def _through(guest: Guest) -> str:
    """How the guest's SSH port is reached when not directly (a remote libvirt host)."""
    return f" through {guest.ssh_via.description}" if guest.ssh_via is not None else ""


def _restore_saved_guest(scenario: Scenario, guest: Guest, probe_binary: Path, phases: Phases,
                         store: SnapshotStore) -> None:
    """Restore the saved guest of this configuration, saving it first (its own "save"
    phase and deadline) when no run has. A state that is damaged or does not load is
    discarded and saved again, once."""
    key = guest_key(guest, probe_binary)
    for attempt in (1, 2):
        saved = store.find(guest.image.name, key)
        if saved is None:
            with phases("save"):
                # A systemd image boots for longer than the initramfs one.
                seconds = max(SAVE_TIMEOUT_S, getattr(guest.image, "boot_timeout_s", 0) + 60)
                saved = store.ensure(guest, key, Deadline(seconds, "save"), progress=phases.reporter.note)
                phases.notes["save"] = f"{guest.image.name} guest saved as {saved.state.name}"
        broken = saved.damage(wanted_disks=(isinstance(guest.image, DiskGuestImage), guest.disk is not None))
        if broken is None:
            with phases("boot"):
                deadline = Deadline(scenario.timeouts.boot, "boot")  # this guest's restore only
                # The restored console continues the saving boot's: judged over the same span as a cold boot.
                guest.console_log.write_text(saved.console_for_restore())
                guest.incoming = saved.state
                if guest.saves_disks:
                    guest.incoming_root, guest.incoming_scratch = (
                        saved.root if isinstance(guest.image, DiskGuestImage) else None,
                        saved.scratch if guest.disk is not None else None)
                try:
                    guest.launch(deadline)  # QEMU may exit at once on a stream it cannot read
                    guest.resume_incoming(deadline)
                except HypervisorUnavailable:
                    raise  # says nothing about the saved state: keep it for the other runs
                except HarnessError as exc:
                    broken = exc.message
                    guest.shutdown()
                else:
                    wait_sshd(guest, deadline, since=time.monotonic(), restored=True)
                    phases.notes["boot"] = (f"{guest.accel}, restored from {saved.state.name}, "
                                            f"ssh on 127.0.0.1:{guest.ssh_port}")
                    return
        if attempt == 2:
            raise HarnessError("boot", f"the freshly saved guest {saved.state.name} is broken too: {broken}")
        phases.reporter.note(f"saved guest {saved.state.name} is broken ({broken}); discarded, saving it again")
        store.discard(saved)


@functools.lru_cache(maxsize=8)
def _local_config_source(kernel: Path, modules: Path | None) -> str | None:
    found = LocalKernel(kernel, modules).config_file()
    return found[1] if found else None


def _config_source(options: "RunOptions") -> str | None:
    """Where --kernel's .config is now (a cached image may have been built from a copy
    elsewhere with the same content): what the run names as the file it checked."""
    if options.kernel is None:
        return None
    return _local_config_source(Path(options.kernel), Path(options.modules) if options.modules else None)


def _check_options_in_guest(scenario: Scenario, ssh: SshSession, deadline: Deadline) -> None:
    """No .config was found: the options that leave a mark in the booted guest are looked
    for there, so a kernel without one SKIPs the scenario naming the option."""
    signs = kconfig.guest_signs(scenario)
    if not signs:
        return
    command = GUEST_SETTLED + "; for p in " + " ".join(quote(p) for p in signs) + '; do [ -e "$p" ] || echo "$p"; done'
    absent = ssh.check(command, deadline, "ssh").split()
    lacking = kconfig.missing_in_guest(scenario, absent)
    if lacking:
        raise KernelLacks(lacking)


def setup_script(steps: list[str]) -> str:
    """One shell command running `steps` in order, each in a subshell (a step's own
    `exit` ends only that step); the first that fails ends it with SETUP_EXIT + its
    index, after printing its own exit status."""
    return "; ".join(f"( {step}\n) || {{ echo \" (exit status $?)\"; exit {SETUP_EXIT + i}; }}"
                     for i, step in enumerate(steps))


def setup_failure(steps: list[str], status: int, output: str) -> HarnessError:
    """The set-up command's failure, naming the step that failed (from the exit status
    alone) and the real output."""
    index = status - SETUP_EXIT
    if not 0 <= index < len(steps):
        return HarnessError("ssh", f"the set-up command exited with {status} (no step reported failing): "
                                   f"{output.strip()[-300:] or 'no output'}")
    if steps[index] == NO_MCE_CHECK:
        return HarnessError("ssh", f"the guest kernel has no machine-check support (no {MACHINECHECK_SYSFS}: "
                                   "CONFIG_X86_MCE off, or mce=off on its command line)")
    return HarnessError("ssh", f"set-up step {index + 1} of {len(steps)} failed: '{steps[index][:200]}': "
                               f"{output.strip()[-300:] or 'no output'}")


def _run_after_boot(scenario: Scenario, guest: Guest, guest_image, probe_binary: Path,
                    phases: Phases, ev: Evidence, restored: bool = False,
                    symbol_cache: Path | None = None) -> Injection | None:
    t = scenario.timeouts
    injection = None
    ssh = SshSession(guest.ssh_port, *guest.ssh_keys(guest_image), log_file=guest.artifacts / "ssh.log",
                     host=guest.ssh_host, user=guest.ssh_user, via=guest.ssh_via)
    phases.context.ssh = ssh
    ssh.watch = lambda: guest_down(guest)  # every wait over SSH, in every phase, ends when the guest goes down
    try:
        with phases("ssh"):
            deadline = Deadline(t.ssh, "ssh")
            _log_in(ssh, guest_image, deadline)
            if not guest.boots:
                # Someone else's guest: its kernel is whatever it booted, --image says nothing of it.
                guest.kernel_release = ssh.check("uname -r", deadline, "ssh").strip() or None
            if guest.boots and getattr(guest_image, "config", None) is None:
                _check_options_in_guest(scenario, ssh, deadline)
            ssh.upload(probe_binary, probe_build.REMOTE_PATH, 0o755, deadline, "ssh")
            setup = [GUEST_SETTLED, CONSOLE_EVERY_LEVEL] + [f"sysctl -w {quote(f'{key}={value}')} >/dev/null"
                                        for key, value in scenario.guest.sysctl]
            setup += [f"echo {quote(value)} > {quote(path)}" for path, value in scenario.guest.sysfs]
            if scenario.guest.disk_mib:
                setup.append(mount_scratch_disk(_scratch_device(guest_image)))
            if scenario.guest.pmem_mib:
                setup.append(mount_pmem())
            if restored:
                setup.insert(1, fresh_identity_command(guest.artifacts))
            if scenario.guest.swap_mib:
                # Idempotent too (see mount_scratch_disk): an active swap file, by either copy, is done.
                swapped = f"grep -qs '^{SWAP_FILE} ' /proc/swaps"
                setup.append(f"{{ {swapped} || "
                             f"{{ dd if=/dev/zero of={SWAP_FILE} bs=1M count={scenario.guest.swap_mib} 2>/dev/null"
                             f" && chmod 600 {SWAP_FILE} && mkswap {SWAP_FILE} >/dev/null && swapon {SWAP_FILE}; }}"
                             f" || {{ sleep 1; {swapped}; }}; }}")
            steps = [NO_MCE_CHECK] + setup + ["cat /proc/meminfo"]
            status, output = ssh.run(setup_script(steps), deadline, "ssh")
            if status != 0:
                raise setup_failure(steps, status, output)
            ev.hardware_corrupted_kb_before = hardware_corrupted(output)

        with phases("locate"):
            p = scenario.probe
            lock_counts = banner = None
            if lock_race(scenario):
                # How often this kernel's memory_failure() takes the page lock: learned, not assumed.
                banner = ssh.check(page_locks.VERSION_COMMAND, Deadline(t.locate, "locate"), "locate").strip()
                lock_counts = page_locks.PageLockCounts(symbol_cache) if symbol_cache is not None else None
            command = (f"{probe_build.REMOTE_PATH} --pages {p.pages} --target {p.target} --mode {p.mode} "
                       f"--cpu {p.cpu} --timeout {int(t.observe + t.inject + 5)} --memory {p.memory} "
                       f"--processes {p.processes}"
                       + (f" --file {PROBE_FILE} --file-state {p.file_state}" if p.memory == "file" else "")
                       + (" --find-free" if scenario.inject.region == "free-page" else "")
                       + (f" --page-locks {lock_counts.get(banner) if lock_counts else 0}" if banner else ""))
            phases.context.probe_hint = repro.ProbeHint(command, probe_binary, probe_build.REMOTE_PATH,
                                                        Path(guest.ssh_keys(guest_image)[0]), guest.ssh_port)
            # The shell reports how the probe ended (128+N: killed by signal N).
            probe = ssh.start(probe_shell(command))
            phases.context.probe = probe
            ready = probe.read_event({"ready"}, Deadline(t.locate, "locate"), "locate")
            try:
                check_ready(ready)
            except Unreadable as exc:
                raise HarnessError("locate", str(exc)) from None
            ev.ready = ready
            # Results count only from this probe and its child (their pids are in its ready report).
            probe.owners = {ready["pid"]} | ({ready["child_pid"]} if type(ready.get("child_pid")) is int
                                             and ready["child_pid"] > 0 else set())
            if p.memory == "thp" and not ev.ready["thp"]:
                raise HarnessError("locate", "the probe got no transparent huge page (is THP enabled in the guest?)")
            if p.memory == "ksm" and not ev.ready["merged"]:
                raise HarnessError("locate", "ksmd did not merge the probe's pages (is /sys/kernel/mm/ksm/run 1?)")
            if p.memory in ("hugetlb", "hugetlb-file") and not ev.ready["huge"]:
                raise HarnessError("locate", "the probe's target is not in a hugetlb page (reserve vm.nr_hugepages)")
            if scenario.guest.pmem_mib and p.memory == "file":
                start, end = pmem.gpa_range(scenario.guest.pmem_mib)
                if not start <= int(ev.ready["gpa"], 16) < end:
                    # A page-cache page in RAM: the file is not mapped with DAX.
                    raise HarnessError("locate", f"the probe's file page at GPA {ev.ready['gpa']} is not in "
                                                 f"the pmem range {start:#x}-{end - 1:#x}: not a DAX mapping")
            region = scenario.inject.region
            race = None
            if scenario.inject.race:
                kind = {"take-free-block": highorder.TakeFreeBlock,
                        "retake-thp-block": recompound.RetakeThpBlock}[scenario.inject.race]
                race = kind.start(ssh, scenario.inject.cpu, scenario.guest.vcpus, Deadline(t.locate, "locate"),
                                  hold_s=t.observe + t.inject + 5, symbol_cache=symbol_cache,
                                  image_name=guest_image.name)
                address = race.pfn * ev.ready["page_size"]
            elif region == "kernel-code":
                address = _kernel_code_page(ssh, Deadline(t.locate, "locate"))
            elif region == "free-page":
                if not ev.ready["free_pfn"]:
                    raise HarnessError("locate", "the guest has no page that is only a free buddy page")
                address = ev.ready["free_pfn"] * ev.ready["page_size"]
            elif region == "outside-ram":
                address = mce.first_address_above_ram(guest.limits)
            elif region in FOUND_PAGE_KINDS:
                address = _found_page(ssh, FOUND_PAGE_KINDS[region], Deadline(t.locate, "locate"))
            else:
                address = _injection_address(scenario, ev.ready)
            ev.injected_address = address
            ev.checked_pfn = checked_pfn(scenario, ev.ready, address)
            phases.notes["locate"] = (f"target VA {ev.ready['va']} PFN {ev.ready['pfn']:#x} "
                                      f"GPA {ev.ready['gpa']}; injecting at {address:#x}")

        with phases("inject"):
            if p.mode == "busy":
                time.sleep(0.05)  # let the probe reach its loop before the first look
            loop = (int(ev.ready["loop_start"], 16), int(ev.ready["loop_end"], 16))
            deadline = Deadline(t.inject, "inject")
            if scenario.inject.fields is None:
                phases.notes["inject"] = "no machine check (preset: none)"
            for n in range(scenario.inject.count if scenario.inject.fields else 0):
                if n and scenario.inject.interval_s:
                    deadline.sleep(scenario.inject.interval_s)
                elif n:
                    # The next one only once the kernel has logged the one before.
                    wait_failure_logged(guest, address >> 12, deadline, occurrences=n, ssh=ssh)
                def send_mce() -> Injection:
                    return inject(guest.monitor, scenario.inject.fields, cpu=scenario.inject.cpu,
                                  address=address, broadcast=scenario.inject.broadcast, limits=guest.limits,
                                  deadline=deadline,
                                  user_loop=loop if scenario.inject.gate == "user-mode" else None,
                                  kernel_mode=scenario.inject.gate == "kernel-mode",
                                  down=lambda: guest_down(guest),
                                  outside_ram=scenario.inject.region == "outside-ram")
                if race is None:
                    injection = send_mce()
                else:
                    try:
                        injection = race.force(guest.monitor, send_mce, inject_cpu=scenario.inject.cpu,
                                               artifacts=guest.artifacts, remote=guest.remote, qemu_pid=guest.pid)
                    except HarnessError as exc:
                        # A race process that died (its page poisoned under it) is named, not its last state.
                        died = race.death(Deadline(2.0, "race process"))
                        if died:
                            raise HarnessError("inject", f"could not force the interleaving: the race process "
                                                         f"{died}; before that: {exc.message}") from None
                        raise
                    # The process keeps the block until memory_failure() has reported the page.
                    wait_failure_logged(guest, address >> 12, deadline, ssh=ssh)
                    # Not proven forced: the run's ERROR (no verdict), never the kernel's FAIL.
                    race.confirm(Deadline(highorder.END_STATE_S, "race end state"))
                    race.release()
            if injection is not None:
                phases.notes["inject"] = injection.command + (f" (after {injection.attempts} looks)"
                                                              if injection.attempts > 1 else "")
                if race is not None:
                    phases.notes["inject"] += "; " + "; ".join(race.notes)

        try:
            with phases("observe"):
                observe(scenario, guest, ssh, probe, ev)
                if banner:
                    race_report = (ev.probe_result or {}).get("lock_race")
                    counted = page_locks.learned(race_report)
                    if counted and lock_counts is not None and lock_counts.get(banner) != counted:
                        lock_counts.learn(banner, counted)
                        phases.reporter.note(f"learned: this kernel's memory_failure() takes the page lock "
                                             f"{'once' if counted == 1 else 'twice'} (remembered in "
                                             f"{lock_counts.path})")
                    lost = page_locks.lost_to_learning(race_report)
                    if lost is not None:
                        raise lost
        except HarnessError as exc:
            # Keep what was seen; the verdict decides between FAIL and ERROR.
            ev.unavailable.setdefault("probe result", str(exc))
            raise
        finally:
            (guest.artifacts / "probe-transcript.txt").write_text("\n".join(probe.transcript.lines()) + "\n")
        return injection
    finally:
        if ssh.reconnects:
            phases.reporter.note(f"SSH connection dropped and was re-established {ssh.reconnects} time(s)")
        ssh.close()


def _log_in(ssh: SshSession, guest_image, deadline: Deadline) -> None:
    """Log in; on a user's disk image, a refused login means cloud-init did not apply the seed."""
    try:
        ssh.connect(deadline)
    except HarnessError as exc:
        if not isinstance(guest_image, SeededDiskImage):
            raise
        raise HarnessError("ssh", f"cloud-init did not apply the NoCloud seed (is cloud-init installed and "
                                  f"enabled in {guest_image.source.name}?): {exc.message}") from None


def fresh_identity_command(artifacts: Path) -> str:
    """A restored guest shares its random pool, its clock and its log with every other
    restore of the same state: the probe reseeds the pool with host bytes, sets the
    host's time (taken now: the command is sent at once) and marks the kernel log."""
    marker = f"<5>mce-orchestrator: restored guest for run {artifacts.parent.name}/{artifacts.name}"
    return (f"{probe_build.REMOTE_PATH} --fresh-identity {os.urandom(64).hex()} {time.time_ns()} "
            f"{quote(marker)}")


@contextlib.contextmanager
def _scratch_disk(size_mib: int):
    """A fresh ext4 image in a private temporary folder, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="mce-disk-"))
    try:
        disk = folder / "disk.img"
        with disk.open("wb") as f:
            f.truncate(size_mib << 20)
        made = subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "mce-scratch", str(disk)],
                              capture_output=True, text=True)
        if made.returncode != 0:
            raise HarnessError("boot", f"mkfs.ext4 failed: {(made.stderr.strip() or 'no output').splitlines()[0]}")
        yield disk
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _scratch_device(guest_image) -> str:
    # After the root disk when the image boots from one.
    return guest_image.scratch_device if isinstance(guest_image, DiskGuestImage) else "/dev/vda"


def _kernel_code_page(ssh: SshSession, deadline: Deadline) -> int:
    """The second page of 'Kernel code' in the guest's /proc/iomem (root sees real addresses)."""
    for line in ssh.check("cat /proc/iomem", deadline, "locate").splitlines():
        if line.strip().endswith("Kernel code"):
            try:
                start = int(line.split("-")[0].strip()[:16], 16)
            except ValueError:
                raise HarnessError("locate", f"unreadable 'Kernel code' line in /proc/iomem: {line[:120]!r}") from None
            if start:
                return start + 0x1000
    raise HarnessError("locate", "no 'Kernel code' range in the guest's /proc/iomem")


# inject.region -> the probe's --find-page kind (a page state found in /proc/kpageflags).
FOUND_PAGE_KINDS = {"free-huge-page": "free-huge"}


def _found_page(ssh: SshSession, kind: str, deadline: Deadline) -> int:
    """The guest-physical address of the highest page in that state (the probe searches)."""
    output = ssh.check(f"{probe_build.REMOTE_PATH} --find-page {kind}", deadline, "locate")
    found = json.loads(output.strip().splitlines()[-1])
    if not found.get("pfn"):
        raise HarnessError("locate", f"the guest has no {kind} page (/proc/kpageflags)")
    return found["pfn"] << 12


def checked_pfn(scenario: Scenario, ready: dict, address: int) -> int:
    """The page that page_poisoned, {pfn} and the harness's steps look at: the injected
    page, unless the scenario says `expect.checked_page: target`. page_offset exists for
    negative controls that inject beside the target and check the target (their
    documented design), so with it the target is the default."""
    wanted = scenario.expect.checked_page or ("target" if scenario.inject.page_offset else "injected")
    return ready["pfn"] if wanted == "target" else address >> 12


def _injection_address(scenario: Scenario, ready: dict) -> int:
    if scenario.inject.address is not None:
        return scenario.inject.address
    if scenario.inject.page_offset == 0:
        return int(ready["gpa"], 16)  # known even when the probe has freed it since
    # A neighbour in the probe's own mapping: physically adjacent memory could be anything.
    index = ready["target"] + scenario.inject.page_offset
    if not 0 <= index < len(ready["pages"]):
        raise HarnessError("locate", f"page_offset {scenario.inject.page_offset} is outside the probe's "
                                     f"{len(ready['pages'])} pages")
    return ready["pages"][index]["pfn"] * ready["page_size"]


def _write_evidence(artifacts: Path, ev: Evidence) -> None:
    if ev.kernel_log is not None:
        (artifacts / "guest-kernel.log").write_text(ev.kernel_log)
    if ev.sshd_log is not None:
        (artifacts / "guest-sshd.log").write_text(ev.sshd_log)
    if ev.ras_log is not None:
        (artifacts / "guest-ras-records.txt").write_text(ev.ras_log)
    (artifacts / "evidence.json").write_text(json.dumps(
        {k: v for k, v in asdict(ev).items() if k not in ("kernel_log", "console_tail", "sshd_log", "ras_log")}, indent=2) + "\n")


SCENARIO_COPY_DIR = "scenario"  # the scenario file as it was, beside repro.sh


def _write_repro(artifacts: Path, scenario: Scenario, options: RunOptions, argv: list[str],
                 kernel_release: str | None, probe_hint: repro.ProbeHint | None = None) -> None:
    """repro.sh (the same run through the orchestrator, from any checkout) and qemu-by-hand.sh
    with monitor-commands.hmp (the same QEMU and monitor commands without it)."""
    # In a folder of its own, as STEM.yaml: a scenario's name is its file's stem (checked on
    # loading), and a copy under the file's full name could take an artifact's (evidence.json,
    # repro.sh) or hold a newline. No artifact is named by an input.
    copy = Path(SCENARIO_COPY_DIR) / f"{scenario.path.stem}.yaml"
    (artifacts / SCENARIO_COPY_DIR).mkdir(exist_ok=True)
    shutil.copyfile(scenario.path, artifacts / copy)
    run_args = repro.run_argv(scenario_file=str(copy), image=options.image or scenario.guest.image,
                              kernel=options.kernel, modules=options.modules, append=options.extra_cmdline,
                              accel=options.accel, snapshot=options.snapshot,
                              disk_image=options.disk_image or scenario.guest.disk_image,
                              allow_backing=options.allow_backing, qemu=options.qemu)
    script = artifacts / "repro.sh"
    script.write_text(repro.repro_script(scenario=scenario.name, run_args=run_args,
                                         commit=repro.git_commit(REPO_ROOT), kernel_release=kernel_release,
                                         qemu_version=qemu_version(options.qemu_binary)))
    script.chmod(0o755)
    if argv:
        by_hand = artifacts / "qemu-by-hand.sh"
        by_hand.write_text(repro.by_hand_script(repro.by_hand_argv(argv), scenario.name, scenario.guest.disk_mib,
                                                probe_hint))
        by_hand.chmod(0o755)
    commands = artifacts / "monitor-commands.log"
    if commands.is_file():
        (artifacts / "monitor-commands.hmp").write_text("\n".join(repro.hmp_lines(commands.read_text())) + "\n")


def _keep_running(keep: str, scenario, guest: Guest, ev: Evidence, guest_image, reporter,
                  command: str = "mce-orchestrator") -> None:
    """--keep: leave the guest running (after a failure, or always) until Ctrl-C or SIGTERM."""
    verdict = judge(scenario, ev) if ev.ready else None
    if keep == "on-failure" and verdict is not None and verdict.outcome == Outcome.PASS:
        return
    if not guest.is_running():
        return
    known_hosts = guest.artifacts / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{guest.ssh_port} {guest_image.host_key_line}\n")
    state = keeping.KeptGuest(
        scenario=scenario.name, artifacts=str(guest.artifacts.resolve()), qemu_pid=guest.pid,
        qmp_socket=str(guest.kept_qmp_socket), ssh_port=guest.ssh_port, client_key=str(guest_image.client_key),
        host_key_line=guest_image.host_key_line, known_hosts=str(known_hosts.resolve()), vcpus=guest.spec.vcpus,
        memory_mib=guest.spec.memory_mib, machine=guest.spec.machine, kernel_release=guest_image.kernel_release,
        ram_ranges=tuple(guest.limits.ram_ranges))
    path = state.save()
    if verdict is not None:
        reporter.note(f"verdict so far: {verdict.outcome.name}")
    for line in keeping.keep_summary(state, command):
        reporter.note(line)
    try:
        down = None
        while guest.is_running():
            if down is None and (down := guest_down(guest)):
                # Said once, and kept in kept.json: `ssh` and `inject` refuse a guest that is gone.
                keeping.mark_down(state, down)
                reporter.note(f"the kept guest is down: {down}; `inject` and `ssh` cannot reach it now "
                              f"(console: {guest.console_log}); press Ctrl-C to shut it down")
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        path.unlink(missing_ok=True)
