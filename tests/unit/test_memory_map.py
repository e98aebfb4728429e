import pytest

from orchestrator.guest import memory_map

# QEMU 7.2, `info mtree -f` of a paused `-machine pc -m 3584 -nodefaults`: the flat
# view for "memory" is not the first one, an SMM view repeats it, and the
# below-4G RAM ends at 3 GiB (not 3.5) with the rest above 4 GiB.
PC_3584 = """QEMU 7.2.22 monitor - type 'help' for more information
(qemu) info mtree -f
FlatView #0
 AS "I/O", root: io
 Root memory region: io
  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan

FlatView #1
 AS "memory", root: system
 AS "cpu-memory-0", root: system
 Root memory region: system
  0000000000000000-00000000000bffff (prio 0, ram): pc.ram
  00000000000c0000-00000000000dffff (prio 1, rom): pc.rom
  00000000000e0000-00000000000fffff (prio 0, rom): pc.bios @0000000000020000
  0000000000100000-00000000bfffffff (prio 0, ram): pc.ram @0000000000100000
  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic
  00000000fed00000-00000000fed003ff (prio 0, i/o): hpet
  00000000fee00000-00000000feefffff (prio 4096, i/o): apic-msi
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios
  0000000100000000-000000011fffffff (prio 0, ram): pc.ram @00000000c0000000

FlatView #3
 AS "cpu-smm-0", root: memory
 Root memory region: memory
  0000000000000000-00000000ffffffff (prio 0, ram): pc.ram

(qemu) quit
"""

# The guest's own QEMU with qboot (64 KiB) as its BIOS: 0xe0000-0xeffff stays RAM.
PC_512_QBOOT = """FlatView #0
 AS "memory", root: system
 AS "cpu-memory-0", root: system
 Root memory region: system
  0000000000000000-00000000000bffff (prio 0, ram): pc.ram
  00000000000c0000-00000000000dffff (prio 1, rom): pc.rom
  00000000000e0000-00000000000effff (prio 0, ram): pc.ram @00000000000e0000
  00000000000f0000-00000000000fffff (prio 0, rom): pc.bios
  0000000000100000-000000001fffffff (prio 0, ram): pc.ram @0000000000100000
  00000000ffff0000-00000000ffffffff (prio 0, rom): pc.bios
"""


def test_ram_of_the_system_flat_view_only():
    assert memory_map.parse_flat_ram(PC_3584) == (
        (0, 0xC0000), (0x100000, 0xC0000000), (1 << 32, (1 << 32) + (512 << 20)))


def test_rom_windows_below_1mib_are_holes_and_adjacent_ram_merges():
    ranges = memory_map.parse_flat_ram(PC_512_QBOOT)
    assert ranges == ((0, 0xC0000), (0xE0000, 0xF0000), (0x100000, 512 << 20))
    assert not memory_map.contains(ranges, 0xC0000) and not memory_map.contains(ranges, 0xFF000)
    assert memory_map.contains(ranges, 0xE0000) and memory_map.contains(ranges, (512 << 20) - 1)
    assert memory_map.describe(ranges) == "0x0-0xbffff, 0xe0000-0xeffff, 0x100000-0x1fffffff"


def test_no_system_view_is_an_error():
    with pytest.raises(memory_map.MemoryMapError):
        memory_map.parse_flat_ram("(qemu) info mtree -f\nunknown command\n")


@pytest.mark.parametrize("mib, ranges", [
    (512, ((0, 512 << 20), (1 << 32, (1 << 32) + (512 << 20)))),
    (8192, ((0, (1 << 32) + (8192 << 20)),)),
])
def test_envelope_bounds_any_layout(mib, ranges):
    assert memory_map.envelope(mib << 20) == ranges
