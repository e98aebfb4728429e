"""Issue 22: one real-guest negative control per way a verdict could lie (debian-6.1, restored guests, one run)."""
import json
import re

import pytest

from .conftest import REPO, orchestrator

NEGATIVE = REPO / "tests" / "integration" / "negative"
CONTROLS = ("neg-log-absent-prefix", "neg-ce-ignored", "neg-info-line-before-panic")


@pytest.fixture(scope="module")
def controls_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    proc = orchestrator("run", "--snapshot", "--image", "debian-6.1",
                        *(str(NEGATIVE / f"{name}.yaml") for name in CONTROLS), results=results)
    report = json.loads((results / "latest" / "report.json").read_text())
    return proc, {s["name"]: s for s in report["scenarios"]}


def failed_checks(scenario):
    return {c["name"]: c["detail"] for c in scenario["checks"] if c["outcome"] != "PASS"}


def test_every_control_fails(controls_run):
    proc, scenarios = controls_run
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert {name: s["outcome"] for name, s in scenarios.items()} == {name: "FAIL" for name in CONTROLS}


def test_absent_entry_matches_anywhere_in_a_message(controls_run):
    # Item 4: the start of a message the kernel printed, as an absent entry, is found.
    failed = failed_checks(controls_run[1]["neg-log-absent-prefix"])
    (name, detail), = failed.items()
    assert name.startswith("kernel log lacks 'Memory failure: 0x")
    assert detail.startswith("found: Memory failure: 0x") and detail.endswith(
        ": recovery action for dirty LRU page: Recovered")


def test_a_guest_that_never_saw_the_corrected_errors_fails(controls_run):
    # Item 3: corrected-errors-one-page with ignore_ce: 1 PASSed (every expectation said "nothing happened").
    failed = failed_checks(controls_run[1]["neg-ce-ignored"])
    assert failed == {"kernel log has 'mce: [Hardware Error]: TSC 0 ADDR "
                      f"{controls_run[1]['neg-ce-ignored']['injection']['address']:x} MISC 8c'": "not found"}, failed


def test_every_message_before_an_expected_panic_reaches_the_judge(controls_run):
    # Item 2: an info line printed before the panic was not on the quiet console, the only log left.
    s = controls_run[1]["neg-info-line-before-panic"]
    (name, detail), = failed_checks(s).items()
    assert name == "kernel log lacks 'drop_caches: 1'" and re.fullmatch(r"found: sysctl \(\d+\): drop_caches: 1", detail)
    assert any(c["name"] == "guest panic" and c["outcome"] == "PASS" for c in s["checks"])


@pytest.fixture(scope="module")
def error_run(tmp_path_factory):
    # A run of its own: an ERROR makes the exit status 2.
    results = tmp_path_factory.mktemp("results")
    proc = orchestrator("run", "--snapshot", "--image", "debian-6.1", str(NEGATIVE / "err-setup-step-fails.yaml"),
                        results=results)
    report = json.loads((results / "latest" / "report.json").read_text())
    return proc, {s["name"]: s for s in report["scenarios"]}


def test_failing_setup_step_is_named_with_its_output(error_run):
    # Item 6: it was "the guest kernel has no machine-check support", the marker being in the quoted command.
    proc, scenarios = error_run
    assert proc.returncode == 2, proc.stderr[-3000:]
    s = scenarios["err-setup-step-fails"]
    assert s["outcome"] == "ERROR"
    error = s["error"]
    assert error["phase"] == "ssh" and error["message"].startswith("set-up step "), error
    step, output = error["message"].split(" failed: ", 1)[1].split("': ", 1)
    assert step == "'echo 1 > /sys/kernel/mm/transparent_hugepage/no_such_knob"
    # The shell's own complaint, then the step's exit status.
    assert "no_such_knob" in output and "exit status " in output, output
    assert "machine-check" not in error["message"]
