"""The whole scenario catalog on both kernel images (real guests, TCG).

Restored from saved guests (--snapshot): this test is about the kernels'
machine-check handling, not about booting, and a restored guest gives the
same verdicts as a cold one (tests/integration/test_snapshot.py); scenarios
with a disk still boot. Each kernel has a test file of its own
(test_catalog_6_1.py, test_catalog_6_12.py), so that under `make test`
(pytest-xdist, one file per worker) the two kernels run on two workers."""
import json

from orchestrator.scenario import load_scenario

from .conftest import REPO, orchestrator

CATALOG = sorted(p.stem for p in (REPO / "scenarios").glob("*.yaml"))


def check_catalog_passes(tmp_path, image: str, release_prefix: str) -> None:
    proc = orchestrator("run", "--snapshot", "--image", image, *CATALOG, results=tmp_path, timeout=1800)
    report = json.loads((tmp_path / "latest" / "report.json").read_text())
    outcomes = {s["name"]: s["outcome"] for s in report["scenarios"]}
    assert {name.split(".cpu")[0] for name in outcomes} == set(CATALOG)
    # PASS, or KNOWN-FAIL exactly where the scenario marks this kernel as known to fail it.
    expected = {s["name"]: "KNOWN-FAIL" if load_scenario(REPO / s["file"]).known_failure(s["kernel_release"]) else "PASS"
                for s in report["scenarios"]}
    assert proc.returncode == 0 and outcomes == expected, \
        {n: o for n, o in outcomes.items() if o != expected[n]}
    assert all(s["kernel_release"].startswith(release_prefix) for s in report["scenarios"])
    # Every scenario checked more than the guest's state (alive or panicked).
    assert all(len(s["checks"]) >= 2 for s in report["scenarios"])
