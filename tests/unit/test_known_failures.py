"""Known failures: scenario marks, the outcome they make of a verdict, and how reports show it."""
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator import cli
from orchestrator.judge.known_failures import apply_known_failure


from orchestrator.judge.verdict import Check


from orchestrator.plumbing.outcome import HarnessError, Outcome, worst


from orchestrator.report import ConsoleReporter, ScenarioResult, write_json, write_junit


from orchestrator.scenario import KnownFailure, ScenarioError, parse_scenario



OOPS = "BUG: unable to handle page fault for address"
KNOWN = KnownFailure(">=6.12", "ksmd oopses on the poisoned KSM page", OOPS, "ksmd", "memcmp",
                     ("ksmd scanned again",))
HEALTH_FAILED = Check("no kernel bugs", Outcome.FAIL, f"the kernel reported: {OOPS}: ffff888002b78000 | RIP: memcmp")
KSMD_FAILED = Check("ksmd scanned again", Outcome.FAIL, "ksmd-gone: full_scans 3 -> 3; expected scanned")
SIGBUS_OK = Check("sigbus", Outcome.PASS, f"quoting {OOPS} in a passed check does not count")
SIGBUS_FAILED = Check("sigbus", Outcome.FAIL, "expected none, got BUS_MCEERR_AO")

MARKED = """\
description: test
inject: {preset: srao}
expect: {sigbus: none, page_poisoned: true}
known_failures:
  - kernel: ">=6.12"
    because: ksmd oopses
    signature: "BUG: unable to handle page fault for address"
    task: ksmd
    function: memcmp
"""


def parse(text, name="t"):
    return parse_scenario(text, Path(f"scenarios/{name}.yaml"))


# --- the outcome a mark makes of a verdict ---------------------------------------

def the_oops(comm="ksmd", rip="memcmp+0x6/0x50", first=OOPS + ": ffff888002bab000"):
    return (f"[    7.06] {first}\n[    7.06] #PF: supervisor read access in kernel mode\n"
            f"[    7.06] Oops: Oops: 0000 [#1] PREEMPT SMP PTI\n"
            f"[    7.06] CPU: 0 UID: 0 PID: 34 Comm: {comm} Tainted: G   M   6.12.117+deb12-amd64 #1\n"
            f"[    7.07] RIP: 0010:{rip}\n[    7.07] Call Trace:\n[    7.07]  ksm_scan_thread+0xccb/0x2430\n"
            f"[    7.08] note: {comm}[34] exited with irqs disabled\n")


def test_failure_the_marked_crash_explains_is_known():
    outcome, note = apply_known_failure(Outcome.FAIL, (SIGBUS_OK, HEALTH_FAILED, KSMD_FAILED), KNOWN, the_oops())
    assert outcome == Outcome.KNOWN_FAIL and outcome.exit_code == 0
    assert note.startswith(f"known failure on kernel >=6.12: '{OOPS}' in ksmd at memcmp explains "
                           "no kernel bugs, ksmd scanned again;")
    assert "ksmd oopses on the poisoned KSM page" in note


def test_an_unrelated_failed_check_beside_the_marked_crash_is_a_failure():
    # Seen before the fix: a wrong sigbus beside the ksmd oops was KNOWN-FAIL, exit 0.
    outcome, note = apply_known_failure(Outcome.FAIL, (SIGBUS_FAILED, HEALTH_FAILED, KSMD_FAILED), KNOWN, the_oops())
    assert outcome == Outcome.FAIL
    assert note.endswith("but the mark does not explain sigbus")


def test_failure_another_way_is_a_failure():
    outcome, note = apply_known_failure(Outcome.FAIL, (SIGBUS_OK, SIGBUS_FAILED, KSMD_FAILED), KNOWN, "")
    assert outcome == Outcome.FAIL
    assert "does not explain sigbus, ksmd scanned again (the kernel log has no report" in note


@pytest.mark.parametrize("log, why", [
    (the_oops(comm="kswapd0"), "has no report"),                     # another task
    (the_oops(rip="memcpy+0x6/0x50"), "has no report"),              # another function
    (the_oops(first="BUG: kernel NULL pointer dereference, address: 0000000000000008"), "has no report"),
    (the_oops() + the_oops(), "has 2 reports"),                      # a second report
    (the_oops() + "[    9.1] WARNING: CPU: 0 PID: 1 at mm/memory-failure.c:1 memory_failure+0x1/0x2\n",
     "another report: WARNING: CPU: 0"),
])
def test_only_the_precisely_named_crash_is_explained(log, why):
    outcome, note = apply_known_failure(Outcome.FAIL, (HEALTH_FAILED, KSMD_FAILED), KNOWN, log)
    assert outcome == Outcome.FAIL and "does not explain no kernel bugs, ksmd scanned again" in note
    assert why in note, note


