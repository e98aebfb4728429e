"""The guest's RAM, as its QEMU lays it out: read from QEMU, not recomputed.

QEMU's layout rules (where the below-4G RAM ends for each machine type and
size, the legacy VGA and ROM windows below 1 MiB) change with machine types
and versions; a copy of them in Python drifts. So the ranges an injection is
checked against come from HMP `info mtree -f` of the guest's own QEMU, asked
while it is paused before the guest runs (firmware has not yet shadowed its
ROMs into RAM): the flat view of the system address space, entries of type
`ram`.
"""
from __future__ import annotations

import re
import subprocess
from functools import lru_cache
from pathlib import Path

Ranges = tuple[tuple[int, int], ...]  # [start, end) guest-physical, sorted, merged

_FLATVIEW = re.compile(r"^FlatView #\d+")
_AS = re.compile(r'^\s*AS "([^"]+)"')
_RANGE = re.compile(r"^\s*([0-9a-f]+)-([0-9a-f]+) \(prio -?\d+, ([a-z/-]+)\): (\S+)")


class MemoryMapError(ValueError):
    """QEMU's answer has no system memory flat view we can read."""


def parse_flat_ram(text: str) -> Ranges:
    """RAM ranges of the flat view that serves address space "memory" in
    `info mtree -f` output; adjacent ranges merged."""
    views: list[tuple[set[str], list[tuple[int, int, str]]]] = []
    for line in text.splitlines():
        if _FLATVIEW.match(line):
            views.append((set(), []))
        elif views and (m := _AS.match(line)):
            views[-1][0].add(m.group(1))
        elif views and (m := _RANGE.match(line)):
            views[-1][1].append((int(m.group(1), 16), int(m.group(2), 16) + 1, m.group(3)))
    for names, entries in views:
        if "memory" in names:
            return merge((start, end) for start, end, kind in entries if kind == "ram")
    raise MemoryMapError("no flat view for address space 'memory' in QEMU's 'info mtree -f'")


def merge(ranges) -> Ranges:
    out: list[list[int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return tuple((s, e) for s, e in out)


def contains(ranges: Ranges, address: int) -> bool:
    return any(lo <= address < hi for lo, hi in ranges)


def describe(ranges: Ranges) -> str:
    return ", ".join(f"{lo:#x}-{hi - 1:#x}" for lo, hi in ranges) or "none"


def envelope(memory_bytes: int) -> Ranges:
    """Where any RAM of a guest this size can possibly be, whatever the layout:
    it starts at 0 and, past the below-4G split, at 4 GiB, and there is no
    more of it than the guest's size. A load-time check that can be loose but
    never wrong; QEMU's own map decides."""
    return merge([(0, min(memory_bytes, 1 << 32)), (1 << 32, (1 << 32) + memory_bytes)])


def standin_argv(binary: str, machine: str, memory_mib: int, firmware: Path | None = None) -> list[str]:
    """A paused QEMU with the guest's machine, memory and firmware (its size
    decides how much of 0xe0000-0xfffff stays RAM), and nothing else."""
    return [binary, "-machine", f"{machine},accel=tcg", "-m", str(memory_mib), "-nodefaults", "-no-user-config",
            "-display", "none", "-S", "-monitor", "stdio", "-serial", "none", "-parallel", "none"] + \
        (["-bios", str(firmware)] if firmware is not None else [])


@lru_cache(maxsize=None)
def standin_ram_ranges(binary: str, machine: str, memory_mib: int, firmware: Path | None = None,
                       timeout: float = 20) -> Ranges:
    """The RAM map of a guest of this machine type and size, before a guest
    exists: QEMU started paused, asked, and told to quit (milliseconds)."""
    try:
        proc = subprocess.run(standin_argv(binary, machine, memory_mib, firmware), input="info mtree -f\nquit\n",
                              capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MemoryMapError(f"cannot ask {binary} for its memory map: {exc}") from None
    try:
        return parse_flat_ram(proc.stdout)
    except MemoryMapError:
        why = (proc.stderr.strip() or proc.stdout.strip() or f"exit code {proc.returncode}").splitlines()[-1]
        raise MemoryMapError(f"{binary} -machine {machine} -m {memory_mib} gave no memory map: {why}") from None
