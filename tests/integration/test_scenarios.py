"""The catalog's foundation scenarios and the negative controls, on real guests."""
import json
import xml.etree.ElementTree as ET

import pytest

from .conftest import REPO, orchestrator, process_alive

FOUNDATION = ["srao-anon-late-kill", "srao-anon-early-kill", "srar-anon-access"]
EXPECTED_PANIC = "srao-recovery-disabled-panic"
NEGATIVE = REPO / "tests" / "integration" / "negative"
# One negative control per class of verdict bug in issue 12 (same orchestrator run).
ISSUE_12_CONTROLS = ("neg-log-line-prefix", "neg-thp-neighbour-no-lsb", "neg-intact-neighbour-hit",
                     "neg-address-checks-target", "neg-probe-killed")
ARTIFACTS = ["console.log", "guest-kernel.log", "qmp-events.jsonl", "qemu-cmdline.txt", "monitor-commands.log",
             "probe-transcript.txt", "evidence.json"]


@pytest.fixture(scope="module")
def foundation_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    proc = orchestrator("run", *FOUNDATION, EXPECTED_PANIC, results=results)
    latest = results / "latest"
    report = json.loads((latest / "report.json").read_text())
    return proc, latest, {s["name"]: s for s in report["scenarios"]}


@pytest.fixture(scope="module")
def negative_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    # Restored guests: the controls are about the verdicts, not the boot (the foundation run boots cold).
    proc = orchestrator("run", "--snapshot", *(str(NEGATIVE / f"{name}.yaml") for name in
                                 ("neg-expects-no-sigbus", "neg-wrong-page", "neg-unexpected-panic",
                                  "neg-hugetlb-wrong-lsb", "neg-clean-page-wrong-result",
                                  "neg-free-huge-page-wrong-type", "neg-truncated-page-wrong-type",
                                  "neg-swapcache-dirty-wrong-type", "neg-thp-unsplittable-wrong-type",
                                  "neg-shm-locked-wrong-type", "neg-dax-page-wrong-type",
                                  "neg-zero-page-wrong-type", "neg-swapcache-pinned-wrong-type",
                                  "neg-perf-ring-wrong-type", "neg-mlocked-off-lru-wrong-dirtiness",
                                  "neg-high-order-wrong-type", "neg-different-compound-wrong-type")
                                 + ISSUE_12_CONTROLS),
                        results=results)
    report = json.loads((results / "latest" / "report.json").read_text())
    return proc, {s["name"]: s for s in report["scenarios"]}


def test_foundation_scenarios_pass(foundation_run):
    proc, _, scenarios = foundation_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in FOUNDATION:
        checks = scenarios[name]["checks"]
        assert scenarios[name]["outcome"] == "PASS"
        assert len(checks) >= 6 and all(c["outcome"] == "PASS" for c in checks), checks


@pytest.mark.parametrize("name, code", [("srao-anon-late-kill", "BUS_MCEERR_AR"),
                                        ("srao-anon-early-kill", "BUS_MCEERR_AO"),
                                        ("srar-anon-access", "BUS_MCEERR_AR")])
def test_probe_saw_the_right_signal_on_the_target_page(foundation_run, name, code):
    probe = foundation_run[2][name]["probe"]
    result, ready = probe["result"], probe["ready"]
    assert result["sigbus"] and result["si_code_name"] == code and result["si_addr_lsb"] == 12
    assert int(result["si_addr"], 16) == int(ready["va"], 16)
    assert result["corrupt"] == [] and len(result["intact"]) == 3


def test_srar_was_gated_into_user_mode(foundation_run):
    injection = foundation_run[2]["srar-anon-access"]["injection"]
    ready = foundation_run[2]["srar-anon-access"]["probe"]["ready"]
    assert int(ready["loop_start"], 16) <= injection["rip"] < int(ready["loop_end"], 16)


def test_results_and_artifacts_are_written(foundation_run):
    _, latest, scenarios = foundation_run
    suite = ET.parse(latest / "junit.xml").getroot()
    assert suite.get("tests") == "4" and suite.get("failures") == "0" and suite.get("errors") == "0"
    for name in FOUNDATION:
        folder = latest / name
        for artifact in ARTIFACTS:
            assert (folder / artifact).stat().st_size > 0, f"{name}/{artifact} missing or empty"
        commands = (folder / "monitor-commands.log").read_text()
        assert "mce 0 9 0xbd" in commands
        assert "qemu-system-x86_64" in (folder / "qemu-cmdline.txt").read_text()
        events = [json.loads(line)["event"] for line in (folder / "qmp-events.jsonl").read_text().splitlines()]
        assert "MEMORY_FAILURE" in events


