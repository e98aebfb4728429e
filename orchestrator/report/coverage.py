"""Which of memory_failure()'s outcomes the catalog reaches, per kernel, as a Markdown table.

    python -m orchestrator.report.coverage RUN_DIR... [--update README.md]

The list of outcomes comes from each kernel's own vmlinux, not from us:
- the page types and results of action_result(): the ras:memory_failure_event
  tracepoint's print format carries the whole table as
  __print_symbolic(REC->type, { MF_MSG_..., "dirty LRU page" }, ...) and
  __print_symbolic(REC->result, ...), in .data; the words the kernel log
  uses come from the action_page_types[] array of string pointers in .rodata
  (they differ: the tracepoint's "already poisoned" is logged as "already
  poisoned page");
- the paths that print no page type: those of OTHER_PATHS whose format string
  the kernel holds (6.1 says "already hardware poisoned", 6.12 has a page type
  for it instead).
Which scenario reached which outcome comes from real runs: each passing
scenario's guest-kernel.log (and console.log, where a panic is) in
results/<run>/. With --update the table replaces the text between the
coverage-table markers.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from elftools.elf.elffile import ELFFile

from orchestrator.guest.images.elf import cstrings

from .table import update

START, END = "<!-- coverage-table:start -->", "<!-- coverage-table:end -->"
IMAGE_CACHE = Path(__file__).resolve().parents[2] / "guest-images" / ".cache" / "images"

_SYMBOLIC = re.compile(r'__print_symbolic\(REC->(type|result), ((?:\{ \w+, "[^"]*" \}(?:, )?)+)\)')
_ENTRY = re.compile(r'\{ (\w+), "([^"]*)" \}')

# Paths of memory_failure() that print no page type: (label, format string as
# the kernel holds it after the KERN_ERR/KERN_EMERG prefix). Only those the
# kernel's binary contains count for that kernel.
OTHER_PATHS = (
    ("memory outside kernel control", "Memory failure: %#lx: memory outside kernel control"),
    ("already hardware poisoned", "Memory failure: %#lx: already hardware poisoned"),
    ("panic with recovery off", "Memory failure on page %lx"),
)

# What the kernel's own software injection prints before it calls memory_failure()
# on a PFN: madvise(MADV_HWPOISON) (mm/madvise.c madvise_inject_error()) and
# hwpoison-inject's corrupt-pfn (mm/hwpoison-inject.c). No machine check involved.
SOFTWARE_INJECTION = re.compile(r"^Injecting memory failure (?:for|at) pfn (0x[0-9a-f]+)")
_PFN_IN_LINE = re.compile(r"Memory failure(?::| on page) (?:0x)?([0-9a-f]+)")

# Why an outcome is not reached under QEMU TCG on these machines (shown only
# for outcomes no passing scenario reached).
REASONS = {
    "reserved kernel page": "not from a machine check: get_hwpoison_page() refuses a reserved page "
                            "(not HWPoisonHandlable), which reports as unknown page (6.1) / get hwpoison page "
                            "(6.12) instead, see kernel-code-page; only madvise(MADV_HWPOISON) (MF_COUNT_INCREASED "
                            "skips get_hwpoison_page()) gets to this entry, on the zero page: "
                            "zero-page-madvise-hwpoison",
    "high-order kernel page": "a race: memory_failure() reports it when get_hwpoison_page() returned 0 for a page "
                              "with no references that was free (or a free huge page) and is_free_buddy_page() is "
                              "false when it looks again (allocated in between); a tail page of a high-order kernel "
                              "allocation is not HWPoisonHandlable (unhandlable page: unknown page / get hwpoison "
                              "page), and madvise(MADV_HWPOISON) (MF_COUNT_INCREASED) never calls "
                              "get_hwpoison_page(); high-order-kernel-page forces it (inject.race: a vCPU held "
                              "with QEMU's gdbstub)",
    "kernel slab page": "6.1 has no path to it: from a machine check get_hwpoison_page() refuses a slab page (not "
                        "HWPoisonHandlable, \"unhandlable page\", reported as unknown page, see kernel-code-page); "
                        "madvise(MADV_HWPOISON) only reaches pages a user mapping holds, and no interface maps a slab "
                        "page (vm_insert_page()'s validate_page_before_insert() refuses PageSlab, remap_pfn_range() "
                        "mappings are VM_PFNMAP, which GUP refuses). No forced interleaving helps either: the page "
                        "memory_failure() holds a reference to cannot be freed and become a slab page, and a page "
                        "free at get_hwpoison_page() never reaches identify_page_state(); 6.12 dropped it from "
                        "action_page_types[]",
    "different compound page after locking": "a race (6.1 only): the page must turn compound between "
                                             "compound_head() and get_hwpoison_page() in memory_failure(), "
                                             "twice (the first time it retries); a page that is compound when "
                                             "looked at is split first (PageTransHuge(): any compound head) or "
                                             "reported as unsplit thp, and a page with a reference cannot turn "
                                             "compound: only a free block handed out again without "
                                             "check_new_pages() (6.1's per-CPU lists) can; "
                                             "different-compound-page forces it (inject.race: a vCPU held with "
                                             "QEMU's gdbstub)",
    "unmapping failed page": "try_to_unmap() must leave the page mapped: a KSM page on 6.1 (ksm-merged-page, "
                             "\"can't handle KSM pages\"; 6.12 unmaps KSM pages), or on both kernels a DMA-pinned "
                             "swap-cache page, which try_to_unmap_one() cannot make shared (swapcache-pinned-page)",
    "unknown page": "6.12 reports unhandlable pages as \"get hwpoison page\"; from a machine check this entry "
                    "needs a page that was handlable when taken but matches no error_states[] entry (left the LRU "
                    "meanwhile): a race; madvise(MADV_HWPOISON) reaches it on a perf ring buffer page "
                    "(perf-ring-madvise-hwpoison)",
    "dax page": "needs a page of ZONE_DEVICE memory mapped with DAX: dax-page makes one with guest.pmem "
                "(memmap= legacy pmem, nd_e820/nd_pmem, ext4 -o dax); a kernel without those options "
                "skips it",
}


@dataclass(frozen=True)
class Outcome:
    """Something memory_failure() can report, and how its kernel log line looks."""
    name: str           # "dirty LRU page", or an OTHER_PATHS label
    line: re.Pattern    # matches the kernel log line(s) that report it
    page_type: bool     # one of action_result()'s page types


@dataclass(frozen=True)
class KernelOutcomes:
    release: str
    outcomes: tuple[Outcome, ...]
    results: tuple[str, ...]   # "Ignored", "Failed", "Delayed", "Recovered"


def _format_regex(fmt: str) -> str:
    parts = re.split(r"(%#lx|%lx)", fmt)
    return "".join({"%#lx": "0x[0-9a-f]+", "%lx": "[0-9a-f]+"}.get(p, re.escape(p)) for p in parts)


def page_type_array(rodata: bytes, rodata_addr: int, first: str, last: str, anchor: str = "dirty LRU page"
                    ) -> list[str]:
    """action_page_types[]: the strings of the array of pointers that holds a
    pointer to `anchor`, from the entry naming `first` to the one naming `last`
    (NULL entries, enum values the kernel no longer reports, left out)."""
    def string_at(ptr: int) -> str | None:
        if not rodata_addr <= ptr < rodata_addr + len(rodata):
            return None
        off = ptr - rodata_addr
        end = rodata.find(b"\0", off)
        return rodata[off:end].decode("latin-1") if end > off else None

    def entry(pos: int) -> int:
        return int.from_bytes(rodata[pos:pos + 8], "little") if 0 <= pos <= len(rodata) - 8 else -1

    for m in re.finditer(re.escape(anchor.encode()) + b"\0", rodata):
        needle = (rodata_addr + m.start()).to_bytes(8, "little")
        at = rodata.find(needle)
        while at != -1:
            if at % 8 == 0:
                start = next((p for p in range(at, at - 64 * 8, -8) if string_at(entry(p)) == first), None)
                end = next((p for p in range(at, at + 64 * 8, 8) if string_at(entry(p)) == last), None)
                if start is not None and end is not None:
                    names = [string_at(entry(p)) for p in range(start, end + 8, 8) if entry(p) != 0]
                    if all(names):
                        return names
            at = rodata.find(needle, at + 1)
    raise ValueError(f"no array of page type names around a pointer to {anchor!r} in .rodata")


def parse_outcomes(release: str, strings: list[str], logged_names: list[str] | None = None) -> KernelOutcomes:
    """The kernel's page types, results and other paths, from its strings;
    logged_names (action_page_types[], in enum order) replaces the tracepoint's
    names where given."""
    tables: dict[str, list[tuple[str, str]]] = {}
    for s in strings:
        if "recovery action for %s: %s" in s and "__print_symbolic(REC->type" in s:
            for which, body in _SYMBOLIC.findall(s):
                tables[which] = _ENTRY.findall(body)
            break
    if "type" not in tables or "result" not in tables:
        raise ValueError(f"{release}: no memory_failure_event print format with page types in the kernel's strings")
    names = [name for _, name in tables["type"]]
    if logged_names is not None:
        if len(logged_names) != len(names):
            raise ValueError(f"{release}: the tracepoint names {len(names)} page types, "
                             f"action_page_types[] {len(logged_names)}")
        names = logged_names
    results = tuple(name for _, name in tables["result"])
    result_alt = "|".join(re.escape(r) for r in results)
    outcomes = [Outcome(name, re.compile(rf"Memory failure: 0x[0-9a-f]+: recovery action for {re.escape(name)}: "
                                         rf"(?:{result_alt})$"), True)
                for name in names]
    # printk formats start with a level prefix (\x01 and a digit), or none.
    formats = {s.lstrip("\x01").lstrip("01234567") for s in strings}
    for label, fmt in OTHER_PATHS:
        if fmt in formats or fmt + "\n" in formats:
            outcomes.append(Outcome(label, re.compile(_format_regex(fmt) + "$"), False))
    return KernelOutcomes(release, tuple(outcomes), results)


def kernel_outcomes(vmlinux: Path, release: str) -> KernelOutcomes:
    with vmlinux.open("rb") as f:
        elf = ELFFile(f)
        sections = {name: elf.get_section_by_name(name) for name in (".rodata", ".data")}
        if sections[".rodata"] is None:
            raise ValueError(f"{vmlinux}: no .rodata section")
        strings = [s for sec in sections.values() if sec is not None for s in cstrings(sec.data())]
        first = parse_outcomes(release, strings).outcomes
        types = [o.name for o in first if o.page_type]
        logged = page_type_array(sections[".rodata"].data(), sections[".rodata"]["sh_addr"], types[0], types[-1])
    return parse_outcomes(release, strings, logged)


def find_vmlinux(release: str, cache: Path = IMAGE_CACHE) -> Path:
    """The cached image's kernel whose build says it is this release."""
    for meta in sorted(cache.glob("*/*/image.json")):
        info = json.loads(meta.read_text())
        if info.get("kernel_release") == release:
            return meta.parent / info["kernel"]
    raise ValueError(f"no cached image under {cache} has kernel release {release}")


