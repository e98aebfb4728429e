"""inject.race: take-free-block -- "high-order kernel page", forced with QEMU's gdbstub.

mm/memory-failure.c (6.1 and 6.12), memory_failure():
    TestSetPageHWPoison(p);                    the poison flag, first
    res = get_hwpoison_page(p, flags);         0: a free page (no references)
    if (!res) {
        if (is_free_buddy_page(p)) ...         "free buddy page"
        else action_result(pfn, MF_MSG_KERNEL_HIGH_ORDER, MF_IGNORED);
A free page reports "high-order kernel page" when its block leaves the buddy
allocator between get_hwpoison_page() and that last look. For a free page,
is_free_buddy_page() runs three times on the memory_failure() path: in
HWPoisonHandlable() (__get_hwpoison_page()), in get_any_page() once the page
turned out to have no references, and in memory_failure() itself.

The choreography (nothing in guest memory is written by the host; vCPUs are
only held):
1. A guest process pinned to another vCPU (the probe's --take-free-block)
   picks the page: the middle of a 2 MiB block it just had as a THP and freed.
   It reports that page and a mailbox page, and waits for the poison flag.
2. The host starts QEMU's gdbstub (HMP gdbserver), breaks on
   is_free_buddy_page() and on getpriority()'s entry (the process's gate: it
   calls getpriority() once it has seen the poison flag, before it allocates),
   and sends the machine check.
3. The process's vCPU is held at the gate; the injected vCPU runs until its
   third is_free_buddy_page() on the page, which must return into
   memory_failure(). There that vCPU is held and only the process's vCPU runs
   (vCont;c:N): it faults THPs until /proc/kpageflags no longer shows the
   page as a free buddy page (the kernel's own is_free_buddy_page()), and
   says so in its mailbox, which the host reads with the monitor's xp.
4. The host detaches (every vCPU runs again); memory_failure() looks again and
   reports the page. A process that could not take the block makes the run
   an ERROR ("could not force the interleaving"), never a PASS or FAIL.
The hold lasts well under a second here; it is bounded by HOLD_S, far below
the RCU stall (21 s) and soft lockup (20 s) detectors.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from orchestrator import probe as probe_build
from orchestrator.guest.base import GuestMonitor
from orchestrator.guest.monitor import MonitorError
from orchestrator.guest.ssh import ProbeExited, RemoteProcess, SshSession, probe_shell
from orchestrator.inject.races.gdbstub import GdbError, RemoteTarget, step_over, vcont_packet
from orchestrator.plumbing.deadline import Deadline
from orchestrator.plumbing.outcome import HarnessError

# Symbols read from the guest's /proc/kallsyms (KASLR: every boot may differ).
SYMBOLS = ("is_free_buddy_page", "memory_failure", "__x64_sys_getpriority", "vmemmap_base")
STRUCT_PAGE_SIZE = 64          # x86_64, these configs: vmemmap_base + pfn * 64 is the page's struct page
MAILBOX_MAGIC = 0x4D43454F52434831  # the probe's TAKER_MAGIC
MAILBOX_STATES = {1: "waiting for the poison flag", 2: "allocating", 3: "taken",
                  4: "out of memory above its MemFree margin", 5: "never saw the poison flag"}
TAKEN = 3
HIT_S = 10.0                   # from the machine check to the third look
HOLD_S = 4.0                   # the injected vCPU held at most this long
MF_HITS = 3                    # is_free_buddy_page() calls on the page, the last in memory_failure()


def kallsyms_command(symbols: tuple[str, ...] = SYMBOLS) -> str:
    """A shell command printing 'name address' for symbols and 'memory_failure_end' (the next
    higher address after memory_failure: the kernel's own symbols are listed in address
    order; fixed-width hex compares as text). One pass: the file is long and TCG slow."""
    return ("awk -v want='" + " ".join(symbols) + "' "
            "'BEGIN{n=split(want,w,\" \"); for(i=1;i<=n;i++) q[w[i]]=1} "
            "f && $1\"\">m {print \"memory_failure_end\", $1; f=0} "
            "q[$3] && !($3 in seen) {seen[$3]=$1; print $3, $1} "
            "$3==\"memory_failure\" && m==\"\" {m=$1; f=1}' /proc/kallsyms")


def parse_symbols(text: str, needed: tuple[str, ...] = SYMBOLS) -> dict[str, int]:
    """{name: address} from kallsyms_command()'s output; every symbol needed must be there."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and re.fullmatch(r"[0-9a-fA-F]{1,16}", parts[1]):
            found[parts[0]] = int(parts[1], 16)
    missing = [name for name in (*needed, "memory_failure_end") if not found.get(name)]
    if missing:
        raise ValueError(f"no {', '.join(missing)} in the guest's /proc/kallsyms (or only zeros: not root?)")
    return found


