import os
import subprocess
from pathlib import Path

import pytest

from orchestrator.inject.races import highorder
from orchestrator.inject.races.gdbstub import GdbError, StopReply
from orchestrator.inject.races.highorder import (MAILBOX_MAGIC, Hits, TakeFreeBlock, mailbox_state, parse_symbols,
                                    parse_xp_words, taker_cpu, third_look_ok)
from orchestrator.plumbing.outcome import HarnessError

SYMBOLS_TEXT = """__x64_sys_getpriority ffffffff810e9690
is_free_buddy_page ffffffff813b91f0
memory_failure ffffffff81433270
memory_failure_end ffffffff81433ff0
vmemmap_base ffffffff825d8598
"""
SYMBOLS = parse_symbols(SYMBOLS_TEXT)
AT_PAGE, GATE = SYMBOLS["is_free_buddy_page"], SYMBOLS["__x64_sys_getpriority"]
VMEMMAP = 0xFFFFEA0000000000
PFN = 0x6900
PAGE = VMEMMAP + PFN * 64
IN_GET_HWPOISON, IN_MF = 0xFFFFFFFF81431FEC, 0xFFFFFFFF81433425


def test_symbols_are_read_and_all_required():
    assert SYMBOLS["memory_failure"] == 0xFFFFFFFF81433270 and SYMBOLS["memory_failure_end"] == 0xFFFFFFFF81433FF0
    with pytest.raises(ValueError, match="no vmemmap_base"):
        parse_symbols(SYMBOLS_TEXT.replace("vmemmap_base", "other"))
    with pytest.raises(ValueError, match="only zeros"):
        parse_symbols(SYMBOLS_TEXT.replace("ffffffff813b91f0", "0000000000000000"))


def test_kallsyms_command_names_every_symbol():
    command = highorder.kallsyms_command()
    assert all(name in command for name in highorder.SYMBOLS) and "memory_failure_end" in command


def test_xp_words_and_mailbox():
    text = ("0000000002b9e000: 0x4d43454f52434831 0x0000000000000003\r\n"
            "0000000002b9e010: 0x0000000000000005 0x0000000000000011\r\n")
    words = parse_xp_words(text)
    assert words == [MAILBOX_MAGIC, 3, 5, 17]
    assert mailbox_state(words) == (3, 5, 17)
    with pytest.raises(ValueError, match="not the probe's mailbox"):
        mailbox_state([0, 3, 5, 17])
    with pytest.raises(ValueError, match="not the probe's mailbox"):
        mailbox_state([MAILBOX_MAGIC, 3, 5])


def test_taker_runs_on_another_vcpu():
    assert taker_cpu(0, 2) == 1 and taker_cpu(1, 2) == 0 and taker_cpu(3, 4) == 0


def test_third_look_must_return_into_memory_failure():
    assert third_look_ok(Hits(on_page=[IN_GET_HWPOISON, IN_GET_HWPOISON, IN_MF]), SYMBOLS) is None
    problem = third_look_ok(Hits(on_page=[IN_GET_HWPOISON] * 3, others=2), SYMBOLS)
    assert "look 3 at the page returned to 0xffffffff81431fec, outside memory_failure()" in problem
    assert "2 other call(s)" in problem


class FakeTarget:
    """The gdbstub as RemoteTarget's methods see it: a script of stops (thread, rip, rdi, return address)."""

    def __init__(self, stops):
        self.stops = list(stops)
        self.sent, self.breakpoints, self.transcript, self.running = [], set(), [], False
        self.current = None
        self.detached = False

    def connected_to(self, path):
        self.path = path
        return self

    def attach(self, timeout):
        return self.wait_stop(timeout)

    def wait_stop(self, timeout):
        if self.sent and self.sent[-1].startswith("vCont;s"):
            self.running = False
            thread = int(self.sent[-1].rsplit(":", 1)[1], 16)
            if self.current and self.current[0] == thread:  # one instruction on
                self.current = (thread, self.current[1] + 1, *self.current[2:])
            return StopReply(5, thread)
        if not self.stops:
            raise GdbError(f"no reply from the gdbstub within {timeout:g} s")
        self.current = self.stops.pop(0)
        self.running = False
        return StopReply(5 if self.current else 2, self.current[0] if self.current else 1)

    def read_u64(self, address):
        if address == SYMBOLS["vmemmap_base"]:
            return VMEMMAP
        assert address == 0x1000  # the rsp given below
        return self.current[3]

    def registers(self, thread):
        if thread != self.current[0]:  # selecting the held vCPU to read kernel memory through
            return {"rip": 0, "rdi": 0, "rsp": 0x1000}
        return {"rip": self.current[1], "rdi": self.current[2], "rsp": 0x1000}

    def read(self, address, length):
        return bytes(length)  # struct pages of a taken block: no free buddy head anywhere

    def set_breakpoint(self, address, insert=True):
        (self.breakpoints.add if insert else self.breakpoints.discard)(address)

    def send_resume(self, payload):
        self.sent.append(payload)
        self.running = True

    def interrupt(self, timeout=5):
        self.running = False
        return StopReply(2, 1)

    def detach(self):
        self.detached = True

    def close(self):
        pass


