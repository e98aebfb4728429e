"""A kernel_variants entry with `skip: true`: on matching kernels the scenario is SKIP with
the entry's reason, decided before any guest is booted; elsewhere it runs as written."""
import io
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator import runner
from orchestrator.plumbing.outcome import Outcome
from orchestrator.report import ConsoleReporter
from orchestrator.scenario import ScenarioError, load_scenario, parse_scenario

from .test_scenario import MINIMAL

REPO = Path(__file__).resolve().parents[2]

SKIPPING = MINIMAL + """\
kernel_variants:
  - kernel: ">=7.3"
    because: the page this needs can no longer be made
    skip: true
"""


def parse(text):
    return parse_scenario(text, Path("scenarios/t.yaml"))


def test_a_skip_variant_matches_only_its_kernels():
    s = parse(SKIPPING)
    assert s.for_kernel("6.12.118+deb12-amd64")[1] is None
    variant = s.for_kernel("7.3.4+deb13-amd64")[1]
    assert variant.skip and variant.because == "the page this needs can no longer be made"


@pytest.mark.parametrize("entry, where", [
    ("    skip: true\n    expect: {sigbus: none}\n", "kernel_variants[0]"),  # both: which holds?
    ("", "kernel_variants[0]"),                                           # neither
    ("    skip: false\n", "kernel_variants[0].skip"),                     # only `true` means anything
])
def test_a_variant_is_either_expectations_or_a_skip(entry, where):
    text = SKIPPING.replace("    skip: true\n", entry)
    with pytest.raises(ScenarioError, match=r"t.yaml:\d+: " + where.replace("[", r"\[").replace("]", r"\]")):
        parse(text)


@pytest.mark.parametrize("name", ["mlocked-clean-off-lru", "mlocked-dirty-off-lru", "perf-ring-madvise-hwpoison"])
def test_the_catalog_skips_what_7_3_cannot_set_up_and_nothing_on_older_kernels(name):
    s = load_scenario(REPO / "scenarios" / f"{name}.yaml")
    assert s.for_kernel("7.3.4+deb13-amd64")[1].skip
    for release in ("6.1.0-57-amd64", "6.12.118+deb12-amd64"):
        variant = s.for_kernel(release)[1]
        assert variant is None or not variant.skip


def _run(tmp_path, monkeypatch, release):
    booted = []
    image = SimpleNamespace(name="debian-x", kernel_release=release, source="x", kernel_source="x", config=None,
                            modules=())
    monkeypatch.setattr(runner, "ensure_guest_image", lambda *a, **k: image)
    monkeypatch.setattr(runner.probe_build, "build_probe", lambda *a, **k: tmp_path / "probe")
    monkeypatch.setattr(runner, "qemu_version", lambda binary: "7.2.22")

    def no_guest(*a, **k):
        booted.append(True)
        raise runner.HarnessError("boot", "stopped here by the test")

    monkeypatch.setattr(runner, "new_guest", no_guest)
    out = io.StringIO()
    result = runner.run_scenario(parse(SKIPPING), tmp_path / "run", runner.RunOptions(cache_root=tmp_path),
                                 ConsoleReporter(out))
    return result, booted, out.getvalue()


def test_a_matching_kernel_is_skipped_with_the_reason_and_no_guest(tmp_path, monkeypatch):
    result, booted, said = _run(tmp_path, monkeypatch, "7.3.4+deb13-amd64")
    assert result.outcome == Outcome.SKIP and not booted
    assert result.skip_reasons == ["cannot be set up on kernel >=7.3: the page this needs can no longer be made"]
    assert "the page this needs can no longer be made" in said


def test_another_kernel_goes_on_to_boot(tmp_path, monkeypatch):
    result, booted, _ = _run(tmp_path, monkeypatch, "6.12.118+deb12-amd64")
    assert booted and result.outcome == Outcome.ERROR and result.error.phase == "boot"


def test_the_verdict_table_says_what_a_skip_is_only_when_there_is_one(tmp_path):
    import json
    from orchestrator.report.table import markdown
    runs = []
    for kernel, outcome in (("6.12.118+deb12-amd64", "PASS"), ("7.3.4+deb13-amd64", "SKIP")):
        run = tmp_path / kernel
        run.mkdir()
        run.joinpath("report.json").write_text(json.dumps({"scenarios": [
            {"name": "perf-ring-madvise-hwpoison", "outcome": outcome, "kernel_release": kernel, "checks": [],
             "error": None, "skip_reasons": ["cannot be set up on kernel >=7.3: ..."]}]}))
        runs.append(run)
    table = markdown(runs)
    assert "| perf-ring-madvise-hwpoison | PASS | SKIP |" in table
    assert "SKIP: not run on that kernel, before booting" in table
    assert "SKIP:" not in markdown(runs[:1])


def test_a_variant_that_depends_on_an_option_holds_only_where_the_config_sets_it():
    """corrected-errors-one-page on 6.12: Debian's has CONFIG_RAS_CEC (the page is soft-offlined);
    a 6.12 built without it does what 6.1 does, and was judged FAIL by the version alone."""
    s = load_scenario(REPO / "scenarios" / "corrected-errors-one-page.yaml")
    release = "6.12.118"
    with_cec, variant = s.for_kernel(release, {"RAS_CEC": "y"})
    assert variant is not None and variant.config == ("RAS_CEC",) and with_cec.expect.page_poisoned is True
    without_cec, variant = s.for_kernel(release, {"MEMORY_FAILURE": "y"})
    assert variant is None and without_cec.expect.page_poisoned is False
    # No .config found: the version alone decides, as before.
    assert s.for_kernel("6.12.118+deb12-amd64")[1] is not None
    assert s.for_kernel("6.1.0-57-amd64", {"RAS_CEC": "y"})[1] is None


def test_a_config_option_is_named_without_its_prefix():
    with pytest.raises(ScenarioError, match=r"kernel_variants\[0\].config\[0\]"):
        parse(SKIPPING.replace("    skip: true\n", "    skip: true\n    config: [CONFIG_RAS_CEC]\n"))
    assert parse(SKIPPING.replace("    skip: true\n", "    skip: true\n    config: [RAS_CEC]\n")).kernel_variants[0].config