RACE_START_S = 30.0  # the race process's pick of its page (a THP fault: compaction may run)
KALLSYMS_S = 180.0  # the whole /proc/kallsyms pass: 8 s on an idle host under TCG, 25 s seen on a loaded one
KERNEL_ID_COMMAND = "cat /proc/version; grep -m1 ' _text$' /proc/kallsyms"  # _text is within its first lines


def parse_kernel_id(text: str) -> tuple[str, int]:
    """(the /proc/version line, _text's address) from KERNEL_ID_COMMAND's output."""
    lines = text.strip().splitlines()
    parts = lines[-1].split() if len(lines) >= 2 else []
    if len(parts) != 3 or parts[2] != "_text" or not re.fullmatch(r"[0-9a-fA-F]{1,16}", parts[0]) \
            or not int(parts[0], 16):
        raise ValueError(f"no _text address in the guest's /proc/kallsyms (not root?): {text.strip()[-200:]!r}")
    return lines[0][:500], int(parts[0], 16)


def kernel_symbols(ssh: SshSession, looked_up: tuple[str, ...], needed: tuple[str, ...], cache: Path | None,
                   image_name: str, deadline: Deadline) -> dict[str, int]:
    """{name: address} of the race's kernel symbols (and memory_failure_end). KASLR moves the
    kernel image as a whole, so each symbol's distance from _text is the same on every boot of
    one kernel build: it is kept in `cache` (a folder) under the kernel's /proc/version line,
    and a later run reads only _text (well under a second) instead of the whole
    /proc/kallsyms (KALLSYMS_S). A cached table is used only for a kernel whose version line
    and image are the same; an unreadable one is read again."""
    version, text = parse_kernel_id(ssh.check(KERNEL_ID_COMMAND, deadline, "locate"))
    wanted = (*looked_up, "memory_failure_end")
    key = hashlib.sha256(f"{image_name}\0{version}".encode()).hexdigest()[:16]
    entry = cache / f"{key}.json" if cache is not None else None
    known: dict[str, int] = {}
    absent: set[str] = set()  # looked for in the whole pass, and not there (this kernel has no such symbol)
    if entry is not None and entry.is_file():
        with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
            data = json.loads(entry.read_text())
            if data.get("version") == version:
                known = {k: v for k, v in data["offsets"].items() if type(v) is int}
                absent = {k for k in data.get("absent", []) if type(k) is str}
    if all(name in known or name in absent for name in wanted) and all(name in known for name in (*needed, "memory_failure_end")):
        return {name: text + known[name] for name in wanted if name in known}
    full = ssh.check(kallsyms_command((*looked_up, "_text")), Deadline(max(KALLSYMS_S, deadline.remaining()),
                                                                      "kallsyms"), "locate")
    symbols = parse_symbols(full, (*needed, "_text"))
    if symbols["_text"] != text:
        raise ValueError(f"_text moved between two reads of /proc/kallsyms: {text:#x}, then {symbols['_text']:#x}")
    if entry is not None:
        known.update({name: address - text for name, address in symbols.items() if name != "_text"})
        absent = {name for name in wanted if name not in known}
        with contextlib.suppress(OSError):
            entry.parent.mkdir(parents=True, exist_ok=True)
            partial = entry.with_name(f".{entry.name}.{os.getpid()}")
            partial.write_text(json.dumps({"version": version, "image": image_name, "offsets": known,
                                           "absent": sorted(absent)}, indent=1))
            partial.replace(entry)  # whole or not at all, whoever else writes it
    return {name: address for name, address in symbols.items() if name != "_text"}


def parse_xp_words(text: str) -> list[int]:
    """The 64-bit words of HMP `xp /Ngx ADDR` ('0000000002b9e000: 0x4d43... 0x0000...')."""
    return [int(word, 16) for word in re.findall(r"\b0x([0-9a-fA-F]{16})\b", text)]


def mailbox_state(words: list[int]) -> tuple[int, int, int]:
    """(state, chunks, steps past the gate) from the mailbox's first four words; ValueError
    when it is not the probe's."""
    if len(words) < 4 or words[0] != MAILBOX_MAGIC:
        raise ValueError(f"not the probe's mailbox: {[hex(w) for w in words[:4]]}")
    return words[1], words[2], words[3]


