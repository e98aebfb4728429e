"""decode: MCi_STATUS / MCG_STATUS bit by bit, MCACOD meanings as mcelog gives them."""
import pytest

from orchestrator.inject import mce
from orchestrator.inject.decode import decode, error_class, mcacod


def test_srar_preset_decodes_as_a_data_load_in_the_l0_cache():
    lines = decode(mce.PRESETS["srar"].status, mce.PRESETS["srar"].mcg_status)
    assert lines[0] == "MCi_STATUS 0xbd80000000000134: SRAR: software recoverable, action required"
    flags = {line.split()[2]: line.split()[3] for line in lines if line.startswith("  bit ")}
    assert flags["VAL"] == flags["UC"] == flags["EN"] == flags["MISCV"] == flags["ADDRV"] == "1"
    assert flags["S"] == flags["AR"] == "1" and flags["PCC"] == flags["OVER"] == "0"
    assert flags["RIPV"] == flags["EIPV"] == flags["MCIP"] == "1" and flags["LMCE_S"] == "0"
    assert "  bits 15:0  MCACOD 0x0134: cache hierarchy error: data read, data transaction, level 0 cache" in lines


@pytest.mark.parametrize("preset, klass, code", [
    ("srao", "SRAO: software recoverable, action optional", "memory controller error: memory scrubbing, channel 0"),
    ("ucna", "UCNA: uncorrected, no action required", "memory controller error: memory read, channel 0"),
    ("ce", "CE: corrected error", "memory controller error: memory scrubbing, channel 0"),
])
def test_presets(preset, klass, code):
    status = mce.PRESETS[preset].status
    assert error_class(status) == klass
    assert mcacod(status & 0xFFFF) == code


def test_error_codes_as_mcelog_names_them():
    assert mcacod(0x0150) == "cache hierarchy error: instruction fetch, instruction transaction, level 0 cache"
    assert mcacod(0x017A) == "cache hierarchy error: eviction, generic transaction, level 2 cache"
    assert mcacod(0x009F) == "memory controller error: memory read, channel unspecified"
    assert mcacod(0x109F).endswith("(corrected, filtered)")
    assert mcacod(0x0000) == "no error" and mcacod(0x0400) == "internal timer error"
    assert mcacod(0x0E03).startswith("bus/interconnect error: generic, generic error, memory access, generic level")
    assert mcacod(0x0014) == "TLB error: data transaction, level 0"
    assert mcacod(0x000F) == "generic cache hierarchy error, generic level"


def test_fatal_and_mcg_without_ripv():
    status = mce.MCI_STATUS_VAL | mce.MCI_STATUS_UC | mce.MCI_STATUS_PCC | mce.MCI_STATUS_EN
    assert error_class(status).startswith("UC with PCC: fatal")
    lines = decode(status, mce.MCG_STATUS_MCIP)
    assert any("cannot be restarted" in line for line in lines)
    assert not any("cannot be restarted" in line for line in decode(status, 0x7))
