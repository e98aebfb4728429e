"""Evidence gathered in parts: one failure costs one part, each part keeps its own deadline."""
import time

import pytest

from orchestrator.judge.verdict import Evidence
from orchestrator.observe import PARTS, gather_parts
from orchestrator.plumbing.guest_data import parse_kpageflags
from orchestrator.plumbing.outcome import HarnessError

PFN = 0x671E
MEMINFO = "MemTotal:  500000 kB\nHardwareCorrupted:     4 kB\n"
KPAGEFLAGS = f'{{"event":"kpageflags","pfn":{PFN},"flags":17180393498}}\n'


class FakeSsh:
    """Answers commands from a table; a value that is an exception is raised instead."""

    port = 1  # nobody listens: no banner
    host = "127.0.0.1"
    via = None

    def __init__(self, answers: dict, connected=True):
        self.answers = answers
        self.commands: list[str] = []
        self.budgets: list[float] = []
        self._connected = connected

    def connected(self) -> bool:
        return self._connected

    def check(self, command, deadline, phase, limit=None):
        self.commands.append(command)
        self.budgets.append(deadline.remaining())
        for prefix, answer in self.answers.items():
            if command.startswith(prefix):
                if isinstance(answer, Exception):
                    raise answer
                return answer
        raise AssertionError(f"unexpected command {command}")


def answers(**over):
    table = {"/tmp/mce-probe --kpageflags": KPAGEFLAGS, "cat /proc/meminfo": MEMINFO,
             "dmesg": "[ 1.0] Memory failure: 0x671e: Recovered\n", "cat /run/dropbear.log": "sshd log\n"}
    table.update(over)
    return table


def gathered(ssh, down=None):
    ev = Evidence(checked_pfn=PFN)
    gather_parts(ssh, ev, abort=lambda: down)
    return ev


def test_every_part_is_its_own_command():
    ssh = FakeSsh(answers())
    ev = gathered(ssh)
    assert len(ssh.commands) == len(PARTS) == 4
    assert ev.kpageflags == 17180393498 and ev.hardware_corrupted_kb_after == 4
    assert "Recovered" in ev.kernel_log and ev.sshd_log == "sshd log\n"
    assert ev.guest_answered_after is True and ev.unavailable == {}


def test_a_part_that_times_out_costs_only_that_part(monkeypatch):
    monkeypatch.setattr("orchestrator.observe.banner_answers", lambda port, seconds, host, via: True)  # sshd still greets
    ssh = FakeSsh(answers(dmesg=HarnessError("observe", "'dmesg' did not finish within 5 s")))
    ev = gathered(ssh)
    assert ev.kernel_log is None and "did not finish" in ev.unavailable["kernel log"]
    assert ev.kpageflags is not None and ev.hardware_corrupted_kb_after == 4 and ev.sshd_log == "sshd log\n"
    assert ev.guest_answered_after is True


def test_each_part_gets_a_fresh_budget_after_the_phase_deadline_is_spent():
    """Gathering runs after the phase's own deadline has passed (a hung probe): each part still
    gets its own bounded time, not the 0 s the phase has left."""
    ssh = FakeSsh(answers())
    ev = Evidence(checked_pfn=PFN)
    gather_parts(ssh, ev, abort=lambda: None, part_s=3.0)
    assert all(2.5 < budget <= 3.0 for budget in ssh.budgets)


def test_once_ssh_is_gone_the_other_parts_are_not_tried():
    ssh = FakeSsh(answers(**{"/tmp/mce-probe --kpageflags": HarnessError("ssh", "cannot log in")}), connected=False)
    ev = gathered(ssh)
    assert len(ssh.commands) == 1
    for part in ("kpageflags", "meminfo", "kernel log", "sshd log", "liveness check"):
        assert "no panic or reset seen; QEMU still running" in ev.unavailable[part]
    assert ev.guest_answered_after is None  # not evidence against the kernel


def test_a_guest_that_went_down_is_not_asked():
    ssh = FakeSsh(answers())
    ev = gathered(ssh, down="the guest panicked")
    assert ssh.commands == []
    assert ev.unavailable["kpageflags"] == "the guest panicked" and ev.guest_answered_after is False


def test_an_unreadable_part_is_evidence_not_an_exception():
    ssh = FakeSsh(answers(**{"cat /proc/meminfo": "garbage\n", "/tmp/mce-probe --kpageflags": "[1]\n"}))
    ev = gathered(ssh)
    assert "unreadable" in ev.unavailable["meminfo"] and "'garbage\\n'" in ev.unavailable["meminfo"]
    assert "unreadable" in ev.unavailable["kpageflags"]
    assert ev.kernel_log is not None and ev.guest_answered_after is True