class FakeMonitor:
    def __init__(self, mailbox_states):
        self.states = list(mailbox_states)
        self.lines = []

    def hmp_query(self, line, timeout=10, cpu=None):
        self.lines.append(line)
        if line.startswith("gdbserver "):
            return f"Waiting for gdb connection on device '{line.split()[1]}'\r\n"
        if line.startswith("xp "):
            state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            return (f"0000000002b9e000: {MAILBOX_MAGIC:#018x} {state:#018x}\r\n"
                    "0000000002b9e010: 0x0000000000000002 0x0000000000000007\r\n")
        return ""


def race(monkeypatch, stops, states, tmp_path):
    target = FakeTarget([None] + stops)  # the stop QEMU reports when the debugger connects
    monkeypatch.setattr(highorder, "RemoteTarget", lambda path: target.connected_to(path))
    monitor = FakeMonitor(states)
    taker = TakeFreeBlock(process=None, pfn=PFN, block_pfn=PFN - 0x100, mailbox_gpa=0x2B9E000, cpu=1, vcpus=2,
                          symbols=SYMBOLS)
    sent = []
    run = lambda: taker.force(monitor, lambda: sent.append("mce") or "injected", inject_cpu=0, artifacts=tmp_path)
    return taker, target, monitor, sent, run


def test_the_injected_vcpu_is_held_at_its_third_look_while_the_process_takes_the_block(monkeypatch, tmp_path):
    stops = [(2, GATE, 0, 0),                        # the process reached its gate: held from now on
             (1, AT_PAGE, PAGE, IN_GET_HWPOISON),    # HWPoisonHandlable()
             (1, AT_PAGE, PAGE + 64, IN_MF),         # another page: not counted
             (1, AT_PAGE, PAGE, IN_GET_HWPOISON),    # get_any_page()
             (1, AT_PAGE, PAGE, IN_MF)]              # memory_failure(): hold here
    taker, target, monitor, sent, run = race(monkeypatch, stops, [2, 2, 3], tmp_path)
    assert run() == "injected" and sent == ["mce"]
    assert target.sent[0] == "vCont;c"                      # all run until the gate
    assert "vCont;c:1" in target.sent and target.sent[-1] == "vCont;c:2"  # then the held vCPU alone; then the process's
    assert target.detached and not target.breakpoints
    assert monitor.lines[-1] == "gdbserver none"
    # The stub listened on a unix socket in a private folder, gone once the race is over.
    assert monitor.lines[0] == f"gdbserver unix:{target.path},server=on,wait=off"
    assert target.path.startswith("/tmp/mce-gdbstub-") and not Path(target.path).parent.exists()
    assert "vCPU 0 held in memory_failure()" in taker.notes[0] and "1 other call(s)" in taker.notes[0]
    assert (tmp_path / "gdbstub-transcript.txt").exists()


def test_a_process_that_reaches_its_gate_late_is_let_through_it(monkeypatch, tmp_path):
    stops = [(1, AT_PAGE, PAGE, IN_GET_HWPOISON), (1, AT_PAGE, PAGE, IN_GET_HWPOISON), (1, AT_PAGE, PAGE, IN_MF),
             (2, GATE, 0, 0)]
    taker, target, monitor, sent, run = race(monkeypatch, stops, [3], tmp_path)
    assert run() == "injected"
    assert target.sent[-2:] == ["vCont;c:2", "vCont;c:2"] and GATE not in target.breakpoints