def test_a_check_the_mark_does_not_list_is_not_explained():
    bare = KnownFailure(">=6.12", "x", OOPS, "ksmd", "memcmp")
    outcome, note = apply_known_failure(Outcome.FAIL, (HEALTH_FAILED, KSMD_FAILED), bare, the_oops())
    assert outcome == Outcome.FAIL and note.endswith("does not explain ksmd scanned again")


def test_signature_is_exact_text():
    wrong = KnownFailure(">=6.12", "x", "BUG: unable to handle kernel paging request", "ksmd", "memcmp")
    assert apply_known_failure(Outcome.FAIL, (HEALTH_FAILED,), wrong, the_oops())[0] == Outcome.FAIL
    lower = KnownFailure(">=6.12", "x", OOPS.lower(), "ksmd", "memcmp")
    assert apply_known_failure(Outcome.FAIL, (HEALTH_FAILED,), lower, the_oops())[0] == Outcome.FAIL


def test_pass_on_a_marked_kernel_is_unexpected():
    outcome, note = apply_known_failure(Outcome.PASS, (SIGBUS_OK,), KNOWN)
    assert outcome == Outcome.XPASS and outcome.exit_code == 1
    assert "drop the mark" in note


def test_error_stays_an_error_and_unmarked_kernels_are_untouched():
    assert apply_known_failure(Outcome.ERROR, (HEALTH_FAILED,), KNOWN) == (Outcome.ERROR, None)
    for outcome in (Outcome.PASS, Outcome.FAIL, Outcome.ERROR):
        assert apply_known_failure(outcome, (HEALTH_FAILED,), None) == (outcome, None)


# --- the mark in a scenario file ---------------------------------------------------

def test_mark_applies_to_matching_kernels_only():
    s = parse(MARKED)
    assert s.known_failures == (KnownFailure(">=6.12", "ksmd oopses", OOPS, "ksmd", "memcmp"),)
    assert s.known_failure("6.12.117+deb12-amd64") == s.known_failures[0]
    assert s.known_failure("6.13.2") == s.known_failures[0]
    assert s.known_failure("6.1.0-56-amd64") is None
    # Choosing a kernel variant keeps the mark.
    assert s.for_kernel("6.12.117+deb12-amd64")[0].known_failures == s.known_failures


def test_last_matching_mark_wins():
    text = MARKED + "  - kernel: '6.13'\n    because: other\n    signature: 'general protection fault'\n" \
                    "    task: x\n    function: y\n"
    s = parse(text)
    assert s.known_failure("6.13.1").signature == "general protection fault"
    assert s.known_failure("6.12.117").signature == OOPS


@pytest.mark.parametrize("text, expected", [
    (MARKED.replace("    because: ksmd oopses\n", ""), "t.yaml:5: known_failures[0]: missing key 'because'"),
    (MARKED.replace('"BUG: unable to handle page fault for address"', '"BUG"'),
     "t.yaml:7: known_failures[0].signature: 'BUG' is too short"),
    (MARKED.replace('"BUG: unable to handle page fault for address"', '"BUG: a\\nb c"'),
     "t.yaml:7: known_failures[0].signature: must be one line of text"),
    (MARKED.replace('">=6.12"', '"newer"'), "t.yaml:5: known_failures[0].kernel: 'newer' is not an allowed name"),
    (MARKED.replace("    signature", "    checks: [x]\n    signature"),
     "t.yaml:7: known_failures[0].checks: unknown key (expected one of: because, explains, function, kernel, "
     "signature, task)"),
    (MARKED.replace("    task: ksmd\n", ""), "t.yaml:5: known_failures[0]: missing key 'task'"),
    (MARKED.replace("    function: memcmp\n", ""), "t.yaml:5: known_failures[0]: missing key 'function'"),
    (MARKED + "    explains: [sigbus, kernel log]\n",
     "t.yaml:10: known_failures[0].explains[1]: 'kernel log' is not a check a crash can be said to explain"),
    (MARKED + "  - kernel: '>=6.12'\n    because: again\n    signature: 'general protection fault'\n"
              "    task: x\n    function: y\n",
     "t.yaml:10: known_failures[1].kernel: '>=6.12' is already marked by an earlier entry"),
    (MARKED.replace("known_failures:\n", "known_failures: []\n").split("  - kernel")[0],
     "t.yaml:4: known_failures: [] should be non-empty"),
])
def test_bad_marks_are_one_line_errors(text, expected):
    with pytest.raises(ScenarioError) as info:
        parse(text)
    assert str(info.value).startswith("scenarios/" + expected) and "\n" not in str(info.value), str(info.value)


