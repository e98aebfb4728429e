"""Benchmark: orchestrated scenario wall time, by phase, against a bare baseline.

The baseline is the hand-driven path with nothing of the orchestrator's
around it: QEMU booted directly on the same kernel, an initramfs whose /init
starts the probe at once, SRAR injected over QMP (with the same user-mode
gate), SIGBUS read from the serial console; no SSH. Runs alternate between
the two so machine noise hits both alike.

    python -m orchestrator.bench [--runs N] [--scenario NAME] [--connect URI]

Where a libvirt daemon answers (--connect, default qemu:///system), the same
scenario is also timed on the libvirt backend, cold and with --snapshot,
alternated with the QEMU backend's runs.

Then the full distribution image (--full-image, default debian-12-full; `none`
skips it): its build time and qcow2 size (from its manifest, or the build this
run did), and boot to SSH and the scenario's wall time on it, cold and with
--snapshot (--full-runs each, alternated), beside the initramfs image's.

Then (--part qemus alone) the same scenario bare, cold and restored on each QEMU of --qemus
(default: the system's and the pinned debian-backports one), alternated: medians per QEMU.

Then (--part catalog alone) the whole catalog on each kernel of CATALOG_KERNELS, restored
from saved guests (built by an untimed first pass), one guest at a time and with -j (one
per core), alternated --catalog-runs times: wall time medians and their ratio.

Last (--part fanout alone), a catalog subset's wall time on one libvirt
endpoint against two: FANOUT_SCENARIOS (8 disk-less scenarios, debian-6.1,
cold boots: a remote endpoint cannot restore saved guests) run by the pytest
plugin with `--hosts` listing qemu:///system (one xdist worker), then
qemu:///system and this machine's libvirtd again through a private sshd
(qemu+ssh, two workers, everything uploaded as volumes), alternated.
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import subprocess
import io
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from orchestrator import probe as probe_build
from orchestrator.guest import images
from orchestrator.guest.qemu import QemuGuest
from orchestrator.guest.qemu.install import SYSTEM_QEMU, qemu_version, resolve_qemu
from orchestrator.inject import inject
from orchestrator.inject import mce
from orchestrator.plumbing.deadline import Deadline
from orchestrator.plumbing.outcome import InputError, Outcome
from orchestrator.report import ConsoleReporter, new_run_dir
from orchestrator.runner import REPO_ROOT, RunOptions, run_scenario
from orchestrator.scenario import GuestSpec, load_scenario

BASELINE_INIT = """#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
/mce-probe --mode busy --cpu 0 --timeout 60
# Not the probe as pid 1: its exit would panic the kernel, whose lines can cut
# into the probe's result line on the console.
exec sleep 100000
"""


def baseline_initrd(image: images.GuestImage, probe: Path, out: Path) -> Path:
    """The image's initramfs with /init replaced: concatenated cpio archives overlay."""
    overlay = images.Cpio()
    overlay.file("init", BASELINE_INIT.encode(), 0o755)
    overlay.file("mce-probe", probe.read_bytes(), 0o755)
    out.write_bytes(image.initrd.read_bytes() + gzip.compress(overlay.serialize(), mtime=0))
    return out


def _console_json(console: Path, event: str) -> dict | None:
    for line in console.read_text(errors="replace").splitlines():
        start = line.find('{"event":"' + event + '"')
        if start >= 0:
            try:
                return json.loads(line[start:])
            except json.JSONDecodeError:
                return None
    return None


def bare_run(image: images.GuestImage, initrd: Path, workdir: Path, qemu_binary: str = SYSTEM_QEMU) -> float:
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    spec = GuestSpec()
    with QemuGuest(image=dataclasses.replace(image, initrd=initrd), spec=spec, artifacts=workdir,
                   qemu_binary=qemu_binary) as guest:
        deadline = Deadline(60, "bare run")
        guest.launch(deadline)
        ready = None
        while ready is None:
            deadline.check()
            ready = _console_json(guest.console_log, "ready")
            deadline.sleep(0.01)
        inject(guest.monitor, mce.PRESETS["srar"], cpu=0, address=int(ready["gpa"], 16), broadcast=False,
               limits=guest.limits, deadline=deadline,
               user_loop=(int(ready["loop_start"], 16), int(ready["loop_end"], 16)))
        while True:
            deadline.check()
            result = _console_json(guest.console_log, "result")
            if result is not None:
                break
            deadline.sleep(0.005)
        elapsed = time.monotonic() - start
    if not (result["sigbus"] and result.get("si_code_name") == "BUS_MCEERR_AR"):
        raise RuntimeError(f"bare run did not get BUS_MCEERR_AR: {result}")
    return elapsed


