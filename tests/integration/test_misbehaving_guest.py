"""A misbehaving guest never breaks the harness: garbage, floods, storms, reboots and
panics at awkward moments each end in the right outcome naming the right cause,
within the deadline, with memory and artifacts inside the README's bounds."""
import dataclasses
import time
from pathlib import Path

from orchestrator.deadline import Deadline
from orchestrator.outcome import Outcome
from orchestrator.probe import REMOTE_PATH
from orchestrator.scenario import Timeouts, load_scenario

from .test_faults import LATE_KILL, assert_nothing_left, run

FIVE_THOUSAND_DIGITS = "9" * 5000

# Wraps the real probe: garbage before the ready line, si_addr as glibc prints a
# NULL pointer, and extra lines around the page-flags answer.
GARBLING_PROBE = f"""#!/bin/sh
if [ "$1" = --kpageflags ]; then
    echo '[1]'; {REMOTE_PATH}.real "$@"; status=$?; echo 'an extra line'; exit $status
fi
echo '[1]'
echo '{FIVE_THOUSAND_DIGITS}'
echo '{{"event":"noise","n":{FIVE_THOUSAND_DIGITS}}}'
{REMOTE_PATH}.real "$@" | while IFS= read -r line; do
    case "$line" in
    *'"event":"result"'*) line=$(echo "$line" | sed 's/"si_addr":"[^"]*"/"si_addr":"(nil)"/') ;;
    esac
    printf '%s\\n' "$line"
done
"""


def replace_probe(script: str, folder: Path):
    """A phase hook: before the probe starts, the guest's probe becomes `script` (the real one stays beside it)."""
    local = folder / "probe.sh"
    local.write_text(script)

    def hook(phase, ctx):
        if phase == "locate":
            deadline = Deadline(10, "fault")
            ctx.ssh.check(f"mv {REMOTE_PATH} {REMOTE_PATH}.real", deadline, "fault")
            ctx.ssh.upload(local, REMOTE_PATH, 0o755, deadline, "fault")
    return hook


def checks_of(result) -> dict:
    return {c.name: c for c in result.verdict.checks}


def test_garbage_from_the_probe_is_evidence_not_a_crash(tmp_path):
    scenario = dataclasses.replace(load_scenario(LATE_KILL), timeouts=Timeouts(observe=15))
    start = time.monotonic()
    result, port = run(tmp_path, scenario=scenario, hook=replace_probe(GARBLING_PROBE, tmp_path), snapshot=True)
    assert result.outcome == Outcome.ERROR and result.verdict, result.reasons
    checks = checks_of(result)
    assert checks["sigbus"].outcome == Outcome.ERROR
    assert checks["sigbus"].detail == "the probe reported an unreadable si_addr: '(nil)'"
    # Everything else was read past the garbage: the ready line after '[1]' and a
    # 5000-digit number, the page flags between extra lines.
    for name in ("guest alive", "page poisoned", "HardwareCorrupted", "other pages intact"):
        assert checks[name].outcome == Outcome.PASS, (name, checks[name].detail)
    transcript = (result.artifacts / "probe-transcript.txt").read_text()
    assert transcript.startswith("[1]\n") and FIVE_THOUSAND_DIGITS in transcript
    assert time.monotonic() - start < 60
    assert_nothing_left(result, port)
