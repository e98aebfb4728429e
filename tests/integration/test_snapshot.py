"""--snapshot: boot once, save, restore per scenario; results as with a cold boot."""
import hashlib
import io
import json
import re
import time
from pathlib import Path

import pytest

from orchestrator.plumbing.deadline import Deadline
from orchestrator.plumbing.outcome import Outcome
from orchestrator.report import ConsoleReporter
from orchestrator.runner import RunOptions, run_scenario
from orchestrator.scenario import load_scenario

from .conftest import REPO, orchestrator

LATE_KILL = REPO / "scenarios" / "srao-anon-late-kill.yaml"
PANIC = REPO / "scenarios" / "srao-recovery-disabled-panic.yaml"
BOOT_LINE = REPO / "tests" / "integration" / "negative" / "neg-boot-line-in-panic-log.yaml"


def test_restored_guests_give_the_same_verdicts(tmp_path):
    scenarios = ["srao-anon-late-kill", "srar-anon-access", "file-dirty-ext4", "srao-recovery-disabled-panic"]
    proc = orchestrator("run", "--snapshot", *scenarios, results=tmp_path)
    report = json.loads((tmp_path / "latest" / "report.json").read_text())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [s["outcome"] for s in report["scenarios"]] == ["PASS"] * 4
    # The disk scenario too: its scratch disk is saved with the state (tests/integration/test_snapshot_disks.py).
    boots = [line for line in proc.stderr.splitlines() if line.strip().startswith("boot ")]
    assert len(boots) == 4 and all("restored from" in line for line in boots), boots


def _checks(report: dict) -> list[tuple[str, str, str]]:
    """(scenario, check, outcome) with the run's own PFNs taken out of the names."""
    return [(s["name"], re.sub(r"page [0-9a-f]+", "page PFN", c["name"]), c["outcome"])
            for s in report["scenarios"] for c in s["checks"]]


def test_panic_and_boot_time_lines_judged_alike_cold_and_restored(tmp_path):
    """A panic scenario and a negative control whose verdict rests on a line of the boot's
    console: check by check the same outcomes cold and restored (the control FAILs both ways)."""
    append = ["--append", "loglevel=8 mceorch.boot=WARNING"]
    reports = {}
    for mode in ("cold", "restored"):
        results = tmp_path / mode
        proc = orchestrator("run", *append, "--snapshot" if mode == "restored" else "--cold",
                            str(PANIC), str(BOOT_LINE), results=results)
        assert proc.returncode == 1, proc.stderr[-3000:]
        reports[mode] = json.loads((results / "latest" / "report.json").read_text())
        assert [s["outcome"] for s in reports[mode]["scenarios"]] == ["PASS", "FAIL"], proc.stderr[-3000:]
        assert ("restored from" in proc.stderr) == (mode == "restored")
    assert _checks(reports["cold"]) == _checks(reports["restored"])
    failed = [c for c in _checks(reports["restored"]) if c[2] != "PASS"]
    assert failed == [("neg-boot-line-in-panic-log",
                       r"kernel log lacks /Kernel command line: .* mceorch\.boot=WARNING/", "FAIL")]


class Quiet(ConsoleReporter):
    def __init__(self):
        super().__init__(io.StringIO())

    @property
    def text(self) -> str:
        return self.stream.getvalue()


IDENTITY = ("head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; grep '\\[stack\\]' /proc/self/maps; "
            "date +%s; dmesg | grep 'mce-orchestrator: restored guest' || true")


def _restored_run(tmp_path: Path, snapshots: Path, label: str, scenario=LATE_KILL, image=None):
    seen: dict = {}

    def look_inside(phase, ctx):
        if phase == "locate":  # after the ssh phase's setup, before the scenario's own work
            seen["host_time"] = time.time()
            seen["guest"] = ctx.ssh.check(IDENTITY, Deadline(20, "test"), "test").splitlines()

    reporter = Quiet()
    run_dir = tmp_path / "results,with comma"  # the console's path goes into -chardev
    run_dir.mkdir(exist_ok=True)
    result = run_scenario(load_scenario(scenario), run_dir, RunOptions(snapshot=True, snapshot_dir=snapshots,
                                                                        image=image, hook=look_inside), reporter, label=label)
    return result, seen, reporter.text


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    # Our own folder: the broken states below must not touch the shared cache's. Its name has
    # what QEMU's option syntax (',') and the exec: migration's shell (' ', ';') treat specially.
    return tmp_path_factory.mktemp("snap,shots; x")


@pytest.mark.parametrize("image", ["debian-6.1", "debian-6.12"])
def test_each_restore_gets_fresh_entropy_time_and_marker(tmp_path, snapshots, image):
    first, one, out = _restored_run(tmp_path, snapshots, "first", image=image)
    assert first.outcome == Outcome.PASS, (first.reasons, out)
    assert "save" in first.phases and "restored from" in out
    saved_at = time.time()
    time.sleep(max(0.0, saved_at + 5 - time.time()))  # a stale clock would now be 5 s behind
    second, two, out = _restored_run(tmp_path, snapshots, "second", image=image)
    assert second.outcome == Outcome.PASS, (second.reasons, out)
    assert "save" not in second.phases  # restored from the same state
    for seen, label, other in ((one, "first", "second"), (two, "second", "first")):
        urandom, stack, clock, *markers = seen["guest"]
        assert len(urandom) == 64
        assert abs(int(clock) - seen["host_time"]) <= 2, f"guest clock {clock}, host {seen['host_time']:.0f}"
        assert [m for m in markers if f"/{label}" in m] and not [m for m in markers if f"/{other}" in m]
    assert one["guest"][0] != two["guest"][0], "same /dev/urandom output after two restores"
    assert one["guest"][1] != two["guest"][1], "same stack address (ASLR) after two restores"


@pytest.mark.parametrize("damage", ["flipped", "unloadable"])
def test_a_broken_saved_state_is_discarded_and_saved_again(tmp_path, snapshots, damage):
    """flipped: caught by the state's digest (truncated and garbage are, too: tests/unit/test_snapshot.py);
    unloadable: garbage with a matching digest, so QEMU itself refuses it on restore."""
    states = list(snapshots.glob("debian-6.1-*.state"))
    if not states:  # run alone: save one first
        _restored_run(tmp_path, snapshots, "save-first")
        states = list(snapshots.glob("debian-6.1-*.state"))
    state = states[0]
    data = state.read_bytes()
    if damage == "flipped":
        middle = len(data) // 2
        state.write_bytes(data[:middle] + bytes(b ^ 0xff for b in data[middle:middle + 4096]) + data[middle + 4096:])
    else:
        garbage = b"not a migration stream\n" * 100
        state.write_bytes(garbage)
        state.with_suffix(".sha256").write_text(hashlib.sha256(garbage).hexdigest() + "\n")
    result, seen, out = _restored_run(tmp_path, snapshots, damage)
    assert result.outcome == Outcome.PASS, (result.reasons, out)
    notes = [line for line in out.splitlines() if "is broken" in line]
    assert len(notes) == 1 and "discarded, saving it again" in notes[0], out
    assert ("restoring the guest failed: QEMU exited" in notes[0]) == (damage == "unloadable"), notes[0]
    assert "Traceback" not in out and not (result.artifacts / "traceback.txt").exists()
    assert [p.name for p in snapshots.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")] == []
