"""`mce-orchestrator decode STATUS [MCG_STATUS]`: an MCi_STATUS / MCG_STATUS value, bit by bit,
with the error-code (MCACOD) meanings, as mcelog prints them (Intel SDM vol. 3B, 16.3.2.2
and 16.9). Pure: values in, lines out.
"""
from __future__ import annotations

from orchestrator.inject import mce

STATUS_FLAGS = [
    (63, "VAL", "valid: the register holds an error"),
    (62, "OVER", "overflow: an earlier error was lost"),
    (61, "UC", "uncorrected error"),
    (60, "EN", "error reporting enabled: signalled as a machine check"),
    (59, "MISCV", "MCi_MISC holds more information"),
    (58, "ADDRV", "MCi_ADDR holds the error's address"),
    (57, "PCC", "processor context corrupt: execution cannot go on safely"),
    (56, "S", "signaling: a recoverable error reported through a machine check (UCR)"),
    (55, "AR", "action required: software must act before going on (SRAR)"),
]
MCG_FLAGS = [
    (0, "RIPV", "restart IP valid: the interrupted program can go on"),
    (1, "EIPV", "error IP valid: the saved IP points at the instruction that hit the error"),
    (2, "MCIP", "machine check in progress"),
    (3, "LMCE_S", "local machine check: only this logical CPU got it"),
]

_TT = {0: "instruction", 1: "data", 2: "generic", 3: "reserved"}
_LL = {0: "level 0", 1: "level 1", 2: "level 2", 3: "generic level"}
_RRRR = {0: "generic error", 1: "read", 2: "write", 3: "data read", 4: "data write", 5: "instruction fetch",
         6: "prefetch", 7: "eviction", 8: "snoop"}
_MMM = {0: "generic undefined request", 1: "memory read", 2: "memory write", 3: "address/command",
        4: "memory scrubbing"}
_PP = {0: "local processor originated", 1: "local processor responded", 2: "local processor observed",
       3: "generic"}
_II = {0: "memory access", 1: "reserved", 2: "I/O", 3: "other transaction"}
_SIMPLE = {0x0000: "no error", 0x0001: "unclassified", 0x0002: "microcode ROM parity error",
           0x0003: "external error (from another processor)", 0x0004: "FRC error",
           0x0005: "internal parity error", 0x0006: "SMM handler code access violation",
           0x0400: "internal timer error"}


def mcacod(code: int) -> str:
    """The meaning of a 16-bit MCA error code (simple or compound)."""
    if code in _SIMPLE:
        return _SIMPLE[code]
    filtered = " (corrected, filtered)" if code & 0x1000 else ""
    c = code & ~0x1000
    ll, tt = c & 3, (c >> 2) & 3
    if c & 0xFF80 == 0x0080:
        channel = c & 0xF
        where = "channel unspecified" if channel == 0xF else f"channel {channel}"
        return f"memory controller error: {_MMM.get((c >> 4) & 7, 'reserved request')}, {where}{filtered}"
    if c & 0xFF00 == 0x0100:
        return (f"cache hierarchy error: {_RRRR.get((c >> 4) & 0xF, 'reserved request')}, {_TT[tt]} "
                f"transaction, {_LL[ll]} cache{filtered}")
    if c & 0xF800 == 0x0800:
        timeout = ", timed out" if c & 0x100 else ""
        return (f"bus/interconnect error: {_PP[(c >> 9) & 3]}, {_RRRR.get((c >> 4) & 0xF, 'reserved request')}, "
                f"{_II[(c >> 2) & 3]}, {_LL[ll]}{timeout}{filtered}")
    if c & 0xFFF0 == 0x0010:
        return f"TLB error: {_TT[tt]} transaction, {_LL[ll]}{filtered}"
    if c & 0xFFFC == 0x000C:
        return f"generic cache hierarchy error, {_LL[ll]}{filtered}"
    if c & 0xFC00 == 0x0400:
        return "internal unclassified error"
    return "reserved or model-specific error code"


def error_class(status: int) -> str:
    """The uncorrected-recovery class (SDM table 16-6) the UC, PCC, S and AR bits give."""
    uc, pcc, s, ar = (bool(status & bit) for bit in (mce.MCI_STATUS_UC, mce.MCI_STATUS_PCC,
                                                       mce.MCI_STATUS_S, mce.MCI_STATUS_AR))
    if not uc:
        return "CE: corrected error"
    if pcc:
        return "UC with PCC: fatal, the processor context is corrupt"
    if s and ar:
        return "SRAR: software recoverable, action required"
    if s:
        return "SRAO: software recoverable, action optional"
    if ar:
        return "invalid combination (AR without S)"
    return "UCNA: uncorrected, no action required"


def decode_status(status: int) -> list[str]:
    lines = [f"MCi_STATUS {status:#018x}: {error_class(status)}"]
    for bit, name, meaning in STATUS_FLAGS:
        lines.append(f"  bit {bit:2} {name:<6} {'1' if status >> bit & 1 else '0'}  {meaning}")
    if status & mce.MCI_STATUS_UC == 0 and status >> 53 & 3:
        lines.append(f"  bits 54:53 threshold status {status >> 53 & 3} (1 green, 2 yellow)")
    lines.append(f"  bits 52:38 corrected error count {status >> 38 & 0x7FFF}")
    lines.append(f"  bits 37:32 other information {status >> 32 & 0x3F:#x}")
    lines.append(f"  bits 31:16 MSCOD {status >> 16 & 0xFFFF:#06x} (model-specific error code)")
    lines.append(f"  bits 15:0  MCACOD {status & 0xFFFF:#06x}: {mcacod(status & 0xFFFF)}")
    return lines


def decode_mcg_status(mcg_status: int) -> list[str]:
    lines = [f"MCG_STATUS {mcg_status:#x}"]
    for bit, name, meaning in MCG_FLAGS:
        lines.append(f"  bit {bit} {name:<6} {'1' if mcg_status >> bit & 1 else '0'}  {meaning}")
    if mcg_status & mce.MCG_STATUS_MCIP and not mcg_status & mce.MCG_STATUS_RIPV:
        lines.append("  RIPV clear: the interrupted program cannot be restarted (the kernel must kill or panic)")
    return lines


def decode(status: int, mcg_status: int | None = None) -> list[str]:
    return decode_status(status) + (decode_mcg_status(mcg_status) if mcg_status is not None else [])
