"""The scenarios' pytest plugin turns known failures into pytest's xfail outcomes (no guest: run_scenario is faked)."""
import textwrap
from pathlib import Path

import pytest

pytest_plugins = "pytester"

PLUGIN = Path(__file__).resolve().parents[2] / "scenarios" / "conftest.py"

CONFTEST = f"""
import importlib.util
from orchestrator.plumbing.outcome import Outcome
from orchestrator.judge.verdict import Check, Verdict
from orchestrator.report import ScenarioResult


from orchestrator.scenario import KnownFailure



spec = importlib.util.spec_from_file_location("scenario_plugin_under_test", {str(PLUGIN)!r})
plugin = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plugin)
MARK = KnownFailure(">=6.12", "ksmd oopses", "BUG: unable to handle page fault for address", "ksmd",
                    "memcmp")
# name -> (outcome, marked for this kernel)
PLANNED = {{"known": (Outcome.KNOWN_FAIL, True), "fixed": (Outcome.XPASS, True), "other": (Outcome.FAIL, True),
            "plain": (Outcome.PASS, False), "broken": (Outcome.FAIL, False)}}


def fake_run_scenario(scenario, run_dir, options, reporter, label=None):
    outcome, marked = PLANNED[scenario.name]
    with open("run-dirs.txt", "a") as f:
        f.write(str(run_dir) + "\\n")
    with open("qemus.txt", "a") as f:
        f.write(f"{{options.qemu_binary}} {{options.qemu}}\\n")
    verdict = Verdict(outcome, (Check("sigbus", Outcome.FAIL, "expected none, got BUS_MCEERR_AR"),)) \
        if scenario.name == "broken" else None
    return ScenarioResult(scenario.name, str(scenario.path), outcome, run_dir / scenario.name,
                          known_failure=MARK if marked else None, known_note=f"note for {{scenario.name}}",
                          verdict=verdict, qemu_version="10.0.2 (fake)" if options.qemu else "7.2.22 (fake)")


plugin.run_scenario = fake_run_scenario
pytest_addoption = plugin.pytest_addoption
pytest_collect_file = plugin.pytest_collect_file
"""

SCENARIO = textwrap.dedent("""\
    description: t
    inject: {preset: srao}
    expect: {sigbus: none, page_poisoned: true}
    """)


def test_known_failures_are_xfailed_and_unexpected_passes_strict(pytester):
    pytester.makeconftest(CONFTEST)
    folder = pytester.mkdir("scenarios")
    for name in ("known", "fixed", "other", "plain", "broken"):
        (folder / f"{name}.yaml").write_text(SCENARIO)
    result = pytester.runpytest("--kernels", "debian-6.12", "-rxX", "-p", "no:cacheprovider",
                                "--junitxml", str(pytester.path / "junit.xml"), "scenarios")
    result.assert_outcomes(passed=1, xfailed=1, failed=3)
    result.stdout.fnmatch_lines(["*[[]XPASS(strict)[]] known to fail on kernel >=6.12*",
                                 "*XFAIL scenarios/known.yaml::known?debian-6.12?*known to fail on kernel >=6.12*"])
    assert result.ret == 1
    junit = (pytester.path / "junit.xml").read_text()
    assert 'type="pytest.xfail"' in junit and "[XPASS(strict)] known to fail on kernel &gt;=6.12" in junit
    # Each check's line is in the item's JUnit properties.
    assert '<property name="check sigbus" value="[FAIL] expected none, got BUS_MCEERR_AR" />' in junit, junit
    # Artifacts under results/pytest/<run id>/<kernel>/<worker>: one run id for the session.
    dirs = {line.rsplit("/", 3)[-3] for line in (pytester.path / "run-dirs.txt").read_text().splitlines()}
    assert len(dirs) == 1 and dirs.pop().count("-") == 2


def test_only_known_failures_exit_zero(pytester):
    pytester.makeconftest(CONFTEST)
    folder = pytester.mkdir("scenarios")
    for name in ("known", "plain"):
        (folder / f"{name}.yaml").write_text(SCENARIO)
    result = pytester.runpytest("--kernels", "debian-6.12", "-p", "no:cacheprovider", "scenarios")
    result.assert_outcomes(passed=1, xfailed=1)
    assert result.ret == 0


def test_qemu_is_passed_to_every_run_and_named_in_the_junit(pytester, monkeypatch):
    monkeypatch.setenv("MCE_PYTEST_RUN_ID", "20261207-000000-1")
    pytester.makeconftest(CONFTEST + "pytest_configure = plugin.pytest_configure\n")
    folder = pytester.mkdir("scenarios")
    (folder / "plain.yaml").write_text(SCENARIO)
    qemu = pytester.path / "build" / "qemu-system-x86_64"  # a QEMU build tree's binary
    qemu.parent.mkdir()
    qemu.write_text("#!/bin/sh\n")
    qemu.chmod(0o755)
    result = pytester.runpytest("--kernels", "debian-6.1,debian-6.12", "--qemu", str(pytester.path / "build"),
                                "-p", "no:cacheprovider", "--junitxml", str(pytester.path / "junit.xml"), "scenarios")
    result.assert_outcomes(passed=2)
    assert (pytester.path / "qemus.txt").read_text().splitlines() == [f"{qemu} {pytester.path / 'build'}"] * 2
    assert (pytester.path / "junit.xml").read_text().count('<property name="qemu" value="10.0.2 (fake)" />') == 2


def test_without_qemu_the_runs_use_the_one_on_path(pytester, monkeypatch):
    monkeypatch.setenv("MCE_PYTEST_RUN_ID", "20261207-000000-1")
    pytester.makeconftest(CONFTEST + "pytest_configure = plugin.pytest_configure\n")
    (pytester.mkdir("scenarios") / "plain.yaml").write_text(SCENARIO)
    result = pytester.runpytest("--kernels", "debian-6.1", "-p", "no:cacheprovider", "scenarios")
    result.assert_outcomes(passed=1)
    assert (pytester.path / "qemus.txt").read_text().splitlines() == ["qemu-system-x86_64 None"]


def test_a_qemu_that_is_not_there_is_a_usage_error_before_any_run(pytester, monkeypatch):
    monkeypatch.setenv("MCE_PYTEST_RUN_ID", "20261207-000000-1")
    pytester.makeconftest(CONFTEST + "pytest_configure = plugin.pytest_configure\n")
    (pytester.mkdir("scenarios") / "plain.yaml").write_text(SCENARIO)
    result = pytester.runpytest("--kernels", "debian-6.1", "--qemu", "/nonexistent/qemu-system-x86_64",
                                "-p", "no:cacheprovider", "scenarios")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--qemu /nonexistent/qemu-system-x86_64: no such file*"])
    assert not (pytester.path / "qemus.txt").exists()