def test_ksm_remerge_step_needs_ksm_memory_and_its_expectation_needs_the_step():
    base = "description: t\ninject: {preset: srao}\nexpect: {sigbus: none, page_poisoned: true, ksm_remerge: scanned}\n"
    with pytest.raises(ScenarioError, match=r"t.yaml:3: expect.ksm_remerge: needs a ksm-remerge step"):
        parse(base)
    with pytest.raises(ScenarioError, match=r"t.yaml:\d: probe.after_inject: ksm-remerge needs probe.memory: ksm"):
        parse(base + "probe: {after_inject: [ksm-remerge]}\n")
    s = parse(base + "probe: {memory: ksm, after_inject: [ksm-remerge]}\n")
    assert s.probe.after_inject == ("ksm-remerge",) and s.expect.ksm_remerge == "scanned"


# --- reports and exit codes --------------------------------------------------------

def marked_results(tmp_path: Path) -> list[ScenarioResult]:
    known_fail = ScenarioResult("k", "scenarios/k.yaml", Outcome.KNOWN_FAIL, tmp_path / "k", phases={"boot": 1.0},
                                known_failure=KNOWN, known_note=f"known failure on kernel >=6.12: '{OOPS}' ...",
                                verdict=SimpleNamespace(checks=(HEALTH_FAILED,), reasons=[f"no kernel bugs: {OOPS}"]))
    xpass = ScenarioResult("x", "scenarios/x.yaml", Outcome.XPASS, tmp_path / "x", phases={"boot": 1.0},
                           known_failure=KNOWN, known_note="marked as known to fail on kernel >=6.12 (...), but every "
                                                           "check passed: the kernel no longer fails, drop the mark",
                           verdict=SimpleNamespace(checks=(SIGBUS_OK,), reasons=[]))
    other = ScenarioResult("f", "scenarios/f.yaml", Outcome.FAIL, tmp_path / "f", phases={"boot": 1.0},
                           known_failure=KNOWN, known_note="marked ..., but it failed another way",
                           verdict=SimpleNamespace(checks=(SIGBUS_FAILED,), reasons=["sigbus: expected"]))
    ok = ScenarioResult("p", "scenarios/p.yaml", Outcome.PASS, tmp_path / "p", phases={"boot": 1.0})
    return [known_fail, xpass, other, ok]


def test_junit_shows_known_failures_as_pytest_does(tmp_path):
    write_junit(marked_results(tmp_path), tmp_path / "junit.xml")
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("4", "2", "0", "1")
    cases = {c.get("name"): c for c in suite}
    skipped = cases["k"].find("skipped")
    assert skipped.get("type") == "pytest.xfail" and skipped.get("message").startswith("known failure on kernel >=6.12")
    assert cases["k"].find("failure") is None and cases["k"].find("error") is None
    assert cases["x"].find("failure").get("message").startswith("[XPASS(strict)] marked as known to fail")
    assert cases["x"].find("skipped") is None
    # A failure another way on a marked kernel: the failed check first, then the mark's note.
    assert cases["f"].find("failure").get("message") == "sigbus: expected; marked ..., but it failed another way"
    assert all(cases["p"].find(tag) is None for tag in ("failure", "error", "skipped"))


def test_json_shows_labels_and_the_mark(tmp_path):
    write_json(marked_results(tmp_path), tmp_path / "report.json", {})
    scenarios = json.loads((tmp_path / "report.json").read_text())["scenarios"]
    assert [s["outcome"] for s in scenarios] == ["KNOWN-FAIL", "XPASS", "FAIL", "PASS"]
    assert scenarios[0]["known_failure"] == {"kernel": ">=6.12", "because": KNOWN.because, "signature": OOPS,
                                             "task": "ksmd", "function": "memcmp",
                                             "explains": ["ksmd scanned again"],
                                             "note": f"known failure on kernel >=6.12: '{OOPS}' ..."}
    assert scenarios[3]["known_failure"] is None


