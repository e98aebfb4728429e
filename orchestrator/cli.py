"""mce-orchestrator: run scenarios; exit 0 PASS, 1 FAIL, 2 ERROR, 5 every scenario SKIPPED (with --bisect: 0, 1, 125)."""
from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from orchestrator import __version__
from orchestrator.guest import BACKENDS, DEFAULT_BACKEND

from orchestrator.guest import keep as keeping

from orchestrator.guest import memory_map
from orchestrator.guest.images.distro import image_names
from orchestrator.guest.keep import KEEP_CHOICES

from orchestrator.guest.qemu import argv as qemu_args
from orchestrator.guest.qemu import qemu_build
from orchestrator.guest.qemu.install import QemuError, firmware_layout, qemu_version, resolve_qemu
from orchestrator.inject import mce
from orchestrator.jobs import run_side_by_side

from orchestrator.inject.decode import decode
from orchestrator.plumbing.outcome import HarnessError, InputError, Outcome, SetupError, worst
from orchestrator.guest.images import ImageError
from orchestrator.guest.images import suites
from orchestrator.guest.images.definitions import load_image_definitions
from orchestrator.guest.images.disk import disk_format
from orchestrator.report import repro
from orchestrator.report import HEARTBEAT_S, ConsoleReporter, ScenarioResult, new_run_dir, point_latest, write_json, write_junit

from orchestrator.runner import REPO_ROOT, Interrupted, RunOptions, run_scenario

from orchestrator.scenario import ScenarioError, catalog, expand, key_line, load_scenario, resolve


SCENARIOS_DIR = REPO_ROOT / "scenarios"
EXAMPLES_DIR = REPO_ROOT / "docs" / "examples"  # the authoring guide's worked example, by name
MAX_REPEAT = 1000  # a soak run is hundreds; more is a typo that would run for days
MAX_JOBS = 64      # guests side by side; each takes its memory_mib and a core's worth of TCG
JOBS_ENV = "MCE_JOBS"  # the default for -j where one per core is not wanted (a CI job that runs several)
INTERRUPTED_EXIT = 130
# `git bisect run` reads 125 as "cannot test this commit, skip it" and anything from 128
# on as "stop bisecting": a kernel that cannot boot or be judged (or lacks what the
# scenario needs) skips the commit; what every commit would meet again stops it: a
# user's mistake (unknown image, bad scenario), the host or QEMU failing before the
# kernel runs (SetupError), the results folder unwritable.
# The question a bisection asks is whether this kernel does what the scenario expects,
# so a known-failure mark does not change the answer: KNOWN-FAIL is bad, XPASS good.
BISECT_EXIT = {Outcome.PASS: 0, Outcome.XPASS: 0, Outcome.KNOWN_FAIL: 1, Outcome.FAIL: 1, Outcome.ERROR: 125,
               Outcome.SKIP: 125}
BISECT_ABORT = 128
# Every scenario of the run was SKIPPED (the kernel lacks what each needs): nothing was
# tested, which is no pass (pytest's "no tests ran" is 5 too). With --bisect: 125.
NOTHING_TESTED_EXIT = 5


