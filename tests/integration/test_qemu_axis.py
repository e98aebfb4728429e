"""--qemu: the pinned second QEMU (Debian 12 backports' 10.0) beside the system's 7.2, on real
guests: the base scenario and both gdbstub races pass on it, and a saved guest never crosses
QEMU versions. The second QEMU is fetched (make qemu's entry point) when missing."""
import io
import json
import shlex
import subprocess
import sys

import pytest

from orchestrator.guest.qemu.install import qemu_version
from orchestrator.plumbing.outcome import Outcome
from orchestrator.report import ConsoleReporter
from orchestrator.runner import RunOptions, run_scenario
from orchestrator.scenario import load_scenario

from .conftest import REPO, orchestrator

SECOND = "debian-backports"


@pytest.fixture(scope="module")
def second_qemu() -> str:
    fetched = subprocess.run([sys.executable, "-m", "orchestrator.guest.qemu.install", SECOND], cwd=REPO,
                             capture_output=True, text=True, timeout=900)
    assert fetched.returncode == 0, fetched.stderr[-2000:]
    binary = fetched.stdout.strip().splitlines()[-1]
    assert qemu_version(binary).startswith("10."), qemu_version(binary)
    return binary


def test_base_and_race_scenarios_pass_on_the_second_qemu(tmp_path, second_qemu):
    scenarios = ["srao-anon-late-kill", "high-order-kernel-page", "different-compound-page"]
    proc = orchestrator("run", "--snapshot", "--qemu", SECOND, *scenarios, results=tmp_path)
    report = json.loads((tmp_path / "latest" / "report.json").read_text())
    assert [s["outcome"] for s in report["scenarios"]] == ["PASS"] * 3, proc.stderr[-4000:]
    assert proc.returncode == 0
    assert {s["qemu"]["version"] for s in report["scenarios"]} == {qemu_version(second_qemu)}
    assert f"QEMU {qemu_version(second_qemu)}" in proc.stderr  # the run's header
    # Its own ROMs, not 7.2's: -L its tree and -bios its qboot.rom
    argv = shlex.split((tmp_path / "latest" / "srao-anon-late-kill" / "qemu-cmdline.txt").read_text())
    tree = second_qemu.rsplit("/usr/bin/", 1)[0]
    assert argv[:3] == [second_qemu, "-L", f"{tree}/usr/share/qemu"], argv[:3]
    assert argv[argv.index("-bios") + 1] == f"{tree}/usr/share/qemu/qboot.rom"
    junit = (tmp_path / "latest" / "junit.xml").read_text()
    assert f'name="qemu_version" value="{qemu_version(second_qemu)}"' in junit
    repro = (tmp_path / "latest" / "high-order-kernel-page" / "repro.sh").read_text()
    assert "--qemu" in repro and SECOND in repro


class Quiet(ConsoleReporter):
    def __init__(self):
        super().__init__(io.StringIO())


def test_a_guest_saved_on_7_2_is_not_restored_on_10(tmp_path, second_qemu):
    snapshots = tmp_path / "snapshots"
    scenario = load_scenario(REPO / "scenarios" / "srao-anon-late-kill.yaml")

    def once(label, binary):
        reporter = Quiet()
        result = run_scenario(scenario, tmp_path / "results", RunOptions(snapshot=True, snapshot_dir=snapshots,
                                                                         qemu_binary=binary), reporter, label=label)
        assert result.outcome == Outcome.PASS, (label, result.reasons, reporter.stream.getvalue()[-3000:])
        return result, reporter.stream.getvalue()

    (tmp_path / "results").mkdir()
    first, _ = once("on-7.2", "qemu-system-x86_64")
    assert "save" in first.phases and first.qemu_version.startswith("7.2")
    states_72 = set(snapshots.glob("*.state"))
    assert len(states_72) == 1
    second, out = once("on-10", second_qemu)
    assert "save" in second.phases, out  # a new save: 7.2's state was not loaded into 10
    assert len(set(snapshots.glob("*.state")) - states_72) == 1
    third, out = once("on-10-again", second_qemu)
    assert "save" not in third.phases and "restored from" in out  # 10's own state is
