"""inject.race: retake-thp-block -- the pure parts: the mailbox, each step's check, symbols."""
import pytest

from orchestrator.inject.races import highorder, recompound
from orchestrator.inject.races.recompound import (CLEARED, FREED, LEFT_PCP, OTHER_BLOCK, TAKEN, TAKEN_AGAIN, TIMEOUT, WAITING,
                                     check_step, mailbox)

BLOCK = 0x10600


def test_mailbox_words():
    assert mailbox([highorder.MAILBOX_MAGIC, TAKEN, BLOCK, 2]) == (TAKEN, BLOCK, 2)


@pytest.mark.parametrize("words", [[], [0, 1, 2, 3], [highorder.MAILBOX_MAGIC, 1, 2]])
def test_mailbox_not_the_probes(words):
    with pytest.raises(ValueError, match="not the probe's mailbox"):
        mailbox(words)


@pytest.mark.parametrize("state, want", [(WAITING, WAITING), (TAKEN, TAKEN), (CLEARED, CLEARED), (FREED, FREED),
                                         (TAKEN_AGAIN, TAKEN_AGAIN)])
def test_step_reached(state, want):
    assert check_step(state, want, BLOCK, BLOCK, "step") is None


def test_taken_needs_the_same_block():
    problem = check_step(TAKEN, TAKEN, BLOCK + 512, BLOCK, "round 1")
    assert problem.startswith("round 1: the guest process got the block back, not")
    assert "0x10800" in problem and "0x10600" in problem


@pytest.mark.parametrize("want", [TAKEN, TAKEN_AGAIN])
def test_another_block_is_the_kernels_doing(want):
    assert check_step(OTHER_BLOCK, want, BLOCK + 512, BLOCK, "step") == "refused"


@pytest.mark.parametrize("state, want, says", [
    (LEFT_PCP, TAKEN, "found the block free buddy"),           # the harness lost the block: not the kernel
    (TIMEOUT, CLEARED, "timed out waiting for the poison flag"),
    (WAITING, CLEARED, "saw the poison flag"),                # memory_failure() did not start again
    (OTHER_BLOCK, FREED, "got another block"),               # only a fault can be refused
    (42, WAITING, "is in state 42"),
])
def test_step_not_reached(state, want, says):
    problem = check_step(state, want, 0, BLOCK, "the step")
    assert problem not in (None, "refused")
    assert problem.startswith("the step: the guest process ") and says in problem


def test_symbols_for_the_race():
    command = highorder.kallsyms_command((*recompound.SYMBOLS, recompound.ROUND_START))
    assert "zone_pcp_disable" in command and "PageHeadHuge" in command and "is_free_buddy_page" not in command
    text = ("zone_pcp_disable ffffffff812fafc0\nmemory_failure ffffffff81356540\n"
            "memory_failure_end ffffffff81356f00\n__x64_sys_getpriority ffffffff810a0000\n"
            "vmemmap_base ffffffff82000000\n")
    found = highorder.parse_symbols(text, recompound.SYMBOLS)  # PageHeadHuge may be missing (6.12)
    assert found["zone_pcp_disable"] == 0xffffffff812fafc0 and "PageHeadHuge" not in found
    with pytest.raises(ValueError, match="no zone_pcp_disable"):
        highorder.parse_symbols(text.replace("zone_pcp_disable", "zone_pcp_enable"), recompound.SYMBOLS)


def test_high_order_symbols_unchanged():
    assert highorder.kallsyms_command() == highorder.kallsyms_command(highorder.SYMBOLS)
    with pytest.raises(ValueError, match="no is_free_buddy_page"):
        highorder.parse_symbols("memory_failure 1\nmemory_failure_end 2\n")
