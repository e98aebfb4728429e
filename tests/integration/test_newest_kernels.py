"""The named images of kernels from other suites (guest-images/images.yaml suite/pin/newer_than): the
pinned newest stable (debian-7.3, Debian's split 7.x packages) is fetched with a private apt
configuration, built once (make image's entry point), booted, and a base scenario passes on it;
the release-candidate image runs only while experimental has something newer, and says so
otherwise. Versions come from what was built and from images.yaml, never from a constant here."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.guest.images import suites
from orchestrator.guest.images.definitions import load_image_definitions

from .conftest import REPO, orchestrator

PINNED = "debian-7.3"
RC = "debian-rc"


@pytest.fixture(scope="module")
def pinned_image() -> dict:
    built = subprocess.run([sys.executable, "-m", "orchestrator.guest.images", PINNED], cwd=REPO,
                           capture_output=True, text=True, timeout=1800)
    assert built.returncode == 0, built.stderr[-2000:]
    kernel = Path(built.stdout.strip().splitlines()[-1].split("(", 1)[1].split(")", 1)[0])  # "NAME: kernel R (PATH), ..."
    return json.loads((kernel.parent / "image.json").read_text())


def test_the_pinned_image_is_the_pinned_split_package(pinned_image):
    pin = load_image_definitions(REPO / "guest-images" / "images.yaml")[PINNED]["pin"]
    assert pinned_image["kernel_package_version"] == pin["version"]
    assert set(pin["packages"]) <= set(pinned_image["packages"])  # linux-image and its parts, all fetched
    release = pinned_image["kernel_release"]
    assert pinned_image["kernel_package"] == f"linux-image-{release}"
    assert pinned_image["config_source"].startswith(f"/usr/lib/modules/{release}/config")  # the split layout


def test_a_base_scenario_passes_on_the_pinned_kernel(tmp_path, pinned_image):
    proc = orchestrator("run", "--image", PINNED, "srao-anon-late-kill", results=tmp_path)
    report = json.loads((tmp_path / "latest" / "report.json").read_text())
    [scenario] = report["scenarios"]
    assert scenario["outcome"] == "PASS", proc.stderr[-4000:]
    assert proc.returncode == 0
    assert scenario["kernel_release"] == pinned_image["kernel_release"]  # the guest ran the built kernel
    assert scenario["kernel_source"] == pinned_image["kernel_source"]    # and the run records which it was
    assert f'name="kernel_source" value="{pinned_image["kernel_source"]}"' in (tmp_path / "latest" / "junit.xml").read_text()


def test_the_release_candidate_runs_only_while_newer(tmp_path):
    definitions = load_image_definitions(REPO / "guest-images" / "images.yaml")
    try:
        kernel = suites.resolve(RC, definitions, REPO / "guest-images" / ".cache")
    except suites.NoNewerKernel as exc:
        proc = orchestrator("run", "--image", RC, "srao-anon-late-kill", results=tmp_path)
        assert proc.returncode == 5, proc.stderr[-2000:]
        assert str(exc) in proc.stderr and "nothing was tested" in proc.stderr
        assert not (tmp_path / "latest").exists()  # nothing booted, no results
        return
    proc = orchestrator("run", "--image", RC, "srao-anon-late-kill", results=tmp_path)
    report = json.loads((tmp_path / "latest" / "report.json").read_text())
    assert report["scenarios"][0]["kernel_source"] == kernel.describe(), proc.stderr[-4000:]
    assert report["scenarios"][0]["outcome"] == "PASS", proc.stderr[-4000:]