FANOUT_SCENARIOS = ("srao-anon-late-kill", "srao-anon-early-kill", "srar-anon-access", "free-page", "mlock-page",
                    "shmem-page", "repeated-injection", "shared-page-early-kill")


def fanout_run(hosts: list[str], workdir: Path, label: str) -> float:
    """Wall time of FANOUT_SCENARIOS spread over `hosts`, one xdist worker per host."""
    hosts_file = workdir / f"hosts-{label}"
    hosts_file.write_text("\n".join(hosts) + "\n")
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", str(len(hosts)),
                           "--kernels", "debian-6.1", "--hosts", str(hosts_file),
                           f"--junitxml={workdir / f'{label}-junit.xml'}", "-k", " or ".join(FANOUT_SCENARIOS),
                           "scenarios"], cwd=REPO_ROOT, capture_output=True, text=True)
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"fan-out {label}: pytest exited {done.returncode}: {done.stdout[-2000:]}")
    return elapsed


def fanout_bench(runs: int, run_dir: Path) -> None:
    """One endpoint against two, alternated; medians and their ratio."""
    from orchestrator.guest.libvirt.daemons import ensure_running
    from orchestrator.guest.libvirt.sshd import LocalSshd
    ensure_running()
    one, two = [], []
    with LocalSshd(run_dir / "sshd") as sshd:
        for i in range(runs):
            one.append(fanout_run(["qemu:///system"], run_dir, f"one-endpoint-{i}"))
            two.append(fanout_run(["qemu:///system", sshd.uri], run_dir, f"two-endpoints-{i}"))
            print(f"fan-out run {i + 1}/{runs}: one endpoint {one[-1]:.1f} s, two endpoints {two[-1]:.1f} s",
                  file=sys.stderr, flush=True)
    print(f"catalog subset ({len(FANOUT_SCENARIOS)} scenarios, debian-6.1, cold, {os.cpu_count()} host CPUs), "
          f"{runs} runs each:")
    print(f"one endpoint (qemu:///system) median: {statistics.median(one):.1f} s "
          f"(runs: {', '.join(f'{x:.1f}' for x in one)})")
    print(f"two endpoints (+ qemu+ssh to this host) median: {statistics.median(two):.1f} s "
          f"(runs: {', '.join(f'{x:.1f}' for x in two)})")
    print(f"one/two endpoints median ratio (speed-up): {statistics.median(one) / statistics.median(two):.2f}")


def _libvirt_unavailable(uri: str | None) -> str | None:
    """Why the libvirt backend cannot be measured here, or None."""
    try:
        from orchestrator.guest.libvirt import DEFAULT_URI, open_connection
        open_connection(uri or DEFAULT_URI).close()
    except InputError as exc:
        return f"{exc}; make libvirtd starts it"
    return None


CATALOG_KERNELS = ("debian-6.1", "debian-6.12")


def catalog_run(kernel: str, jobs: int, results: Path) -> tuple[float, str]:
    """The whole catalog on one kernel, restored, `jobs` guests at once: wall time and the
    run's summary line (every verdict counts: a KNOWN-FAIL or an ERROR is said, not hidden)."""
    argv = [sys.executable, "-m", "orchestrator", "run", "--snapshot", "--image", kernel, "-j", str(jobs),
            "--results", str(results), *sorted(str(p) for p in (REPO_ROOT / "scenarios").glob("*.yaml"))]
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, env={k: v for k, v in os.environ.items() if k != "MCE_JOBS"})
    took = time.monotonic() - start
    summary = next((line for line in reversed(proc.stdout.splitlines()) if re.match(r"\d+ scenarios?: ", line)),
                   f"exit {proc.returncode}, no summary line ({(proc.stderr.strip().splitlines() or [''])[-1]})")
    return took, summary.split("; report:")[0]


