"""inject.race: retake-thp-block -- "different compound page after locking", forced with
QEMU's gdbstub.

mm/memory-failure.c (6.1), memory_failure(), for an action-optional error:
    try_again:
    try_memory_failure_hugetlb()      get_huge_page_for_hwpoison(): PageHeadHuge(head)
    TestSetPageHWPoison(p);
    hpage = compound_head(p);
    get_hwpoison_page(p)              zone_pcp_disable(), then a reference on compound_head(p)
    if (PageTransHuge(hpage)) split   (hpage as it was before get_hwpoison_page())
    shake_page(p); lock_page(p);
    if (PageCompound(p)) {
        if (retry) { ClearPageHWPoison(p); unlock_page(p); put_page(p); retry = false; goto try_again; }
        action_result(pfn, MF_MSG_DIFFERENT_COMPOUND, MF_IGNORED);
So the page must be a free, not compound page when memory_failure() reads compound_head(p)
and a THP tail when get_hwpoison_page() takes its reference -- in both rounds. 6.1 keeps a
freed THP on the freeing CPU's per-CPU list of order-9 pages and hands it out again from
there without check_new_pages() (check_new_pcp() checks only with debug_pagealloc), so a
block holding a page with the poison flag can be handed out. 6.12 checks pages taken from
a per-CPU list too (check_new_pages() on __rmqueue_pcplist(), with init_on_alloc as
Debian's kernel has it) and drops such a block: the process gets another one and
memory_failure() finds the page neither free nor in use.

The choreography (the host writes nothing in guest memory; vCPUs are only held):
1. A guest process pinned to another vCPU (the probe's --retake-thp-block) faults a THP
   and frees it; the target is a page in its middle. vm.percpu_pagelist_high_fraction
   keeps the freed block on that vCPU's per-CPU list.
2. Breakpoints on zone_pcp_disable() (Z), on getpriority()'s entry (the process's gate,
   called at the end of each of its steps) and later on PageHeadHuge() (H); then the
   machine check.
3. Round 1: the injected vCPU is held at Z (the flag is set, hpage is the page itself)
   and the process at its gate; then only the process runs: it faults a THP and gets the
   block back (a compound page now, the target a tail) and stops at its gate.
4. Every vCPU runs: memory_failure() locks the page, finds it compound, clears the flag
   and starts again. The injected vCPU is held at H (the second round's start, before the
   flag is set again), the process at its gate once it saw the flag clear; then only the
   process runs: it frees the THP (back on its per-CPU list) and stops at its gate.
5. Only the injected vCPU runs, to Z (the flag set again, hpage the page itself); then
   only the process: it faults the block back again. Every vCPU runs again: "different
   compound page after locking: Ignored".
Each stop is read from the breakpoints and the process's mailbox (HMP xp); anything else
than the expected stop, within its bound, makes the run an ERROR ("could not force the
interleaving"), never a PASS or FAIL. A block the allocator refused (the process got
another one while the block was still on its per-CPU list, not free buddy) is the
kernel's doing: the race ends there and the kernel reports what it reports.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from orchestrator.guest.base import GuestMonitor
from orchestrator.inject.races.gdbstub import GdbError, RemoteTarget, step_over, vcont_packet
from orchestrator.inject.races.highorder import (MAILBOX_MAGIC, STRUCT_PAGE_SIZE, RaceProcess, not_tail_of,
                                    parse_xp_words, struct_page_state, with_gdbstub)
from orchestrator.plumbing.outcome import HarnessError

SYMBOLS = ("zone_pcp_disable", "memory_failure", "__x64_sys_getpriority", "vmemmap_base")
ROUND_START = "PageHeadHuge"   # 6.1 only; needed once the first round retried
# The probe's RETAKE_* states, as the mailbox's second word.
WAITING, TAKEN, CLEARED, FREED, TAKEN_AGAIN, OTHER_BLOCK, LEFT_PCP, TIMEOUT = range(1, 9)
STATES = {WAITING: "saw the poison flag", TAKEN: "got the block back", CLEARED: "saw the flag cleared",
          FREED: "freed the THP", TAKEN_AGAIN: "got the block back again",
          OTHER_BLOCK: "got another block (the allocator refused the block)",
          LEFT_PCP: "found the block free buddy (it had left its per-CPU list)",
          TIMEOUT: "timed out waiting for the poison flag"}
HIT_S = 10.0                   # a step where the injected vCPU runs
HOLD_S = 4.0                   # a step where it is held


def mailbox(words: list[int]) -> tuple[int, int, int]:
    """(state, PFN of the process's last fault, step) from the mailbox's first four words."""
    if len(words) < 4 or words[0] != MAILBOX_MAGIC:
        raise ValueError(f"not the probe's mailbox: {[hex(w) for w in words[:4]]}")
    return words[1], words[2], words[3]


def check_step(state: int, want: int, got_pfn: int, block_pfn: int, step: str) -> str | None:
    """None when the process is where the choreography needs it after `step`; 'refused' when
    the allocator handed out another block (the kernel's doing); else why it could not."""
    if state == want and (want not in (TAKEN, TAKEN_AGAIN) or got_pfn == block_pfn):
        return None
    if state == OTHER_BLOCK and want in (TAKEN, TAKEN_AGAIN):
        return "refused"
    return (f"{step}: the guest process {STATES.get(state, f'is in state {state}')}, not "
            f"\"{STATES[want]}\" (last fault PFN {got_pfn:#x}, block {block_pfn:#x})")


class RetakeThpBlock(RaceProcess):
    """retake-thp-block: the process frees and takes back its THP's block in both rounds."""
    OPTION = "--retake-thp-block"
    LOOKED_UP = (*SYMBOLS, ROUND_START)
    NEEDED = SYMBOLS

    def force(self, monitor: GuestMonitor, send_mce, *, inject_cpu: int, artifacts: Path,
              remote: bool = False, qemu_pid: int | None = None):
        """Send the machine check (send_mce()) and force the two rounds; returns what
        send_mce() returned; HarnessError("inject", ...) when it could not."""
        return with_gdbstub(monitor, artifacts, remote,
                            lambda target: _Choreography(self, target, monitor, inject_cpu + 1).run(send_mce),
                            qemu_pid=qemu_pid)


class _Choreography:
    """The host half: which vCPU runs, where each must stop next."""

    def __init__(self, race: RetakeThpBlock, target: RemoteTarget, monitor: GuestMonitor, held: int):
        self.race, self.target, self.monitor = race, target, monitor
        self.held, self.taker = held, race.cpu + 1
        self.gate = race.symbols["__x64_sys_getpriority"]
        self.inserted: set[int] = set()
        self.held_s = 0.0
        self.passed: list[str] = []

    def insert(self, address: int) -> None:
        self.target.set_breakpoint(address)
        self.inserted.add(address)

    def remove(self, address: int) -> None:
        self.target.set_breakpoint(address, insert=False)
        self.inserted.discard(address)

    def step_off(self, thread: int, address: int) -> None:
        """A thread stopped at an inserted breakpoint executes that instruction (QEMU would stop
        at it again), the others stay stopped."""
        if address not in self.inserted:
            return
        try:
            step_over(self.target, thread, address)
        except GdbError as exc:
            raise HarnessError("inject", f"could not force the interleaving: {exc}") from None

    def run_until(self, running: set[int], wants: dict[int, Callable[[dict], bool]], bound: float,
                  step: str) -> None:
        """Run `running` until each thread in `wants` stopped where its test says (holding each as
        it arrives); stops at the race's other breakpoints are stepped over."""
        deadline = time.monotonic() + bound
        pending = dict(wants)
        running = set(running)
        while pending:
            if not self.target.running:  # the first step's machine check went out with every vCPU running
                self.target.send_resume(vcont_packet("c", tuple(sorted(running))))
            try:
                stop = self.target.wait_stop(max(deadline - time.monotonic(), 0.1))
            except GdbError:
                state = self.state()
                raise HarnessError("inject", f"could not force the interleaving: {step}: not reached within "
                                             f"{bound:g} s (vCPU(s) "
                                             f"{', '.join(str(t - 1) for t in sorted(pending))} did not arrive; the "
                                             f"guest process {STATES.get(state[0], f'in state {state[0]}')}; "
                                             f"passed: {'; '.join(self.passed) or 'nothing'})") from None
            regs = self.target.registers(stop.thread)
            rip = regs["rip"]
            test = pending.get(stop.thread)
            if test is not None and test(regs):
                del pending[stop.thread]
                running.discard(stop.thread)
                continue
            if rip not in self.inserted:
                raise HarnessError("inject", f"could not force the interleaving: {step}: vCPU {stop.thread - 1} "
                                             f"stopped at {rip:#x}, at none of the race's breakpoints")
            if rip == self.gate and stop.thread != self.taker:
                raise HarnessError("inject", f"could not force the interleaving: {step}: getpriority() called on "
                                             f"vCPU {stop.thread - 1}, not the process's vCPU {self.race.cpu}")
            self.step_off(stop.thread, rip)
        self.passed.append(step)

    def state(self) -> tuple[int, int, int]:
        try:
            return mailbox(parse_xp_words(self.monitor.hmp_query(f"xp /4gx {self.race.mailbox_gpa:#x}")))
        except ValueError as exc:
            raise HarnessError("inject", f"could not force the interleaving: {exc}") from None

    def expect(self, want: int, step: str) -> bool:
        """True when the process is where it must be after `step`; False when the allocator
        refused the block (the race ends; the kernel reports the page as it finds it)."""
        state, got, _ = self.state()
        problem = check_step(state, want, got, self.race.block_pfn, step)
        if problem == "refused":
            self.race.refused = True
            self.race.notes.append(f"{step}: the allocator did not hand out the block {self.race.block_pfn:#x} "
                                   f"again (the process got PFN {got:#x}) while it was on the per-CPU list")
            return False
        if problem:
            raise HarnessError("inject", f"could not force the interleaving: {problem}")
        if want in (TAKEN, TAKEN_AGAIN):
            # The process says it has the block; at this held moment (every vCPU stopped) the
            # kernel's own struct page of the target must say it is a tail of that block.
            self.target.registers(self.held)  # read through the held vCPU: in the kernel (KPTI)
            vmemmap = self.target.read_u64(self.race.symbols["vmemmap_base"])
            page, head = (vmemmap + pfn * STRUCT_PAGE_SIZE for pfn in (self.race.pfn, self.race.block_pfn))
            problem = not_tail_of(struct_page_state(self.target.read(page, STRUCT_PAGE_SIZE)), head)
            if problem:
                raise HarnessError("inject", f"could not force the interleaving: not forced: {step}: the process "
                                             f"says it has the block, but at the held moment PFN "
                                             f"{self.race.pfn:#x}: {problem}")
        return True

    def process_step(self, want: int, step: str) -> bool:
        """Only the process runs, from its gate to its next gate (the injected vCPU held)."""
        since = time.monotonic()
        self.step_off(self.taker, self.gate)
        self.run_until({self.taker}, {self.taker: self.at_gate}, HOLD_S, step)
        self.held_s = max(self.held_s, time.monotonic() - since)
        return self.expect(want, step)

    def at_gate(self, regs: dict) -> bool:
        return regs["rip"] == self.gate

    def run(self, send_mce):
        race, t = self.race, self.target
        vmemmap = t.read_u64(race.symbols["vmemmap_base"])
        page, head = (vmemmap + pfn * STRUCT_PAGE_SIZE for pfn in (race.pfn, race.block_pfn))
        every = set(range(1, race.vcpus + 1))
        z = race.symbols["zone_pcp_disable"]
        self.insert(z)
        self.insert(self.gate)
        t.send_resume("vCont;c")
        injected = send_mce()
        self.run_until(every, {self.held: lambda r: r["rip"] == z, self.taker: self.at_gate}, HIT_S,
                       "round 1: the injected vCPU at zone_pcp_disable(), the process at its gate")
        self.expect(WAITING, "round 1")
        if not self.process_step(TAKEN, "round 1: the process faults the block back"):
            return injected
        h = race.symbols.get(ROUND_START)
        if not h:
            raise HarnessError("inject", f"could not force the interleaving: no {ROUND_START} in the guest's "
                                         f"/proc/kallsyms to hold the second round at")
        self.remove(z)
        self.insert(h)
        self.step_off(self.taker, self.gate)
        mf = (race.symbols["memory_failure"], race.symbols["memory_failure_end"])

        def round_start(regs: dict) -> bool:
            # folio_test_hugetlb() calls PageHeadHuge() too, all over mm: only memory_failure()'s own
            # call (get_huge_page_for_hwpoison(), inlined) on the page or its head starts the round.
            return (regs["rip"] == h and regs["rdi"] in (page, head)
                    and mf[0] <= t.read_u64(regs["rsp"]) < mf[1])
        self.run_until(every, {self.held: round_start, self.taker: self.at_gate}, HIT_S,
                       "round 2: the injected vCPU at PageHeadHuge() in memory_failure(), the process at its gate")
        self.expect(CLEARED, "round 2")
        self.process_step(FREED, "round 2: the process frees the THP")
        self.remove(h)
        self.insert(z)
        since = time.monotonic()
        self.run_until({self.held}, {self.held: lambda r: r["rip"] == z}, HOLD_S,
                       "round 2: the injected vCPU at zone_pcp_disable()")
        self.held_s = max(self.held_s, time.monotonic() - since)
        self.process_step(TAKEN_AGAIN, "round 2: the process faults the block back again")
        race.notes.append(f"two rounds forced; the injected vCPU {self.held - 1} held at most "
                          f"{self.held_s:.2f} s at a time while vCPU {race.cpu} took the block {race.block_pfn:#x}")
        return injected
