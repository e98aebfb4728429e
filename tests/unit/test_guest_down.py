"""guest_down(): an exited QEMU's last events are read before it is named 'QEMU exited'."""
import json
import socket
import threading
import time
import weakref

import pytest

from orchestrator.guest.monitor import Monitor
from orchestrator.guest.qemu import console_socketpair
from orchestrator import observe

GREETING = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}
SHUTDOWN = {"timestamp": {"seconds": 1, "microseconds": 0}, "event": "SHUTDOWN",
            "data": {"guest": True, "reason": "guest-reset"}}


def fake_qemu(sock: socket.socket, exited: threading.Event, lag_s: float) -> None:
    """Greets, answers qmp_capabilities, 'exits' (the process is gone), and only then does
    its SHUTDOWN event reach the reader: a loaded host's order of things."""
    sock.sendall(json.dumps(GREETING).encode() + b"\n")
    assert b"qmp_capabilities" in sock.recv(4096)  # sent without a newline
    sock.sendall(b'{"return": {}}\n')
    time.sleep(0.2)
    exited.set()
    time.sleep(lag_s)
    try:
        sock.sendall(json.dumps(SHUTDOWN).encode() + b"\n")
    except BrokenPipeError:  # the test was over first (the control)
        pass
    sock.close()


class ExitedGuest:
    def __init__(self, monitor, exited, console_log):
        self.monitor, self._exited, self.console_log = monitor, exited, console_log
        self.alive_looks = 0  # died() says "running" this many more times, then the truth

    def died(self):
        if self.alive_looks:
            self.alive_looks -= 1
            return None
        return "QEMU exited with code 0: no other output" if self._exited.is_set() else None


@pytest.fixture
def guest(tmp_path, monkeypatch):
    ours, theirs = socket.socketpair()
    exited = threading.Event()
    threading.Thread(target=fake_qemu, args=(theirs, exited, 0.3), daemon=True).start()
    monitor = Monitor(ours, tmp_path / "events.jsonl", tmp_path / "commands.log")
    monitor.connect(5)
    (tmp_path / "console.log").write_text("")
    monkeypatch.setattr(observe, "_consoles", weakref.WeakKeyDictionary())
    g = ExitedGuest(monitor, exited, tmp_path / "console.log")
    assert exited.wait(5)
    yield g
    monitor.close()


def test_a_reboot_whose_event_comes_after_the_exit_is_named_as_the_reboot(guest):
    # CI under stress on 705fe9a: "QEMU exited with code 0 before the machine check was sent",
    # the SHUTDOWN (guest-reset) event in qmp-events.jsonl.
    assert guest.monitor.events() == []  # the exit is seen first
    assert observe.guest_down(guest) == \
        "the guest rebooted (QEMU SHUTDOWN, reason guest-reset; -no-reboot keeps it down)"


def test_a_qemu_that_exits_while_its_events_are_looked_at_is_named_by_its_event(guest):
    # The order CI under stress met: QEMU still there at one look, gone at the next, its
    # event not yet read. One look per call: a call that saw it running says nothing,
    # the next names the reboot (the old code looked twice and named "QEMU exited").
    guest.alive_looks = 1
    assert observe.guest_down(guest) is None
    assert observe.guest_down(guest).startswith("the guest rebooted")


def test_without_reading_to_the_end_the_exit_would_be_named(guest, monkeypatch):
    monkeypatch.setattr(observe, "QEMU_GONE_EVENTS_S", 0.0)  # the control: no wait for the last events
    assert observe.guest_down(guest).startswith("QEMU exited")


def test_the_console_socket_lets_qemu_write_ahead_of_a_stalled_reader():
    def held(pair):
        ours, theirs = pair
        theirs.setblocking(False)
        n = 0
        try:
            while n < 100_000:
                theirs.send(b"x")  # QEMU's serial port: a byte per write
                n += 1
        except BlockingIOError:
            pass
        ours.close()
        theirs.close()
        return n

    assert held(socket.socketpair()) < 1000  # why: each byte is its own skb against SO_SNDBUF
    assert held(console_socketpair()) > 40_000


def _memory_failure(action, recursive):
    return {"event": "MEMORY_FAILURE", "data": {"recipient": "guest", "action": action,
                                                "flags": {"action-required": False, "recursive": recursive}}}


class EventsGuest:
    def __init__(self, events, console_log):
        self.monitor = type("M", (), {"events": lambda _self: events, "read_to_end": lambda _self, s: None})()
        self.console_log = console_log

    def died(self):
        return None


@pytest.mark.parametrize("events, named", [
    # A broadcast machine check on a vCPU the kernel never brought online: QEMU's triple fault.
    ([_memory_failure("inject", False), _memory_failure("reset", False), SHUTDOWN],
     "QEMU reset the guest: a vCPU had machine checks disabled"),
    ([_memory_failure("inject", False), _memory_failure("reset", True), SHUTDOWN],
     "QEMU reset the guest: a machine check came while a previous one was still in progress"),
    # The control: the guest's own reboot, no reset of QEMU's.
    ([_memory_failure("inject", False), SHUTDOWN], "the guest rebooted (QEMU SHUTDOWN, reason guest-reset"),
])
def test_a_reset_qemu_made_for_a_machine_check_is_named_as_qemus(tmp_path, monkeypatch, events, named):
    (tmp_path / "console.log").write_text("")
    monkeypatch.setattr(observe, "_consoles", weakref.WeakKeyDictionary())
    assert observe.guest_down(EventsGuest(events, tmp_path / "console.log")).startswith(named)
