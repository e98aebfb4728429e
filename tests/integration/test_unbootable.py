"""A kernel that does not boot: the error names the cause first (nothing on the console at
all: not a bootable kernel; a panic during boot: its panic line), then the details, with
TCG's CPUID warnings left out and the QEMU command line named by its file, not repeated."""
import re

import pytest

from orchestrator.guest.images import ensure_image

from .conftest import REPO, orchestrator


def error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if "ERROR" in line or "[ERR ]" in line]


def test_a_kernel_that_resets_before_printing_anything_is_not_a_bootable_kernel(tmp_path):
    # A real bzImage (its header and release string intact) whose protected-mode code is gone:
    # the CPU faults at its entry, the guest resets (-no-reboot: QEMU exits 0), nothing printed.
    data = bytearray((ensure_image("debian-6.1", repo_root=REPO).directory / "vmlinuz").read_bytes())
    start = ((data[0x1f1] or 4) + 1) * 512
    data[start:] = b"\xff" * (len(data) - start)
    junk = tmp_path / "bzImage"
    junk.write_bytes(bytes(data))
    proc = orchestrator("run", "--kernel", str(junk), "srao-anon-late-kill", results=tmp_path / "results",
                        timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    summary = error_lines(proc)[-1]
    assert "  boot: the image is not a bootable kernel: nothing at all on the console; " in summary, summary
    assert "warning: TCG doesn't support" not in proc.stderr
    assert "-no-user-config" not in proc.stderr  # the command line is in qemu-cmdline.txt, once


@pytest.mark.parametrize("boots, phase", [([], "save: saving a booted guest failed: "), (["--cold"], "boot: ")],
                         ids=["saving-the-guest", "cold"])
def test_a_kernel_that_panics_during_boot_names_its_panic_line_and_stops_waiting(tmp_path, boots, phase):
    # By default the guest is booted to be saved (the save phase); with --cold, in the boot phase.
    proc = orchestrator("run", "--append", "rdinit=/nonexistent", *boots, "srao-anon-late-kill",
                        results=tmp_path / "results", timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    summary = error_lines(proc)[-1]
    assert re.search(re.escape(phase) + r"the kernel panicked during boot: Kernel panic - not syncing: VFS: Unable "
                     r"to mount root fs", summary), summary
    seconds = float(re.search(r"([0-9.]+) s ", summary).group(1))
    assert seconds < 90, f"waited for the boot deadline after the panic: {summary}"