def test_no_qemu_outlives_the_run(foundation_run, negative_run):
    pids = [s["qemu_pid"] for s in list(foundation_run[2].values()) + list(negative_run[1].values())]
    assert all(pids) and not [p for p in pids if process_alive(p)]


def test_negative_control_unexpected_sigbus_fails(negative_run):
    proc, scenarios = negative_run
    assert proc.returncode == 1, proc.stderr[-3000:]
    s = scenarios["neg-expects-no-sigbus"]
    assert s["outcome"] == "FAIL"
    failed = {c["name"]: c["detail"] for c in s["checks"] if c["outcome"] != "PASS"}
    assert list(failed) == ["sigbus"]
    assert failed["sigbus"].startswith("expected none, got BUS_MCEERR_AR")


def test_negative_control_wrong_page_fails(negative_run):
    s = negative_run[1]["neg-wrong-page"]
    assert s["outcome"] == "FAIL"
    failed = {c["name"]: c["detail"] for c in s["checks"] if c["outcome"] != "PASS"}
    assert "is not on the target page" in failed["sigbus"]
    assert "HWPOISON clear" in failed["page poisoned"]
    assert any(name.startswith("kernel log has") for name in failed)
    assert "neg-wrong-page" in negative_run[0].stderr  # the console summary names it


def test_expected_panic_passes(foundation_run):
    s = foundation_run[2][EXPECTED_PANIC]
    assert s["outcome"] == "PASS"
    checks = {c["name"]: c for c in s["checks"]}
    assert checks["guest panic"]["detail"] == "GUEST_PANICKED seen"
    assert any(n.startswith("kernel log has 'Kernel panic - not syncing: Memory failure on page") for n in checks)
    events = (foundation_run[1] / EXPECTED_PANIC / "qmp-events.jsonl").read_text()
    assert "GUEST_PANICKED" in events


def test_negative_control_unexpected_panic_fails_promptly(negative_run):
    s = negative_run[1]["neg-unexpected-panic"]
    assert s["outcome"] == "FAIL"
    failed = {c["name"]: c["detail"] for c in s["checks"] if c["outcome"] != "PASS"}
    assert "Kernel panic - not syncing: Memory failure on page" in failed["guest alive"]
    assert failed["sigbus"] == "no probe result: the guest panicked"
    # Seen through pvpanic at once, not by running into the 60 s observe deadline.
    assert s["phases_s"]["observe"] < 10


def failed_checks(scenario):
    return {c["name"]: c["detail"] for c in scenario["checks"] if c["outcome"] != "PASS"}


def test_negative_control_wrong_lsb_fails(negative_run):
    s = negative_run[1]["neg-hugetlb-wrong-lsb"]
    assert s["outcome"] == "FAIL"
    failed = failed_checks(s)
    assert list(failed) == ["sigbus"] and "si_addr_lsb 21 != 12" in failed["sigbus"]


def test_negative_control_wrong_result_line_fails(negative_run):
    s = negative_run[1]["neg-clean-page-wrong-result"]
    assert s["outcome"] == "FAIL"
    failed = failed_checks(s)
    assert len(failed) == 1
    (name, detail), = failed.items()
    assert name.startswith("kernel log has") and "dirty LRU page" in name and detail == "not found"


@pytest.mark.parametrize("name, expected_line", [
    ("neg-free-huge-page-wrong-type", "free buddy page: Recovered"),
    ("neg-truncated-page-wrong-type", "clean LRU page: Recovered"),
    ("neg-swapcache-dirty-wrong-type", "clean swapcache page: Recovered"),
    ("neg-thp-unsplittable-wrong-type", "dirty LRU page: Recovered"),
    ("neg-shm-locked-wrong-type", "dirty LRU page: Recovered"),
    ("neg-dax-page-wrong-type", "dirty LRU page: Recovered"),
    ("neg-zero-page-wrong-type", "unknown page: Ignored"),
    ("neg-swapcache-pinned-wrong-type", "dirty swapcache page: Delayed"),
    ("neg-perf-ring-wrong-type", "reserved kernel page: Ignored"),
    ("neg-mlocked-off-lru-wrong-dirtiness", "clean mlocked LRU page: Failed"),
    ("neg-high-order-wrong-type", "free buddy page: Recovered"),
    ("neg-different-compound-wrong-type", "dirty LRU page: Recovered"),
])
def test_negative_control_wrong_page_type_fails_on_the_result_line(negative_run, name, expected_line):
    s = negative_run[1][name]
    assert s["outcome"] == "FAIL"
    failed = failed_checks(s)
    [check] = failed   # the kernel-log check alone
    assert check.startswith("kernel log has 'Memory failure: 0x") and check.endswith(f"{expected_line}'")


