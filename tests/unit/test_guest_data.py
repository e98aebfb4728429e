"""Guest-provided data that is garbage becomes evidence naming the value, never an exception."""
import json
import socket
import threading
from dataclasses import replace

import pytest

from orchestrator.guest.ssh import ProbeExited, RemoteProcess
from orchestrator.judge.verdict import judge
from orchestrator.plumbing.deadline import Deadline
from orchestrator.plumbing.guest_data import MAX_LINE, Unreadable, check_ready, json_message
from orchestrator.plumbing.outcome import HarnessError, Outcome

from .test_verdict import good_evidence, late_kill

READY = {"event": "ready", "pid": 90, "page_size": 4096, "target": 1, "memory": "anon", "va": "0x7f0000001000",
         "pfn": 0x671E, "gpa": "0x671e000", "cpu": 0, "processes": 1, "huge": False, "thp": False, "merged": False,
         "free_pfn": 0, "loop_start": "0x401000", "loop_end": "0x401100",
         "pages": [{"va": "0x7f0000000000", "pfn": 1}, {"va": "0x7f0000001000", "pfn": 0x671E}]}


def test_a_good_ready_report_is_accepted():
    check_ready(READY)


@pytest.mark.parametrize("key, value, words", [
    ("va", "(nil)", "unreadable va: '(nil)'"),
    ("pfn", int("9" * 40), "unreadable pfn"),
    ("pfn", True, "unreadable pfn"),
    ("gpa", None, "unreadable gpa"),
    ("loop_start", "0x" + "f" * 5000, "unreadable loop_start: '0xfff"),
    ("pages", [], "unreadable pages list"),
    ("pages", [1, 2], "unreadable page"),
    ("page_size", 0, "unreadable page_size"),
    ("thp", "yes", "unreadable thp"),
])
def test_a_malformed_ready_report_names_the_field(key, value, words):
    with pytest.raises(Unreadable) as exc:
        check_ready(READY | {key: value})
    assert words in str(exc.value) and len(str(exc.value)) < 300


@pytest.mark.parametrize("line", ["[1]", "(nil)", "1" * 5000, "[" * 100000, '{"a": ' + "9" * 5000 + "}", "", "null"])
def test_lines_that_are_not_probe_objects(line):
    assert json_message(line) is None


@pytest.mark.parametrize("si_addr", ["(nil)", "0x" + "1" * 5000, None, 17, "0xZZ"])
def test_unreadable_si_addr_is_an_error_check_naming_it(si_addr):
    ev = good_evidence()
    ev.probe_result = ev.probe_result | {"si_addr": si_addr}
    verdict = judge(late_kill(), ev)
    sigbus = {c.name: c for c in verdict.checks}["sigbus"]
    assert sigbus.outcome == Outcome.ERROR
    assert "the probe reported an unreadable si_addr" in sigbus.detail and len(sigbus.detail) < 300
    # The other checks were still made.
    assert {c.name: c for c in verdict.checks}["page poisoned"].outcome == Outcome.PASS


@pytest.mark.parametrize("change", [
    {"si_addr_lsb": "12"}, {"si_addr_lsb": 99}, {"sigbus": "yes"}, {"corrupt": "none"},
    {"si_code_name": ["x"] * 1000},
])
def test_other_malformed_result_fields_never_raise(change):
    ev = good_evidence()
    ev.probe_result = ev.probe_result | change
    verdict = judge(late_kill(), ev)
    assert verdict.outcome in (Outcome.FAIL, Outcome.ERROR)
    assert all(len(c.detail) < 400 for c in verdict.checks)


def test_unreadable_touch_answer():
    ev = good_evidence(steps=[{"event": "touched", "target_pfn": "0x1"}])
    scenario = late_kill()
    scenario = replace(scenario, expect=replace(scenario.expect, target_moved=True))
    moved = {c.name: c for c in judge(scenario, ev).checks}["steps"]
    assert moved.outcome == Outcome.ERROR and "unreadable target_pfn" in moved.detail


class FakeChannel:
    """What paramiko's Channel offers RemoteProcess, fed from a socketpair."""

    def __init__(self, data: bytes):
        self.ours, theirs = socket.socketpair()

        def write():
            with theirs:
                try:
                    theirs.sendall(data)
                except BrokenPipeError:  # the reader stopped early (its test is over): not an error
                    pass

        threading.Thread(target=write, daemon=True).start()

    def settimeout(self, t):
        self.ours.settimeout(t)

    def recv(self, n):
        return self.ours.recv(n)

    def exit_status_ready(self):
        return False


def read_ready(data: bytes) -> dict:
    process = RemoteProcess(FakeChannel(data), "probe")
    return process.read_event({"ready"}, Deadline(2, "locate"), "locate"), process


def test_garbage_before_the_ready_line_is_skipped_and_kept():
    data = b"[1]\n(nil)\n" + b"9" * 5000 + b"\n{\"x\": " + b"9" * 5000 + b"}\n" + json.dumps(READY).encode() + b"\n"
    ready, process = read_ready(data)
    assert ready["pid"] == 90
    assert process.transcript[:2] == ["[1]", "(nil)"]


