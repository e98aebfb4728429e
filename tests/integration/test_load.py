"""Load: 50+ scenarios back to back, and two independent orchestrator runs at once.

Guests are restored from a saved state (--snapshot): these tests are about
many guests in a row and at once (a QEMU per scenario, none left, nothing
shared), not about booting; the two runs at once also share the saved
state and race to create it."""
import json
import os
import subprocess
import sys
from collections import Counter

from .conftest import REPO, process_alive

SCENARIOS = ["srao-anon-late-kill", "srao-anon-early-kill", "srar-anon-access"]


def start(results, *args):
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "run", *args, "--results", str(results)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONUNBUFFERED": "1"})


def report_of(proc, results_dir):
    _, stderr = proc.communicate(timeout=1800)
    run_dir = next(line for line in stderr.splitlines() if "report: " in line).split("report: ")[1]
    return proc.returncode, json.loads((results_dir / run_dir.rsplit("/", 1)[1] / "report.json").read_text()), stderr


def test_51_scenarios_back_to_back(tmp_path):
    proc = start(tmp_path, "--snapshot", *SCENARIOS, "--repeat", "17")
    code, report, stderr = report_of(proc, tmp_path)
    outcomes = Counter(s["outcome"] for s in report["scenarios"])
    assert len(report["scenarios"]) == 51
    assert code == 0 and outcomes == {"PASS": 51}, (outcomes, stderr[-2000:])
    pids = [s["qemu_pid"] for s in report["scenarios"]]
    assert len(set(pids)) == 51 and not [p for p in pids if process_alive(p)]


def test_two_runs_at_once_share_nothing(tmp_path):
    # Same results folder on purpose: run folders, ports and guests must not collide.
    first = start(tmp_path, "--snapshot", *SCENARIOS, "--repeat", "2")
    second = start(tmp_path, "--snapshot", *SCENARIOS, "--repeat", "2")
    (code1, report1, err1), (code2, report2, err2) = report_of(first, tmp_path), report_of(second, tmp_path)
    assert code1 == 0 and code2 == 0, (err1[-2000:], err2[-2000:])
    verdicts1 = {s["name"]: (s["outcome"], [c["outcome"] for c in s["checks"]]) for s in report1["scenarios"]}
    verdicts2 = {s["name"]: (s["outcome"], [c["outcome"] for c in s["checks"]]) for s in report2["scenarios"]}
    assert verdicts1 == verdicts2 and len(verdicts1) == 6
    artifacts1 = {s["artifacts"] for s in report1["scenarios"]}
    artifacts2 = {s["artifacts"] for s in report2["scenarios"]}
    assert not artifacts1 & artifacts2
    pids = [s["qemu_pid"] for s in report1["scenarios"] + report2["scenarios"]]
    assert len(set(pids)) == 12 and not [p for p in pids if process_alive(p)]
