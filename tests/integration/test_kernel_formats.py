"""Messages spelled by the kernel under test ({printk: PHRASE}): on a real debian-6.12 guest the
unpoison refusal is expected in 6.12's own words, read from that kernel's .rodata on the host;
a message the kernel can print but did not is a FAIL; a phrase the kernel cannot answer for is
an ERROR. (6.1's words are the catalog's run of the same scenario on debian-6.1.)"""
import json
import re

import pytest

from .conftest import REPO, orchestrator

NEGATIVE = REPO / "tests" / "integration" / "negative"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    proc = orchestrator("run", "--snapshot", "--image", "debian-6.12", "unpoison-after-mce",
                        str(NEGATIVE / "neg-printk-message-not-printed.yaml"),
                        str(NEGATIVE / "err-printk-phrase-unresolvable.yaml"), results=results)
    report = json.loads((results / "latest" / "report.json").read_text())
    return proc, results / "latest", {s["name"]: s for s in report["scenarios"]}


def checks(scenario, prefix="kernel log"):
    return {c["name"]: (c["outcome"], c["detail"]) for c in scenario["checks"] if c["name"].startswith(prefix)}


def test_the_refusal_is_expected_in_the_kernels_own_words(run):
    proc, latest, scenarios = run
    assert proc.returncode == 2, proc.stderr[-3000:]  # the ERROR control
    s = scenarios["unpoison-after-mce"]
    assert s["outcome"] == "PASS", s["checks"]
    evidence = json.loads((latest / "unpoison-after-mce" / "evidence.json").read_text())
    pfn = evidence["checked_pfn"]
    fmt, = evidence["printk_formats"]["disabled after HW memory failure"]
    assert fmt.replace("%#lx", "") != fmt and fmt.lower().endswith("disabled after hw memory failure")
    name = f"kernel log has the kernel's '{fmt}' as /{fmt.replace('%#lx', f'{pfn:#x}')}/"
    assert checks(s)[name] == ("PASS", "found")
    # The line the guest's kernel printed is that format, filled in.
    kernel_log = (latest / "unpoison-after-mce" / "guest-kernel.log").read_text()
    assert fmt.replace("%#lx", f"{pfn:#x}") in kernel_log


def test_a_message_the_kernel_holds_but_did_not_print_fails(run):
    s = run[2]["neg-printk-message-not-printed"]
    assert s["outcome"] == "FAIL"
    (name, (outcome, detail)), = [(n, c) for n, c in checks(s).items() if c[0] != "PASS"]
    assert "software-unpoisoned page" in name and (outcome, detail) == ("FAIL", "not found")


def test_a_phrase_the_kernel_cannot_answer_for_is_an_error(run):
    s = run[2]["err-printk-phrase-unresolvable"]
    assert s["outcome"] == "ERROR"
    details = [d for o, d in checks(s).values() if o == "ERROR"]
    assert len(details) == 2, s["checks"]
    assert "has no printk format holding 'no kernel prints this phrase'" in details[0]
    assert re.search(r"has \d+ printk formats holding 'Unpoison' \('Unpoison: ", details[1]), details[1]
    assert details[1].endswith("name a longer phrase")