# struct page (x86_64, 6.1 and 6.12, 64 bytes): the words the held-moment check reads.
PAGE_COMPOUND_HEAD = 8         # the head's address | 1 in a tail page (over lru.next)
PAGE_TYPE = 48                 # page_type (over _mapcount): PG_buddy clear in a free block's head
PAGE_REFCOUNT = 52
PAGE_TYPE_BASE, PG_BUDDY = 0xf0000000, 0x00000080
# The race process's own end state (its taker-result line), as each race needs it.
PROVEN_END = {"--take-free-block": "taken", "--retake-thp-block": "taken-again"}
END_STATE_S = 5.0              # for the race process's taker-result, once every vCPU runs again


def struct_page_state(raw: bytes) -> dict[str, int]:
    """The words of a struct page the race checks, from its 64 bytes (as the kernel has them)."""
    word = lambda offset, size: int.from_bytes(raw[offset:offset + size], "little")  # noqa: E731
    return {"compound_head": word(PAGE_COMPOUND_HEAD, 8), "page_type": word(PAGE_TYPE, 4),
            "refcount": word(PAGE_REFCOUNT, 4)}


def not_tail_of(state: dict[str, int], head: int) -> str | None:
    """None when the page is a tail of the compound page whose struct page is at `head`."""
    if state["compound_head"] == head | 1:
        return None
    return (f"its struct page's compound_head is {state['compound_head']:#x}, not the block's head "
            f"{head:#x} | 1 (refcount {state['refcount']}, page_type {state['page_type']:#x})")


PAGE_PRIVATE = 40              # a free buddy block's order, in its head
MAX_ORDER = 11                 # orders 0-10 (x86_64, 6.1 and 6.12)


def is_buddy(state: dict[str, int]) -> bool:
    return state["page_type"] & (PAGE_TYPE_BASE | PG_BUDDY) == PAGE_TYPE_BASE


def free_buddy(pfn: int, read_page) -> str | None:
    """The kernel's is_free_buddy_page(), from struct pages (read_page(pfn) -> its 64 bytes):
    a description of the free block holding `pfn`, or None when it is in none (taken, or
    on a per-CPU list: what memory_failure()'s last look must find)."""
    for order in range(MAX_ORDER):
        head = pfn & ~((1 << order) - 1)
        raw = read_page(head)
        state = struct_page_state(raw)
        if is_buddy(state) and int.from_bytes(raw[PAGE_PRIVATE:PAGE_PRIVATE + 8], "little") >= order:
            return f"it is in a free buddy block of order {int.from_bytes(raw[PAGE_PRIVATE:PAGE_PRIVATE + 8], 'little')} at PFN {head:#x}"
    return None


def taker_cpu(inject_cpu: int, vcpus: int) -> int:
    return (inject_cpu + 1) % vcpus


@dataclass
class Hits:
    """What the breakpoints saw, for the decision and for the report."""
    on_page: list[int] = field(default_factory=list)   # return addresses of the injected vCPU's looks at the page
    others: int = 0                                     # any other call (other pages, the process's own looks)
    gate_seen: bool = False                             # the process reached its gate before the third look

    def describe(self) -> str:
        return (f"{len(self.on_page)} look(s) at the page on the injected vCPU (returning to "
                f"{', '.join(hex(r) for r in self.on_page) or 'none'}), {self.others} other call(s), "
                f"the process {'reached' if self.gate_seen else 'had not reached'} its gate by then")


def third_look_ok(hits: Hits, symbols: dict[str, int]) -> str | None:
    """None when the last recorded look is memory_failure()'s own; else what was seen instead."""
    ret = hits.on_page[-1]
    if symbols["memory_failure"] <= ret < symbols["memory_failure_end"]:
        return None
    return (f"look {len(hits.on_page)} at the page returned to {ret:#x}, outside memory_failure() "
            f"({symbols['memory_failure']:#x}-{symbols['memory_failure_end']:#x}): {hits.describe()}")


