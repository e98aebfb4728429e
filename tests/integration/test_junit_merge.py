"""JUnit from `run` on two kernels merges into one suite without two test cases of one id,
and report.json names the tool's version and commit (real runs)."""
import json
import xml.etree.ElementTree as ET

from orchestrator import __version__

from .conftest import REPO, orchestrator


def test_junit_of_two_kernels_merges_without_collisions(tmp_path):
    cases, reports = [], []
    for image, scenario in (("debian-6.1", "srao-anon-late-kill"), ("debian-6.12", "scenarios/srao-anon-late-kill.yaml")):
        results = tmp_path / image
        proc = orchestrator("run", "--image", image, scenario, results=results, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        cases += list(ET.parse(results / "latest" / "junit.xml").getroot().iter("testcase"))
        reports.append(json.loads((results / "latest" / "report.json").read_text()))
    ids = [(c.get("classname"), c.get("name")) for c in cases]
    assert len(ids) == 2 and len(set(ids)) == 2, ids
    assert all(c.get("name").startswith("srao-anon-late-kill[") for c in cases)
    assert {c.get("file") for c in cases} == {"scenarios/srao-anon-late-kill.yaml"}
    for c in cases:
        props = {p.get("name"): p.get("value") for p in c.iter("property")}
        assert props["kernel"] in c.get("name") and props["qemu"].startswith("QEMU emulator version")
    for report in reports:
        assert report["summary"]["total"] == 1 and report["summary"]["PASS"] == 1
        assert report["version"] == __version__ and len(report["commit"]) == 40
