"""Pure parts of a kept guest: inject by PID (pagemap, the process's code ranges), ssh with the pinned key."""
import shlex
from pathlib import Path

import pytest

from orchestrator.guest.keep import KeptGuest, executable_ranges, pagemap_pfn, ssh_argv, translate_command
from orchestrator.guest.qemu import argv as qemu_args
from orchestrator.plumbing.outcome import InputError


def test_a_kept_guest_gets_a_second_qmp_monitor_on_its_private_socket():
    argv = qemu_args.build_argv(qemu_args.QemuConfig(
        kernel=Path("/k"), initrd=Path("/i"), console_log=Path("/c"), qmp_fd=5, ssh_port=1,
        kept_qmp_socket=Path("/tmp/mce-kept-x/qmp.sock")))
    assert "socket,id=qmp-kept,path=/tmp/mce-kept-x/qmp.sock,server=on,wait=off" in argv
    assert "chardev=qmp-kept,mode=control" in argv and "chardev=qmp,mode=control" in argv
    plain = qemu_args.build_argv(qemu_args.QemuConfig(kernel=Path("/k"), initrd=Path("/i"), console_log=Path("/c"),
                                                      qmp_fd=5, ssh_port=1))
    assert not any("qmp-kept" in a for a in plain)


def test_pagemap_entries():
    assert pagemap_pfn((1 << 63) | 0x671E, 84, 0x7F0000001000) == 0x671E
    with pytest.raises(InputError, match="no page is mapped"):
        pagemap_pfn(0, 84, 0x1000)
    with pytest.raises(InputError, match="swapped out, or already poisoned"):
        pagemap_pfn((1 << 62) | 5, 84, 0x1000)
    with pytest.raises(InputError, match="hid the PFN"):
        pagemap_pfn(1 << 63, 84, 0x1000)
    assert translate_command(84, 0x7F0000001234) == (
        f"dd if=/proc/84/pagemap bs=8 skip={0x7F0000001234 >> 12} count=1 2>/dev/null | od -An -tx8")


def test_executable_ranges_from_maps():
    maps = ("00400000-00401000 r--p 00000000 00:02 5 /probe\n"
            "00401000-00480000 r-xp 00001000 00:02 5 /probe\n"
            "7ffd1000-7ffd3000 rw-p 00000000 00:00 0 [stack]\n"
            "7ffd5000-7ffd7000 r-xp 00000000 00:00 0 [vdso]\n")
    assert executable_ranges(maps) == ((0x401000, 0x480000), (0x7FFD5000, 0x7FFD7000))


def test_ssh_pins_the_host_key_and_trusts_nothing_else():
    guest = KeptGuest(scenario="s", artifacts="/r/s", qemu_pid=1, qmp_socket="/tmp/mce-kept-1/qmp.sock",
                      ssh_port=4022, client_key="/c/keys/client_key", host_key_line="ssh-ed25519 AAAA",
                      known_hosts="/r/s/known_hosts", vcpus=1, memory_mib=512, machine="pc", kernel_release="6.1")
    argv = ssh_argv(guest, ["uname", "-r"])
    joined = shlex.join(argv)
    assert "StrictHostKeyChecking=yes" in joined and "UserKnownHostsFile=/r/s/known_hosts" in joined
    assert "GlobalKnownHostsFile=/dev/null" in joined and argv[-3:] == ["root@127.0.0.1", "uname", "-r"]
    assert guest.limits.vcpus == 1


class _PanickedMonitor:
    """A kept guest's monitor whose guest panicked while the mce line was still being answered:
    the panic's events are already in when the watch begins."""

    def __init__(self, before: int):
        self._events = [{"event": "RESUME"}] * before + [
            {"event": "MEMORY_FAILURE", "data": {"action": "inject"}},
            {"event": "GUEST_PANICKED", "data": {"action": "pause"}}, {"event": "STOP"}]
        self.executed: list[str] = []

    def events(self) -> list[dict]:
        return self._events

    def execute(self, command: str, **_) -> None:
        self.executed.append(command)


def test_a_panic_that_came_while_the_mce_line_was_answered_is_seen(tmp_path, monkeypatch):
    # CI on 47f7c6c: the guest panicked 11 ms after the mce line, before the watch counted the
    # events, and `inject` said "still running (watched 60.1 s)" of a panicked guest.
    from orchestrator.guest import keep
    monkeypatch.setattr(keep, "PANIC_TEXT_S", 0.2)
    console = tmp_path / "console.log"
    console.write_text("[ 1.0] Kernel panic - not syncing: Fatal machine check\n")
    monitor = _PanickedMonitor(before=2)
    after = keep.watch(monitor, console, 0, 0x2100, 2.0, events_before=2)
    assert after.down and "panicked" in after.down
    assert after.watched_s < 1.5
    assert monitor.executed == ["cont"]  # resumed for its panic text
    assert after.report()[0] == "guest: DOWN: the guest panicked: Kernel panic - not syncing: Fatal machine check"
    # Counted after the fact (the old way), the same guest looks alive: the control.
    counted_late = _PanickedMonitor(before=2)
    late = keep.watch(counted_late, console, 0, 0x2100, 0.3, len(counted_late.events()))
    assert late.down is None
