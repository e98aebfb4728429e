"""The full distribution image (debian-12-full) on real guests: built once per
session (cached afterwards), then one orchestrator run covering the base
scenarios, the memory kinds, an expected panic and the RAS daemon's record.

In `make test`: the run restores saved guests (--snapshot; one systemd boot
per guest configuration, saved with its disks, instead of a 30-80 s boot per
scenario under TCG). `make test-full-image` runs this file and the user's
disk image tests (tests/integration/test_disk_image.py).
"""
import json
import subprocess
import sys

import pytest

from orchestrator.guest.snapshot import file_sha256

from .conftest import REPO, orchestrator

IMAGE = "debian-12-full"
FULL = REPO / "tests" / "integration" / "full"
SCENARIOS = ["srao-anon-late-kill", "srao-anon-early-kill", "srar-anon-access", "file-dirty-ext4", "shmem-page",
             "hugetlb-2m", "thp-head", "ksm-merged-page", "srao-recovery-disabled-panic"]
RAS = [str(FULL / "ras-record-srao.yaml")]
NEGATIVE = [str(FULL / "neg-ras-record-absent.yaml")]




@pytest.fixture(scope="module")
def full_image():
    """Built (or reused) as `make image KERNEL=debian-12-full` does."""
    built = subprocess.run([sys.executable, "-m", "orchestrator.guest.images.distro", IMAGE], cwd=REPO,
                           capture_output=True, text=True, timeout=1800)
    assert built.returncode == 0, built.stderr[-2000:]
    directory = built.stdout.strip().splitlines()[-1].split(": ", 1)[1]  # "NAME: /abs/dir"
    with open(f"{directory}/image.json") as f:
        return directory, json.load(f)


@pytest.fixture(scope="module")
def full_run(full_image, tmp_path_factory):
    directory, manifest = full_image
    disk = f"{directory}/{manifest['disk']}"
    before = file_sha256(disk)
    results = tmp_path_factory.mktemp("results")
    proc = orchestrator("run", "--snapshot", "--image", IMAGE, *SCENARIOS, *RAS, *NEGATIVE, results=results,
                        timeout=7200)
    report = json.loads((results / "latest" / "report.json").read_text())
    return proc, results / "latest", {s["name"]: s for s in report["scenarios"]}, before, file_sha256(disk)


def test_image_is_a_qcow2_disk_with_the_debian_6_1_kernel(full_image):
    directory, manifest = full_image
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", f"{directory}/{manifest['disk']}"],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == "qcow2"
    assert manifest["kernel_package"].startswith("linux-image-6.1.0-") and "-cloud-" not in manifest["kernel_package"]
    for package in ("systemd-sysv", "openssh-server", "rasdaemon", "cloud-init"):
        assert package in manifest["packages"]


def test_scenarios_pass_on_the_full_image(full_run):
    proc, _, scenarios, _, _ = full_run
    for name in SCENARIOS + ["ras-record-srao"]:
        assert scenarios[name]["outcome"] == "PASS", (name, scenarios[name].get("checks"), scenarios[name].get("error"))
    # Restored from saved guests, the scenario with a scratch disk (file-dirty-ext4) too.
    boots = [line for line in proc.stderr.splitlines() if line.strip().startswith("boot ")]
    assert len(boots) == len(scenarios) and all("restored from" in line for line in boots), boots


def test_the_ras_daemon_record_is_in_the_artifacts_and_checked(full_run):
    _, latest, scenarios, _, _ = full_run
    checks = {c["name"]: c for c in scenarios["ras-record-srao"]["checks"]}
    assert checks["RAS daemon record"]["outcome"] == "PASS"
    assert "status=0xbd000000000000c0" in (latest / "ras-record-srao" / "guest-ras-records.txt").read_text()


def test_negative_control_fails_on_the_ras_check(full_run):
    proc, _, scenarios, _, _ = full_run
    neg = scenarios["neg-ras-record-absent"]
    assert neg["outcome"] == "FAIL"
    failed = [c["name"] for c in neg["checks"] if c["outcome"] != "PASS"]
    assert failed == ["RAS daemon record"]
    assert proc.returncode == 1  # the negative control's FAIL, nothing worse


def test_the_image_disk_is_never_written(full_run):
    *_, before, after = full_run
    assert before == after
