"""Kernel-log expectations spelled by the kernel under test (judge/printk.py), and the
verdict's kernel-log check with them."""
import re
from dataclasses import replace

import pytest

from orchestrator.judge import logmatch, printk
from orchestrator.judge.logmatch import ExpectationError, LineExpectation
from orchestrator.judge.verdict import judge
from orchestrator.plumbing.outcome import Outcome
from orchestrator.scenario import ScenarioError, load_scenario

from .test_verdict import PFN, SCENARIOS, good_evidence

# As the two Debian kernels hold them in .rodata (level prefix, final newline).
STRINGS_6_1 = ["\x016Unpoison: Disabled after HW memory failure %#lx\n",
               "\x016Unpoison: Software-unpoisoned page %#lx\n",
               "\x013Memory failure: %#lx: recovery action for %s: %s\n",
               "pfn %#lx: recovery action for %s: %s",           # a tracepoint's output format: no level
               "unpoison_memory"]
STRINGS_6_12 = ["\x016Unpoison: %#lx: disabled after HW memory failure\n",
                "\x016Unpoison: %#lx: software-unpoisoned page\n",
                "\x013Memory failure: %#lx: recovery action for %s: %s\n"]
REFUSAL = LineExpectation("disabled after HW memory failure", printk=True, values=("pfn",))


def resolved(strings, wanted=REFUSAL) -> re.Pattern:
    fmt = printk.the_format(printk.formats_with(strings, wanted.text), wanted.text, "test")
    return logmatch.compile_expectation(printk.expectation(fmt, wanted.values), {"pfn": PFN, "pid": 84})


def test_each_kernel_spells_the_message_its_own_way():
    assert printk.formats_with(STRINGS_6_1, "DISABLED after hw") == ["Unpoison: Disabled after HW memory failure %#lx"]
    old, new = resolved(STRINGS_6_1), resolved(STRINGS_6_12)
    assert old.fullmatch(f"Unpoison: Disabled after HW memory failure {PFN:#x}")
    assert new.fullmatch(f"Unpoison: {PFN:#x}: disabled after HW memory failure")
    # Each kernel's expectation refuses the other kernel's wording, another page, a longer number.
    assert not old.fullmatch(f"Unpoison: {PFN:#x}: disabled after HW memory failure")
    assert not new.fullmatch(f"Unpoison: Disabled after HW memory failure {PFN:#x}")
    assert not new.fullmatch(f"Unpoison: {PFN + 1:#x}: disabled after HW memory failure")
    assert not old.fullmatch(f"Unpoison: Disabled after HW memory failure {PFN:#x}0")


def test_only_printk_formats_count():
    # The tracepoint's "pfn %#lx: recovery action for %s: %s" has no level prefix: one format, not two.
    assert printk.formats_with(STRINGS_6_1, "recovery action for") == ["Memory failure: %#lx: recovery action for %s: %s"]


def test_a_phrase_no_format_holds_or_several_hold_is_refused():
    with pytest.raises(ExpectationError, match="no printk format holding 'gone'"):
        printk.the_format(printk.formats_with(STRINGS_6_1, "gone"), "gone", "6.1")
    with pytest.raises(ExpectationError, match="2 printk formats holding 'Unpoison: '.*longer phrase"):
        printk.the_format(printk.formats_with(STRINGS_6_1, "Unpoison: "), "Unpoison: ", "6.1")


@pytest.mark.parametrize("fmt, values, line, other", [
    ("%s: %lu pages, pid %d", (None, "pid", "pid"), "x y: 84 pages, pid 84", "x y: 85 pages, pid 84"),
    ("pfn %lx at %#llx", ("pfn", "pfn"), f"pfn {PFN:x} at {PFN:#x}", f"pfn {PFN:#x} at {PFN:#x}"),
    ("100%% of {page} %#lx", ("pfn",), f"100% of {{page}} {PFN:#x}", f"100%% of {{page}} {PFN:#x}"),
    ("%pGp [%5d] (%c)", (None, None, None), "0x4(uptodate) [   12] (x)", "0x4 [12] (xy)"),
    ("a.b*c %#lx", ("pfn",), f"a.b*c {PFN:#x}", f"aXbbc {PFN:#x}"),
])
def test_conversions_are_filled_as_the_kernel_prints_them(fmt, values, line, other):
    pattern = logmatch.compile_expectation(printk.expectation(fmt, values), {"pfn": PFN, "pid": 84})
    assert pattern.fullmatch(line)
    assert not pattern.fullmatch(other)


@pytest.mark.parametrize("fmt, values, message", [
    ("%#lx", (), "more conversions than the 0 value"),
    ("%#lx", ("pfn", "pid"), "1 conversion(s), 2 value(s)"),
    ("%s", ("pfn",), "not a number: give null"),
    ("%*d", ("pid",), "takes a width from its arguments"),
    ("a\nb", (), "more than one line"),
    ("%lx", ("page",), "unknown value 'page'"),
])
def test_formats_and_values_that_disagree_are_refused(fmt, values, message):
    with pytest.raises(ExpectationError, match=re.escape(message)):
        printk.expectation(fmt, values)


