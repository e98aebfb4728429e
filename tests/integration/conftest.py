import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def orchestrator(*args, results: Path, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the command-line tool as a user would (`env`: variables added to ours)."""
    return subprocess.run([sys.executable, "-m", "orchestrator", *args] +
                          (["--results", str(results)] if args and args[0] == "run" else []),
                          cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=os.environ | {"PYTHONUNBUFFERED": "1"} | (env or {}))


def full_image_disk() -> Path:
    """debian-12-full's qcow2, built (or reused) as `make image KERNEL=debian-12-full` does."""
    built = subprocess.run([sys.executable, "-m", "orchestrator.guest.images.distro", "debian-12-full"], cwd=REPO,
                           capture_output=True, text=True, timeout=1800)
    assert built.returncode == 0, built.stderr[-2000:]
    directory = Path(built.stdout.strip().splitlines()[-1].split(": ", 1)[1])  # "NAME: /abs/dir"
    return directory / "disk.qcow2"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes, but would still answer kill(0).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False
