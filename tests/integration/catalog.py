"""The whole scenario catalog on one kernel image (real guests, TCG): one
orchestrator run per kernel, judged scenario by scenario.

Restored from saved guests (--snapshot): these tests are about the kernels'
machine-check handling, not about booting, and a restored guest gives the
same verdicts as a cold one (tests/integration/test_snapshot.py); scenarios
with a disk still boot.

Each kernel has a test file of its own (test_catalog_6_1.py,
test_catalog_6_12.py) with one test per scenario run: under `make test`
(pytest-xdist, one file per worker, files with the most tests first) the two
kernels' runs start first, on two workers, and JUnit names the scenario that
failed. The libvirt backend runs the same catalog against a real libvirtd
(test_catalog_libvirt_6_1.py, test_catalog_libvirt_6_12.py) and is held to
the same expected outcome per scenario: the same verdict as the QEMU backend."""
import json
from pathlib import Path

import pytest

from orchestrator.scenario import expand, load_scenario

from .conftest import REPO, orchestrator

CATALOG_FILES = sorted((REPO / "scenarios").glob("*.yaml"))
# What a catalog run reports: one run per file, one per vCPU for `inject.cpu: each`.
RUN_FILE = {s.name: path.stem for path in CATALOG_FILES for s in expand(load_scenario(path))}
RUN_NAMES = list(RUN_FILE)


# Scenarios the libvirt backend cannot run, each with why (none today).
NOT_ON_LIBVIRT: dict[str, str] = {}


def run_catalog(results: Path, image: str, backend: str = "qemu") -> tuple[int, str, dict[str, dict]]:
    names = [p.stem for p in CATALOG_FILES if backend != "libvirt" or p.stem not in NOT_ON_LIBVIRT]
    proc = orchestrator("run", "--snapshot", "--image", image, "--backend", backend, *names,
                        results=results, timeout=1800)
    report = json.loads((results / "latest" / "report.json").read_text())
    return proc.returncode, proc.stderr, {s["name"]: s for s in report["scenarios"]}


def expected_outcome(scenario: dict) -> str:
    """PASS, or KNOWN-FAIL exactly where the scenario marks this kernel as known to fail it."""
    marked = load_scenario(REPO / scenario["file"]).known_failure(scenario["kernel_release"])
    return "KNOWN-FAIL" if marked else "PASS"


def check_run(run, release_prefix: str, backend: str = "qemu") -> None:
    code, stderr, scenarios = run
    skipped = NOT_ON_LIBVIRT if backend == "libvirt" else {}
    assert sorted(scenarios) == sorted(n for n in RUN_NAMES if RUN_FILE[n] not in skipped)
    assert all(s["kernel_release"].startswith(release_prefix) for s in scenarios.values())
    for s in scenarios.values():
        # Each ran on the backend asked for: a libvirt domain has its XML, a QEMU process its command line.
        artifacts = Path(s["artifacts"])
        assert (artifacts / "domain.xml").exists() == (backend == "libvirt"), (s["name"], backend)
        assert (artifacts / "qemu-cmdline.txt").exists() == (backend == "qemu"), (s["name"], backend)
    assert code == 0, stderr[-3000:]


def check_scenario(run, name: str, backend: str = "qemu") -> None:
    if backend == "libvirt" and RUN_FILE[name] in NOT_ON_LIBVIRT:
        pytest.skip(f"not on libvirt: {NOT_ON_LIBVIRT[RUN_FILE[name]]}")
    scenario = run[2][name]
    failed = {c["name"]: c["detail"] for c in scenario["checks"] if c["outcome"] != "PASS"}
    assert scenario["outcome"] == expected_outcome(scenario), (scenario["error"], failed, scenario["artifacts"])
    # Every scenario checked more than the guest's state (alive or panicked).
    assert len(scenario["checks"]) >= 2