def exit_code(outcome: Outcome, bisect: bool) -> int:
    return BISECT_EXIT[outcome] if bisect else outcome.exit_code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mce-orchestrator", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run scenarios (files or catalog names)")
    run.add_argument("scenarios", nargs="+", metavar="FILE_OR_NAME")
    run.add_argument("--results", type=Path, default=REPO_ROOT / "results", help="results folder (default: %(default)s)")
    run.add_argument("--image", help="guest image for every scenario (default: each scenario's guest.image)")
    run.add_argument("--disk-image", type=Path, metavar="PATH",
                     help="boot this cloud-init enabled qcow2 or raw disk image for every scenario (a copy-on-write "
                          "overlay; SSH through a generated NoCloud seed) instead of guest.image")
    run.add_argument("--allow-backing", type=Path, metavar="FILE", action="append", default=[],
                     help="let a qcow2 disk image use this backing file (repeat for each layer of a chain); "
                          "any other backing file is refused: the harness reads the chain as root")
    run.add_argument("--accel", choices=["kvm", "tcg"], help="default: KVM where it really works, else TCG")
    run.add_argument("--kernel", type=Path, metavar="PATH",
                     help="test this kernel instead of the image's: a bzImage, a vmlinux, or a build tree "
                          "(arch/x86/boot/bzImage, .config and its modules), inside the image's userspace")
    run.add_argument("--modules", type=Path, metavar="DIR",
                     help="modules for --kernel: an INSTALL_MOD_PATH install (holding lib/modules/RELEASE)")
    run.add_argument("--qemu", metavar="PATH|NAME",
                     help="run the guests on this QEMU: a qemu-system-x86_64 binary, a QEMU build tree (its "
                          "pc-bios/ ROMs are used), or a name in guest-images/qemus.yaml (debian-backports: "
                          "fetched on first use). Default: qemu-system-x86_64 on PATH")
    run.add_argument("--append", default="", metavar="CMDLINE", help="extra guest kernel command-line arguments")
    boots = run.add_mutually_exclusive_group()
    boots.add_argument("--snapshot", action="store_true",
                       help="restore saved guests: each guest configuration is booted once, saved, and restored "
                            "for every scenario (about 0.1 s instead of a 2 s boot). The default, except with "
                            "--kernel, --bisect, --keep, --keep-alive-on-failure and --disk-image (which boot "
                            "unless given this); a guest that cannot be saved (a remote libvirt host) boots")
    boots.add_argument("--cold", action="store_true",
                       help="boot every guest from its kernel instead of restoring a saved one")
    run.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                     help="how guests run: a QEMU process of our own, or a transient libvirt domain "
                          "(default: %(default)s)")
    run.add_argument("--connect", metavar="URI", default=None,
                     help="libvirt URI for --backend libvirt (default: qemu:///system)")
    run.add_argument("--domain", metavar="NAME",
                     help="run inside this running libvirt domain instead of a guest of our own "
                          "(implies --backend libvirt; needs --guest-config)")
    run.add_argument("--guest-config", type=Path, metavar="FILE",
                     help="with --domain: YAML with ssh_host, ssh_port, ssh_key, ssh_host_key [, ssh_user]")
    run.add_argument("--repeat", type=int, default=1, metavar="N", help="run each scenario N times in a row")
    run.add_argument("-j", "--jobs", type=int, default=None, metavar="N",
                     help=f"guests side by side (default: ${JOBS_ENV}, else one per core, {os.cpu_count()} here; "
                          f"1 with --keep, --domain or --bisect)")
    run.add_argument("--bisect", action="store_true",
                     help="exit codes for `git bisect run`: 0 PASS, 1 FAIL, 125 when this kernel cannot boot or "
                          "be judged or every scenario was skipped (skip this commit), 128 for a usage error, an "
                          "unknown image, a bad scenario or a host/QEMU that fails without the kernel, and 130 when "
                          "interrupted (both stop the bisection)")
    run.add_argument("--keep", choices=KEEP_CHOICES,
                     help="leave the guest running after its scenario (on failure, or always) until Ctrl-C; "
                          "then poke it with `inject` and `ssh` from another shell")
    run.add_argument("--keep-alive-on-failure", action="store_true", help="the same as --keep on-failure")
    validate = sub.add_parser("validate", help="check scenario files without running them")
    validate.add_argument("scenarios", nargs="+", metavar="FILE_OR_NAME")
    list_ = sub.add_parser("list", help="list the scenario catalog, each with its one-line description")
    list_.add_argument("--json", action="store_true", help="name, file and whole description of each, as JSON")

    inject = sub.add_parser("inject", help="send a machine check into a guest kept with `run --keep`")
    inject.add_argument("--guest", type=Path, metavar="DIR", help="its artifacts folder or kept.json "
                                                                  "(default: the only kept guest running)")
    target = inject.add_mutually_exclusive_group(required=True)
    target.add_argument("--gpa", type=_number, metavar="ADDR", help="guest-physical address")
    target.add_argument("--pid", type=int, help="guest process id (with --va): translated through /proc/PID/pagemap")
    inject.add_argument("--va", type=_number, metavar="ADDR", help="virtual address in --pid")
    inject.add_argument("--preset", choices=sorted(mce.PRESETS), help="srao, srar, ucna or ce (default srao)")
    inject.add_argument("--bank", type=_number)
    inject.add_argument("--status", type=_number, help="raw MCi_STATUS (with --bank, --mcg-status, --misc)")
    inject.add_argument("--mcg-status", type=_number)
    inject.add_argument("--misc", type=_number)
    inject.add_argument("--cpu", type=int, default=0, help="vCPU (default 0)")
    inject.add_argument("--broadcast", action="store_true", help="raise it on every vCPU (QEMU's mce -b)")
    inject.add_argument("--no-gate", action="store_true",
                        help="send an action-required error at once, not only while the vCPU is in user mode "
                             "(an SRAR that lands in kernel code kills the guest)")
    inject.add_argument("--anyway", action="store_true",
                        help="send a machine check QEMU cannot deliver as asked (a UCNA: QEMU raises an exception "
                             "for any status with UC set, and the guest panics)")
    inject.add_argument("--watch", type=float, default=keeping.WATCH_S, metavar="SECONDS",
                        help="how long to watch what the guest does afterwards (default %(default)s)")
    inject.add_argument("--timeout", type=float, default=30.0)
    inject.add_argument("--results", type=Path, default=REPO_ROOT / "results")

    ssh = sub.add_parser("ssh", help="a shell (or COMMAND) in a guest kept with `run --keep`, host key pinned")
    ssh.add_argument("--guest", type=Path, metavar="DIR")
    ssh.add_argument("--results", type=Path, default=REPO_ROOT / "results")
    ssh.add_argument("remote", nargs=argparse.REMAINDER, metavar="COMMAND")

    decode_ = sub.add_parser("decode", help="explain an MCi_STATUS [and MCG_STATUS] value bit by bit")
    decode_.add_argument("status", type=_number)
    decode_.add_argument("mcg_status", type=_number, nargs="?")
    return parser