def test_a_process_that_cannot_take_the_block_is_an_error(monkeypatch, tmp_path):
    stops = [(2, GATE, 0, 0)] + [(1, AT_PAGE, PAGE, IN_GET_HWPOISON)] * 2 + [(1, AT_PAGE, PAGE, IN_MF)]
    taker, target, monitor, sent, run = race(monkeypatch, stops, [2, 4], tmp_path)
    with pytest.raises(HarnessError, match="could not force the interleaving: the guest process on vCPU 1: "
                                           "out of memory above its MemFree margin after 2 chunk\\(s\\) of 2 MiB, "
                                           "7 step\\(s\\) past its gate"):
        run()
    assert target.detached and monitor.lines[-1] == "gdbserver none"


def test_a_third_look_elsewhere_is_an_error_naming_what_was_seen(monkeypatch, tmp_path):
    stops = [(1, AT_PAGE, PAGE, IN_GET_HWPOISON)] * 3
    _, target, _, _, run = race(monkeypatch, stops, [3], tmp_path)
    with pytest.raises(HarnessError, match="look 3 at the page returned to 0xffffffff81431fec, outside memory_failure"):
        run()
    assert target.detached


def test_no_third_look_in_time_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setattr(highorder, "HIT_S", 0.01)
    _, target, _, _, run = race(monkeypatch, [(1, AT_PAGE, PAGE, IN_GET_HWPOISON)], [3], tmp_path)
    with pytest.raises(HarnessError, match="did not look at the page 3 times .*1 look\\(s\\)"):
        run()
    assert target.detached


def test_a_process_still_at_it_when_the_hold_ends_is_an_error_saying_where_it_is(monkeypatch, tmp_path):
    monkeypatch.setattr(highorder, "HOLD_S", 0.05)
    stops = [(2, GATE, 0, 0)] + [(1, AT_PAGE, PAGE, IN_GET_HWPOISON)] * 2 + [(1, AT_PAGE, PAGE, IN_MF)]
    _, target, _, _, run = race(monkeypatch, stops, [2], tmp_path)
    target.interrupt = lambda timeout=5: setattr(target, "current", (2, 0xFFFFFFFF81001234, 0, 0))
    with pytest.raises(HarnessError, match="allocating after 2 chunk.*vCPU 1 at RIP 0xffffffff81001234"):
        run()
    assert target.detached


def test_the_gate_on_another_vcpu_is_an_error(monkeypatch, tmp_path):
    _, _, _, _, run = race(monkeypatch, [(1, GATE, 0, 0)], [3], tmp_path)
    with pytest.raises(HarnessError, match="getpriority\\(\\) called on vCPU 0, not the process's vCPU 1"):
        run()


def test_a_remote_libvirt_host_is_refused_in_one_line(tmp_path):
    taker = TakeFreeBlock(process=None, pfn=PFN, block_pfn=0, mailbox_gpa=0, cpu=1, vcpus=2, symbols=SYMBOLS)
    with pytest.raises(HarnessError, match="needs QEMU's gdbstub on this host: not with a remote libvirt URI"):
        taker.force(FakeMonitor([3]), lambda: None, inject_cpu=0, artifacts=tmp_path, remote=True)


def test_the_gdbstub_never_listens_on_tcp():
    line = highorder.gdbserver_line("/tmp/mce-gdbstub-x/gdb.sock")
    assert line == "gdbserver unix:/tmp/mce-gdbstub-x/gdb.sock,server=on,wait=off" and "tcp" not in line
    with pytest.raises(ValueError):
        highorder.gdbserver_line("/tmp/a,path=/elsewhere")  # a comma would be another chardev option


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root (the orchestrator runs as root)")
def test_the_socket_folder_is_qemus_alone(tmp_path):
    folder = highorder.private_socket_folder(65534, parent=str(tmp_path))
    tmp_path.chmod(0o755)
    try:
        info = folder.stat()
        assert (info.st_uid, info.st_mode & 0o777) == (65534, 0o700)
        # Another unprivileged user cannot even look in.
        other = subprocess.run(["ls", str(folder)], user=65533, group=65533, extra_groups=[],
                               capture_output=True, text=True)
        assert other.returncode != 0 and "Permission denied" in other.stderr
    finally:
        folder.rmdir()