def test_a_line_without_end_is_cut_not_kept_whole():
    data = b"x" * (3 * MAX_LINE // 2) + b"\n" + json.dumps(READY).encode() + b"\n"  # under the flood limit
    ready, process = read_ready(data)
    assert ready["pid"] == 90
    assert sum(len(line) for line in process.transcript) < MAX_LINE + 1000
    assert "line cut" in process.transcript[0]


def test_a_probe_that_ends_with_garbage_is_a_harness_error():
    with pytest.raises(HarnessError, match="probe exited"):
        read_ready(b"[1]\n" + b"{" * 100000 + b"\n")


def test_a_result_line_from_another_process_is_ignored_and_counted():
    forged = {"event": "result", "process": "parent", "pid": 1, "sigbus": True, "si_addr": "0xdead000"}
    real = {"event": "result", "process": "parent", "pid": 90, "sigbus": False}
    process = RemoteProcess(FakeChannel(json.dumps(forged).encode() + b"\n" + json.dumps(real).encode() + b"\n"),
                            "probe")
    process.owners = {90}
    assert process.read_event({"result"}, Deadline(2, "observe"), "observe")["pid"] == 90
    assert process.ignored_count == 1 and process.ignored == ["pid 1"]
    assert any("ignored: not a result of the probe" in line for line in process.transcript)


def test_the_kernel_log_keeps_the_kernels_records_only():
    from orchestrator.plumbing.guest_data import kernel_records
    raw = ("<6>[    1.0] Memory failure: 0x1234: recovery action for dirty LRU page: Recovered\n"
           "<12>[    2.0] Kernel panic - not syncing: a user process wrote this\n"
           "<0>[    3.0] BUG: a kernel line\n"
           " continuation of the kernel's record\n")
    kernel, user = kernel_records(raw)
    assert kernel == ("[    1.0] Memory failure: 0x1234: recovery action for dirty LRU page: Recovered\n"
                      "[    3.0] BUG: a kernel line\n continuation of the kernel's record\n")
    assert user == ["[    2.0] Kernel panic - not syncing: a user process wrote this"]
    # A dmesg without -r prints no prefixes: everything is taken as before.
    assert kernel_records("[ 1.0] a\n")[0] == "[ 1.0] a\n"


def test_a_flood_on_the_probes_stream_ends_the_wait_naming_it():
    from orchestrator.guest.ssh import PROBE_NOISE_LIMIT, ProbeFlood
    line = b"a" * 1_000_000 + b"\n"
    data = line * (PROBE_NOISE_LIMIT // len(line) + 2) + json.dumps(READY).encode() + b"\n"
    process = RemoteProcess(FakeChannel(data), "probe")
    with pytest.raises(ProbeFlood, match=r"probe output flood: 2 MiB .*\(lines of up to \d+ bytes\)"):
        process.read_event({"ready"}, Deadline(5, "locate"), "locate")
    with pytest.raises(ProbeFlood):  # and every later wait at once
        process.read_event({"result"}, Deadline(5, "observe"), "observe")
    assert sum(len(line) for line in process.transcript.lines()) < 5 << 20


def started(pid: int = 90) -> bytes:
    return json.dumps({"event": "started", "pid": pid}).encode() + b"\n"


def test_a_second_ready_report_is_kept_apart_and_named():
    """The probe prints one ready report; another on its stream (before or after it) is
    a forgery the harness cannot tell apart: the first is taken, the second recorded."""
    forged = dict(READY, pid=77, gpa="0x1000")
    process = RemoteProcess(FakeChannel(started() + json.dumps(forged).encode() + b"\n"
                                        + json.dumps(READY).encode() + b"\n"
                                        + json.dumps({"event": "result", "pid": 90}).encode() + b"\n"), "probe")
    assert process.read_event({"ready"}, Deadline(2, "locate"), "locate")["pid"] == 77
    assert process.started_pid == 90
    process.read_event({"result"}, Deadline(2, "observe"), "observe")
    assert process.second_ready == ["pid 90"]
    from orchestrator.judge.verdict import Evidence, judge
    from orchestrator.scenario import load_scenario
    from orchestrator.runner import REPO_ROOT
    ev = Evidence(ready=forged, second_ready=process.second_ready)
    verdict = judge(load_scenario(REPO_ROOT / "scenarios" / "srao-anon-late-kill.yaml"), ev)
    check = next(c for c in verdict.checks if c.name == "probe's reports")
    assert check.outcome == Outcome.ERROR and "2 ready reports" in check.detail
    assert verdict.outcome == Outcome.ERROR


def test_an_exit_line_counts_only_as_the_streams_last():
    """A forged exit line (status 137: 'killed by SIGKILL') before the probe's result is
    noted and passed over; the shell's own, the stream's last line, gives the status."""
    stream = (started() + json.dumps(READY).encode() + b"\n" + b'{"event":"exit","status":137}\n'
              + json.dumps({"event": "result", "pid": 90}).encode() + b"\n" + b'{"event":"exit","status":0}\n')
    process = RemoteProcess(FakeChannel(stream), "probe")
    process.read_event({"ready"}, Deadline(2, "locate"), "locate")
    assert process.read_event({"result"}, Deadline(2, "observe"), "observe")["pid"] == 90
    with pytest.raises(ProbeExited) as exited:
        process.read_event(set(), Deadline(2, "observe"), "observe")
    assert exited.value.status == 0
    assert process.forged == ["an exit line (status 137) before the probe's own output ended"]


def test_the_probe_shell_names_its_pid_before_the_probe_runs(tmp_path):
    """probe_shell() as a real shell runs it: the first line is the pid the probe then has."""
    import subprocess
    from orchestrator.guest.ssh import probe_shell
    out = subprocess.run(["sh", "-c", probe_shell("sh -c 'echo \"{\\\"pid\\\":$$}\"; exit 3'")],
                         capture_output=True, text=True).stdout.splitlines()
    first, second, last = (json.loads(line) for line in out)
    assert first["event"] == "started" and first["pid"] == second["pid"]
    assert last == {"event": "exit", "status": 3}