def catalog_bench(runs: int, run_dir: Path, kernels=CATALOG_KERNELS) -> tuple[float, float]:
    """The catalog on every kernel, one guest at a time against -j (one per core), alternated;
    returns the two medians (seconds for all kernels together)."""
    jobs = os.cpu_count() or 1
    for kernel in kernels:  # the saved guests built, untimed
        took, summary = catalog_run(kernel, jobs, run_dir / "catalog-warm-up")
        print(f"catalog warm-up on {kernel}: {took:.1f} s ({summary})", file=sys.stderr, flush=True)
    serial, parallel = [], []
    for i in range(runs):
        for label, n, into in (("-j 1", 1, serial), (f"-j {jobs}", jobs, parallel)):
            total = 0.0
            for kernel in kernels:
                took, summary = catalog_run(kernel, n, run_dir / f"catalog-j{n}-{i}")
                total += took
                print(f"catalog run {i + 1}/{runs} {label} on {kernel}: {took:.1f} s ({summary})",
                      file=sys.stderr, flush=True)
            into.append(total)
    print(f"catalog on {' and '.join(kernels)} (restored guests, {os.cpu_count()} host CPUs), {runs} runs each:")
    print(f"  one guest at a time median: {statistics.median(serial):.1f} s "
          f"(runs: {', '.join(f'{x:.1f}' for x in serial)})")
    print(f"  -j {jobs} median: {statistics.median(parallel):.1f} s (runs: {', '.join(f'{x:.1f}' for x in parallel)}); "
          f"-j {jobs}/serial median ratio {statistics.median(parallel) / statistics.median(serial):.2f}")
    return statistics.median(serial), statistics.median(parallel)


def timed_run(scenario, run_dir: Path, label: str, options: RunOptions):
    """(seconds, result) of one orchestrated run; anything but a PASS ends the benchmark."""
    start = time.monotonic()
    result = run_scenario(scenario, run_dir / label, options, _Quiet())
    if result.outcome != Outcome.PASS:
        raise SystemExit(f"{label}: {result.outcome.label}: {result.reasons}")
    return time.monotonic() - start, result


QEMU_KINDS = ("bare", "cold", "restored")


def qemu_bench(runs: int, qemus: list[str], measure) -> dict[str, dict[str, list[float]]]:
    """The scenario on each QEMU: bare, cold and restored, alternated run by run and QEMU by
    QEMU so that the machine's noise hits all alike. measure(qemu, kind, i) -> seconds."""
    samples = {q: {kind: [] for kind in QEMU_KINDS} for q in qemus}
    for i in range(runs):
        for q in qemus:
            for kind in QEMU_KINDS:
                samples[q][kind].append(measure(q, kind, i))
            print(f"run {i + 1}/{runs} on QEMU {q}: " + ", ".join(f"{kind} {samples[q][kind][-1]:.2f} s"
                                                                   for kind in QEMU_KINDS), file=sys.stderr, flush=True)
    return samples


def qemu_lines(scenario: str, samples: dict[str, dict[str, list[float]]], versions: dict[str, str]) -> list[str]:
    """One line per QEMU: its version, the medians and their ratios to its own bare run."""
    lines = []
    for q, kinds in samples.items():
        med = {kind: statistics.median(kinds[kind]) for kind in QEMU_KINDS}
        lines.append(f"QEMU {q} ({versions[q]}), {scenario}, {len(kinds['bare'])} runs each: bare median "
                     f"{med['bare']:.2f} s, cold {med['cold']:.2f} s (ratio {med['cold'] / med['bare']:.2f}), "
                     f"restored {med['restored']:.2f} s (ratio {med['restored'] / med['bare']:.2f}); runs: "
                     + "; ".join(f"{kind} {', '.join(f'{x:.2f}' for x in kinds[kind])}" for kind in QEMU_KINDS))
    return lines