_STAMP = re.compile(r"^(<\d>)?\[\s*\d+\.\d+\] ")


def _log_lines(log_text: str) -> list[str]:
    """A kernel log's lines, timestamps and levels stripped."""
    return [_STAMP.sub("", line).rstrip() for line in log_text.splitlines()]


def reached_outcomes(outcomes: tuple[Outcome, ...], log_text: str) -> set[str]:
    """The outcomes whose line appears in a kernel log (timestamps and levels stripped)."""
    lines = _log_lines(log_text)
    return {o.name for o in outcomes if any(o.line.search(line) for line in lines)}


def software_only_outcomes(outcomes: tuple[Outcome, ...], log_text: str) -> set[str]:
    """The outcomes this log reached only through the kernel's software injection:
    each of their lines answers an "Injecting memory failure" line on the same PFN
    (one memory_failure() call, one result line), none a machine check."""
    injected: set[int] = set()       # PFNs injected by software, not answered yet
    by_software: set[str] = set()
    otherwise: set[str] = set()
    records: set[str] = set()
    for raw in log_text.splitlines():
        raw = raw.rstrip()
        if _STAMP.match(raw):
            if raw in records:
                continue  # the same printk record again: the console repeats the kernel log's error lines
            records.add(raw)
        line = _STAMP.sub("", raw)
        sw = SOFTWARE_INJECTION.search(line)
        if sw:
            injected.add(int(sw.group(1), 16))
            continue
        for o in outcomes:
            if o.line.search(line):
                pfn = _PFN_IN_LINE.search(line)
                number = int(pfn.group(1), 16) if pfn else None
                (by_software if number in injected else otherwise).add(o.name)
                injected.discard(number)
    return by_software - otherwise