@dataclass
class RaceProcess:
    """An inject.race's guest process (the probe's OPTION, pinned to the vCPU after the injected
    one) and what it reported, from locate to release. A subclass names its OPTION and the
    kernel symbols it reads (LOOKED_UP) and cannot do without (NEEDED)."""
    OPTION: ClassVar[str]
    LOOKED_UP: ClassVar[tuple[str, ...]]
    NEEDED: ClassVar[tuple[str, ...]]

    process: RemoteProcess
    pfn: int
    block_pfn: int
    mailbox_gpa: int
    cpu: int
    vcpus: int
    symbols: dict[str, int]
    notes: list[str] = field(default_factory=list)
    refused: bool = False  # the allocator refused the block: the race ended as the kernel's doing

    @classmethod
    def start(cls, ssh: SshSession, inject_cpu: int, vcpus: int, deadline: Deadline, hold_s: float,
              symbol_cache: Path | None = None, image_name: str = ""):
        try:
            # Every race's symbols at once: one whole pass of /proc/kallsyms per kernel build.
            every = tuple(dict.fromkeys(name for race in (cls, *RaceProcess.__subclasses__()) for name in race.LOOKED_UP))
            symbols = kernel_symbols(ssh, every, cls.NEEDED, symbol_cache, image_name, deadline)
        except ValueError as exc:
            raise HarnessError("locate", f"inject.race: {exc}") from None
        # A whole /proc/kallsyms pass may have spent the phase's time: the process gets its own.
        deadline = Deadline(max(deadline.remaining(), RACE_START_S), "locate")
        cpu = taker_cpu(inject_cpu, vcpus)
        # The shell reports how the process ended (128+N: killed by signal N), as for the probe.
        process = ssh.start(probe_shell(f"{probe_build.REMOTE_PATH} {cls.OPTION} {cpu} {int(hold_s)}"))
        reply = process.read_event({"taker"}, deadline, "locate")
        if "error" in reply:
            raise HarnessError("locate", f"inject.race: the guest process could not pick a page: {reply['error']}")
        return cls(process, reply["pfn"], reply["block_pfn"], int(reply["mailbox_gpa"], 16), cpu, vcpus, symbols)

    def death(self, deadline: Deadline) -> str | None:
        """How the process ended, when it has ('was killed by signal 7 (SIGBUS)'), else None."""
        try:
            self.process.read_event(set(), deadline, "inject")  # nothing is wanted but the stream's end
            return None
        except ProbeExited as exc:
            status = exc.status
        except HarnessError:
            return None
        if type(status) is not int:
            return "ended (how, the guest did not say)"
        if status > 128:
            name = {7: "SIGBUS", 9: "SIGKILL", 11: "SIGSEGV", 15: "SIGTERM"}.get(status - 128)
            return f"was killed by signal {status - 128}" + (f" ({name})" if name else "")
        return f"exited with status {status}"

    def confirm(self, deadline: Deadline) -> None:
        """Once every vCPU runs again: the process's own end state (its taker-result line,
        printed past its last gate) must be what the host saw forced, else the interleaving
        is not proven: HarnessError("inject", "... not forced ..."), the run's ERROR, never
        a verdict on the kernel. A race that ended early as the kernel's doing (the
        allocator refused the block: `refused`) is not held to the full end state."""
        try:
            end = self.process.read_event({"taker-result"}, deadline, "inject")
        except HarnessError as exc:
            raise HarnessError("inject", f"could not force the interleaving: not forced, as far as the harness "
                                         f"can tell: the race process's end state did not come ({exc.message})") from None
        self.notes.append(f"the race process's own end state: {str(end.get('state'))[:40]}")
        wanted = PROVEN_END[self.OPTION]
        if end.get("state") != wanted and not self.refused:
            raise HarnessError("inject", f"could not force the interleaving: not forced: the race process's own end "
                                         f"state is {str(end.get('state'))[:40]!r}, not {wanted!r}, though the host "
                                         f"saw each step")

    def release(self) -> None:
        """The process may free what it holds now (memory_failure() has reported the page)."""
        self.process.send("release")