def qemu_part(args, scenario, run_dir: Path, cache_root: Path) -> None:
    """--qemus: the scenario bare, cold and restored on each QEMU named (system: the one on
    PATH; others as run --qemu takes them, a pinned one fetched on first use)."""
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    binaries = {q: resolve_qemu(None if q == "system" else q, cache_root, say) for q in args.qemus}
    versions = {q: qemu_version(b) for q, b in binaries.items()}
    image = images.ensure_image(scenario.guest.image, repo_root=REPO_ROOT, cache_root=cache_root, progress=say)
    probe = probe_build.build_probe(cache_root / "probe")

    def run_one(label: str, options: RunOptions) -> float:
        return timed_run(scenario, run_dir, label, options)[0]

    with tempfile.TemporaryDirectory(prefix="mce-bench-") as tmp:
        initrd = baseline_initrd(image, probe, Path(tmp) / "baseline-initrd.img")

        def measure(q: str, kind: str, i: int) -> float:
            options = RunOptions(qemu_binary=binaries[q], qemu=None if q == "system" else q)
            if kind == "bare":
                return bare_run(image, initrd, run_dir / f"qemu-{q}-bare-{i}", qemu_binary=binaries[q])
            return run_one(f"qemu-{q}-{kind}-{i}", dataclasses.replace(options, snapshot=kind == "restored"))

        for q in args.qemus:  # each QEMU's saved guest (its key holds the QEMU version), untimed
            run_one(f"qemu-{q}-warm-up", RunOptions(snapshot=True, qemu_binary=binaries[q],
                                                    qemu=None if q == "system" else q))
        samples = qemu_bench(args.runs, args.qemus, measure)
    for line in qemu_lines(args.scenario, samples, versions):
        print(line)


