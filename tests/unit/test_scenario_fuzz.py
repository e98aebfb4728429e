"""Hostile and random scenario documents: a clean ScenarioError or a valid scenario, never a traceback."""
import math
import re
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.scenario import Scenario, ScenarioError, parse_scenario


PATH = Path("scenarios/fuzz.yaml")
KEYS = ["description", "guest", "probe", "inject", "expect", "timeouts", "name", "image", "memory_mib", "vcpus",
        "sysctl", "pages", "target", "mode", "cpu", "after_inject", "preset", "raw", "bank", "status", "mcg_status",
        "misc", "address", "page_offset", "gate", "broadcast", "sigbus", "code", "addr", "lsb", "page_poisoned",
        "hardware_corrupted_kb", "kernel_log", "memory_failure_event", "action_required", "guest", "boot", "observe",
        "count", "interval_s", "region", "kernel_log_absent", "inject"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=True), st.text(max_size=20), st.sampled_from(["srao", "srar", "none", "busy",
                                                                                       "BUS_MCEERR_AR", "panic", "ce",
                                                                                       "kernel-code", "{pfm:#x}",
                                                                                       "{pfn:#x}\n", ".nan"]))
DOCUMENTS = st.recursive(SCALARS, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=6)),
    max_leaves=30)


def check(text: str) -> None:
    try:
        scenario = parse_scenario(text, PATH)
    except ScenarioError as exc:
        message = str(exc)
        assert message.startswith(str(PATH)) and "\n" not in message, message
    else:
        assert isinstance(scenario, Scenario)
        assert_sane(scenario)


def assert_sane(scenario: Scenario) -> None:
    """What every accepted scenario guarantees to the runner (issue 13)."""
    for seconds in vars(scenario.timeouts).values():
        assert math.isfinite(seconds) and seconds > 0, scenario.timeouts
    assert re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", scenario.name)
    for expect in [scenario.expect] + [v.expect for v in scenario.kernel_variants]:
        for line in expect.kernel_log + expect.kernel_log_absent:
            assert line.isprintable(), line
            line.format(pfn=1, gpa=4096, va=4096, injected_pfn=1)
    inject = scenario.inject
    if inject.interval_s is not None:
        assert math.isfinite(inject.interval_s) and inject.interval_s * (inject.count - 1) < scenario.timeouts.inject
    if inject.address is not None:
        assert inject.region == "probe" and inject.page_offset == 0


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCUMENTS)
def test_random_documents(document):
    check(yaml.safe_dump(document))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_random_text(text):
    check(text)


VALID = {"description": "d", "inject": {"preset": "srao"}, "expect": {"sigbus": "none", "page_poisoned": True}}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["guest", "probe", "inject", "expect", "timeouts"]), st.sampled_from(KEYS), SCALARS)
def test_one_wrong_value_in_a_valid_document(section, key, value):
    document = {k: dict(v) if isinstance(v, dict) else v for k, v in VALID.items()}
    document.setdefault(section, {})[key] = value
    check(yaml.safe_dump(document))


HOSTILE = [
    "a: &a [*a, *a]\n",                                   # recursive alias
    "a: &x [1]\nb: *x\nc: *x\n" * 3,                    # duplicated anchors/keys
    "!!python/object/apply:os.system ['true']\n",
    "description: !!binary aGVsbG8=\ninject: {preset: srao}\nexpect: {}\n",
    "? [a, b]\n: 1\n",                                    # a key that is a list
    "description: x\ninject: {preset: srao}\nexpect: {}\n" + "x" * 10,
    "%YAML 1.1\n%TAG ! tag:evil.example,2000:\n---\n!x 1\n",
    "description: x\ninject: {preset: srao, address: 0x" + "f" * 40 + "}\nexpect: {}\n",
    "description: x\ninject: {preset: srao}\nexpect: {}\nguest: {sysctl: {'vm.x; rm -rf /': 1}}\n",
    "description: x\ninject: {preset: srao}\nexpect: {}\nguest: {sysctl: {vm.overcommit_memory: '1; reboot'}}\n",
    "description: x\ninject: {preset: srao}\nexpect: {}\nguest: {image: '../../etc'}\n",
    "\t\x00\x01",
    "[" * 200,
    "a: " + "[" * 60 + "]" * 60 + "\n",
]


def test_hostile_documents():
    for text in HOSTILE:
        check(text)


def test_shell_metacharacters_never_reach_a_scenario():
    for text in HOSTILE[8:11]:
        try:
            parse_scenario(text, PATH)
        except ScenarioError as exc:
            assert "not an allowed name" in str(exc) or "expected" in str(exc)
        else:
            raise AssertionError(f"accepted: {text!r}")


def test_sysfs_paths_and_values_cannot_reach_a_shell():
    base = "description: x\ninject: {preset: srao}\nexpect: {page_poisoned: true}\nguest:\n  sysfs:\n"
    for bad in ["    /sys/../etc/passwd: 1\n", "    /etc/shadow: 1\n", "    /sys/x: 'a; reboot'\n",
                "    /sys/x: '$(reboot)'\n", "    '/sys/x y': 1\n"]:
        try:
            parse_scenario(base + bad, PATH)
        except ScenarioError:
            continue
        raise AssertionError(f"accepted: {bad!r}")
    assert parse_scenario(base + "    /sys/kernel/mm/transparent_hugepage/enabled: madvise\n", PATH).guest.sysfs