def test_console_counts_and_labels(tmp_path):
    import io
    stream = io.StringIO()
    reporter = ConsoleReporter(stream)
    results = marked_results(tmp_path)
    reporter.scenario_finished(results[0])
    reporter.run_finished(results, tmp_path)
    text = stream.getvalue()
    assert "   KNOWN-FAIL k in 1.0 s\n     known failure on kernel >=6.12" in text
    assert "\nXPASS      x " in text and "\nKNOWN-FAIL k " in text and "\nPASS       p " in text
    assert "4 scenarios: 1 passed, 1 failed, 0 errors, 1 known failure, 1 unexpected pass;" in text


@pytest.mark.parametrize("outcomes, code", [
    ([Outcome.PASS, Outcome.KNOWN_FAIL], 0),
    ([Outcome.KNOWN_FAIL, Outcome.KNOWN_FAIL], 0),
    ([Outcome.KNOWN_FAIL, Outcome.XPASS], 1),
    ([Outcome.PASS, Outcome.XPASS], 1),
    ([Outcome.XPASS, Outcome.FAIL], 1),
    ([Outcome.KNOWN_FAIL, Outcome.ERROR], 2),
    ([Outcome.PASS, Outcome.FAIL, Outcome.ERROR], 2),
])
def test_command_line_exit_codes(tmp_path, monkeypatch, outcomes, code):
    planned = iter(outcomes)

    def fake_run(scenario, run_dir, options, reporter, label=None):
        outcome = next(planned)
        return ScenarioResult(label, str(scenario.path), outcome, run_dir / label,
                              error=HarnessError("boot", "x") if outcome == Outcome.ERROR else None)

    monkeypatch.setattr(cli, "run_scenario", fake_run)
    scenario = tmp_path / "one.yaml"
    scenario.write_text(MARKED.replace("description: test", "description: one"))
    args = ["run", str(scenario), "--results", str(tmp_path / "results"), "--repeat", str(len(outcomes))]
    assert cli.main(args) == code
    assert worst(outcomes).exit_code == code


# --- the checks the KSM rescan scenario relies on -------------------------------------

from orchestrator.judge.verdict import Evidence, judge  # noqa: E402

OOPS_LOG = """\
[    6.781500] Memory failure: 0x2bab: recovery action for dirty LRU page: Recovered
[    7.063748] BUG: unable to handle page fault for address: ffff888002bab000
[    7.064032] #PF: supervisor read access in kernel mode
[    7.064113] #PF: error_code(0x0000) - not-present page
[    7.064223] PGD 3c01067 P4D 3c01067 PUD 3c02067 PMD 4ee1063 PTE 800ffffffd454062
[    7.064935] Oops: Oops: 0000 [#1] PREEMPT SMP PTI
[    7.065288] CPU: 0 UID: 0 PID: 34 Comm: ksmd Tainted: G   M               6.12.117+deb12-amd64 #1  Debian 6.12.117-1~deb12u1
[    7.065601] Tainted: [M]=MACHINE_CHECK
[    7.065645] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 0.1 11/11/2019
[    7.072868] RIP: 0010:memcmp+0x6/0x50
[    7.073318] Code: 83 c7 01 84 c9 75 bc eb e3 66 66 2e 0f 1f 84 00 00 00 00 00 90 90 90 90 90 90 90 90 90 90 90 90 90 90 90 90 f3 0f 1e fa eb 14 <48> 8b 06 48 39 07 75 17 48 83 c7 08 48 83 c6 08 48 83 ea 08 48 83
[    7.073666] RSP: 0000:ffffc90000113e18 EFLAGS: 00000216
[    7.073775] RAX: ffff888000000000 RBX: ffffffff83831cc8 RCX: ffff88800589ab61
[    7.073855] RDX: 0000000000001000 RSI: ffff888002bab000 RDI: ffff888002b96000
[    7.073927] RBP: ffffffff83831cc8 R08: 0000000000000001 R09: ffff88801f16bac0
[    7.074000] R10: 85ebca77c2b2ae63 R11: ffff888002b97008 R12: ffffea00000ae580
[    7.074070] R13: ffffea00000ae580 R14: ffffea00000aeac0 R15: ffff88801f16bac0
[    7.074197] FS:  0000000000000000(0000) GS:ffff88801f000000(0000) knlGS:0000000000000000
[    7.074277] CS:  0010 DS: 0000 ES: 0000 CR0: 0000000080050033
[    7.076240] CR2: ffff888002bab000 CR3: 0000000005c18000 CR4: 00000000003506f0
[    7.076481] Call Trace:
[    7.077157]  <TASK>
[    7.077285]  ksm_scan_thread+0xccb/0x2430
"""


