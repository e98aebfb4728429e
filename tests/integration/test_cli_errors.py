"""User mistakes: one line on stderr, exit 2, no traceback, nothing booted."""
import pytest

from .conftest import REPO, orchestrator

BAD = REPO / "tests" / "integration" / "bad"


@pytest.mark.parametrize("argument, message", [
    (str(BAD / "malformed.yaml"), "malformed.yaml:4: inject.cpuu: unknown key"),
    ("no-such-scenario", "unknown scenario 'no-such-scenario'"),
    (str(BAD / "address-outside-ram.yaml"), "address-outside-ram.yaml:4: inject.address: 0x40000000 is outside guest RAM"),
    (str(BAD / "missing.yaml"), "missing.yaml: no such scenario file"),
])
def test_user_errors_are_one_line(tmp_path, argument, message):
    proc = orchestrator("run", argument, results=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "latest").exists()  # refused before any run started


def test_validate_accepts_the_catalog(tmp_path):
    proc = orchestrator("validate", *sorted(p.stem for p in (REPO / "scenarios").glob("*.yaml")), results=tmp_path)
    assert proc.returncode == 0 and proc.stdout.count(": ok") >= 3