# Written by orchestrator.inject.races.highorder in a scenario's artifacts when it held vCPUs.
FORCED_MARK = "gdbstub-transcript.txt"


@dataclass(frozen=True)
class RunScenario:
    name: str
    release: str
    outcome: str
    logs: str          # the guest kernel log and console text
    forced: bool = False  # the harness forced an interleaving by holding vCPUs (inject.race, QEMU's gdbstub)


def load_runs(run_dirs: list[Path]) -> list[RunScenario]:
    found = []
    for run_dir in run_dirs:
        report = json.loads((run_dir / "report.json").read_text())
        for s in report["scenarios"]:
            artifacts = Path(s.get("artifacts") or run_dir / s["name"])
            logs = "\n".join(p.read_text(errors="replace") for p in (artifacts / "guest-kernel.log",
                                                                      artifacts / "console.log") if p.is_file())
            found.append(RunScenario(s["name"], s.get("kernel_release") or "?", s["outcome"], logs,
                                     forced=(artifacts / FORCED_MARK).is_file()))
    return found


@dataclass(frozen=True)
class Coverage:
    kernel: KernelOutcomes
    reached_by: dict[str, tuple[str, ...]]   # outcome -> passing scenarios that reached it
    # outcome -> those of its scenarios that reached it only by software injection
    by_software: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # outcome -> those of its scenarios that reached it with an interleaving the harness forced
    forced: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def share(self, page_types: bool = True) -> tuple[int, int]:
        """(reached, all) among the page types, or among every outcome."""
        chosen = [o for o in self.kernel.outcomes if o.page_type or not page_types]
        return sum(1 for o in chosen if self.reached_by[o.name]), len(chosen)

    def percent(self, page_types: bool = True) -> float:
        reached, total = self.share(page_types)
        return 100.0 * reached / total if total else 0.0

    def software_only(self) -> list[str]:
        """The page types reached, but by no machine check: only by software injection."""
        return [o.name for o in self.kernel.outcomes if o.page_type and self.reached_by[o.name]
                and set(self.reached_by[o.name]) <= set(self.by_software.get(o.name, ()))]

    def summary(self) -> str:
        (r, n), (ra, na) = self.share(), self.share(page_types=False)
        soft = len(self.software_only())
        return (f"{self.kernel.release}: {self.percent():.0f}% of page types reached ({r}/{n}"
                + (f", {soft} of them only by software injection" if soft else "") + "); "
                f"{self.percent(False):.0f}% of all outcomes ({ra}/{na})")


