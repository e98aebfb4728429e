"""run -j N: guests side by side in worker processes, results in planned order (orchestrator/jobs.py).
The workers here run a stand-in for runner.run_scenario; tests/integration/test_jobs.py runs real guests."""
import argparse
import io
import os
import time
from pathlib import Path

import pytest

from orchestrator.cli import JOBS_ENV, MAX_JOBS, jobs_wanted
from orchestrator.jobs import run_side_by_side
from orchestrator.plumbing.outcome import HarnessError, InputError, Outcome
from orchestrator.report import ScenarioResult


class Scenario:
    def __init__(self, name, seconds, crash=False):
        self.name, self.seconds, self.crash, self.path = name, seconds, crash, Path(f"/s/{name}.yaml")


def stand_in(scenario, run_dir, options, reporter, label):
    reporter.scenario_started(label)
    reporter.phase_started(label, "boot")
    for n in range(3):
        time.sleep(scenario.seconds / 3)
        reporter.note(f"{label} line {n}")
    if scenario.crash:
        os._exit(3)
    result = ScenarioResult(name=label, path=str(scenario.path), outcome=Outcome.PASS, artifacts=run_dir / label,
                            phases={"boot": scenario.seconds}, error=HarnessError("observe", f"{label} kept"))
    result.outcome = Outcome.PASS
    reporter.scenario_finished(result)
    return result


def test_results_come_back_in_planned_order_and_accounts_whole(tmp_path):
    planned = [(name, Scenario(name, seconds)) for name, seconds in (("slow", 0.9), ("fast", 0.1), ("mid", 0.4))]
    out = io.StringIO()
    results, interrupted = run_side_by_side(planned, 2, stand_in, tmp_path, None, out=out)
    assert [r.name for r in results] == ["slow", "fast", "mid"] and not interrupted
    assert [r.error.message for r in results] == ["slow kept", "fast kept", "mid kept"]  # errors cross whole
    text = out.getvalue()
    for name in ("slow", "fast", "mid"):
        lines = [line for line in text.splitlines() if f"{name} line" in line]
        assert len(lines) == 3
        block = text.splitlines()
        first = block.index(f"   {name} line 0")
        assert block[first:first + 3] == [f"   {name} line {n}" for n in range(3)]  # never interleaved
    assert "[1/3]" in text and "[2/3]" in text and "[3/3]" in text
    assert text.index("fast line 0") < text.index("slow line 0")  # side by side, printed as each ends


def test_a_worker_that_dies_is_that_scenarios_error_and_the_rest_run(tmp_path):
    planned = [("dies", Scenario("dies", 0.1, crash=True)), ("lives", Scenario("lives", 0.1))]
    results, interrupted = run_side_by_side(planned, 2, stand_in, tmp_path, None, out=io.StringIO())
    assert [r.outcome for r in results] == [Outcome.ERROR, Outcome.PASS] and not interrupted
    assert "exit code 3 before reporting" in results[0].error.message


@pytest.mark.parametrize("given, env, options, wanted", [
    (3, None, {}, 3),
    (None, "4", {}, 4),
    (None, None, {}, os.cpu_count()),
    (2, None, {"keep": "always"}, 1),
    (2, None, {"bisect": True}, 1),
    (2, None, {"domain": "d"}, 1),
])
def test_jobs_wanted(monkeypatch, given, env, options, wanted):
    monkeypatch.delenv(JOBS_ENV, raising=False)
    if env:
        monkeypatch.setenv(JOBS_ENV, env)
    assert jobs_wanted(argparse.Namespace(jobs=given, **options)) == wanted


@pytest.mark.parametrize("given, env, message", [
    (0, None, "-j 0: must be 1 to"), (MAX_JOBS + 1, None, f"-j {MAX_JOBS + 1}: must be 1 to"),
    (None, "two", "MCE_JOBS='two': not a number of guests"),
])
def test_a_bad_jobs_count_is_one_line(monkeypatch, given, env, message):
    monkeypatch.delenv(JOBS_ENV, raising=False)
    if env:
        monkeypatch.setenv(JOBS_ENV, env)
    with pytest.raises(InputError, match=message):
        jobs_wanted(argparse.Namespace(jobs=given))


INTERRUPTED_RUN = """
import signal, sys, time
sys.path.insert(0, {tests!r})
from unit.test_jobs import Scenario, stand_in
from orchestrator.cli import _terminate
from orchestrator.jobs import run_side_by_side
signal.signal(signal.SIGTERM, _terminate)
planned = [(n, Scenario(n, 60)) for n in ("a", "b", "c")]
print("started", flush=True)
results, interrupted = run_side_by_side(planned, 2, stand_in, __import__("pathlib").Path({tmp!r}), None)
print(interrupted, [(r.name, r.outcome.label, r.error.message if r.error else "") for r in results], flush=True)
"""


def test_sigterm_reaches_every_worker_and_nothing_is_left(tmp_path):
    """SIGTERM to the run (CI's way to stop a job) is passed on to each running worker;
    the one not started is 'not run'; the run ends in seconds, its workers gone."""
    import subprocess
    import sys
    script = INTERRUPTED_RUN.format(tests=str(Path(__file__).resolve().parents[1]), tmp=str(tmp_path))
    run = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                           cwd=Path(__file__).resolve().parents[2])
    assert run.stdout.readline().strip() == "started"
    time.sleep(2.0)  # both workers are in their 60 s stand-in
    children = Path(f"/proc/{run.pid}/task/{run.pid}/children").read_text().split()
    assert len(children) == 2
    run.terminate()
    out, _ = run.communicate(timeout=30)
    assert out.startswith("True ["), out
    assert "('c', 'ERROR', 'not run: interrupted before it started')" in out
    assert out.count("'ERROR'") == 3
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
