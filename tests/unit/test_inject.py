import pytest

from orchestrator.inject import inject, parse_registers
from orchestrator.inject import mce
from orchestrator.plumbing.deadline import Deadline
from orchestrator.plumbing.outcome import HarnessError

REGS_USER = """RAX=0000000000000000 RBX=00007f0000001000
RSI=0 RDI=0 RBP=0 RSP=00007ffd8a0c1e50
R8 =0000000000000000
RIP=0000000000401b8d RFL=00000246 [---Z-P-] CPL=3 II=0 A20=1 SMM=0 HLT=0
"""
REGS_KERNEL = REGS_USER.replace("RIP=0000000000401b8d", "RIP=ffffffff81234567").replace("CPL=3", "CPL=0")
LIMITS = mce.MceLimits(vcpus=1, banks=10, ram_ranges=((0, 512 << 20),))


def test_parse_registers():
    assert parse_registers(REGS_USER) == (3, 0x401B8D)
    assert parse_registers(REGS_KERNEL) == (0, 0xFFFFFFFF81234567)
    with pytest.raises(ValueError):
        parse_registers("garbage")


class FakeMonitor:
    """Answers HMP like QEMU does; records what was sent."""

    def __init__(self, registers):
        self.registers = list(registers)
        self.sent = []

    def hmp(self, line, timeout=10):
        self.sent.append(line)
        return ""

    def hmp_query(self, line, timeout=10, cpu=None):
        self.sent.append(f"{line} (cpu {cpu})")
        return self.registers.pop(0) if len(self.registers) > 1 else self.registers[0]


def test_gated_injection_waits_for_user_mode_in_the_loop():
    monitor = FakeMonitor([REGS_KERNEL, REGS_USER.replace("401b8d", "401000"), REGS_USER])
    result = inject(monitor, mce.PRESETS["srar"], cpu=0, address=0x5000, broadcast=False, limits=LIMITS,
                    deadline=Deadline(5, "inject"), user_loop=(0x401B8D, 0x401B91))
    assert result.attempts == 3 and result.rip == 0x401B8D
    # The registers looked at are the target vCPU's, in the same monitor call.
    assert monitor.sent.count("info registers (cpu 0)") == 3
    mce_lines = [s for s in monitor.sent if s.startswith("mce ")]
    assert mce_lines == ["mce 0 9 0xbd80000000000134 0x7 0x5000 0x8c"]
    # The MCE is sent while stopped, and every stop is followed by cont.
    assert monitor.sent.count("stop") == monitor.sent.count("cont") == 3
    assert monitor.sent.index(mce_lines[0]) < len(monitor.sent) - 1 and monitor.sent[-1] == "cont"


def test_gate_gives_up_at_the_deadline():
    monitor = FakeMonitor([REGS_KERNEL])
    with pytest.raises(HarnessError, match="never in the probe's loop"):
        inject(monitor, mce.PRESETS["srar"], cpu=0, address=0x5000, broadcast=False, limits=LIMITS,
               deadline=Deadline(0.2, "inject"), user_loop=(0x401B8D, 0x401B91))
    assert not any(s.startswith("mce ") for s in monitor.sent)


def test_invalid_address_is_refused_before_anything_is_sent():
    monitor = FakeMonitor([REGS_USER])
    with pytest.raises(HarnessError, match="outside guest RAM"):
        inject(monitor, mce.PRESETS["srao"], cpu=0, address=1 << 30, broadcast=False, limits=LIMITS,
               deadline=Deadline(1, "inject"), user_loop=None)
    assert monitor.sent == []


class PerCpuMonitor(FakeMonitor):
    """vCPU 1 runs the probe's loop in user mode; vCPU 0 is in the kernel. Like QEMU,
    a separate `cpu 1` command does not change what a later call looks at."""

    def hmp_query(self, line, timeout=10, cpu=None):
        self.sent.append(f"{line} (cpu {cpu})")
        return REGS_USER if cpu == 1 else REGS_KERNEL


def test_gate_looks_at_the_target_vcpu():
    limits = mce.MceLimits(vcpus=2, banks=10, ram_ranges=((0, 512 << 20),))
    monitor = PerCpuMonitor([])
    result = inject(monitor, mce.PRESETS["srar"], cpu=1, address=0x5000, broadcast=True, limits=limits,
                    deadline=Deadline(2, "inject"), user_loop=(0x401B8D, 0x401B91))
    assert result.attempts == 1
    assert "mce -b 1 9 0xbd80000000000134 0x7 0x5000 0x8c" in monitor.sent


class DyingMonitor(FakeMonitor):
    """QEMU went down with the machine check: the `cont` after it finds no monitor."""

    def hmp(self, line, timeout=10):
        if line == "cont" and any(s.startswith("mce ") for s in self.sent):
            from orchestrator.guest.monitor import MonitorError
            raise MonitorError("HMP cont: Broken pipe")
        return super().hmp(line, timeout)


@pytest.mark.parametrize("why", [None, "QEMU reset the guest: a vCPU had machine checks disabled"])
def test_a_monitor_that_fails_under_the_injection_names_the_guest_going_down(why, monkeypatch):
    import orchestrator.inject as injecting
    monkeypatch.setattr(injecting, "DOWN_AFTER_MONITOR_ERROR_S", 0.2)
    monitor = DyingMonitor([REGS_USER])
    with pytest.raises(HarnessError) as raised:
        inject(monitor, mce.PRESETS["srar"], cpu=0, address=0x5000, broadcast=False, limits=LIMITS,
               deadline=Deadline(5, "inject"), user_loop=(0x401B8D, 0x401B91),
               down=lambda: why if any(s.startswith("mce ") for s in monitor.sent) else None)
    # The control (nothing says the guest went down): the monitor's own words, as before.
    assert raised.value.message == (f"{why}; the monitor then failed: HMP cont: Broken pipe" if why
                                    else "HMP cont: Broken pipe")