def unpoison_after_mce():
    return load_scenario(SCENARIOS / "unpoison-after-mce.yaml")


def evidence(kernel_strings, line):
    return good_evidence(
        probe_result={"sigbus": False, "intact": [0, 2, 3], "corrupt": [],
                      "skipped": {"sigbus": [1], "ksm": []}, "timeout": False},
        steps=[{"event": "unpoison", "result": "EOPNOTSUPP", "output": "sh: write error: Operation not supported"}],
        kernel_log=f"[ 5.1] Memory failure: {PFN:#x}: recovery action for dirty LRU page: Recovered\n[ 5.2] {line}\n",
        printk_formats={REFUSAL.text: printk.formats_with(kernel_strings, REFUSAL.text)})


def log_checks(verdict):
    return {c.name: (c.outcome, c.detail) for c in verdict.checks if c.name.startswith("kernel log")}


def test_the_verdict_expects_the_kernels_own_wording():
    s = unpoison_after_mce()
    assert not s.kernel_variants  # the wording needs no variant
    new_line = f"Unpoison: {PFN:#x}: disabled after HW memory failure"
    old_line = f"Unpoison: Disabled after HW memory failure {PFN:#x}"
    passed = judge(s, evidence(STRINGS_6_12, new_line))
    assert passed.outcome == Outcome.PASS, passed.reasons
    assert (f"kernel log has the kernel's 'Unpoison: %#lx: disabled after HW memory failure' as "
            f"/Unpoison: {PFN:#x}: disabled after HW memory failure/") in log_checks(passed)
    assert judge(s, evidence(STRINGS_6_1, old_line)).outcome == Outcome.PASS
    # A 6.12 kernel's log with 6.1's words (or the reverse) is a FAIL: the kernel's own format decides.
    failed = judge(s, evidence(STRINGS_6_12, old_line))
    assert failed.outcome == Outcome.FAIL
    assert (Outcome.FAIL, "not found") in log_checks(failed).values()
    assert judge(s, evidence(STRINGS_6_1, new_line)).outcome == Outcome.FAIL


def test_formats_not_read_or_not_one_are_an_error_never_a_pass():
    s = unpoison_after_mce()
    line = f"Unpoison: {PFN:#x}: disabled after HW memory failure"
    unread = evidence(STRINGS_6_12, line)
    unread.printk_formats = None
    unread.unavailable["printk formats"] = "the attached guest runs 6.13.0, whose kernel image is not on this host"
    v = judge(s, unread)
    assert v.outcome == Outcome.ERROR
    assert (Outcome.ERROR, "the printk formats of the kernel under test were not read (the attached guest runs "
                           "6.13.0, whose kernel image is not on this host)") in log_checks(v).values()
    for strings, detail in ((["\x016unrelated"], "has no printk format holding"),
                            (STRINGS_6_1 + STRINGS_6_12, "has 2 printk formats holding")):
        v = judge(s, evidence(strings, line))
        assert v.outcome == Outcome.ERROR and any(o == Outcome.ERROR and detail in d for o, d in log_checks(v).values())


def test_an_absent_printk_entry_matches_anywhere(tmp_path):
    s = unpoison_after_mce()
    s = replace(s, expect=replace(s.expect, kernel_log=s.expect.kernel_log[:1], kernel_log_absent=(REFUSAL,)))
    v = judge(s, evidence(STRINGS_6_12, f"Unpoison: {PFN:#x}: disabled after HW memory failure"))
    assert v.outcome == Outcome.FAIL
    assert judge(s, evidence(STRINGS_6_12, "something else")).outcome == Outcome.PASS


def test_the_scenario_file_says_what_is_wrong_with_an_entry(tmp_path):
    base = (SCENARIOS / "unpoison-after-mce.yaml").read_text()
    for entry, message in (('{printk: "disabled after HW memory failure", values: [page]}',
                            "expect.kernel_log[1].values[0]: expected one of pfn, gpa, va, injected_pfn, "
                            "injected_gpa, pid, child_pid, null; got 'page'"),
                           ('{printk: "dis"}', "expect.kernel_log[1].printk: 'dis' is too short"),
                           ('{printk: "disabled after", value: [pfn]}',
                            "expect.kernel_log[1]: expected a string (the whole message), a mapping {regex: ...} "
                            "or {printk: PHRASE, values: [...]}")):
        path = tmp_path / "s.yaml"
        path.write_text(base.replace('- printk: "disabled after HW memory failure"\n      values: [pfn]',
                                     f"- {entry}"))
        with pytest.raises(ScenarioError) as caught:
            load_scenario(path)
        assert message in str(caught.value) and ":24:" in str(caught.value), str(caught.value)
