import subprocess

from orchestrator.guest.images import pmem
from orchestrator.runner import mount_pmem


def test_the_range_is_whole_memory_sections_above_the_kernel():
    assert pmem.kernel_arg(128) == "memmap=128M!256M"
    start, end = pmem.gpa_range(128)
    assert (start, end) == (0x10000000, 0x18000000)
    assert start % (128 << 20) == 0 and end % (128 << 20) == 0


def test_the_guest_set_up_is_valid_shell_and_mounts_with_dax_only():
    command = mount_pmem()
    assert subprocess.run(["sh", "-n", "-c", command]).returncode == 0
    # Formatted only after the device exists, mounted with -o dax (never a plain mount).
    assert command.index("[ -b /dev/pmem0 ]") < command.index("mke2fs") < command.index("mount -t ext4 -o dax")
    assert command.count("mount -t") == 1