def coverage(kernel: KernelOutcomes, scenarios: list[RunScenario]) -> Coverage:
    """Which passing scenarios of this kernel reached each outcome."""
    reached: dict[str, list[str]] = {o.name: [] for o in kernel.outcomes}
    software: dict[str, set[str]] = {}
    forced: dict[str, set[str]] = {}
    for s in scenarios:
        if s.release != kernel.release or s.outcome != "PASS":
            continue
        for name in reached_outcomes(kernel.outcomes, s.logs):
            if s.name not in reached[name]:
                reached[name].append(s.name)
            if s.forced:
                forced.setdefault(name, set()).add(s.name)
        for name in software_only_outcomes(kernel.outcomes, s.logs):
            software.setdefault(name, set()).add(s.name)
    return Coverage(kernel, {k: tuple(sorted(v)) for k, v in reached.items()},
                    {k: tuple(sorted(v)) for k, v in software.items()},
                    {k: tuple(sorted(v)) for k, v in forced.items()})


def markdown(covs: list[Coverage], sources: list[str]) -> str:
    # Every kernel's outcomes in its own order: one only a later kernel has goes
    # after the one it follows there; the paths without a page type come last.
    names: list[tuple[str, bool]] = []
    for c in covs:
        previous = -1
        for o in sorted(c.kernel.outcomes, key=lambda o: not o.page_type):
            key = (o.name, o.page_type)
            if key not in names:
                names.insert(previous + 1, key)
            previous = names.index(key)
    lines = ["| outcome | " + " | ".join(c.kernel.release for c in covs) + " |", "|---|" + "---|" * len(covs)]
    for name, page_type in names:
        cells = []
        for c in covs:
            if name not in c.reached_by:
                cells.append("not in this kernel")
            elif c.reached_by[name]:
                soft, forced = c.by_software.get(name, ()), c.forced.get(name, ())
                cells.append(", ".join(n + (" (software injection)" if n in soft else "")
                                       + (" (forced interleaving)" if n in forced else "")
                                       for n in c.reached_by[name]))
            else:
                cells.append("**not reached**" + (f": {REASONS[name]}" if name in REASONS else ""))
        label = f"`{name}`" if page_type else f"({name})"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| **page types reached** | " + " | ".join(
        "**{:.0f}%** ({}/{})".format(c.percent(), *c.share())
        + (f", {len(c.software_only())} only by software injection" if c.software_only() else "")
        for c in covs) + " |")
    return ("\n".join(lines) + "\n\n\"(software injection)\": that scenario reached the outcome through the "
            "kernel's own software injection (madvise(MADV_HWPOISON) or hwpoison-inject's corrupt-pfn, "
            "memory_failure() called directly, \"Injecting memory failure\" in its log), not a machine check. "
            "\"(forced interleaving)\": a machine check, but the harness held the handling vCPU with QEMU's "
            "gdbstub at a chosen point of memory_failure() while a guest process ran on another "
            "(inject.race).\n\n"
            "Generated by `python -m orchestrator.report.coverage` from runs "
            + ", ".join(f"`{s}`" for s in sources) + ".\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.report.coverage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--update", type=Path, metavar="README")
    args = parser.parse_args(argv)
    try:
        run_dirs = [r.resolve() for r in args.runs]
        scenarios = load_runs(run_dirs)
        releases = list(dict.fromkeys(s.release for s in scenarios))
        covs = [coverage(kernel_outcomes(find_vmlinux(r), r), scenarios) for r in releases]
    except (OSError, ValueError, KeyError) as exc:
        print(f"orchestrator.report.coverage: error: {exc}", file=sys.stderr)
        return 2
    for c in covs:
        print(c.summary(), file=sys.stderr)
    table = markdown(covs, [d.name for d in run_dirs])
    print(table)
    if args.update:
        update(args.update, table, START, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
