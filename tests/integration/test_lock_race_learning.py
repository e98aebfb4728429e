"""The lock race (mlocked-*-off-lru) learns from each kernel how often its memory_failure()
takes the page lock, instead of a version list: 6.1 once, 6.12 twice. Real guests, with
the learned counts in a file of this test's own (the shared one is left alone)."""
import dataclasses
import json

import pytest

from orchestrator.inject.races import page_locks
from orchestrator.plumbing.outcome import Outcome
from orchestrator.scenario import load_scenario

from .conftest import REPO
from .test_faults import assert_nothing_left, run

SCENARIO = REPO / "scenarios" / "mlocked-clean-off-lru.yaml"
COUNTS = REPO / "guest-images" / ".cache" / "kallsyms"


@pytest.fixture
def own_counts(monkeypatch, tmp_path):
    name = f"page-locks-test-{tmp_path.name}.json"
    monkeypatch.setattr(page_locks, "FILE", name)
    yield COUNTS / name
    for leftover in COUNTS.glob(f"*{name}*"):
        leftover.unlink()


def on(image: str):
    scenario = load_scenario(SCENARIO)
    return dataclasses.replace(scenario, guest=dataclasses.replace(scenario.guest, image=image))


def learned(counts_file) -> list[int]:
    return list(json.loads(counts_file.read_text()).values())


def test_a_kernel_that_takes_the_lock_once_is_learned_then_raced_in_a_fresh_guest(tmp_path, own_counts):
    first, port = run(tmp_path / "first", scenario=on("debian-6.1"), snapshot=True)
    assert first.outcome == Outcome.PASS, first.reasons
    # The learning guest's interleaving was lost: set aside, and the race made in a fresh guest.
    assert [p.name for p in first.artifacts.glob("race-attempt-*")] == ["race-attempt-1"]
    assert learned(own_counts) == [1]
    assert "takes the page lock once" in {c.name: c for c in first.verdict.checks}["lock race"].detail
    assert_nothing_left(first, port)
    again, port = run(tmp_path / "again", scenario=on("debian-6.1"), snapshot=True)
    assert again.outcome == Outcome.PASS and not list(again.artifacts.glob("race-attempt-*")), again.reasons
    assert_nothing_left(again, port)


def test_a_kernel_that_takes_it_twice_is_learned_in_the_same_guest(tmp_path, own_counts):
    result, port = run(tmp_path, scenario=on("debian-6.12"), snapshot=True)
    assert result.outcome == Outcome.PASS, result.reasons
    assert not list(result.artifacts.glob("race-attempt-*"))
    assert learned(own_counts) == [2]
    assert "twice (learned in this run)" in {c.name: c for c in result.verdict.checks}["lock race"].detail
    assert_nothing_left(result, port)


def test_a_wrong_count_is_an_error_naming_the_step_never_a_verdict(tmp_path, own_counts):
    """The control: 6.1 said to take the lock twice. The interleaving cannot be made, and
    the run says which step was not seen: the count matters, and is not guessed."""
    run(tmp_path / "learn", scenario=on("debian-6.1"), snapshot=True)
    banner = next(iter(json.loads(own_counts.read_text())))
    page_locks.PageLockCounts(COUNTS).learn(banner, 2)
    result, port = run(tmp_path / "wrong", scenario=on("debian-6.1"), snapshot=True)
    assert result.outcome == Outcome.ERROR, result.reasons
    race = {c.name: c for c in result.verdict.checks}["lock race"]
    assert race.outcome == Outcome.ERROR and race.detail.startswith("step '1b: "), race.detail
    assert_nothing_left(result, port)
