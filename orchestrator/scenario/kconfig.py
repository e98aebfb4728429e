"""The kernel options a scenario needs, checked against the kernel's .config before booting.

As kselftest's per-directory `config` fragments do, the options are data: FRAGMENTS maps a
feature to the options it needs, and features() says from a scenario's own fields which
features it uses. An option counts as present when it is built in (=y), or a module (=m)
that the image's /init loads (MODULE_OF). With no .config found, GUEST_SIGNS says what to
look for in the booted guest instead. Pure: no files, no guests.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from orchestrator.scenario import Scenario


# feature -> options (without the CONFIG_ prefix) it needs, and why.
FRAGMENTS: dict[str, tuple[str, ...]] = {
    # Every scenario: the machine check itself, its handling, PFNs from /proc/PID/pagemap
    # and /proc/kpageflags, the initramfs and its /init (devtmpfs, debugfs), the serial
    # console the harness watches, SSH over virtio-net.
    "base": ("X86_MCE", "MEMORY_FAILURE", "PROC_PAGE_MONITOR", "BLK_DEV_INITRD", "DEVTMPFS", "DEBUG_FS",
             "SERIAL_8250_CONSOLE", "VIRTIO_PCI", "VIRTIO_NET"),
    "disk": ("VIRTIO_BLK", "EXT4_FS"),                  # guest.disk / probe memory: file
    # guest.pmem: memmap=SIZE!OFFSET -> e820 pmem (nd_e820), /dev/pmem0 with struct pages
    # (nd_pmem, ZONE_DEVICE), ext4 mounted -o dax (FS_DAX; busybox mke2fs writes ext2).
    # LIBNVDIMM is implied: X86_PMEM_LEGACY and BLK_DEV_PMEM depend on it.
    "pmem": ("X86_PMEM_LEGACY", "BLK_DEV_PMEM", "ZONE_DEVICE", "FS_DAX", "EXT4_FS",
             "EXT4_USE_FOR_EXT2"),
    "thp": ("TRANSPARENT_HUGEPAGE",),                   # probe memory: thp, thp-eligible
    "hugetlb": ("HUGETLBFS",),                          # probe memory: hugetlb
    "ksm": ("KSM",),                                    # probe memory: ksm
    "shmem": ("SHMEM",),                                # probe memory: shmem
    "io-uring": ("IO_URING",),                          # probe memory: swapcache-pinned (a fixed buffer pins it)
    "perf": ("PERF_EVENTS",),                           # probe memory: perf-ring
    "hwpoison-inject": ("HWPOISON_INJECT",),            # soft-poison / unpoison steps (debugfs)
    # The probe's madvise(MADV_HUGEPAGE/MERGEABLE/COLLAPSE) and posix_fadvise(DONTNEED):
    # without it both return ENOSYS (tinyconfig leaves it out).
    "madvise": ("ADVISE_SYSCALLS",),                    # probe memory: thp, ksm, file; collapse step
    # /sys/devices/system/memory/soft_offline_page is in drivers/base/memory.c, built
    # only with memory hotplug.
    "soft-offline": ("MEMORY_HOTPLUG",),                # soft-offline step
    "panic": ("PVPANIC", "PVPANIC_PCI"),                # expect guest: panic (QMP GUEST_PANICKED)
    "smp": ("SMP",),                                    # guest.vcpus > 1
    # probe memory: fuse-mlock*: the probe's own FUSE file system, move_pages() to node 1.
    "fuse-mlock": ("FUSE_FS", "NUMA", "MIGRATION"),
    # inject.race: take-free-block reads is_free_buddy_page, memory_failure and the
    # vmemmap_base variable from /proc/kallsyms (variables only with KALLSYMS_ALL).
    "kallsyms": ("KALLSYMS", "KALLSYMS_ALL"),
}

# Options that are modules in Debian's kernels, and the module /init must load for them.
MODULE_OF = {
    "VIRTIO_PCI": "virtio_pci",
    "VIRTIO_NET": "virtio_net",
    "VIRTIO_BLK": "virtio_blk",
    "EXT4_FS": "ext4",
    "HWPOISON_INJECT": "hwpoison_inject",
    "PVPANIC_PCI": "pvpanic_pci",
    "X86_PMEM_LEGACY": "nd_e820",
    "BLK_DEV_PMEM": "nd_pmem",
    "FUSE_FS": "fuse",
}

# With no .config to read, the options that leave a mark in a booted guest are checked
# there: option -> the path that exists only when the running kernel has it.
GUEST_SIGNS = {
    "TRANSPARENT_HUGEPAGE": "/sys/kernel/mm/transparent_hugepage",
    "HUGETLBFS": "/sys/kernel/mm/hugepages",
    "KSM": "/sys/kernel/mm/ksm",
    "HWPOISON_INJECT": "/sys/kernel/debug/hwpoison",
    "MEMORY_HOTPLUG": "/sys/devices/system/memory",
    "PERF_EVENTS": "/proc/sys/kernel/perf_event_paranoid",
    "KALLSYMS": "/proc/kallsyms",
    "NUMA": "/sys/devices/system/node",
    "FUSE_FS": "/dev/fuse",
}

_SET = re.compile(r"^CONFIG_([A-Za-z0-9_]+)=(.*)$")


def parse(text: str) -> dict[str, str]:
    """A .config -> {option without CONFIG_: value}; options that are not set are absent."""
    found = {}
    for line in text.splitlines():
        match = _SET.match(line.strip())
        if match and match.group(2) != "n":
            found[match.group(1)] = match.group(2).strip('"')
    return found


def features(scenario: Scenario) -> dict[str, str]:
    """{feature: what in the scenario asks for it}."""
    used = {"base": "every scenario"}
    memory = scenario.probe.memory
    if scenario.guest.pmem_mib:
        used["pmem"] = "guest.pmem"
    elif scenario.guest.disk_mib or memory == "file":
        used["disk"] = "guest.disk"
    if memory in ("thp", "thp-eligible"):
        used["thp"] = f"probe memory: {memory}"
    if memory in ("hugetlb", "ksm", "shmem"):
        used[memory] = f"probe memory: {memory}"
    if memory == "swapcache-pinned":
        used["io-uring"] = f"probe memory: {memory}"
    if memory == "perf-ring":
        used["perf"] = f"probe memory: {memory}"
    if memory.startswith("fuse-mlock"):
        used["fuse-mlock"] = f"probe memory: {memory}"
    steps = [s for s in scenario.probe.after_inject if s in ("soft-poison", "unpoison")]
    if steps:
        used["hwpoison-inject"] = f"probe step: {steps[0]}"
    if memory in ("thp", "thp-eligible", "ksm", "file"):
        used["madvise"] = f"probe memory: {memory}"
    elif "collapse" in scenario.probe.after_inject:
        used["madvise"] = "probe step: collapse"
    elif "madvise-hwpoison" in scenario.probe.after_inject:
        used["madvise"] = "probe step: madvise-hwpoison"
    if "soft-offline" in scenario.probe.after_inject:
        used["soft-offline"] = "probe step: soft-offline"
    if scenario.expect.guest == "panic":
        used["panic"] = "expect guest: panic"
    if scenario.guest.vcpus > 1:
        used["smp"] = f"guest.vcpus: {scenario.guest.vcpus}"
    if scenario.inject.race:
        # The guest process takes the block with THP faults (MADV_HUGEPAGE).
        for feature in ("thp", "madvise", "kallsyms"):
            used.setdefault(feature, f"inject.race: {scenario.inject.race}")
    return used


def missing(scenario: Scenario, config: Mapping[str, str], loaded_modules: Iterable[str]) -> list[str]:
    """One line per needed option the kernel lacks, naming the option and the scenario."""
    loaded = {m.replace("-", "_") for m in loaded_modules}
    lines = []
    for feature, why in features(scenario).items():
        for option in FRAGMENTS[feature]:
            value = config.get(option)
            if value == "y":
                continue
            if value == "m" and MODULE_OF.get(option, "") in loaded:
                continue
            # Nothing loads other modules on demand in the guest (no udev).
            state = "a module the image does not load (pass --modules?)" if value == "m" else "not set"
            lines.append(f"CONFIG_{option} is {state}: {scenario.name} needs it ({why})")
    # The vCPUs beyond NR_CPUS never come online: a machine check broadcast to them finds
    # machine checks disabled there, and QEMU resets the guest.
    cpus = config.get("NR_CPUS", "")
    if scenario.guest.vcpus > 1 and cpus.isdigit() and int(cpus) < scenario.guest.vcpus:
        lines.append(f"CONFIG_NR_CPUS is {cpus}: {scenario.name} needs {scenario.guest.vcpus} "
                     f"(guest.vcpus: {scenario.guest.vcpus})")
    return lines


def guest_signs(scenario: Scenario) -> dict[str, str]:
    """{path: option} for the options this scenario needs that GUEST_SIGNS can see."""
    return {GUEST_SIGNS[o]: o for feature in features(scenario) for o in FRAGMENTS[feature] if o in GUEST_SIGNS}


def missing_in_guest(scenario: Scenario, absent_paths: Iterable[str]) -> list[str]:
    """One line per needed option whose mark the booted guest lacks (no .config was found)."""
    why = {o: w for feature, w in features(scenario).items() for o in FRAGMENTS[feature]}
    signs = guest_signs(scenario)
    return [f"CONFIG_{signs[p]} is not in the booted kernel (no {p}; no config found): {scenario.name} needs it "
            f"({why[signs[p]]})" for p in absent_paths if p in signs]