class KallsymsGuest:
    """Answers the two reads kernel_symbols makes, for a kernel loaded at `text`."""

    def __init__(self, text: int, version: str = "Linux version 6.12.118+deb12-amd64 #1 SMP Debian"):
        self.text, self.version, self.commands = text, version, []

    def check(self, command, deadline, phase):
        self.commands.append(command)
        if command == highorder.KERNEL_ID_COMMAND:
            return f"{self.version}\n{self.text:016x} T _text\n"
        assert command == highorder.kallsyms_command((*highorder.SYMBOLS, "_text"))
        shift = self.text - 0xFFFFFFFF81000000
        return "".join(f"{name} {int(address, 16) + shift:x}\n" for name, address in
                       (line.split() for line in (SYMBOLS_TEXT + "_text ffffffff81000000\n").splitlines()))


def test_symbols_are_read_once_per_kernel_build_then_from_text_alone(tmp_path):
    """The first run reads the whole /proc/kallsyms; a later boot of the same build (another
    KASLR offset) reads only _text, and gets every symbol moved by the same amount."""
    from orchestrator.plumbing.deadline import Deadline
    first = KallsymsGuest(0xFFFFFFFF81000000)
    got = highorder.kernel_symbols(first, highorder.SYMBOLS, highorder.SYMBOLS, tmp_path, "debian-6.12",
                                   Deadline(5, "t"))
    assert got == SYMBOLS and len(first.commands) == 2
    later = KallsymsGuest(0xFFFFFFFF9A200000)
    moved = highorder.kernel_symbols(later, highorder.SYMBOLS, highorder.SYMBOLS, tmp_path, "debian-6.12",
                                     Deadline(5, "t"))
    assert later.commands == [highorder.KERNEL_ID_COMMAND]
    assert moved == {name: address + 0x9A200000 - 0x81000000 for name, address in SYMBOLS.items()}
    # Another build (its version line differs) or another image: read in full again.
    for guest, image in ((KallsymsGuest(0xFFFFFFFF81000000, "Linux version 6.12.118 #2"), "debian-6.12"),
                         (KallsymsGuest(0xFFFFFFFF81000000), "my-image")):
        highorder.kernel_symbols(guest, highorder.SYMBOLS, highorder.SYMBOLS, tmp_path, image, Deadline(5, "t"))
        assert len(guest.commands) == 2
    # A cache file that is not one (cut short, edited) is read again, not trusted.
    for entry in tmp_path.glob("*.json"):
        entry.write_text("{\"version\": 1")
    again = KallsymsGuest(0xFFFFFFFF81000000)
    assert highorder.kernel_symbols(again, highorder.SYMBOLS, highorder.SYMBOLS, tmp_path, "debian-6.12",
                                    Deadline(5, "t")) == SYMBOLS
    assert len(again.commands) == 2


def test_a_guest_without_a_readable_text_symbol_is_named():
    with pytest.raises(ValueError, match="no _text address"):
        highorder.parse_kernel_id("Linux version 6.1\n0000000000000000 T _text\n")
    with pytest.raises(ValueError, match="no _text address"):
        highorder.parse_kernel_id("Linux version 6.1\n")


def test_a_symbol_this_kernel_lacks_is_remembered_as_absent(tmp_path):
    """PageHeadHuge is gone in 6.12: the cached table says so, rather than sending every
    later run through the whole /proc/kallsyms again."""
    from orchestrator.plumbing.deadline import Deadline
    wanted = (*highorder.SYMBOLS, "PageHeadHuge")

    class Guest(KallsymsGuest):
        def check(self, command, deadline, phase):
            if command == highorder.kallsyms_command((*wanted, "_text")):
                self.commands.append(command)
                return "".join(line + "\n" for line in (SYMBOLS_TEXT + "_text ffffffff81000000").splitlines())
            return super().check(command, deadline, phase)

    for reads in (2, 1):
        guest = Guest(0xFFFFFFFF81000000)
        got = highorder.kernel_symbols(guest, wanted, highorder.SYMBOLS, tmp_path, "debian-6.12", Deadline(5, "t"))
        assert got == SYMBOLS and len(guest.commands) == reads
