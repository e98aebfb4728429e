"""Emulated persistent memory for a guest: a range of its RAM that the kernel's legacy
pmem support (memmap=SIZE!OFFSET, CONFIG_X86_PMEM_LEGACY: nd_e820, nd_pmem) turns into
/dev/pmem0, with struct pages in ZONE_DEVICE, so a filesystem on it can map its pages
with DAX. QEMU still sees plain RAM there (its memory map and the injection checks do
not change). Pure."""
from __future__ import annotations

# Where the range starts in guest-physical memory, and how much RAM the guest keeps.
# 256 MiB leaves the kernel image and early allocations below it; both ends lie on
# 128 MiB memory-section boundaries (sizes are whole sections, see the schema), so no
# section mixes pmem with system RAM.
START_MIB = 256
MIN_RAM_MIB = 384
DEVICE = "/dev/pmem0"


def kernel_arg(size_mib: int) -> str:
    """The kernel command-line argument that makes the range ('!' = persistent memory)."""
    return f"memmap={size_mib}M!{START_MIB}M"


def gpa_range(size_mib: int) -> tuple[int, int]:
    """[start, end) of the range, in bytes."""
    return START_MIB << 20, (START_MIB + size_mib) << 20
