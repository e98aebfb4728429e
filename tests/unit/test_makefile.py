"""What the documented make commands run (make -n: printed, not run)."""
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def dry_run(*args: str) -> str:
    # The stamp is up to date in a set-up checkout; make -n prints the recipe lines either way.
    out = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[-1]


@pytest.mark.parametrize("args, want", [
    (("image",), "-m orchestrator.guest.images.distro debian-6.1"),
    (("image", "KERNEL=debian-12-full"), "-m orchestrator.guest.images.distro debian-12-full"),
    (("image", "KERNEL=debian-6.12"), "-m orchestrator.guest.images.distro debian-6.12"),
    (("image", "KERNEL_PATH=/src/linux"), "-m orchestrator.guest.images debian-6.1 --kernel /src/linux"),
    (("image", "KERNEL_PATH=/src/linux", "MODULES=/m"), "-m orchestrator.guest.images debian-6.1 --kernel /src/linux --modules /m"),
])
def test_make_image_builds_the_named_image_and_a_kernel_only_when_given(args, want):
    assert dry_run(*args).strip().endswith(want)


@pytest.mark.parametrize("code, says", [(1, "exited with code 1"), (2, "exited with code 2"), (0, None)])
def test_make_scenario_names_the_tools_exit_code_which_make_turns_into_2(tmp_path, code, says):
    """make exits 2 for any failed recipe: the tool's own code (1 FAIL, 2 ERROR) is printed,
    with what to run for it; a pass stays 0."""
    tool = tmp_path / "mce-orchestrator"
    tool.write_text(f"#!/bin/sh\necho run \"$@\"\nexit {code}\n")
    tool.chmod(0o755)
    stamp = tmp_path / "stamp"  # newer than pyproject.toml: the set-up is not run again
    stamp.touch()
    made = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "scenario", "NAME=srao-anon-late-kill",
                           f"ORCH={tool}", f"STAMP={stamp}", "HOST_PACKAGES="], capture_output=True, text=True)
    assert made.returncode == (2 if code else 0), made.stderr
    assert "run srao-anon-late-kill" in made.stdout
    if says:
        assert f"make scenario: mce-orchestrator {says}" in made.stderr
        assert f"run {tool} run directly" in made.stderr
    else:
        assert "exited with code" not in made.stderr


def test_the_docs_say_what_ci_runs_for_the_exit_codes():
    for page in ("README.md", "docs/running.md"):
        text = (REPO / page).read_text()
        assert "through `make scenario` (or `make nightly`)\nany failure is make's own exit code 2" in text, page