def _unknown(kind: str, name: str, known: list[str]) -> str:
    """'no such image' with the closest names, or all of them when none is close."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return (f"no {kind} named {name!r}; did you mean {' or '.join(close)}?" if close
            else f"no {kind} named {name!r} (known: {', '.join(known)})")


def _check_images(args, scenarios) -> None:
    """Every image named (--image, each scenario's guest.image) exists: a typo is the
    user's mistake, found before anything is built or booted."""
    if getattr(args, "disk_image", None) is not None:
        return
    known = image_names(REPO_ROOT)
    if args.image is not None:
        if args.image not in known:
            raise InputError(f"--image: {_unknown('image', args.image, known)}")
        return
    for s in scenarios:
        if s.guest.disk_image is None and s.guest.image not in known:
            raise ScenarioError(s.path, key_line(s.path, ("guest", "image")), "guest.image",
                                _unknown("image", s.guest.image, known))


def _no_newer_kernel(args, scenarios) -> str | None:
    """Why there is no kernel to test, for an image that exists only while its suite has one
    newer than other images' (images.yaml `newer_than`: the release candidate); None otherwise."""
    if getattr(args, "disk_image", None) is not None or getattr(args, "kernel", None) is not None:
        return None
    names = {args.image} if args.image else {s.guest.image for s in scenarios if s.guest.disk_image is None}
    try:
        definitions = load_image_definitions(REPO_ROOT / "guest-images" / "images.yaml")
    except ImageError:
        return None  # the image phase says so
    for name in sorted(n for n in names if definitions.get(n, {}).get("newer_than")):
        try:
            suites.resolve(name, definitions, REPO_ROOT / "guest-images" / ".cache",
                           lambda text: print(f"   {text}", file=sys.stderr, flush=True))
        except suites.NoNewerKernel as exc:
            return str(exc)
        except ImageError:
            return None  # the image phase says what went wrong, as an ERROR
    return None


def _check_addresses(scenarios, binary: str = "qemu-system-x86_64") -> None:
    """A fixed inject.address must be RAM in the map QEMU lays out for that guest:
    asked of a paused QEMU of the same machine and size (milliseconds), before
    anything starts. The guest's own QEMU is asked again before the injection;
    where no QEMU runs here (a remote libvirt host), that check alone decides."""
    # The firmware the guest will have (qemu_args): its size shapes the RAM below 1 MiB.
    firmware = firmware_layout(binary)[1] if qemu_args.host_accel() == "tcg" else None
    for s in scenarios:
        if s.inject.address is None:
            continue
        try:
            ranges = memory_map.standin_ram_ranges(binary, s.guest.machine, s.guest.memory_mib, firmware)
        except memory_map.MemoryMapError:
            continue
        if not memory_map.contains(ranges, s.inject.address):
            raise ScenarioError(s.path, key_line(s.path, ("inject", "address")), "inject.address",
                                f"{s.inject.address:#x} is not RAM in a {s.guest.machine} {s.guest.memory_mib} MiB "
                                f"guest (QEMU's RAM: {memory_map.describe(ranges)})")


def _check_backend(args, scenarios) -> None:
    """libvirt down, a wrong URI, an unknown domain or one that lacks what a
    scenario needs: one line before anything starts."""
    args.attach = None
    if args.guest_config and not args.domain:
        raise InputError("--guest-config: only with --domain")
    if args.domain:
        if not args.guest_config:
            raise InputError(f"--domain {args.domain}: needs --guest-config FILE (how to reach the guest over SSH)")
        from orchestrator.guest.libvirt import DEFAULT_URI, check_attachable, load_attach_config

        args.backend = "libvirt"
        attach = load_attach_config(args.guest_config)
        check_attachable(args.connect or DEFAULT_URI, args.domain, attach, scenarios, args.snapshot)
        args.attach = (args.domain, attach)
    if args.connect and args.backend != "libvirt":
        raise InputError(f"--connect {args.connect}: only with --backend libvirt")
    if args.backend == "libvirt" and (args.disk_image or any(s.guest.disk_image for s in scenarios)):
        raise InputError("a disk image (--disk-image, guest.disk_image) runs on the QEMU backend only")
    if args.backend == "libvirt":
        from orchestrator.guest.libvirt import DEFAULT_URI, open_connection

        open_connection(args.connect or DEFAULT_URI).close()


def _number(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (0x... for hex)") from None


def _terminate(signum, frame):
    # SIGTERM takes the same path as Ctrl-C, so every guest is shut down.
    raise KeyboardInterrupt


# Runs that boot cold unless --snapshot is given: each a new kernel build (a save would be
# used once), or a guest whose use outlives the run or is not ours to save.
COLD_BY_DEFAULT = (("kernel", "--kernel: a build of your own, new each time"),
                   ("bisect", "--bisect: a new kernel at each step"),
                   ("keep", "--keep"), ("keep_alive_on_failure", "--keep-alive-on-failure"),
                   ("disk_image", "--disk-image"), ("attach", "--domain: a domain of your own"))


def saved_guests_wanted(args) -> tuple[bool, str | None]:
    """(restore saved guests?, why the run boots cold when that is not what --cold asked)."""
    if getattr(args, "cold", False):
        return False, "--cold"
    if getattr(args, "snapshot", False):
        return True, None
    for name, why in COLD_BY_DEFAULT:
        if getattr(args, name, None):
            return False, why
    return True, None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        if args.command == "list":
            return list_command(args)
        if args.command == "decode":
            print("\n".join(decode(args.status, args.mcg_status)))
            return 0
        if args.command == "ssh":
            guest = keeping.find(args.results, args.guest)
            code = subprocess.run(keeping.ssh_argv(guest, args.remote)).returncode
            if code == 255:  # ssh's own failure, not the command's
                print(f"mce-orchestrator: ssh: {keeping.why_unreachable(guest)}", file=sys.stderr)
            return code
        if args.command == "inject":
            return inject_command(args)
        if not 1 <= getattr(args, "repeat", 1) <= MAX_REPEAT:
            raise InputError(f"--repeat {args.repeat}: must be 1 to {MAX_REPEAT}")
        args.jobs = jobs_wanted(args)
        if getattr(args, "modules", None) is not None and args.kernel is None:
            raise InputError("--modules DIR: only with --kernel PATH")
        for option, path in (("--kernel", getattr(args, "kernel", None)), ("--modules", getattr(args, "modules", None))):
            if path is not None and not path.exists():
                raise InputError(f"{option} {path}: no such file or folder")
        disk_image = getattr(args, "disk_image", None)
        if disk_image is not None:
            if not disk_image.is_file():
                raise InputError(f"--disk-image {disk_image}: no such file")
            if args.image or args.kernel:
                raise InputError(f"--disk-image: not with {'--image' if args.image else '--kernel'} "
                                 f"(the disk image brings its own userspace and kernel)")
            args.disk_image = disk_image.resolve()
            try:  # up front, in one line: a backing file nobody named, a format the harness does not read
                disk_format(args.disk_image, getattr(args, "allow_backing", ()))
            except ImageError as exc:
                raise InputError(str(exc)) from None
        scenarios = [one for s in args.scenarios
                     for one in expand(load_scenario(resolve(s, SCENARIOS_DIR, EXAMPLES_DIR)))]
        if args.command == "validate":
            # A file with inject.cpu: each expands to one scenario per vCPU: printed once.
            for path in dict.fromkeys(s.path for s in scenarios):
                print(f"{path}: ok")
            return 0
        _check_images(args, scenarios)
        none_newer = _no_newer_kernel(args, scenarios)
        if none_newer:
            # A release-candidate image while experimental has nothing newer than the newest
            # stable kernel: nothing to test today, which is no error (as a run whose every
            # scenario was skipped).
            code = exit_code(Outcome.SKIP, True) if args.bisect else NOTHING_TESTED_EXIT
            print(f"mce-orchestrator: {none_newer}; nothing was tested (exit {code})", file=sys.stderr)
            return code
        try:
            args.qemu_binary = resolve_qemu(args.qemu, REPO_ROOT / "guest-images" / ".cache",
                                            lambda text: print(f"   {text}", file=sys.stderr, flush=True))
        except QemuError as exc:
            if args.bisect and args.qemu and "/" in args.qemu:
                # A QEMU commit that did not build: skip it (125), do not stop the bisection.
                print(f"mce-orchestrator: {exc}", file=sys.stderr)
                return exit_code(Outcome.ERROR, True)
            raise InputError(str(exc)) from None
        _check_addresses(scenarios, args.qemu_binary)
        _check_backend(args, scenarios)
        args.snapshot, boots_because = saved_guests_wanted(args)
        # After the input checks: a refused input stays one line.
        print(f"mce-orchestrator: QEMU {qemu_version(args.qemu_binary)} ({args.qemu_binary}); guests "
              + (f"boot cold ({boots_because})" if boots_because else "restored from saved ones (--cold boots them)"),
              file=sys.stderr)
        return run(scenarios, args)
    except InputError as exc:
        print(f"mce-orchestrator: error: {exc}", file=sys.stderr)
        return BISECT_ABORT if getattr(args, "bisect", False) else Outcome.ERROR.exit_code
    except BrokenPipeError:
        # The reader stopped early (`list | head`): nothing of ours failed. Python would
        # complain once more when it flushes stdout at exit: point it at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        # The results folder cannot be written (disk full, read-only, ...).
        print(f"mce-orchestrator: error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return BISECT_ABORT if getattr(args, "bisect", False) else Outcome.ERROR.exit_code
    except MemoryError:
        # The host's trouble, not the guest kernel's: an ERROR, never a FAIL or a traceback.
        print("mce-orchestrator: error: the host ran out of memory", file=sys.stderr)
        return BISECT_ABORT if getattr(args, "bisect", False) else Outcome.ERROR.exit_code
    except KeyboardInterrupt:
        print("mce-orchestrator: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT


def _run_one(scenario, run_dir: Path, options: RunOptions, reporter: ConsoleReporter, label: str) -> ScenarioResult:
    """One scenario; a harness bug that escapes it is that scenario's ERROR, and the run goes on."""
    try:
        return run_scenario(scenario, run_dir, options, reporter, label=label)
    except (KeyboardInterrupt, OSError):
        raise
    except Exception as exc:  # noqa: BLE001
        print(f"mce-orchestrator: {label}: internal error {exc!r}", file=sys.stderr)
        return ScenarioResult(name=label, path=str(scenario.path), outcome=Outcome.ERROR, artifacts=run_dir / label,
                              error=HarnessError("run", f"internal error {exc!r}"[:300]))


def one_line(description: str, width: int = 100) -> str:
    """A scenario's description cut to its first sentence, at most `width` characters."""
    text = " ".join(description.split())
    first = re.split(r"(?<=[^.]\.)\s+(?=[A-Z])", text, maxsplit=1)[0].rstrip(".")  # not at "..." or "e.g. x"
    return first if len(first) <= width else first[:width - 1].rstrip() + "…"


def list_command(args) -> int:
    entries = []
    for name in catalog(SCENARIOS_DIR):
        path = SCENARIOS_DIR / f"{name}.yaml"
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            description = str(data.get("description", "")) if isinstance(data, dict) else ""
        except (OSError, yaml.YAMLError):
            description = ""
        entries.append({"name": name, "file": str(path), "description": " ".join(description.split())})
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    width = max((len(e["name"]) for e in entries), default=0)
    for e in entries:
        print(f"{e['name']:<{width}}  {one_line(e['description'])}".rstrip())
    return 0


def inject_command(args) -> int:
    if (args.pid is None) != (args.va is None):
        raise InputError("--pid and --va go together")
    raw = [args.bank, args.status, args.mcg_status, args.misc]
    if any(v is not None for v in raw):
        if args.preset or None in raw:
            raise InputError("raw fields need all of --bank --status --mcg-status --misc, and no --preset")
        fields = mce.MceFields(bank=args.bank, status=args.status, mcg_status=args.mcg_status, misc=args.misc)
    else:
        fields = mce.PRESETS[args.preset or "srao"]
    if mce.classify(fields.status) == "UCNA" and not args.anyway:
        raise InputError(f"{'--preset ucna' if args.preset else '--status'}: QEMU's mce raises a machine-check "
                         f"exception for any status with UC set, so a UCNA cannot be delivered as one: the guest "
                         f"panics (a fatal machine check); --anyway sends it regardless")
    guest = keeping.find(args.results, args.guest)
    try:
        injection, how, after = keeping.inject_into(guest, fields, cpu=args.cpu, broadcast=args.broadcast,
                                                    gpa=args.gpa, pid=args.pid, va=args.va, gate=not args.no_gate,
                                                    timeout=args.timeout, watch_s=args.watch)
    except HarnessError as exc:
        print(f"mce-orchestrator: inject: {exc.message}", file=sys.stderr)
        return Outcome.ERROR.exit_code
    print(f"{how}; sent: {injection.command}" + (f" (after {injection.attempts} looks)" if injection.attempts > 1 else ""))
    print("\n".join(after.report()))
    # 0: sent, the guest runs on; 1: the guest went down after it; 2: nothing was sent.
    return 1 if after.down else 0


def as_typed(results: Path, argv0: str | None = None) -> str:
    """This tool as the user can type it again: `mce-orchestrator` when that is what PATH
    finds, else the path they ran (.venv/bin/mce-orchestrator) or `python -m orchestrator`;
    with --results when it is not the default."""
    argv0 = argv0 if argv0 is not None else sys.argv[0]
    if Path(argv0).name == "__main__.py" or not argv0:
        command = f"{shlex.quote(sys.executable)} -m orchestrator"
    else:
        found = shutil.which(Path(argv0).name)
        if found and Path(argv0).exists() and os.path.samefile(found, argv0):
            command = Path(argv0).name
        else:
            relative = os.path.relpath(argv0)
            command = shlex.quote(relative if not relative.startswith("..") else os.path.abspath(argv0))
    if results.resolve() != (REPO_ROOT / "results").resolve():
        command += f" --results {shlex.quote(str(results))}"
    return command


def jobs_wanted(args) -> int:
    """-j, else $MCE_JOBS, else one guest per core; one where a run needs its one guest (a
    kept guest waits for Ctrl-C, --domain is one domain, a bisection step is one answer)."""
    jobs, given = getattr(args, "jobs", None), "-j"
    if jobs is None:
        jobs, given = os.environ.get(JOBS_ENV), JOBS_ENV
        try:
            jobs = int(jobs) if jobs else (os.cpu_count() or 1)
        except ValueError:
            raise InputError(f"{JOBS_ENV}={jobs!r}: not a number of guests") from None
    if not 1 <= jobs <= MAX_JOBS:
        raise InputError(f"{given} {jobs}: must be 1 to {MAX_JOBS}")
    if getattr(args, "keep", None) or getattr(args, "keep_alive_on_failure", False) or \
            getattr(args, "domain", None) or getattr(args, "bisect", False):
        return 1
    return jobs


def run(scenarios, args) -> int:
    reporter = ConsoleReporter(total=len(scenarios) * args.repeat, heartbeat=HEARTBEAT_S)
    args.results.mkdir(parents=True, exist_ok=True)
    run_dir = new_run_dir(args.results)
    options = RunOptions(accel=args.accel, keep_alive_on_failure=args.keep_alive_on_failure, keep=args.keep,
                         image=args.image, extra_cmdline=args.append, snapshot=args.snapshot, backend=args.backend,
                         connect=args.connect, attach=args.attach, kernel=args.kernel, modules=args.modules,
                         disk_image=args.disk_image, allow_backing=tuple(args.allow_backing),
                         command=as_typed(args.results), qemu_binary=args.qemu_binary,
                         qemu=args.qemu)
    planned = [(s.name if args.repeat == 1 else f"{s.name}.{i + 1}", s)
               for s in scenarios for i in range(args.repeat)]
    results: list[ScenarioResult] = []
    started = time.time()
    interrupted = False
    jobs = min(args.jobs, len(planned))
    try:
        if jobs > 1:
            print(f"mce-orchestrator: {jobs} guests side by side (-j {jobs}); each scenario's account "
                  f"follows when it ends", file=sys.stderr)
            results, interrupted = run_side_by_side(planned, jobs, _run_one, run_dir, options)
        else:
            for label, scenario in planned:
                results.append(_run_one(scenario, run_dir, options, reporter, label))
    except KeyboardInterrupt as exc:
        interrupted = True
        if isinstance(exc, Interrupted):
            results.append(exc.result)
        for label, scenario in planned[len(results):]:
            results.append(ScenarioResult(name=label, path=str(scenario.path), outcome=Outcome.ERROR,
                                          artifacts=run_dir / label, error=HarnessError("run", "not run: interrupted before it started")))
    finally:
        qemu = qemu_build(getattr(args, "qemu_binary", "qemu-system-x86_64")).split(" /")[0]  # its version line, not the file identity
        write_junit(results, run_dir / "junit.xml", {"qemu": qemu, "tool": f"mce-orchestrator {__version__}"})
        write_json(results, run_dir / "report.json", {"started": started, "finished": time.time(),
                                                       "interrupted": interrupted, "version": __version__,
                                                       "commit": repro.git_commit(REPO_ROOT), "qemu": qemu})
        latest_note = point_latest(args.results, run_dir)
        if latest_note:
            print(f"mce-orchestrator: {latest_note}", file=sys.stderr)
    reporter.run_finished(results, run_dir)
    if interrupted:
        print("mce-orchestrator: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
    setup = [r for r in results if isinstance(r.error, SetupError)]
    if args.bisect and setup:
        # Every commit would meet it again: stop the bisection rather than skip them all.
        print(f"mce-orchestrator: the host or QEMU failed before the kernel ran ({setup[0].error}): "
              f"stopping the bisection (exit {BISECT_ABORT})", file=sys.stderr)
        return BISECT_ABORT
    if results and all(r.outcome == Outcome.SKIP for r in results):
        print(f"mce-orchestrator: nothing was tested: every scenario was skipped "
              f"(exit {125 if args.bisect else NOTHING_TESTED_EXIT})", file=sys.stderr)
        return exit_code(Outcome.SKIP, True) if args.bisect else NOTHING_TESTED_EXIT
    return exit_code(worst(r.outcome for r in results), args.bisect)
