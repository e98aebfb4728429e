"""Faults survived: each ends in ERROR (or FAIL where the kernel did it) naming the
phase and the cause, keeps the artifacts, leaves no process, port or temp dir of
the run behind, and the next scenario runs normally.

Faults after the boot hit restored guests (snapshot=True): a QEMU restored from
a saved state is as real a process as a cold-booted one, and these tests are
not about booting. The control run, the guest that never brings SSH up and
Ctrl-C during the boot still boot cold."""
import dataclasses
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from orchestrator.plumbing.deadline import Deadline
from orchestrator.plumbing.outcome import HarnessError, Outcome
from orchestrator.report import ConsoleReporter
from orchestrator.runner import RunOptions, run_scenario
from orchestrator.scenario import Timeouts, load_scenario

from .conftest import REPO, process_alive

LATE_KILL = REPO / "scenarios" / "srao-anon-late-kill.yaml"


def our_children() -> list[int]:
    """Live processes whose parent is this test process (QEMU would be one)."""
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def port_is_free(port: int) -> bool:
    """Nobody listens on it (TIME_WAIT leftovers of closed connections do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
            return True
        except OSError:
            return False


def temp_entries() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).iterdir() if p.name.startswith("mce")}


@pytest.fixture
def clean_temp(tmp_path, monkeypatch):
    """The run's temporary folders go to a folder of this test's own (other tests and
    other users' runs on the machine create theirs elsewhere); none may be left."""
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setenv("TMPDIR", str(private))
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    assert temp_entries() == set()
    yield
    assert temp_entries() == set()


class Recorder(ConsoleReporter):
    def __init__(self):
        super().__init__(io.StringIO())
        self.ports: list[int] = []


def run(tmp_path: Path, scenario=None, hook=None, **options):
    scenario = scenario or load_scenario(LATE_KILL)
    seen: dict = {}

    def record_and_hook(phase, ctx):
        if ctx.guest is not None and ctx.guest.ssh_port:
            seen["port"] = ctx.guest.ssh_port
        if hook:
            hook(phase, ctx)

    result = run_scenario(scenario, tmp_path, RunOptions(hook=record_and_hook, **options), Recorder())
    return result, seen.get("port")


def assert_nothing_left(result, port):
    assert result.qemu_pid and not process_alive(result.qemu_pid)
    assert our_children() == []
    if port:
        assert port_is_free(port)
    assert (result.artifacts / "console.log").exists() and (result.artifacts / "qemu-cmdline.txt").exists()




def test_then_the_next_scenario_runs_normally(tmp_path):
    """The control: a run right after the faults below passes (module order runs it last too)."""
    result, port = run(tmp_path)
    assert result.outcome == Outcome.PASS, result.reasons
    assert_nothing_left(result, port)


def test_qemu_killed_mid_scenario(tmp_path, clean_temp):
    def kill_qemu(phase, ctx):
        if phase == "inject":
            os.kill(ctx.guest.pid, signal.SIGKILL)
            time.sleep(0.2)

    result, port = run(tmp_path, hook=kill_qemu, snapshot=True)
    assert result.outcome == Outcome.ERROR
    assert result.error.phase == "inject"
    assert "QEMU was killed by signal 9" in result.error.message
    assert_nothing_left(result, port)


def test_guest_that_never_brings_ssh_up(tmp_path, clean_temp):
    scenario = dataclasses.replace(load_scenario(LATE_KILL), timeouts=Timeouts(boot=8))
    start = time.monotonic()
    # A shell as init: the kernel boots, nothing starts sshd.
    result, port = run(tmp_path, scenario=scenario, extra_cmdline="rdinit=/bin/sh")
    assert result.outcome == Outcome.ERROR and result.error.phase == "boot"
    assert "no SSH banner" in result.error.message and "within 8 s" in result.error.message
    assert time.monotonic() - start < 8 + 10  # the deadline held
    assert_nothing_left(result, port)


def test_ssh_dropped_mid_command(tmp_path, clean_temp):
    def kill_sshd(phase, ctx):
        if phase == "observe":
            # Every dropbear, our own session's included: the connection drops under us
            # (this command's too, which is then an error of its own).
            with pytest.raises(HarnessError, match="connection ended before the command's exit status came"):
                ctx.ssh.run("killall dropbear; sleep 1", Deadline(5, "fault"), "fault")

    scenario = dataclasses.replace(load_scenario(LATE_KILL), timeouts=Timeouts(observe=8))
    result, port = run(tmp_path, scenario=scenario, hook=kill_sshd, snapshot=True)
    assert result.outcome == Outcome.ERROR, result.reasons
    reasons = " ".join(result.reasons)
    assert "no panic or reset seen; QEMU still running" in reasons
    assert_nothing_left(result, port)


def test_connection_dropped_under_the_probe_is_no_verdict_on_the_kernel(tmp_path, clean_temp):
    """The harness's SSH connection ends (as dropbear 2022.83 ends it when a channel opens
    while another closes) while the probe waits for its report; the guest stays up. The
    probe's channel closes without an exit status: that is the harness's ERROR, naming the
    dropped connection, not the kernel's FAIL for a probe that 'died'; the parts after it
    are gathered over a new connection."""
    def drop_connection(phase, ctx):
        if phase == "observe":
            ctx.ssh.client.get_transport().sock.close()

    scenario = dataclasses.replace(load_scenario(LATE_KILL), timeouts=Timeouts(observe=8))
    result, port = run(tmp_path, scenario=scenario, hook=drop_connection, snapshot=True)
    assert result.outcome == Outcome.ERROR, result.reasons
    assert result.verdict is not None, result.reasons
    checks = {c.name: c for c in result.verdict.checks}
    assert not [c for c in checks.values() if c.outcome == Outcome.FAIL], result.reasons
    assert "SSH connection to the guest dropped while the probe ran" in result.evidence.unavailable["probe result"]
    assert checks["guest alive"].outcome == Outcome.PASS
    assert checks["page poisoned"].outcome == Outcome.PASS  # gathered over the new connection
    assert_nothing_left(result, port)


def test_probe_that_hangs(tmp_path, clean_temp):
    def stop_probe(phase, ctx):
        if phase == "observe":
            ctx.ssh.check(f"kill -STOP {ctx.evidence.ready['pid']}", Deadline(5, "fault"), "fault")

    scenario = dataclasses.replace(load_scenario(LATE_KILL), timeouts=Timeouts(observe=6))
    result, port = run(tmp_path, scenario=scenario, hook=stop_probe, snapshot=True)
    assert result.outcome == Outcome.ERROR
    assert "probe sent no result within 6 s" in " ".join(result.reasons)
    # The rest of the evidence was still gathered, each part with its own deadline
    # after the probe had spent the phase's: the page was poisoned, counted and logged.
    checks = {c.name: c for c in result.verdict.checks}
    assert checks["page poisoned"].outcome == Outcome.PASS
    assert checks["HardwareCorrupted"].outcome == Outcome.PASS
    assert [c.outcome for name, c in checks.items() if name.startswith("kernel log has")] == [Outcome.PASS]
    assert checks["guest alive"].outcome == Outcome.PASS
    assert result.phases["observe"] < 6 + 3
    assert_nothing_left(result, port)


def test_artifacts_disk_full(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)], check=True)
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={full}/filler", "bs=4k", "count=15"], capture_output=True)
        proc = subprocess.run([sys.executable, "-m", "orchestrator", "run", "srao-anon-late-kill", "srar-anon-access",
                               "--results", str(full)], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert "No space left on device" in proc.stderr
        assert our_children() == []
        assert not subprocess.run(["pgrep", "-f", f"console.*{full}"], capture_output=True).stdout
    finally:
        subprocess.run(["umount", str(full)], check=True)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm(tmp_path, signum):
    # As from a terminal, where Ctrl-C reaches a program whose SIGINT is not ignored: not
    # inherited from however this test process was started (a job started with '&' from a
    # script ignores SIGINT, and so would every process it starts).
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", "srao-anon-late-kill", "srar-anon-access",
                             "--results", str(tmp_path)], cwd=REPO, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ignored = int(re.search(r"SigIgn:\s*([0-9a-f]+)", Path(f"/proc/{proc.pid}/status").read_text()).group(1), 16)
    for line in proc.stderr:
        if line.strip().startswith("image"):  # the boot phase is starting
            break
    time.sleep(1.0)
    proc.send_signal(signum)
    try:
        rest = proc.communicate(timeout=30)[1]  # a run that hangs on the signal fails here, not never
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"still running 30 s after signal {signum}: {proc.communicate()[1][-3000:]}") from None
    assert proc.returncode == 130, f"SigIgn at start {ignored:#x}\n" + rest
    assert "Traceback" not in rest
    report = json.loads((tmp_path / "latest" / "report.json").read_text())
    assert report["interrupted"] is True
    first, second = report["scenarios"]
    assert first["outcome"] == "ERROR" and "interrupted" in first["error"]["message"]
    assert second["error"]["message"] == "not run: interrupted before it started"
    assert first["qemu_pid"] and not process_alive(first["qemu_pid"])
    assert (tmp_path / "latest" / "srao-anon-late-kill" / "console.log").exists()


def test_artifacts_disk_fills_up_mid_run(tmp_path, clean_temp):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(small)], check=True)
    try:
        def fill_disk(phase, ctx):
            if phase == "observe":
                subprocess.run(["dd", "if=/dev/zero", f"of={small}/filler", "bs=64k"], capture_output=True)

        result, port = run(small, hook=fill_disk, snapshot=True)
        assert result.outcome == Outcome.ERROR
        assert "No space left on device" in str(result.error), result.reasons
        assert_nothing_left(result, port)
        (small / "filler").unlink()
        # Space again: the next scenario runs normally in the same results folder.
        again, port = run(small, snapshot=True)
        assert again.outcome == Outcome.PASS, again.reasons
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_guest_that_panics_unexpectedly(tmp_path, clean_temp):
    scenario = load_scenario(REPO / "tests" / "integration" / "negative" / "neg-unexpected-panic.yaml")
    result, port = run(tmp_path, scenario=scenario, snapshot=True)
    assert result.outcome == Outcome.FAIL
    assert "Kernel panic - not syncing" in " ".join(result.reasons)
    assert result.phases["observe"] < 10  # seen through pvpanic, not by waiting out the 60 s deadline
    assert_nothing_left(result, port)
