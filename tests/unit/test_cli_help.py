"""A CLI that helps: list with descriptions (and JSON), 'did you mean' for an unknown name,
[n/N] progress and a heartbeat, colour on a terminal only, '1 scenario', validate printing
each file once, keep hints naming the command as typed."""
import io
import json
import re
import time
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.plumbing.outcome import Outcome
from orchestrator.report import ConsoleReporter, ScenarioResult
from orchestrator.scenario import catalog

REPO = Path(__file__).resolve().parents[2]


def test_list_shows_each_scenario_with_its_one_line_description(capsys):
    assert cli.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(catalog(REPO / "scenarios"))
    row = next(line for line in lines if line.startswith("srao-anon-late-kill "))
    assert len(row.split(None, 1)) == 2 and len(row) < 160, row  # a name and a description, one line


def test_list_json_has_name_file_and_description(capsys):
    assert cli.main(["list", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    entry = next(e for e in entries if e["name"] == "srao-anon-late-kill")
    assert entry["file"].endswith("scenarios/srao-anon-late-kill.yaml") and entry["description"]


def test_one_line_is_the_first_sentence_cut_to_width():
    assert cli.one_line("SRAO on an anonymous page. Late kill: the process gets SIGBUS.") == "SRAO on an anonymous page"
    assert len(cli.one_line("x" * 300)) == 100


def test_an_unknown_name_says_did_you_mean_instead_of_dumping_the_catalog(capsys):
    assert cli.main(["run", "srao-anon-lat-kill"]) == 2
    err = capsys.readouterr().err
    assert "did you mean srao-anon-late-kill" in err, err
    assert "broadcast-srao-smp2" not in err  # not the whole catalog
    assert cli.main(["validate", "qwertyuiop"]) == 2
    assert "`mce-orchestrator list` shows the catalog" in capsys.readouterr().err


def test_validate_prints_a_file_that_expands_per_vcpu_once(capsys):
    assert cli.main(["validate", "srar-each-vcpu-smp4"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{REPO / 'scenarios' / 'srar-each-vcpu-smp4.yaml'}: ok"]


def result(name: str, outcome: Outcome) -> ScenarioResult:
    return ScenarioResult(name=name, path=f"{name}.yaml", outcome=outcome, artifacts=Path("/r") / name)


def test_one_scenario_is_one_scenario_and_one_error():
    stream = io.StringIO()
    ConsoleReporter(stream).run_finished([result("a", Outcome.ERROR)], Path("/r"))
    assert "1 scenario: 0 passed, 0 failed, 1 error; report" in stream.getvalue()


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_colour_on_a_terminal_only_and_never_with_no_color(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    tty = Tty()
    ConsoleReporter(tty).run_finished([result("a", Outcome.FAIL)], Path("/r"))
    assert "\033[31mFAIL " in tty.getvalue()
    piped = io.StringIO()
    ConsoleReporter(piped).run_finished([result("a", Outcome.FAIL)], Path("/r"))
    assert "\033[" not in piped.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    tty = Tty()
    ConsoleReporter(tty).run_finished([result("a", Outcome.FAIL)], Path("/r"))
    assert "\033[" not in tty.getvalue()


def test_several_scenarios_are_numbered_and_a_silent_phase_has_a_heartbeat():
    stream = io.StringIO()
    reporter = ConsoleReporter(stream, total=2, heartbeat=0.3)
    reporter.scenario_started("a")
    reporter.phase_started("a", "boot")
    time.sleep(1.0)
    reporter.phase_finished("a", "boot", 1.0)
    reporter.scenario_started("b")
    text = stream.getvalue()
    assert "== a  [1/2]" in text and "== b  [2/2]" in text
    assert "boot     ... still at it," in text, text
    single = io.StringIO()
    ConsoleReporter(single).scenario_started("a")
    assert single.getvalue() == "== a\n"


@pytest.mark.parametrize("argv0, results, want", [
    (".venv/bin/mce-orchestrator", None, ".venv/bin/mce-orchestrator"),
    (".venv/bin/mce-orchestrator", "/tmp/r", ".venv/bin/mce-orchestrator --results /tmp/r"),
])
def test_keep_hints_name_the_command_as_typed(monkeypatch, argv0, results, want):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the venv is not on PATH
    assert cli.as_typed(Path(results) if results else REPO / "results", argv0) == want


def test_the_authoring_guides_commands_find_its_example_by_the_names_it_uses(capsys):
    """The guide's `validate NAME` / `run NAME [--image IMAGE]` lines, as written, from a fresh
    clone (the reader has not saved the example yet): every name resolves, every image exists."""
    from orchestrator.guest.images.distro import image_names
    guide = (REPO / "docs" / "authoring-scenarios.md").read_text()
    commands = re.findall(r"^ {4}\.venv/bin/mce-orchestrator (validate|run) (\S+)(?: --image (\S+))?", guide, re.M)
    assert len(commands) >= 3, commands
    for _, name, image in commands:
        assert cli.main(["validate", name]) == 0, capsys.readouterr().err
        assert not image or image in image_names(REPO)


def test_list_into_a_reader_that_stops_early_says_nothing_and_exits_0():
    """`mce-orchestrator list | head -1`: the closed pipe is the reader's choice, not an error."""
    import subprocess
    import sys
    repo = Path(__file__).resolve().parents[2]
    # `true` has gone before the tool writes: every write meets a closed pipe.
    proc = subprocess.run(["bash", "-c", f"{sys.executable} -m orchestrator list | true; exit ${{PIPESTATUS[0]}}"],
                          cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
