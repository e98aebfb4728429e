"""Kernel-log expectations match whole messages; placeholders end at a token boundary."""
import pytest

from orchestrator.judge import logmatch

from orchestrator.judge.logmatch import ExpectationError, LineExpectation


# Real 6.1 output (srao-recovery-disabled-panic, srar-anon-access runs).
LOG = ("[    3.197897] Kernel panic - not syncing: Memory failure on page 421b5\n"
       "[    3.451565] mce: Uncorrected hardware memory error in user-access at 2983000\n"
       "[    3.456382] Memory failure: 0x2983: Sending SIGBUS to mce-probe:162 due to hardware memory corruption\n"
       "[    3.457281] Memory failure: 0x2983: recovery action for dirty LRU page: Recovered\n"
       "[    3.245546] mce: [Hardware Error]: TSC 0 ADDR 4219000 MISC 8c \r\n")


def found(text, values=None, regex=False, log=LOG):
    pattern = logmatch.compile_expectation(LineExpectation(text, regex), values or {})
    return logmatch.find(log, pattern)


def test_a_plain_line_matches_the_whole_message_after_the_timestamp():
    assert found("Memory failure: {pfn:#x}: recovery action for dirty LRU page: Recovered", {"pfn": 0x2983})
    assert found("mce: [Hardware Error]: TSC 0 ADDR 4219000 MISC 8c")  # \r and trailing blank dropped


@pytest.mark.parametrize("text", [
    "Memory failure: {pfn:#x}: recovery action for dirty LRU page",   # a prefix of the message
    "recovery action for dirty LRU page: Recovered",                  # a suffix (inside a longer message)
    "Uncorrected hardware memory error in user-access at {gpa:x}",    # without its "mce: " prefix
])
def test_part_of_a_message_does_not_match(text):
    assert not found(text, {"pfn": 0x2983, "gpa": 0x2983000})


def test_a_number_does_not_match_the_first_digits_of_a_longer_one():
    # The audit's case: the only panic names page 421b5, the scenario's page is 421b.
    assert not found("Kernel panic - not syncing: Memory failure on page {pfn:x}", {"pfn": 0x421B})
    assert found("Kernel panic - not syncing: Memory failure on page {pfn:x}", {"pfn": 0x421B5})
    # Also inside a regular expression, where ".*" could follow.
    assert not found("Kernel panic - not syncing: Memory failure on page {pfn:x}.*", {"pfn": 0x421B}, regex=True)
    assert not found("Memory failure: {pfn:#x}.*", {"pfn": 0x298}, regex=True)
    assert len(found("Memory failure: {pfn:#x}: .*", {"pfn": 0x2983}, regex=True)) == 2


def test_a_regex_is_anchored_at_both_ends():
    assert found(r"Memory failure: {pfn:#x}: Sending SIGBUS to mce-probe:\d+ due to .*", {"pfn": 0x2983}, regex=True)
    assert not found("Sending SIGBUS", regex=True)
    assert found(".*Sending SIGBUS.*", regex=True)
    assert found(r"mce: .* at [0-9a-f]{7}", regex=True)   # a quantifier is not a placeholder


def test_regex_metacharacters_in_a_plain_line_are_literal():
    log = "[ 1.0] mce: [Hardware Error]: Machine check: Data load in unrecoverable area of kernel\n"
    assert found("mce: [Hardware Error]: Machine check: Data load in unrecoverable area of kernel", log=log)
    assert not found("mce: [Hardware Error]: Machine check: Data load in unrecoverable area of kerne.", log=log)


def test_lines_without_a_timestamp_are_messages_too():
    # The serial console carries the guest init's own lines.
    assert found("MCEORCH-READY init=2.02", log="MCEORCH-READY init=2.02\n[ 1.0] x\n")


def test_complete_only_ignores_a_line_still_being_written():
    pattern = logmatch.compile_expectation(LineExpectation("Memory failure: {pfn:#x}: .*", True), {"pfn": 0x2983})
    partial = "[ 3.4] Memory failure: 0x2983: recovery act"
    assert logmatch.find(partial, pattern) and not logmatch.find(partial, pattern, complete_only=True)
    assert logmatch.find(partial + "ion\n", pattern, complete_only=True)


@pytest.mark.parametrize("expectation, words", [
    (LineExpectation("Memory failure: {pgn:#x}: x"), "unknown placeholder {pgn}"),
    (LineExpectation("Memory failure: {pfn:q}: x"), "cannot be filled in: {pfn:q}"),
    (LineExpectation("open { brace"), "cannot be filled in: a single"),
    (LineExpectation("Memory failure: (unclosed", regex=True), "not a valid regular expression"),
])
def test_unusable_expectations_are_refused(expectation, words):
    with pytest.raises(ExpectationError, match=words.replace("{", r"\{").replace("}", r"\}").replace("(", r"\(")):
        logmatch.validate(expectation)


def test_a_value_the_run_lacks_is_a_key_error():
    with pytest.raises(KeyError):
        logmatch.compile_expectation(LineExpectation("Memory failure: {pfn:#x}: x"), {})


def test_fill_shows_the_line_as_checked():
    assert logmatch.fill("Unpoison: {pfn:#x}: a {{b}}", {"pfn": 0x10}) == "Unpoison: 0x10: a {b}"


def test_a_bad_regex_in_a_scenario_is_one_line_naming_file_line_and_key(tmp_path):
    from orchestrator.scenario import ScenarioError, load_scenario

    path = tmp_path / "bad-regex.yaml"
    path.write_text("description: x\ninject: {preset: srao}\nexpect:\n  kernel_log:\n    - 'fine'\n"
                    "    - regex: 'Memory failure: ('\n")
    with pytest.raises(ScenarioError) as exc:
        load_scenario(path)
    assert str(exc.value).startswith(f"{path}:6: expect.kernel_log[1]: not a valid regular expression")
    assert "\n" not in str(exc.value)


def test_an_absent_entry_matches_anywhere_in_a_message():
    # Issue 22 item 4: "Memory failure: 0x{pfn:x}" as an absent entry passed beside
    # "Memory failure: 0x2983: recovery action for dirty LRU page: Recovered".
    for text, regex in (("Memory failure: 0x{pfn:x}", False), ("dirty LRU page", False),
                        ("Sending SIGBUS", True), ("mce-probe:[0-9]+", True)):
        pattern = logmatch.compile_expectation(LineExpectation(text, regex), {"pfn": 0x2983})
        assert logmatch.find_anywhere(LOG, pattern), text
    # Still at a token boundary after a value: page 0x298 is not page 0x2983.
    pattern = logmatch.compile_expectation(LineExpectation("Memory failure: {pfn:#x}"), {"pfn": 0x298})
    assert not logmatch.find_anywhere(LOG, pattern)
