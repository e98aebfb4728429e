import pytest

from orchestrator.inject import mce

# A 512 MiB pc guest as its QEMU reports it (memory_map): the legacy hole at 0xa0000-0xfffff.
LIMITS = mce.MceLimits(vcpus=2, banks=10, ram_ranges=((0, 0xA0000), (0x100000, 512 << 20)))


def test_presets_are_the_values_qemu_uses():
    assert mce.hmp_command(mce.PRESETS["srao"], cpu=0, address=0x28B9000) == \
        "mce 0 9 0xbd000000000000c0 0x5 0x28b9000 0x8c"
    assert mce.hmp_command(mce.PRESETS["srar"], cpu=1, address=0x1000, broadcast=True) == \
        "mce -b 1 9 0xbd80000000000134 0x7 0x1000 0x8c"


@pytest.mark.parametrize("preset, kind, ar", [("srao", "SRAO", False), ("srar", "SRAR", True),
                                              ("ucna", "UCNA", False), ("ce", "CE", False)])
def test_classify(preset, kind, ar):
    fields = mce.PRESETS[preset]
    assert mce.classify(fields.status) == kind
    assert mce.action_required(fields) is ar


def test_describe_names_bits():
    text = mce.describe(mce.PRESETS["srar"])
    assert "VAL|UC|EN|MISCV|ADDRV|S|AR" in text and "RIPV|EIPV|MCIP" in text and "SRAR" in text


def test_valid_injection_passes():
    mce.validate(mce.PRESETS["srao"], cpu=1, address=(512 << 20) - 4096, limits=LIMITS)


@pytest.mark.parametrize("kwargs, message", [
    ({"cpu": 2}, "cpu 2 does not exist"),
    ({"address": 512 << 20}, "outside guest RAM"),
    ({"address": 0xA0000}, "address 0xa0000 is outside guest RAM \\(0x0-0x9ffff, 0x100000-0x1fffffff\\)"),
    ({"address": 0xFF000}, "outside guest RAM"),
    ({"fields": mce.MceFields(bank=10, status=mce.PRESETS["srao"].status, mcg_status=5, misc=0x8c)}, "bank 10 out of range"),
    ({"fields": mce.MceFields(bank=1, status=0x3D00000000000000, mcg_status=5, misc=0)}, "lacks VAL"),
    ({"address": 1 << 64}, "64 bits"),
])
def test_invalid_injections_are_refused(kwargs, message):
    args = {"fields": mce.PRESETS["srao"], "cpu": 0, "address": 0x1000} | kwargs
    fields = args.pop("fields")
    with pytest.raises(mce.MceError, match=message):
        mce.validate(fields, limits=LIMITS, **args)


def test_address_check_skipped_without_addrv():
    no_addr = mce.MceFields(bank=1, status=1 << 63 | 1 << 61, mcg_status=0, misc=0)
    mce.validate(no_addr, cpu=0, address=1 << 40, limits=LIMITS)



def test_outside_ram_injection_must_lie_outside_ram():
    above = mce.first_address_above_ram(LIMITS)
    assert above == max(hi for _, hi in LIMITS.ram_ranges)
    mce.validate(mce.PRESETS["srao"], cpu=0, address=above, limits=LIMITS, outside_ram=True)
    with pytest.raises(mce.MceError, match="is inside guest RAM"):
        mce.validate(mce.PRESETS["srao"], cpu=0, address=above - 4096, limits=LIMITS, outside_ram=True)
