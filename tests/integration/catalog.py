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
failed."""
import json
from pathlib import Path

from orchestrator.scenario import expand, load_scenario

from .conftest import REPO, orchestrator

CATALOG_FILES = sorted((REPO / "scenarios").glob("*.yaml"))
# What a catalog run reports: one run per file, one per vCPU for `inject.cpu: each`.
RUN_NAMES = [s.name for path in CATALOG_FILES for s in expand(load_scenario(path))]


def run_catalog(results: Path, image: str) -> tuple[int, str, dict[str, dict]]:
    proc = orchestrator("run", "--snapshot", "--image", image, *(p.stem for p in CATALOG_FILES),
                        results=results, timeout=1800)
    report = json.loads((results / "latest" / "report.json").read_text())
    return proc.returncode, proc.stderr, {s["name"]: s for s in report["scenarios"]}


def expected_outcome(scenario: dict) -> str:
    """PASS, or KNOWN-FAIL exactly where the scenario marks this kernel as known to fail it."""
    marked = load_scenario(REPO / scenario["file"]).known_failure(scenario["kernel_release"])
    return "KNOWN-FAIL" if marked else "PASS"


def check_run(run, release_prefix: str) -> None:
    code, stderr, scenarios = run
    assert sorted(scenarios) == sorted(RUN_NAMES)
    assert all(s["kernel_release"].startswith(release_prefix) for s in scenarios.values())
    assert code == 0, stderr[-3000:]


def check_scenario(run, name: str) -> None:
    scenario = run[2][name]
    failed = {c["name"]: c["detail"] for c in scenario["checks"] if c["outcome"] != "PASS"}
    assert scenario["outcome"] == expected_outcome(scenario), (scenario["error"], failed, scenario["artifacts"])
    # Every scenario checked more than the guest's state (alive or panicked).
    assert len(scenario["checks"]) >= 2
