import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from orchestrator.judge.verdict import Check, Evidence, Verdict


from orchestrator.plumbing.outcome import HarnessError, Outcome, worst


from orchestrator.report import ScenarioResult, new_run_dir, point_latest, write_json, write_junit




def results(tmp_path: Path):
    ok = ScenarioResult("a", "scenarios/a.yaml", Outcome.PASS, tmp_path / "a", phases={"boot": 4.5, "inject": 0.01},
                        verdict=Verdict(Outcome.PASS, (Check("sigbus", Outcome.PASS, "BUS_MCEERR_AR"),)), evidence=Evidence())
    bad = ScenarioResult("b", "scenarios/b.yaml", Outcome.FAIL, tmp_path / "b", phases={"boot": 4.0},
                         verdict=Verdict(Outcome.FAIL, (Check("sigbus", Outcome.FAIL, "expected none, got BUS_MCEERR_AR"),)))
    broken = ScenarioResult("c", "scenarios/c.yaml", Outcome.ERROR, tmp_path / "c", phases={"boot": 120.0},
                            error=HarnessError("boot", "no SSH banner on 127.0.0.1:1234 within 120 s"))
    return [ok, bad, broken]


def test_junit_distinguishes_failure_from_error(tmp_path):
    write_junit(results(tmp_path), tmp_path / "junit.xml")
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "1")
    cases = {c.get("name"): c for c in suite}
    assert cases["a"].find("failure") is None and cases["a"].find("error") is None
    assert "expected none" in cases["b"].find("failure").get("message")
    assert cases["c"].find("error").get("message") == "boot: no SSH banner on 127.0.0.1:1234 within 120 s"
    assert "boot: 4.50 s" in cases["a"].find("system-out").text


def test_json_report(tmp_path):
    write_json(results(tmp_path), tmp_path / "report.json", {"started": 1})
    data = json.loads((tmp_path / "report.json").read_text())
    assert [s["outcome"] for s in data["scenarios"]] == ["PASS", "FAIL", "ERROR"]
    assert data["scenarios"][2]["error"] == {"phase": "boot", "message": "no SSH banner on 127.0.0.1:1234 within 120 s"}
    assert data["scenarios"][0]["duration_s"] == 4.51


def test_latest_points_at_the_newest_run(tmp_path):
    first = new_run_dir(tmp_path)
    point_latest(tmp_path, first)
    second = tmp_path / (first.name + "-b")
    second.mkdir()
    point_latest(tmp_path, second)
    assert (tmp_path / "latest").resolve() == second.resolve()


def test_worst_outcome_wins():
    assert worst([Outcome.PASS, Outcome.FAIL]) == Outcome.FAIL
    assert worst([Outcome.FAIL, Outcome.ERROR, Outcome.PASS]) == Outcome.ERROR
    assert worst([]) == Outcome.PASS
    assert [(o.label, o.exit_code) for o in Outcome] == [("SKIP", 0), ("PASS", 0), ("KNOWN-FAIL", 0), ("XPASS", 1),
                                                          ("FAIL", 1), ("ERROR", 2)]
    # Severity order and exit codes agree: the worst outcome has the highest exit code.
    assert [o.exit_code for o in sorted(Outcome)] == sorted(o.exit_code for o in Outcome)
    assert worst([Outcome.KNOWN_FAIL, Outcome.PASS]) == Outcome.KNOWN_FAIL
    assert worst([Outcome.KNOWN_FAIL, Outcome.XPASS]) == Outcome.XPASS
    assert worst([Outcome.XPASS, Outcome.FAIL]) == Outcome.FAIL
    assert worst([Outcome.XPASS, Outcome.ERROR]) == Outcome.ERROR


HOSTILE = "]]><&\"' \x00\x01\x08\x0b\x1b[31m\x7f \ud800 \ufffe \u2028 é 😀"


def test_junit_and_json_stay_well_formed_whatever_the_strings(tmp_path):
    hostile = ScenarioResult("h.1", f"scenarios/{HOSTILE}.yaml", Outcome.FAIL, tmp_path / "h",
                             phases={"observe": float("nan")},
                             verdict=Verdict(Outcome.FAIL, (Check(f"kernel log has '{HOSTILE}'", Outcome.FAIL,
                                                                  f"console: {HOSTILE}"),)),
                             error=HarnessError("observe", HOSTILE), evidence=Evidence(probe_result={"x": float("inf")}))
    write_junit([hostile], tmp_path / "junit.xml")
    write_json([hostile], tmp_path / "report.json", {"started": 0.0})
    case = ET.parse(tmp_path / "junit.xml").getroot().find("testcase")
    assert "\\x01" in case.find("failure").get("message") and "😀" in case.find("failure").text
    assert "\\x1b[31m" in case.find("system-out").text and "\\ud800" in case.get("file")

    def no_constants(name):
        raise ValueError(f"{name} is not JSON")
    report = json.loads((tmp_path / "report.json").read_text(), parse_constant=no_constants)
    assert report["scenarios"][0]["checks"][0]["detail"] == f"console: {HOSTILE}"
    assert report["scenarios"][0]["probe"]["result"] == {"x": "inf"}


def test_a_skipped_scenario_never_sets_the_exit_code(tmp_path):
    skipped = ScenarioResult("d", "scenarios/d.yaml", Outcome.SKIP, tmp_path / "d",
                             skip_reasons=["CONFIG_KSM is not set: d needs it (probe memory: ksm)"])
    assert worst([Outcome.SKIP, Outcome.SKIP]).exit_code == 0
    assert worst([Outcome.SKIP, Outcome.FAIL]) == Outcome.FAIL
    write_junit(results(tmp_path) + [skipped], tmp_path / "junit.xml")
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("4", "1", "1", "1")
    case = {c.get("name"): c for c in suite}["d"]
    assert case.find("skipped").get("message") == "CONFIG_KSM is not set: d needs it (probe memory: ksm)"
    assert case.find("failure") is None and case.find("error") is None
    write_json([skipped], tmp_path / "report.json", {})
    data = json.loads((tmp_path / "report.json").read_text())["scenarios"][0]
    assert data["outcome"] == "SKIP" and data["skip_reasons"] == [skipped.skip_reasons[0]]



