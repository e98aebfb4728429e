"""repro.sh and qemu-by-hand.sh from a real run's artifacts: the scenario again from a fresh
clone, and the same QEMU with the same monitor commands without the orchestrator."""
import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .conftest import REPO, orchestrator


def wait_for(path: Path, text: str, seconds: float) -> str:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.3)
    raise AssertionError(f"{text!r} never appeared in {path}: ...{content[-1500:]}")


@pytest.mark.parametrize("boot", ["restored", "cold"])
def test_artifacts_reproduce_the_run_by_hand_and_from_a_fresh_clone(tmp_path, boot):
    """A run restored from a saved guest (the default) and a cold one: qemu-by-hand.sh
    starts the same guest (restored: paused at its save, 'cont' starts it) and the typed
    'mce' line reaches its kernel; repro.sh says which it was, and (for the default run)
    runs the scenario again from a fresh clone."""
    proc = orchestrator("run", "--append", "loglevel=6", *(["--cold"] if boot == "cold" else []),
                        "srao-anon-early-kill", results=tmp_path / "results")
    assert proc.returncode == 0, proc.stderr[-3000:]
    artifacts = tmp_path / "results" / "latest" / "srao-anon-early-kill"
    first = json.loads((tmp_path / "results" / "latest" / "report.json").read_text())["scenarios"][0]
    hmp = (artifacts / "monitor-commands.hmp").read_text().splitlines()
    mce_line = next(line for line in hmp if line.startswith("mce "))
    pfn = int(mce_line.split()[5], 16) >> 12

    # By hand: the same QEMU, the monitor on stdin, the HMP lines typed in.
    qemu = subprocess.Popen(["sh", str(artifacts / "qemu-by-hand.sh")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        console = artifacts / "console-by-hand.log"
        if boot == "cold":
            wait_for(console, "MCEORCH-READY", 180)
        else:
            assert "The run restored a saved guest (-incoming)" in (artifacts / "qemu-by-hand.sh").read_text()
            assert "cont" in hmp[:hmp.index(mce_line)]
            # As the run did (the 'info migrate' lines): the state loaded, then 'cont'.
            said: list[str] = []
            threading.Thread(target=lambda: said.extend(iter(qemu.stdout.readline, "")), daemon=True).start()
            end = time.monotonic() + 120
            while not any("Migration status: completed" in line for line in said):
                assert time.monotonic() < end and qemu.poll() is None, "".join(said)[-2000:]
                qemu.stdin.write("info migrate\n")
                qemu.stdin.flush()
                time.sleep(0.5)
            qemu.stdin.write("cont\n")
        qemu.stdin.write(mce_line + "\n")
        qemu.stdin.flush()
        wait_for(console, f"Memory failure: {pfn:#x}:", 60)
        qemu.stdin.write("quit\n")
        qemu.stdin.flush()
        assert qemu.wait(30) == 0
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()

    assert ("--cold" if boot == "cold" else "--snapshot") in (artifacts / "repro.sh").read_text()
    if boot == "cold":
        return
    # From a fresh clone: repro.sh sets it up and runs the scenario with the same inputs.
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    proc = subprocess.run(["sh", str(artifacts / "repro.sh"), str(clone)], capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    again = json.loads((clone / "results" / "latest" / "report.json").read_text())["scenarios"][0]
    assert (again["name"], again["outcome"], again["image"], again["kernel_release"]) == \
        (first["name"], "PASS", first["image"], first["kernel_release"])
    cmdline = (clone / "results" / "latest" / "srao-anon-early-kill" / "qemu-cmdline.txt").read_text()
    assert "tsc=reliable no_timer_check loglevel=6" in cmdline