class TakeFreeBlock(RaceProcess):
    """take-free-block: the process takes the free page's block while memory_failure() is held."""
    OPTION = "--take-free-block"
    LOOKED_UP = NEEDED = SYMBOLS

    def force(self, monitor: GuestMonitor, send_mce, *, inject_cpu: int, artifacts: Path,
              remote: bool = False, qemu_pid: int | None = None):
        """Send the machine check (send_mce()) with the breakpoints in place and hold the
        injected vCPU at memory_failure()'s last look until the process has taken the block.
        Returns what send_mce() returned; HarnessError("inject", ...) when it could not."""
        def race(target: RemoteTarget):
            page = target.read_u64(self.symbols["vmemmap_base"]) + self.pfn * STRUCT_PAGE_SIZE
            return self._race(target, monitor, send_mce, page, inject_cpu + 1, self.cpu + 1)
        return with_gdbstub(monitor, artifacts, remote, race, qemu_pid=qemu_pid)

    def _race(self, target: RemoteTarget, monitor: GuestMonitor, send_mce, page: int, held: int, taker: int):
        at_page, gate = self.symbols["is_free_buddy_page"], self.symbols["__x64_sys_getpriority"]
        target.set_breakpoint(at_page)
        target.set_breakpoint(gate)
        hits = Hits()

        def resume() -> None:
            # Once the process reached its gate it stays there; everything else runs.
            target.send_resume(vcont_packet("c", (held,)) if hits.gate_seen else "vCont;c")

        resume()
        injected = send_mce()
        deadline = Deadline(HIT_S, "inject")
        while True:
            try:
                stop = target.wait_stop(max(deadline.remaining(), 0.1))
            except GdbError:
                raise HarnessError("inject", f"could not force the interleaving: memory_failure() did not look at "
                                             f"the page {MF_HITS} times within {HIT_S:g} s ({hits.describe()})") from None
            regs = target.registers(stop.thread)
            if regs["rip"] == gate:
                if stop.thread != taker:
                    raise HarnessError("inject", f"could not force the interleaving: getpriority() called on vCPU "
                                                 f"{stop.thread - 1}, not the process's vCPU {self.cpu}")
                hits.gate_seen = True
                target.set_breakpoint(gate, insert=False)
                resume()
                continue
            ret = target.read_u64(regs["rsp"])
            if stop.thread == held and regs["rdi"] == page:
                hits.on_page.append(ret)
                if len(hits.on_page) == MF_HITS:
                    break
            else:
                hits.others += 1
            # Step over the breakpoint (QEMU would stop at it again), then go on.
            try:
                step_over(target, stop.thread, at_page)
            except GdbError as exc:
                raise HarnessError("inject", f"could not force the interleaving: {exc}") from None
            resume()
        problem = third_look_ok(hits, self.symbols)
        if problem:
            raise HarnessError("inject", f"could not force the interleaving: {problem}")
        target.set_breakpoint(at_page, insert=False)
        held_since = time.monotonic()
        if not hits.gate_seen:
            # The process has not reached its gate yet: let it, then hold it there no more.
            target.send_resume(vcont_packet("c", (taker,)))
            stop = target.wait_stop(HOLD_S)
            rip = target.registers(stop.thread)["rip"]
            if stop.thread != taker or rip != gate:
                raise HarnessError("inject", f"could not force the interleaving: vCPU {stop.thread - 1} stopped "
                                             f"at {rip:#x} while the process went to its gate")
            target.set_breakpoint(gate, insert=False)
        target.send_resume(vcont_packet("c", (taker,)))
        state, chunks, steps = self._wait_taken(monitor, held_since)
        if state == TAKEN:
            # The process says so; the kernel's own struct page, at the held moment, must agree.
            target.interrupt(5)
            target.registers(held)  # memory is read through the held vCPU: in the kernel (KPTI hides it from user mode)
            vmemmap = page - self.pfn * STRUCT_PAGE_SIZE
            problem = free_buddy(self.pfn, lambda pfn: target.read(vmemmap + pfn * STRUCT_PAGE_SIZE, STRUCT_PAGE_SIZE))
            if problem:
                raise HarnessError("inject", f"could not force the interleaving: not forced: the process says it "
                                             f"took the block, but at the held moment PFN {self.pfn:#x}: {problem}")
        self.notes.append(f"vCPU {held - 1} held in memory_failure() for {time.monotonic() - held_since:.2f} s "
                          f"while vCPU {self.cpu} took the block of PFN {self.pfn:#x} "
                          f"({chunks} chunk(s) of 2 MiB); {hits.describe()}")
        if state != TAKEN:
            where = ""
            if state < TAKEN:  # still at it: where its vCPU is, for whoever looks into why
                target.interrupt(5)
                where = f"; vCPU {self.cpu} at RIP {target.registers(taker)['rip']:#x}"
            raise HarnessError("inject", f"could not force the interleaving: the guest process on vCPU {self.cpu}: "
                                         f"{MAILBOX_STATES.get(state, f'state {state}')} after {chunks} chunk(s) of "
                                         f"2 MiB, {steps} step(s) past its gate{where} ({hits.describe()})")
        return injected

    def _wait_taken(self, monitor: GuestMonitor, since: float) -> tuple[int, int, int]:
        """Read the mailbox (HMP xp, guest-physical) until the process says taken or gives up:
        (state, chunks, steps past the gate)."""
        state, chunks, steps = 0, 0, 0
        while time.monotonic() - since < HOLD_S:
            words = parse_xp_words(monitor.hmp_query(f"xp /4gx {self.mailbox_gpa:#x}"))
            try:
                state, chunks, steps = mailbox_state(words)
            except ValueError as exc:
                raise HarnessError("inject", f"could not force the interleaving: {exc}") from None
            if state >= TAKEN:
                break
            time.sleep(0.02)
        return state, chunks, steps


