"""A user's own disk image (--disk-image / guest.disk_image) on real guests.

debian-12-full's qcow2 stands in for a user's cloud image: booted with
cloud-init enabled, SSH set up by the harness's NoCloud seed. The base
scenarios pass on it; broken images (not a disk image, cloud-init off, no
sshd, a kernel without machine-check support) are one ERROR line naming the
step; and the image's checksum is the same after all of it, a failed run and
runs stopped by SIGTERM and SIGINT included. Minutes under TCG (a systemd boot
plus cloud-init is 60-100 s): those run with the full image's other tests
in `make test-full-image` (MCE_TEST_FULL_IMAGE=1); the two that need no full
image run in `make test`.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from orchestrator.guest.snapshot import file_sha256

from .conftest import REPO, full_image_disk, orchestrator, process_alive

needs_full_image = pytest.mark.skipif(os.environ.get("MCE_TEST_FULL_IMAGE") != "1",
                                reason="debian-12-full guests take minutes under TCG: make test-full-image runs it")

BASE = ["srao-anon-late-kill", "srao-anon-early-kill", "srar-anon-access"]




@pytest.fixture(scope="module")
def disk():
    path = full_image_disk()
    return path, file_sha256(path)


def run_on_disk(tmp_path, *args, timeout=1800):
    """The tool with its own TMPDIR, so what a run leaves behind there is seen."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    results = tmp_path / "results"
    proc = orchestrator("run", *args, results=results, timeout=timeout, env={"TMPDIR": str(tmp)})
    report = json.loads((results / "latest" / "report.json").read_text())
    return proc, results / "latest", {s["name"]: s for s in report["scenarios"]}, tmp


def error_line(scenario):
    return f"{scenario['error']['phase']}: {scenario['error']['message']}"


def assert_nothing_left(tmp, scenarios):
    assert sorted(p.name for p in tmp.iterdir()) == []  # no overlay, seed, keys or raw copy
    for s in scenarios.values():
        assert s["qemu_pid"] is None or not process_alive(s["qemu_pid"])


@needs_full_image
def test_base_scenarios_pass_on_a_users_disk_image(disk, tmp_path):
    path, _ = disk
    proc, latest, scenarios, tmp = run_on_disk(tmp_path, "--disk-image", str(path), *BASE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {n: s["outcome"] for n, s in scenarios.items()} == {n: "PASS" for n in BASE}
    assert "its own kernel; cloud-init seed" in proc.stderr
    for name in BASE:
        console = (latest / name / "console.log").read_text(errors="replace")
        # cloud-init ran from our seed, and found nothing in it to complain about.
        assert "running 'init'" in console and "Invalid cloud-config" not in console, console[-2000:]
        cmdline = (latest / name / "qemu-cmdline.txt").read_text()
        assert "cloud-init=disabled" not in cmdline and "id=seed0,format=raw,readonly=on" in cmdline
    assert_nothing_left(tmp, scenarios)


def test_not_a_disk_image_is_one_error_line(tmp_path):
    text = tmp_path / "notes.qcow2"
    text.write_text("this is a text file, not a disk\n" * 100)
    proc, _, scenarios, tmp = run_on_disk(tmp_path, "--disk-image", str(text), "srao-anon-late-kill", timeout=120)
    assert proc.returncode == 2
    error = error_line(scenarios["srao-anon-late-kill"])
    assert error.startswith("image: disk image ") and "not a disk image with a Linux root file system" in error
    assert "\n" not in error and "Traceback" not in proc.stderr
    assert_nothing_left(tmp, scenarios)


@needs_full_image
def test_cloud_init_disabled_the_seed_is_ignored_and_the_pinned_key_refuses_the_guest(disk, tmp_path):
    """The image's own host key (baked in at build) is what sshd shows when cloud-init does
    not run: the harness refuses it (pinned, not trusted on first use) and names cloud-init."""
    path, _ = disk
    proc, _, scenarios, tmp = run_on_disk(tmp_path, "--disk-image", str(path), "--append", "cloud-init=disabled",
                                          "srao-anon-late-kill")
    assert proc.returncode == 2, proc.stderr[-2000:]
    error = error_line(scenarios["srao-anon-late-kill"])
    assert error.startswith("ssh: cloud-init did not apply the NoCloud seed"), error
    assert "host key does not match the pinned one" in error and "\n" not in error
    assert_nothing_left(tmp, scenarios)


@needs_full_image
def test_no_sshd_names_it_once_cloud_init_has_finished(disk, tmp_path):
    path, _ = disk
    proc, _, scenarios, tmp = run_on_disk(tmp_path, "--disk-image", str(path), "--append", "systemd.mask=ssh.service",
                                          "srao-anon-late-kill")
    assert proc.returncode == 2, proc.stderr[-2000:]
    error = error_line(scenarios["srao-anon-late-kill"])
    assert error.startswith("boot: cloud-init finished") and "no SSH server answered" in error, error
    assert scenarios["srao-anon-late-kill"]["phases_s"]["boot"] < 300  # not the whole boot deadline
    assert_nothing_left(tmp, scenarios)


def test_a_kernel_without_machine_check_support_is_an_error_before_the_probe(tmp_path):
    """mce=off: the kernel registers no machine-check device, as one built without CONFIG_X86_MCE."""
    proc, _, scenarios, tmp = run_on_disk(tmp_path, "--append", "mce=off", "srao-anon-late-kill", timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    error = error_line(scenarios["srao-anon-late-kill"])
    assert error.startswith("ssh: the guest kernel has no machine-check support"), error
    assert "locate" not in scenarios["srao-anon-late-kill"]["phases_s"]
    assert_nothing_left(tmp, scenarios)


@needs_full_image
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_interrupted_run_leaves_nothing_and_the_image_unchanged(disk, tmp_path, sig):
    path, _ = disk
    tmp, results = tmp_path / "tmp", tmp_path / "results"
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", "--results", str(results),
                             "--disk-image", str(path), "srao-anon-late-kill"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=os.environ | {"TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 300
        while not list(results.glob("*/srao-anon-late-kill/qemu-cmdline.txt")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list(tmp.glob("mce-overlay-*/root.qcow2")) and list(tmp.glob("mce-seed-*/seed.iso"))
        time.sleep(5)  # booting now: the overlay is being written
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out[-2000:]
    report = json.loads((results / "latest" / "report.json").read_text())
    assert_nothing_left(tmp, {s["name"]: s for s in report["scenarios"]})


@needs_full_image
def test_snapshot_saves_a_users_disk_image_once_and_restores_it(disk, tmp_path):
    """With --snapshot the keys and seed are the disk's (kept with its kernel), not the run's:
    one boot saves the guest, with its overlay; each scenario restores it."""
    path, _ = disk
    proc, _, scenarios, tmp = run_on_disk(tmp_path, "--snapshot", "--disk-image", str(path), "srao-anon-late-kill",
                                          "srar-anon-access")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [s["outcome"] for s in scenarios.values()] == ["PASS", "PASS"]
    boots = [line for line in proc.stderr.splitlines() if line.strip().startswith("boot ")]
    assert len(boots) == 2 and all("restored from disk-image-" in line for line in boots), boots
    assert_nothing_left(tmp, scenarios)


@needs_full_image
def test_the_users_image_was_never_written(disk):
    """Last in this file: after the runs above, the passed, failed and interrupted ones."""
    path, before = disk
    assert file_sha256(path) == before
