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
