"""Machine-check encoding: presets and raw fields -> an HMP `mce` line.

Pure functions only. The preset values are the ones QEMU itself uses when it
forwards a host memory error into an Intel guest (target/i386/kvm/kvm.c).
"""
from __future__ import annotations

from dataclasses import dataclass

# IA32_MCi_STATUS bits (Intel SDM vol. 3B, 16.3.2.2).
MCI_STATUS_VAL = 1 << 63
MCI_STATUS_OVER = 1 << 62
MCI_STATUS_UC = 1 << 61
MCI_STATUS_EN = 1 << 60
MCI_STATUS_MISCV = 1 << 59
MCI_STATUS_ADDRV = 1 << 58
MCI_STATUS_PCC = 1 << 57
MCI_STATUS_S = 1 << 56
MCI_STATUS_AR = 1 << 55

# IA32_MCG_STATUS bits.
MCG_STATUS_RIPV = 1 << 0
MCG_STATUS_EIPV = 1 << 1
MCG_STATUS_MCIP = 1 << 2

# QEMU's MCE_BANKS_DEF: the bank count every x86 CPU model gets.
QEMU_MCE_BANKS = 10

_STATUS_BIT_NAMES = [
    (MCI_STATUS_VAL, "VAL"), (MCI_STATUS_OVER, "OVER"), (MCI_STATUS_UC, "UC"),
    (MCI_STATUS_EN, "EN"), (MCI_STATUS_MISCV, "MISCV"), (MCI_STATUS_ADDRV, "ADDRV"),
    (MCI_STATUS_PCC, "PCC"), (MCI_STATUS_S, "S"), (MCI_STATUS_AR, "AR"),
]
_MCG_BIT_NAMES = [(MCG_STATUS_RIPV, "RIPV"), (MCG_STATUS_EIPV, "EIPV"), (MCG_STATUS_MCIP, "MCIP")]


@dataclass(frozen=True)
class MceFields:
    bank: int
    status: int
    mcg_status: int
    misc: int


PRESETS: dict[str, MceFields] = {
    # Memory scrub found an error: software recoverable, action optional.
    "srao": MceFields(bank=9, status=0xBD000000000000C0, mcg_status=0x5, misc=0x8C),
    # Data load consumed poison: software recoverable, action required.
    "srar": MceFields(bank=9, status=0xBD80000000000134, mcg_status=0x7, misc=0x8C),
    # Uncorrected, no action: logged, nothing signalled.
    "ucna": MceFields(bank=7, status=0xBC00000000010090, mcg_status=0x0, misc=0x8C),
    # Corrected memory error: only seen when the guest polls its banks.
    "ce": MceFields(bank=9, status=0x9C000000000000C0, mcg_status=0x0, misc=0x8C),
}


class MceError(ValueError):
    """An MCE that must not be sent; the message says which field and why."""


@dataclass(frozen=True)
class MceLimits:
    """What the guest actually has: checked before anything is sent."""
    vcpus: int
    banks: int
    ram_ranges: tuple[tuple[int, int], ...]  # [start, end) guest-physical, from QEMU (memory_map)


def validate(fields: MceFields, *, cpu: int, address: int, limits: MceLimits, outside_ram: bool = False) -> None:
    """Refuse what QEMU would drop or the guest would ignore. outside_ram: the
    address is meant to lie outside guest RAM (memory the kernel does not
    manage), and must."""
    if not 0 <= cpu < limits.vcpus:
        # QEMU ignores a missing CPU index silently: refuse it here.
        raise MceError(f"cpu {cpu} does not exist (guest has {limits.vcpus} vCPU(s))")
    if not 0 <= fields.bank < limits.banks:
        raise MceError(f"bank {fields.bank} out of range (guest has {limits.banks} banks, 0-{limits.banks - 1})")
    if not fields.status & MCI_STATUS_VAL:
        raise MceError(f"status {fields.status:#x} lacks VAL (bit 63): the guest would ignore it")
    for name, value in (("status", fields.status), ("mcg_status", fields.mcg_status),
                        ("misc", fields.misc), ("address", address)):
        if not 0 <= value < 1 << 64:
            raise MceError(f"{name} {value:#x} does not fit in 64 bits")
    in_ram = any(lo <= address < hi for lo, hi in limits.ram_ranges)
    if fields.status & MCI_STATUS_ADDRV and in_ram == outside_ram:
        ram = ", ".join(f"{lo:#x}-{hi - 1:#x}" for lo, hi in limits.ram_ranges)
        raise MceError(f"address {address:#x} is {'inside' if in_ram else 'outside'} guest RAM ({ram})")


def first_address_above_ram(limits: MceLimits) -> int:
    """The first guest-physical page above the top of guest RAM: no memory there."""
    return max(hi for _, hi in limits.ram_ranges)


def hmp_command(fields: MceFields, *, cpu: int, address: int, broadcast: bool = False) -> str:
    """The HMP line `mce [-b] cpu bank status mcg_status addr misc`."""
    flag = "-b " if broadcast else ""
    return (f"mce {flag}{cpu} {fields.bank} {fields.status:#x} {fields.mcg_status:#x} "
            f"{address:#x} {fields.misc:#x}")


def describe(fields: MceFields) -> str:
    """Human-readable decoding for reports, e.g. 'bank 9 VAL|UC|EN|... (SRAR)'."""
    status_bits = "|".join(n for bit, n in _STATUS_BIT_NAMES if fields.status & bit)
    mcg_bits = "|".join(n for bit, n in _MCG_BIT_NAMES if fields.mcg_status & bit) or "0"
    return (f"bank {fields.bank} status {status_bits} mcacod {fields.status & 0xFFFF:#06x} "
            f"mcg {mcg_bits} ({classify(fields.status)})")


def classify(status: int) -> str:
    """The class the guest's severity grading will put this in."""
    if not status & MCI_STATUS_UC:
        return "CE"
    if status & MCI_STATUS_PCC:
        return "UC-PCC (fatal)"
    if not status & MCI_STATUS_S:
        return "UCNA"
    return "SRAR" if status & MCI_STATUS_AR else "SRAO"


def action_required(fields: MceFields) -> bool:
    """What QEMU's MEMORY_FAILURE event should report for this injection."""
    return bool(fields.status & MCI_STATUS_AR)