class _Quiet(ConsoleReporter):
    def __init__(self):
        super().__init__(io.StringIO())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--scenario", default="srar-anon-access")
    parser.add_argument("--connect", default=None, metavar="URI", help="libvirt URI (default: qemu:///system)")
    parser.add_argument("--kernel", type=Path, help="measure with this kernel (as run --kernel); the first, "
                                                    "untimed-by-the-loop run builds its image and is reported")
    parser.add_argument("--modules", type=Path, help="its INSTALL_MOD_PATH (as run --modules)")
    parser.add_argument("--full-image", default="debian-12-full", metavar="NAME",
                        help="a full distribution image measured beside the initramfs one ('none': skip)")
    parser.add_argument("--full-runs", type=int, default=2, metavar="N",
                        help="cold and restored runs on the full image (a cold one is a minute under TCG)")
    parser.add_argument("--part", choices=("all", "scenario", "qemus", "catalog", "fanout"), default="all",
                        help="per-scenario times, the scenario on each of --qemus, the catalog serially and with "
                             "-j, the one-versus-two-endpoints catalog subset, or all of them")
    parser.add_argument("--qemus", nargs="+", default=["system", "debian-backports"], metavar="QEMU",
                        help="QEMUs the qemus part compares (system: qemu-system-x86_64 on PATH; others as "
                             "run --qemu takes them; default: %(default)s)")
    parser.add_argument("--catalog-runs", type=int, default=2, metavar="N",
                        help="alternated runs of the catalog each way (default: %(default)s)")
    parser.add_argument("--fanout-runs", type=int, default=3, help="runs of each fan-out shape (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.part == "fanout":
        run_dir = new_run_dir(REPO_ROOT / "results" / "bench")
        fanout_bench(args.fanout_runs, run_dir)
        return 0
    if args.part == "catalog":
        catalog_bench(args.catalog_runs, new_run_dir(REPO_ROOT / "results" / "bench"))
        return 0
    if args.part == "qemus":
        qemu_part(args, load_scenario(REPO_ROOT / "scenarios" / f"{args.scenario}.yaml"),
                  new_run_dir(REPO_ROOT / "results" / "bench"), REPO_ROOT / "guest-images" / ".cache")
        return 0
    libvirt_missing = _libvirt_unavailable(args.connect)

    scenario = load_scenario(REPO_ROOT / "scenarios" / f"{args.scenario}.yaml")
    cache_root = REPO_ROOT / "guest-images" / ".cache"
    results_root = REPO_ROOT / "results" / "bench"
    results_root.mkdir(parents=True, exist_ok=True)
    run_dir = new_run_dir(results_root)
    kernel = {"kernel": args.kernel, "modules": args.modules}
    first_run = None
    if args.kernel is not None:
        # The developer's loop: a kernel just built (its image not cached) to the verdict.
        start = time.monotonic()
        result = run_scenario(scenario, run_dir / "new-kernel", RunOptions(**kernel), _Quiet())
        first_run = time.monotonic() - start
        if result.outcome != Outcome.PASS:
            raise SystemExit(f"new-kernel: {result.outcome.label}: {result.reasons}")
    image = images.ensure_image(scenario.guest.image, repo_root=REPO_ROOT, cache_root=cache_root,
                                progress=lambda m: print(m, file=sys.stderr), **kernel)
    probe = probe_build.build_probe(cache_root / "probe")

    bare, orchestrated, restored, phases = [], [], [], []
    on_libvirt, on_libvirt_restored = [], []
    libvirt = RunOptions(backend="libvirt", connect=args.connect)

    def timed(label: str, options: RunOptions) -> float:
        seconds, result = timed_run(scenario, run_dir, label, options)
        if not options.snapshot:
            phases.append(result.phases)
        return seconds

    # The one-time save of the booted guest is not part of what is measured.
    timed("snapshot-warm-up", RunOptions(snapshot=True, **kernel))
    if not libvirt_missing:
        # The daemon warm (its capability cache, the saved guest) before anything is measured.
        timed("libvirt-warm-up", dataclasses.replace(libvirt, snapshot=True))
    with tempfile.TemporaryDirectory(prefix="mce-bench-") as tmp:
        initrd = baseline_initrd(image, probe, Path(tmp) / "baseline-initrd.img")
        for i in range(args.runs):
            bare.append(bare_run(image, initrd, run_dir / f"bare-{i}"))
            orchestrated.append(timed(f"orchestrated-{i}", RunOptions(**kernel)))
            restored.append(timed(f"snapshot-{i}", RunOptions(snapshot=True, **kernel)))
            if not libvirt_missing:
                on_libvirt.append(timed(f"libvirt-{i}", libvirt))
                on_libvirt_restored.append(timed(f"libvirt-snapshot-{i}", dataclasses.replace(libvirt, snapshot=True)))
            print(f"run {i + 1}/{args.runs}: bare {bare[-1]:.2f} s, orchestrated {orchestrated[-1]:.2f} s, "
                  f"with --snapshot {restored[-1]:.2f} s"
                  + ("" if libvirt_missing else f"; libvirt {on_libvirt[-1]:.2f} s, "
                                                f"with --snapshot {on_libvirt_restored[-1]:.2f} s"),
                  file=sys.stderr, flush=True)

    print(f"scenario {args.scenario}, {args.runs} runs each, image {image.name} ({image.kernel_release})")
    print("orchestrated phase medians: " + ", ".join(
        f"{name} {statistics.median(p[name] for p in phases):.2f} s" for name in phases[0]))
    print(f"bare median: {statistics.median(bare):.2f} s (runs: {', '.join(f'{x:.2f}' for x in bare)})")
    print(f"orchestrated median: {statistics.median(orchestrated):.2f} s "
          f"(runs: {', '.join(f'{x:.2f}' for x in orchestrated)})")
    print(f"orchestrated with --snapshot median: {statistics.median(restored):.2f} s "
          f"(runs: {', '.join(f'{x:.2f}' for x in restored)}; "
          f"ratio to bare {statistics.median(restored) / statistics.median(bare):.2f})")
    if libvirt_missing:
        print(f"libvirt backend: not measured ({libvirt_missing})")
    else:
        for label, qemu_runs, libvirt_runs in (("cold", orchestrated, on_libvirt),
                                               ("with --snapshot", restored, on_libvirt_restored)):
            print(f"libvirt backend {label} median: {statistics.median(libvirt_runs):.2f} s "
                  f"(runs: {', '.join(f'{x:.2f}' for x in libvirt_runs)}); libvirt/qemu median ratio "
                  f"{statistics.median(libvirt_runs) / statistics.median(qemu_runs):.2f}")
    if first_run is not None:
        print(f"new kernel to verdict (its image built first): {first_run:.2f} s; "
              f"ratio to bare median {first_run / statistics.median(bare):.2f}")
    if args.full_image != "none":
        _full_image(args, scenario, run_dir, statistics.median(p["boot"] for p in phases),
                    statistics.median(orchestrated), statistics.median(restored), timed)
    print(f"orchestrated/bare median ratio: {statistics.median(orchestrated) / statistics.median(bare):.2f}")
    if args.part == "all":
        qemu_part(args, scenario, run_dir, cache_root)
        catalog_bench(args.catalog_runs, run_dir)
        if libvirt_missing:
            print(f"fan-out: not measured ({libvirt_missing})")
        else:
            fanout_bench(args.fanout_runs, run_dir)
    # Last, the figure the issue tracks: a restored scenario (SSH, the full watch) against the bare run.
    print(f"snapshot/bare median ratio: {statistics.median(restored) / statistics.median(bare):.2f}")
    return 0


def _full_image(args, scenario, run_dir: Path, initramfs_boot: float, initramfs_cold: float,
                initramfs_restored: float, timed) -> None:
    """The full image beside the initramfs one: build, size, boot to SSH, per-scenario time."""
    from orchestrator.guest.images.distro import ensure_guest_image

    start = time.monotonic()
    image = ensure_guest_image(args.full_image, repo_root=REPO_ROOT, cache_root=REPO_ROOT / "guest-images" / ".cache",
                               progress=lambda m: print(m, file=sys.stderr, flush=True))
    waited = time.monotonic() - start
    manifest = json.loads((image.directory / "image.json").read_text())
    full = RunOptions(image=args.full_image)
    boots, cold, restored_boots, restored = [], [], [], []

    timed(f"{args.full_image}-snapshot-warm-up", dataclasses.replace(full, snapshot=True))  # the save, untimed
    for i in range(args.full_runs):
        result_start = time.monotonic()
        result = run_scenario(scenario, run_dir / f"{args.full_image}-cold-{i}", full, _Quiet())
        cold.append(time.monotonic() - result_start)
        boots.append(result.phases["boot"])
        result_start = time.monotonic()
        again = run_scenario(scenario, run_dir / f"{args.full_image}-snapshot-{i}",
                             dataclasses.replace(full, snapshot=True), _Quiet())
        restored.append(time.monotonic() - result_start)
        restored_boots.append(again.phases["boot"])
        for label, r in (("cold", result), ("--snapshot", again)):
            if r.outcome != Outcome.PASS:
                raise SystemExit(f"{args.full_image} {label}: {r.outcome.label}: {r.reasons}")
        print(f"{args.full_image} run {i + 1}/{args.full_runs}: cold {cold[-1]:.2f} s (boot {boots[-1]:.2f} s), "
              f"with --snapshot {restored[-1]:.2f} s (restore {restored_boots[-1]:.2f} s)", file=sys.stderr, flush=True)
    median = statistics.median
    print(f"full image {image.name} ({image.kernel_release}): build {manifest['build_seconds']:.0f} s "
          f"(built {manifest['built_at']}{'; built by this run' if waited > 30 else ''}), "
          f"qcow2 {manifest['disk_bytes'] / 2**20:.0f} MiB")
    print(f"boot to SSH median: {image.name} {median(boots):.2f} s, initramfs {initramfs_boot:.2f} s "
          f"(restored {image.name}: {median(restored_boots):.2f} s)")
    print(f"{scenario.name} median on {image.name}: cold {median(cold):.2f} s (runs: "
          f"{', '.join(f'{x:.2f}' for x in cold)}), with --snapshot {median(restored):.2f} s (runs: "
          f"{', '.join(f'{x:.2f}' for x in restored)}); initramfs: cold {initramfs_cold:.2f} s, "
          f"with --snapshot {initramfs_restored:.2f} s")


if __name__ == "__main__":
    sys.exit(main())