def with_gdbstub(monitor: GuestMonitor, artifacts: Path, remote: bool, race, qemu_pid: int | None = None):
    """Start QEMU's gdbstub, connect (QEMU stops the VM), run race(target) and return what it
    returns; whatever happens, detach (every vCPU runs again), keep the transcript and stop
    the stub. Problems are HarnessError("inject", ...): the interleaving was not forced.

    The stub listens on a unix socket in a fresh 0700 folder owned by QEMU's own user
    (`qemu_pid`'s: root for the QEMU backend, libvirt-qemu under libvirtd), so only that user
    and root (the harness) can reach it: never a TCP port, which any local user could connect
    to and, through gdb's `monitor` packet, run HMP commands as QEMU's user."""
    if remote:
        raise HarnessError("inject", "inject.race needs QEMU's gdbstub on this host: not with a remote "
                                     "libvirt URI")
    try:
        folder = private_socket_folder(process_uid(qemu_pid) if qemu_pid else os.geteuid())
    except OSError as exc:
        raise HarnessError("inject", f"QEMU's gdbstub: no private folder for its socket: "
                                     f"{exc.strerror or exc}") from None
    path = str(folder / "gdb.sock")
    target: RemoteTarget | None = None
    try:
        try:
            reply = monitor.hmp_query(gdbserver_line(path))
        except MonitorError as exc:
            raise HarnessError("inject", f"QEMU's gdbstub did not start: {exc}") from None
        if "Waiting for gdb connection" not in reply:
            raise HarnessError("inject", f"QEMU's gdbstub did not start: {reply.strip()[:200]}")
        try:
            target = RemoteTarget(path)
            target.attach(5)  # QEMU stops the VM when a debugger connects; ask its stop reply
            return race(target)
        except GdbError as exc:
            raise HarnessError("inject", f"could not force the interleaving: gdbstub: {exc}") from None
        except MonitorError as exc:
            raise HarnessError("inject", f"could not force the interleaving: {exc}") from None
        except OSError as exc:
            raise HarnessError("inject", f"could not force the interleaving: gdbstub at {path}: "
                                         f"{exc.strerror or exc}") from None
        finally:
            if target is not None:
                _release_all(target)
                (artifacts / "gdbstub-transcript.txt").write_text("\n".join(target.transcript) + "\n")
                target.close()
            try:
                monitor.hmp_query("gdbserver none")  # else the next gdbserver in this QEMU is refused
            except MonitorError:
                pass  # QEMU gone: what went wrong before says more
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def gdbserver_line(path: str) -> str:
    """The HMP line that starts the stub on a listening unix socket at `path`. QEMU 7.2's
    gdbserver takes a chardev spec and adds server/wait/nodelay only to a tcp: one."""
    if "," in path or not path.startswith("/"):
        raise ValueError(f"gdbstub socket path {path!r}: absolute, no comma (chardev option syntax)")
    return f"gdbserver unix:{path},server=on,wait=off"


def process_uid(pid: int) -> int:
    """The effective uid of process `pid` (from /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])
    raise OSError(f"no Uid line in /proc/{pid}/status")


def private_socket_folder(owner_uid: int, parent: str | None = None) -> Path:
    """A new folder, mode 0700, owned by `owner_uid`: that user (QEMU) can create a socket in
    it, no other unprivileged user can enter it. mkdtemp() makes it 0700 and ours at once; the
    chown keeps the mode. Short (a unix socket path holds 107 bytes): under /tmp unless told."""
    folder = Path(tempfile.mkdtemp(prefix="mce-gdbstub-", dir=parent or "/tmp"))
    try:
        if owner_uid != os.geteuid():
            os.chown(folder, owner_uid, -1)
        os.chmod(folder, 0o700)
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def _release_all(target: RemoteTarget) -> None:
    """Stop whatever still runs, then detach: QEMU removes the breakpoints and resumes every vCPU."""
    try:
        if target.running:
            target.interrupt(5)
    except (GdbError, OSError):
        pass
    try:
        target.detach()
    except (GdbError, OSError):
        pass
