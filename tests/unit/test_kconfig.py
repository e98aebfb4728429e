"""The config check before booting: the options each scenario needs, one line per lack."""
from pathlib import Path

import pytest

from orchestrator.guest.images.modules import DEFAULT_MODULES

from orchestrator.scenario import catalog, expand, load_scenario

from orchestrator.scenario import kconfig


SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"

# What a Debian kernel has: the bools built in, the drivers as modules /init loads.
DEBIAN_LIKE = "\n".join(
    [f"CONFIG_{o}=y" for f in kconfig.FRAGMENTS.values() for o in f if o not in kconfig.MODULE_OF]
    + [f"CONFIG_{o}=m" for o in kconfig.MODULE_OF] + ["# CONFIG_KSM_UNUSED is not set", 'CONFIG_LOCALVERSION="-x"'])


def scenario(name):
    return load_scenario(SCENARIOS / f"{name}.yaml")


def test_parse_keeps_set_options_only():
    config = kconfig.parse("CONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_D=n\nCONFIG_E=\"x y\"\n")
    assert config == {"A": "y", "B": "m", "E": "x y"}


def test_a_debian_like_kernel_lacks_nothing_for_the_whole_catalog():
    config = kconfig.parse(DEBIAN_LIKE)
    for name in catalog(SCENARIOS):
        for one in expand(scenario(name)):
            assert kconfig.missing(one, config, DEFAULT_MODULES) == [], one.name


def test_each_feature_is_asked_for_by_a_catalog_scenario():
    # A fragment no scenario uses would be a check that can never fail.
    used = {f for name in catalog(SCENARIOS) for one in expand(scenario(name)) for f in kconfig.features(one)}
    assert used == set(kconfig.FRAGMENTS)


@pytest.mark.parametrize("name, option, why", [
    ("thp-head", "TRANSPARENT_HUGEPAGE", "probe memory: thp"),
    ("hugetlb-2m", "HUGETLBFS", "probe memory: hugetlb"),
    ("ksm-merged-page", "KSM", "probe memory: ksm"),
    ("unpoison-after-soft-poison", "HWPOISON_INJECT", "probe step: soft-poison"),
    ("file-dirty-ext4", "EXT4_FS", "guest.disk"),
    ("dax-page", "X86_PMEM_LEGACY", "guest.pmem"),
    ("dax-page", "FS_DAX", "guest.pmem"),
    ("dax-page", "ZONE_DEVICE", "guest.pmem"),
    ("file-dirty-ext4", "ADVISE_SYSCALLS", "probe memory: file"),
    ("ksm-merged-page", "ADVISE_SYSCALLS", "probe memory: ksm"),
    ("zero-page-madvise-hwpoison", "ADVISE_SYSCALLS", "probe step: madvise-hwpoison"),
    ("swapcache-pinned-page", "IO_URING", "probe memory: swapcache-pinned"),
    ("perf-ring-madvise-hwpoison", "PERF_EVENTS", "probe memory: perf-ring"),
    ("soft-offline-sysfs", "MEMORY_HOTPLUG", "probe step: soft-offline"),
    ("srao-anon-late-kill", "MEMORY_FAILURE", "every scenario"),
    ("high-order-kernel-page", "TRANSPARENT_HUGEPAGE", "inject.race: take-free-block"),
    ("high-order-kernel-page", "KALLSYMS_ALL", "inject.race: take-free-block"),
    ("high-order-kernel-page", "SMP", "guest.vcpus: 2"),
    ("different-compound-page", "TRANSPARENT_HUGEPAGE", "inject.race: retake-thp-block"),
    ("different-compound-page", "KALLSYMS_ALL", "inject.race: retake-thp-block"),
])
def test_a_missing_option_is_one_line_naming_option_and_scenario(name, option, why):
    config = kconfig.parse(DEBIAN_LIKE)
    del config[option]
    lines = kconfig.missing(scenario(name), config, DEFAULT_MODULES)
    assert lines == [f"CONFIG_{option} is not set: {name} needs it ({why})"]


def test_a_module_the_image_does_not_load_counts_as_missing():
    config = kconfig.parse(DEBIAN_LIKE)
    loaded = [m for m in DEFAULT_MODULES if m != "ext4"]
    lines = kconfig.missing(scenario("file-clean-ext4"), config, loaded)
    assert len(lines) == 1 and lines[0].startswith("CONFIG_EXT4_FS is a module the image does not load")
    # Built in, it needs no module.
    config["EXT4_FS"] = "y"
    assert kconfig.missing(scenario("file-clean-ext4"), config, loaded) == []
    # A scenario without a disk does not care.
    del config["EXT4_FS"]
    assert kconfig.missing(scenario("srao-anon-late-kill"), config, loaded) == []


def test_without_a_config_the_booted_guest_is_looked_at():
    # Issue 22 item 5: no .config found; no /sys/kernel/mm/transparent_hugepage in the guest: THP missing.
    thp = load_scenario(SCENARIOS / "thp-head.yaml")
    assert "/sys/kernel/mm/transparent_hugepage" in kconfig.guest_signs(thp)
    assert kconfig.missing_in_guest(thp, ["/sys/kernel/mm/transparent_hugepage"]) == [
        "CONFIG_TRANSPARENT_HUGEPAGE is not in the booted kernel (no /sys/kernel/mm/transparent_hugepage; "
        "no config found): thp-head needs it (probe memory: thp)"]
    assert kconfig.missing_in_guest(thp, []) == []
    late = load_scenario(SCENARIOS / "srao-anon-late-kill.yaml")
    assert kconfig.guest_signs(late) == {}


def test_a_kernel_with_fewer_cpus_than_the_guest_has_vcpus_lacks_them():
    """A small-config 6.12 (NR_CPUS=2) booted with -smp 4: the broadcast machine check
    reached two vCPUs that never came online and QEMU reset the guest. Skipped instead."""
    [smp4] = [s for s in expand(scenario("srar-each-vcpu-smp4")) if s.name.endswith("cpu0")]
    config = kconfig.parse(DEBIAN_LIKE + "\nCONFIG_NR_CPUS=2\n")
    assert kconfig.missing(smp4, config, DEFAULT_MODULES) == [
        "CONFIG_NR_CPUS is 2: srar-each-vcpu-smp4.cpu0 needs 4 (guest.vcpus: 4)"]
    assert kconfig.missing(scenario("broadcast-srao-smp2"), config, DEFAULT_MODULES) == []
    assert kconfig.missing(smp4, kconfig.parse(DEBIAN_LIKE + "\nCONFIG_NR_CPUS=8192\n"), DEFAULT_MODULES) == []