@pytest.fixture(scope="module")
def lock_race_control_run(tmp_path_factory):
    # A run of its own: an ERROR makes the exit status 2, the other controls' run expects 1 (FAIL).
    results = tmp_path_factory.mktemp("results")
    proc = orchestrator("run", "--snapshot", str(NEGATIVE / "neg-mlocked-off-lru-no-race.yaml"), results=results)
    report = json.loads((results / "latest" / "report.json").read_text())
    return proc, {s["name"]: s for s in report["scenarios"]}


def test_negative_control_lock_race_not_seen_is_an_error(lock_race_control_run):
    # The fuse-mlock setup without its interleaving (the error on another page): ERROR naming step 1.
    proc, scenarios = lock_race_control_run
    assert proc.returncode == 2, proc.stderr[-3000:]
    s = scenarios["neg-mlocked-off-lru-no-race"]
    assert s["outcome"] == "ERROR"
    assert [c["name"] for c in s["checks"] if c["outcome"] != "PASS"] == ["lock race"]
    [race] = [c for c in s["checks"] if c["name"] == "lock race"]
    assert race["outcome"] == "ERROR"
    assert race["detail"].startswith("step '1: memory_failure() was not seen waiting for the page lock")


# Issue 12: each class of verdict bug has a control that FAILs on exactly the check that class is about.

def test_control_kernel_log_matches_whole_messages(negative_run):
    # Class 1: the start of a message the kernel did print is not that message.
    failed = failed_checks(negative_run[1]["neg-log-line-prefix"])
    (name, detail), = failed.items()
    assert name.startswith("kernel log has 'Memory failure: 0x") and name.endswith(
        ": recovery action for dirty LRU page'") and detail == "not found"


def test_control_sigbus_address_is_not_compared_at_a_wider_granularity(negative_run):
    # Class 2: no lsb in the scenario, a 2 MiB (THP) mapping, the kernel's lsb 12: compared at 4 KiB.
    s = negative_run[1]["neg-thp-neighbour-no-lsb"]
    failed = failed_checks(s)
    assert list(failed) == ["sigbus"]
    assert "is not on the target page" in failed["sigbus"] and "(compared at 4 KiB)" in failed["sigbus"]
    assert "lsb 12" in failed["sigbus"]
    assert s["probe"]["ready"]["map_page_size"] == 2 << 20


def test_control_other_pages_intact_sees_a_skipped_neighbour(negative_run):
    # Class 4: the SIGBUS named the neighbour; the probe skipped it and said why.
    s = negative_run[1]["neg-intact-neighbour-hit"]
    failed = failed_checks(s)
    assert failed == {"other pages intact": "pages skipped that the scenario does not expect to lose: "
                                            "2 (sigbus) (expected to lose 1)"}
    assert s["probe"]["result"]["skipped"]["sigbus"] == [2]


def test_control_inject_address_checks_follow_the_injected_page(negative_run):
    # Class 5: page_poisoned looks at the injected page (poisoned), and {pfn} is that page too.
    s = negative_run[1]["neg-address-checks-target"]
    failed = failed_checks(s)
    assert list(failed) == ["page poisoned"]
    assert failed["page poisoned"].startswith("PFN 0x8000 kpageflags") and "HWPOISON set, expected clear" in failed[
        "page poisoned"]
    assert any(c["name"] == "kernel log has /Memory failure: 0x8000: .*/" and c["outcome"] == "PASS" for c in s["checks"])


def test_control_probe_killed_fails_a_scenario_that_never_mentions_signals(negative_run):
    # Class 6: how the probe ended is judged in every scenario.
    failed = failed_checks(negative_run[1]["neg-probe-killed"])
    assert failed == {"probe ended": "killed by signal 7 (SIGBUS) before reporting its result"}