def rescan(answer: dict | None, log: str = "") -> Evidence:
    return Evidence(ready={"va": "0x1000", "pfn": 0x2b78, "pages": []}, checked_pfn=0x2b78,
                    steps=[answer] if answer else [], kernel_log=log, guest_answered_after=True)


def rescan_scenario():
    return parse("description: t\ninject: {preset: srao}\nprobe: {memory: ksm, after_inject: [ksm-remerge]}\n"
                 "expect: {ksm_remerge: scanned, page_poisoned: true}\n")


def checks_of(ev):
    return {c.name: c for c in judge(rescan_scenario(), ev).checks}


def test_oops_reason_carries_its_first_lines_through_rip():
    check = checks_of(rescan(None, OOPS_LOG))["no kernel bugs"]
    assert check.outcome == Outcome.FAIL
    # Seen on debian-6.12 (6.12.117+deb12-amd64), ksm-poisoned-page-rescan.
    assert check.detail == ("the kernel reported: BUG: unable to handle page fault for address: ffff888002bab000 | "
                            "#PF: supervisor read access in kernel mode | #PF: error_code(0x0000) - not-present page | "
                            "Oops: Oops: 0000 [#1] PREEMPT SMP PTI | CPU: 0 UID: 0 PID: 34 Comm: ksmd Tainted: G   M"
                            "               6.12.117+deb12-amd64 #1  Debian 6.12.117-1~deb12u1 | "
                            "RIP: 0010:memcmp+0x6/0x50")
    assert apply_known_failure(Outcome.FAIL, (check,), KNOWN, OOPS_LOG)[0] == Outcome.KNOWN_FAIL


SCANNED = {"event": "ksm-remerge", "result": "scanned", "pages": 16, "distinct_pfns": 1, "first_pfn": 0x2b78,
           "full_scans": [7, 9],
           "pages_scanned": [-1, -1], "ksmd_pid": 34, "ksmd_state": "S", "elapsed_ms": 420.0}


@pytest.mark.parametrize("answer, outcome, detail", [
    (SCANNED, Outcome.PASS, "scanned: full_scans 7 -> 9 in 0.4 s over 16 fresh pages (1 distinct PFNs after, "
                            "the first 0x2b78, the poisoned page); ksmd pid 34 state S"),
    ({**SCANNED, "result": "stalled", "full_scans": [7, 7]}, Outcome.FAIL, "stalled: full_scans 7 -> 7"),
    ({**SCANNED, "result": "ksmd-gone", "ksmd_pid": 0, "ksmd_state": "?"}, Outcome.FAIL, "no ksmd thread"),
    # Two scans counted, but ksmd is a zombie now: not a healthy ksmd.
    ({**SCANNED, "ksmd_state": "Z"}, Outcome.FAIL, "ksmd pid 34 state Z; expected scanned"),
    ({"event": "ksm-remerge", "result": "error", "output": "probe: bad argument"}, Outcome.ERROR, "bad argument"),
    (None, Outcome.FAIL, "the ksm-remerge step never answered"),
])
def test_ksmd_rescan_check(answer, outcome, detail):
    check = checks_of(rescan(answer))["ksmd scanned again"]
    assert check.outcome == outcome and detail in check.detail, check


def test_verdict_table_shows_known_failures_and_unexpected_passes(tmp_path):
    from orchestrator.report.table import markdown


    runs = []
    for kernel, outcomes in (("6.1.0-56-amd64", ["PASS", "PASS"]), ("6.12.117+deb12-amd64", ["KNOWN-FAIL", "XPASS"])):
        run = tmp_path / kernel
        run.mkdir()
        checks = {"PASS": [], "XPASS": [],
                  "KNOWN-FAIL": [{"name": "no kernel bugs", "outcome": "FAIL", "detail": OOPS}]}
        run.joinpath("report.json").write_text(json.dumps({"scenarios": [
            {"name": name, "outcome": o, "kernel_release": kernel, "checks": checks[o], "error": None}
            for name, o in zip(("ksm-poisoned-page-rescan", "other"), outcomes)]}))
        runs.append(run)
    table = markdown(runs)
    assert "| ksm-poisoned-page-rescan | PASS | KNOWN-FAIL (no kernel bugs) |" in table
    assert "| other | PASS | XPASS |" in table
    assert "KNOWN-FAIL: the kernel fails the scenario the way its `known_failures` mark says" in table