@pytest.mark.parametrize("output", [
    "[1]\n" + KPAGEFLAGS,
    KPAGEFLAGS + "extra line\n",
    "not json\n" + KPAGEFLAGS + "\n",
])
def test_kpageflags_answer_with_extra_lines(output):
    assert parse_kpageflags(output, PFN) == 17180393498


@pytest.mark.parametrize("output", [
    "",
    "[1]\n",
    f'{{"event":"kpageflags","pfn":{PFN + 1},"flags":1}}\n',
    f'{{"event":"kpageflags","pfn":{PFN},"flags":"x"}}\n',
    f'{{"event":"kpageflags","pfn":{PFN},"flags":true}}\n',
    f'{{"event":"kpageflags","pfn":{PFN},"flags":{"9" * 5000}}}\n',
    KPAGEFLAGS + f'{{"event":"kpageflags","pfn":{PFN},"flags":1}}\n',
])
def test_kpageflags_answer_that_is_not_one_clear_value(output):
    start = time.monotonic()
    with pytest.raises(ValueError) as exc:
        parse_kpageflags(output, PFN)
    assert len(str(exc.value)) < 400  # a 5000-digit value is shown cut short
    assert time.monotonic() - start < 1


@pytest.mark.parametrize("event, words", [
    ({"event": "SHUTDOWN", "data": {"guest": True, "reason": "guest-reset"}}, "the guest rebooted"),
    ({"event": "SHUTDOWN", "data": {"guest": True, "reason": "guest-shutdown"}}, "the guest powered off"),
    ({"event": "RESET", "data": {"guest": False, "reason": "host-qmp-system-reset"}}, "reset from the host"),
    ({"event": "GUEST_PANICKED", "data": {"action": "pause"}}, "the guest panicked"),
])
def test_each_way_down_is_named(event, words):
    from orchestrator.observe import _down_event
    assert words in _down_event(event)


def test_other_events_are_not_a_way_down():
    from orchestrator.observe import _down_event
    assert _down_event({"event": "GUEST_CRASHLOADED", "data": {}}) is None
    assert _down_event({"event": "RESUME"}) is None


def test_a_stalled_sshd_costs_one_part_deadline_not_all():
    ssh = FakeSsh(answers(**{"/tmp/mce-probe --kpageflags": HarnessError("observe", "'x' did not finish within 5 s")}))
    ev = gathered(ssh)
    assert len(ssh.commands) == 1  # no banner: the other parts are not tried
    for part in ("kpageflags", "meminfo", "kernel log", "sshd log"):
        assert "sshd stalled or the guest's network is down" in ev.unavailable[part]
    assert ev.causes and ev.causes[0].startswith("sshd stalled") and "cost the kpageflags, meminfo" in ev.causes[0]


def test_the_kernel_log_is_read_last_once_the_aftermath_watch_is_over():
    """The watch after the last step overlaps the other parts; the kernel log, the look
    that ends it, is asked for only once the guest has been watched until watch_until."""
    from orchestrator.observe import gathering_order
    times = {}

    class TimedSsh(FakeSsh):
        def check(self, command, deadline, phase, limit=None):
            times[command.split()[0]] = time.monotonic()
            return super().check(command, deadline, phase, limit)

    ssh = TimedSsh(answers())
    ev = Evidence(checked_pfn=PFN)
    start = time.monotonic()
    gather_parts(ssh, ev, abort=lambda: None, parts=gathering_order(PARTS), watch_until=start + 0.4)
    assert ssh.commands[-1].startswith("dmesg") and len(ssh.commands) == len(PARTS)
    assert times["dmesg"] >= start + 0.4
    assert times["cat"] < start + 0.2  # the other parts did not wait for the watch
    assert "Recovered" in ev.kernel_log


def test_a_guest_that_goes_down_during_the_aftermath_watch_is_not_asked_for_its_log():
    from orchestrator.observe import gathering_order
    ssh = FakeSsh(answers())
    ev = Evidence(checked_pfn=PFN)
    start = time.monotonic()
    gather_parts(ssh, ev, abort=lambda: "the guest panicked" if time.monotonic() > start + 0.2 else None,
                 parts=gathering_order(PARTS), watch_until=start + 5.0)
    assert time.monotonic() - start < 1.0  # the watch ended when the guest went down
    assert not any(c.startswith("dmesg") for c in ssh.commands)
    assert ev.unavailable["kernel log"] == "the guest panicked" and ev.guest_answered_after is False
