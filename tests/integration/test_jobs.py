"""run -j 2 with real guests: side by side, each in its own folders and ports, one report in
the order the scenarios were named; a negative control among them still FAILs, alone."""
import json
import xml.etree.ElementTree as ET
from pathlib import Path

from .conftest import REPO, orchestrator, process_alive

NAMES = ["srao-anon-late-kill", str(REPO / "tests/integration/negative/neg-expects-no-sigbus.yaml"),
         "srar-anon-access", "free-page"]


def test_four_scenarios_two_guests_at_a_time(tmp_path):
    done = orchestrator("run", "-j", "2", "--snapshot", *NAMES, results=tmp_path, env={"MCE_JOBS": ""})
    assert done.returncode == 1, done.stderr[-3000:]  # the negative control's FAIL, nothing worse
    assert "2 guests side by side (-j 2)" in done.stderr
    report = json.loads((tmp_path / "latest" / "report.json").read_text())
    names = [s["name"] for s in report["scenarios"]]
    assert names == ["srao-anon-late-kill", "neg-expects-no-sigbus", "srar-anon-access", "free-page"]
    outcomes = {s["name"]: s["outcome"] for s in report["scenarios"]}
    assert outcomes == {"srao-anon-late-kill": "PASS", "neg-expects-no-sigbus": "FAIL",
                        "srar-anon-access": "PASS", "free-page": "PASS"}, done.stderr[-3000:]
    failed = next(s for s in report["scenarios"] if s["name"] == "neg-expects-no-sigbus")
    assert [c["name"] for c in failed["checks"] if c["outcome"] == "FAIL"] == ["sigbus"]
    cases = [case.get("name").split("[")[0] for case in ET.parse(tmp_path / "latest" / "junit.xml").iter("testcase")]
    assert cases == [Path(name).stem for name in names]
    # Each its own guest, folder and port; none left running.
    pids = [s["qemu_pid"] for s in report["scenarios"]]
    assert len(set(pids)) == 4 and not any(process_alive(pid) for pid in pids)
    for name in map(lambda n: Path(n).stem, names):
        assert (tmp_path / "latest" / name / "console.log").stat().st_size > 0
    # Each account whole: its lines between its "== name" and its "artifacts:" line.
    lines = done.stderr.splitlines()
    for name in map(lambda n: Path(n).stem, names):
        start = next(i for i, line in enumerate(lines) if line.startswith(f"== {name}  ["))
        end = next(i for i, line in enumerate(lines) if i > start and line.strip().startswith("artifacts: "))
        assert name in lines[end] and not any(line.startswith("== ") for line in lines[start + 1:end])