def test_bisect_exit_codes():
    from orchestrator.cli import exit_code


    assert [exit_code(o, bisect=True) for o in (Outcome.PASS, Outcome.FAIL, Outcome.ERROR, Outcome.SKIP)] == [0, 1, 125, 125]
    # A known-failure mark does not change whether this kernel is good.
    assert (exit_code(Outcome.KNOWN_FAIL, bisect=True), exit_code(Outcome.XPASS, bisect=True)) == (1, 0)
    assert all(isinstance(exit_code(o, bisect=True), int) for o in Outcome)
    assert [exit_code(o, bisect=False) for o in (Outcome.PASS, Outcome.FAIL, Outcome.ERROR, Outcome.SKIP)] == [0, 1, 2, 0]


def test_a_file_or_folder_at_latest_is_left_alone_with_a_note_and_nothing_behind(tmp_path):
    run = tmp_path / "20260101-000000-1"
    run.mkdir()
    latest = tmp_path / "latest"
    latest.write_text("someone's notes\n")
    note = point_latest(tmp_path, run)
    assert latest.read_text() == "someone's notes\n" and not latest.is_symlink()
    assert "is a file" in note and str(run) in note and "\n" not in note
    latest.unlink()
    latest.mkdir()
    (latest / "kept").write_text("x")
    note = point_latest(tmp_path, run)  # before: IsADirectoryError, the run exited 2
    assert (latest / "kept").read_text() == "x" and "is a folder" in note
    assert sorted(p.name for p in tmp_path.iterdir()) == [run.name, "latest"]  # no .latest-PID left
    # Our own link is replaced as before.
    latest.joinpath("kept").unlink()
    latest.rmdir()
    assert point_latest(tmp_path, run) is None and os.readlink(latest) == run.name


@pytest.mark.parametrize("outcomes, bisect, code", [
    ([Outcome.SKIP, Outcome.SKIP], False, 5),    # nothing was tested: its own code, never 0
    ([Outcome.SKIP], True, 125),                 # git bisect: cannot test this commit
    ([Outcome.PASS, Outcome.SKIP], False, 0),    # something was tested and passed
    ([Outcome.SKIP, Outcome.PASS], True, 0),
    ([Outcome.SKIP, Outcome.FAIL], False, 1),
])
def test_a_run_where_every_scenario_was_skipped_has_its_own_exit_code(tmp_path, monkeypatch, capsys,
                                                                      outcomes, bisect, code):
    from orchestrator import cli
    planned = iter(outcomes)

    def fake_run(scenario, run_dir, options, reporter, label=None):
        return ScenarioResult(label, str(scenario.path), next(planned), run_dir / label,
                              skip_reasons=["CONFIG_X is not set: t needs it"])

    monkeypatch.setattr(cli, "run_scenario", fake_run)
    scenario = tmp_path / "one.yaml"
    scenario.write_text("description: one\ninject: {preset: srao}\nexpect: {sigbus: none, page_poisoned: true}\n")
    args = ["run", str(scenario), "--results", str(tmp_path / "results"), "--repeat", str(len(outcomes))]
    assert cli.main(args + (["--bisect"] if bisect else [])) == code
    said = "nothing was tested: every scenario was skipped" in capsys.readouterr().err
    assert said == all(o == Outcome.SKIP for o in outcomes)
    suite = ET.parse(tmp_path / "results" / "latest" / "junit.xml").getroot()
    assert suite.get("skipped") == str(outcomes.count(Outcome.SKIP))


def test_junit_from_two_kernels_merges_without_duplicate_ids_and_names_the_file_one_way(tmp_path):
    """Runs of one scenario on two kernels (one named from the catalog, one by path): merged,
    every test id (classname, name) is unique, the kernel and QEMU are properties, and the
    file attribute is the same."""
    repo = Path(__file__).resolve().parents[2]
    cases = []
    for release, path in (("6.1.0-57-amd64", str(repo / "scenarios" / "a.yaml")),
                          ("6.12.57+deb13-amd64", "scenarios/a.yaml")):
        r = ScenarioResult("a", path, Outcome.PASS, tmp_path / release, image="debian-x", kernel_release=release)
        write_junit([r], tmp_path / f"{release}.xml", {"qemu": "QEMU emulator version 7.2.22"}, repo_root=repo)
        cases += list(ET.parse(tmp_path / f"{release}.xml").getroot().iter("testcase"))
    ids = [(c.get("classname"), c.get("name")) for c in cases]
    assert len(set(ids)) == 2, ids
    assert {c.get("name") for c in cases} == {"a[6.1.0-57-amd64]", "a[6.12.57+deb13-amd64]"}
    assert {c.get("file") for c in cases} == {"scenarios/a.yaml"}
    props = {p.get("name"): p.get("value") for p in cases[1].iter("property")}
    assert props["kernel"] == "6.12.57+deb13-amd64" and props["qemu"].startswith("QEMU emulator version")


def test_report_json_carries_summary_counts(tmp_path):
    write_json(results(tmp_path), tmp_path / "report.json", {"version": "1.0", "commit": "abc"})
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["summary"]["total"] == 3
    assert (report["summary"]["PASS"], report["summary"]["FAIL"], report["summary"]["ERROR"]) == (1, 1, 1)
    assert report["version"] == "1.0" and report["commit"] == "abc"
