"""orchestrator.report.coverage on strings and kernel log lines taken from the real kernels and runs."""
import dataclasses
import json
from pathlib import Path

import pytest

from orchestrator.report.coverage import (START, END, RunScenario, coverage, cstrings, find_vmlinux, kernel_outcomes,
                                   load_runs, markdown, page_type_array, parse_outcomes, reached_outcomes,
                                   software_only_outcomes)
from orchestrator.report.table import update

# The ras:memory_failure_event print formats as Debian's 6.1.0-56 and 6.12.117 vmlinux hold them
# (strings(1) of .data), and printk formats from their .rodata (KERN_ERR prefix \x01 3).
FORMAT_6_1 = '"pfn %#lx: recovery action for %s: %s", REC->pfn, __print_symbolic(REC->type, { MF_MSG_KERNEL, "reserved kernel page" }, { MF_MSG_KERNEL_HIGH_ORDER, "high-order kernel page" }, { MF_MSG_SLAB, "kernel slab page" }, { MF_MSG_DIFFERENT_COMPOUND, "different compound page after locking" }, { MF_MSG_HUGE, "huge page" }, { MF_MSG_FREE_HUGE, "free huge page" }, { MF_MSG_UNMAP_FAILED, "unmapping failed page" }, { MF_MSG_DIRTY_SWAPCACHE, "dirty swapcache page" }, { MF_MSG_CLEAN_SWAPCACHE, "clean swapcache page" }, { MF_MSG_DIRTY_MLOCKED_LRU, "dirty mlocked LRU page" }, { MF_MSG_CLEAN_MLOCKED_LRU, "clean mlocked LRU page" }, { MF_MSG_DIRTY_UNEVICTABLE_LRU, "dirty unevictable LRU page" }, { MF_MSG_CLEAN_UNEVICTABLE_LRU, "clean unevictable LRU page" }, { MF_MSG_DIRTY_LRU, "dirty LRU page" }, { MF_MSG_CLEAN_LRU, "clean LRU page" }, { MF_MSG_TRUNCATED_LRU, "already truncated LRU page" }, { MF_MSG_BUDDY, "free buddy page" }, { MF_MSG_DAX, "dax page" }, { MF_MSG_UNSPLIT_THP, "unsplit thp" }, { MF_MSG_UNKNOWN, "unknown page" }), __print_symbolic(REC->result, { MF_IGNORED, "Ignored" }, { MF_FAILED, "Failed" }, { MF_DELAYED, "Delayed" }, { MF_RECOVERED, "Recovered" })'
FORMAT_6_12 = '"pfn %#lx: recovery action for %s: %s", REC->pfn, __print_symbolic(REC->type, { MF_MSG_KERNEL, "reserved kernel page" }, { MF_MSG_KERNEL_HIGH_ORDER, "high-order kernel page" }, { MF_MSG_HUGE, "huge page" }, { MF_MSG_FREE_HUGE, "free huge page" }, { MF_MSG_GET_HWPOISON, "get hwpoison page" }, { MF_MSG_UNMAP_FAILED, "unmapping failed page" }, { MF_MSG_DIRTY_SWAPCACHE, "dirty swapcache page" }, { MF_MSG_CLEAN_SWAPCACHE, "clean swapcache page" }, { MF_MSG_DIRTY_MLOCKED_LRU, "dirty mlocked LRU page" }, { MF_MSG_CLEAN_MLOCKED_LRU, "clean mlocked LRU page" }, { MF_MSG_DIRTY_UNEVICTABLE_LRU, "dirty unevictable LRU page" }, { MF_MSG_CLEAN_UNEVICTABLE_LRU, "clean unevictable LRU page" }, { MF_MSG_DIRTY_LRU, "dirty LRU page" }, { MF_MSG_CLEAN_LRU, "clean LRU page" }, { MF_MSG_TRUNCATED_LRU, "already truncated LRU page" }, { MF_MSG_BUDDY, "free buddy page" }, { MF_MSG_DAX, "dax page" }, { MF_MSG_UNSPLIT_THP, "unsplit thp" }, { MF_MSG_ALREADY_POISONED, "already poisoned" }, { MF_MSG_UNKNOWN, "unknown page" }), __print_symbolic(REC->result, { MF_IGNORED, "Ignored" }, { MF_FAILED, "Failed" }, { MF_DELAYED, "Delayed" }, { MF_RECOVERED, "Recovered" })'
OUTSIDE = "\x013Memory failure: %#lx: memory outside kernel control"
ALREADY = "\x013Memory failure: %#lx: already hardware poisoned"
PANIC = "Memory failure on page %lx"


def kernel_6_1():
    return parse_outcomes("6.1.0-56-amd64", ["unrelated string", FORMAT_6_1, OUTSIDE, ALREADY, PANIC])


def kernel_6_12():
    return parse_outcomes("6.12.117+deb12-amd64", [FORMAT_6_12, OUTSIDE, PANIC])


def test_page_types_come_from_the_tracepoint_format_in_kernel_order():
    k = kernel_6_1()
    types = [o.name for o in k.outcomes if o.page_type]
    assert len(types) == 20
    assert types[:4] == ["reserved kernel page", "high-order kernel page", "kernel slab page",
                         "different compound page after locking"]
    assert types[-1] == "unknown page" and "unsplit thp" in types and "dax page" in types
    assert k.results == ("Ignored", "Failed", "Delayed", "Recovered")
    assert [o.name for o in k.outcomes if not o.page_type] == ["memory outside kernel control",
                                                               "already hardware poisoned", "panic with recovery off"]


def test_kernels_differ_as_their_tables_do():
    t61 = {o.name for o in kernel_6_1().outcomes}
    t612 = {o.name for o in kernel_6_12().outcomes}
    assert t612 - t61 == {"get hwpoison page", "already poisoned"}
    assert t61 - t612 == {"kernel slab page", "different compound page after locking", "already hardware poisoned"}


# action_page_types[] of 6.12 as its .rodata lays it out: pointers in enum order, NULL where
# MF_MSG_SLAB was, then a neighbouring array; strings elsewhere in .rodata.
NAMES_6_12 = ["reserved kernel page", "high-order kernel page", None, "huge page", "free huge page",
              "get hwpoison page", "unmapping failed page", "dirty swapcache page", "clean swapcache page",
              "dirty mlocked LRU page", "clean mlocked LRU page", "dirty unevictable LRU page",
              "clean unevictable LRU page", "dirty LRU page", "clean LRU page", "already truncated LRU page",
              "free buddy page", "dax page", "unsplit thp", "already poisoned page", "unknown page"]
BASE = 0xffffffff82000000


def rodata_with_array(names, array_at=0x100):
    strings, where = bytearray(), {}
    for name in filter(None, names + ["Ignored", "Failed"]):
        where[name] = 0x1000 + len(strings)
        strings += name.encode() + b"\0"
    pointers = b"".join((BASE + where[n] if n else 0).to_bytes(8, "little") for n in names + ["Ignored", "Failed"])
    data = bytearray(0x1000) + strings
    data[array_at - 16:array_at] = bytes(16)
    data[array_at:array_at + len(pointers)] = pointers
    return bytes(data)


def test_page_type_array_reads_the_logged_names_and_skips_holes():
    names = page_type_array(rodata_with_array(NAMES_6_12), BASE, "reserved kernel page", "unknown page")
    assert names == [n for n in NAMES_6_12 if n]
    # The tracepoint says "already poisoned", the kernel log "already poisoned page": the log wins.
    k = parse_outcomes("6.12.117+deb12-amd64", [FORMAT_6_12], names)
    assert "already poisoned page" in [o.name for o in k.outcomes]
    assert reached_outcomes(k.outcomes, "Memory failure: 0x61ff: recovery action for already poisoned page: Failed"
                            ) == {"already poisoned page"}


def test_page_type_array_missing_or_mismatched_is_an_error():
    with pytest.raises(ValueError, match="no array of page type names"):
        page_type_array(rodata_with_array(NAMES_6_12)[:0x100], BASE, "reserved kernel page", "unknown page")
    with pytest.raises(ValueError, match="action_page_types"):
        parse_outcomes("6.12", [FORMAT_6_12], ["reserved kernel page", "unknown page"])


def test_a_kernel_without_the_table_is_an_error():
    with pytest.raises(ValueError, match="no memory_failure_event print format"):
        parse_outcomes("4.0", ["Memory failure: %#lx: recovery action for %s: %s"])


def test_cstrings_splits_on_nul_and_unprintables():
    assert cstrings(b"\0\0short\0" + FORMAT_6_1.encode() + b"\0\x013Memory failure: x\xff") == [
        FORMAT_6_1, "\x013Memory failure: x"]


# Lines from guest-kernel.log of real runs (results/20261126-140639-3798 and earlier).
LOG = """[    0.000000] Kernel command line: console=ttyS0 quiet panic=0 tsc=reliable
[   11.635147] Memory failure: 0x29aa: corrupted page was clean: dropped without side effects
[   11.643634] Memory failure: 0x29aa: recovery action for clean LRU page: Recovered
[    5.182047] Memory failure: 0x1fdff: recovery action for free buddy page: Recovered
"""


def test_whole_result_lines_are_matched():
    k = kernel_6_1()
    assert reached_outcomes(k.outcomes, LOG) == {"clean LRU page", "free buddy page"}
    # "dirty LRU page" must not match inside "dirty mlocked LRU page", nor a made-up result.
    assert reached_outcomes(k.outcomes, "Memory failure: 0x10: recovery action for dirty mlocked LRU page: Recovered"
                            ) == {"dirty mlocked LRU page"}
    assert reached_outcomes(k.outcomes, "Memory failure: 0x10: recovery action for dirty LRU page: Fine") == set()


def test_other_paths_and_the_panic():
    k = kernel_6_1()
    log = ("[   20.1] Memory failure: 0x7205: already hardware poisoned\n"
           "[   21.2] Kernel panic - not syncing: Memory failure on page 7205\n"
           "[   22.3] Memory failure: 0x100000: memory outside kernel control\n")
    assert reached_outcomes(k.outcomes, log) == {"already hardware poisoned", "panic with recovery off",
                                                 "memory outside kernel control"}


# The lines of zero-page-madvise-hwpoison (6.1) and unpoison-after-soft-poison / srao-anon-late-kill.
MADVISE_LOG = """\
[    3.377571] Injecting memory failure for pfn 0x3310 at process virtual address 0x7f4ac1ede000
[    3.378305] Memory failure: 0x3310: recovery action for reserved kernel page: Ignored
"""
CORRUPT_PFN_LOG = """\
[    4.100000] Injecting memory failure at pfn 0x6e1c
[    4.100100] Memory failure: 0x6e1c: recovery action for dirty LRU page: Recovered
"""
MCE_LOG = """\
[    5.000000] mce: [Hardware Error]: Machine check events logged
[    5.000100] Memory failure: 0x6e1c: recovery action for dirty LRU page: Recovered
"""


def test_software_injection_is_told_apart_from_a_machine_check():
    k = kernel_6_1()
    assert software_only_outcomes(k.outcomes, MADVISE_LOG) == {"reserved kernel page"}
    assert software_only_outcomes(k.outcomes, CORRUPT_PFN_LOG) == {"dirty LRU page"}
    assert software_only_outcomes(k.outcomes, MCE_LOG) == set()
    # One injection answers one result line: a machine check on the same PFN later is not software's.
    assert software_only_outcomes(k.outcomes, CORRUPT_PFN_LOG + MCE_LOG) == set()
    # The console repeats the result line (same printk record, same timestamp), without the
    # injection line (KERN_INFO): still software's. A later machine check's line is not.
    console = "[    3.378305] Memory failure: 0x3310: recovery action for reserved kernel page: Ignored\r\n"
    assert software_only_outcomes(k.outcomes, MADVISE_LOG + console) == {"reserved kernel page"}
    assert software_only_outcomes(k.outcomes, MADVISE_LOG + console.replace("3.378305", "9.000001")) == set()
    # An injection on another PFN does not make a machine check's line software's.
    assert software_only_outcomes(k.outcomes, MADVISE_LOG.replace("0x3310 at", "0x1 at")) == set()


def test_markdown_names_scenarios_that_reached_a_type_only_by_software_injection():
    k = kernel_6_1()
    c = coverage(k, [RunScenario("zero-page-madvise-hwpoison", k.release, "PASS", MADVISE_LOG),
                     RunScenario("unpoison-after-soft-poison", k.release, "PASS", CORRUPT_PFN_LOG),
                     RunScenario("srao-anon-late-kill", k.release, "PASS", MCE_LOG)])
    assert c.software_only() == ["reserved kernel page"]  # dirty LRU page: a machine check reached it too
    rows = {line.split(" | ")[0].lstrip("| "): line for line in markdown([c], ["run"]).splitlines()}
    assert rows["`reserved kernel page`"] == "| `reserved kernel page` | zero-page-madvise-hwpoison (software injection) |"
    assert rows["`dirty LRU page`"] == ("| `dirty LRU page` | srao-anon-late-kill, "
                                        "unpoison-after-soft-poison (software injection) |")
    assert rows["**page types reached**"].endswith("(2/20), 1 only by software injection |")
    assert "2/20, 1 of them only by software injection" in c.summary()


def test_only_passing_scenarios_of_that_kernel_count():
    k = kernel_6_1()
    runs = [RunScenario("free-page", "6.1.0-56-amd64", "PASS", LOG),
            RunScenario("neg", "6.1.0-56-amd64", "FAIL", "Memory failure: 0x1: recovery action for huge page: Recovered"),
            RunScenario("other-kernel", "6.12.117+deb12-amd64", "PASS",
                        "Memory failure: 0x1: recovery action for dirty LRU page: Recovered")]
    c = coverage(k, runs)
    assert c.reached_by["free buddy page"] == ("free-page",)
    assert c.reached_by["huge page"] == () and c.reached_by["dirty LRU page"] == ()
    assert c.share() == (2, 20)
    assert c.percent() == 10.0
    assert c.share(page_types=False) == (2, 23)


def test_markdown_lists_unreached_types_with_reasons_and_absent_ones(tmp_path):
    c61 = coverage(kernel_6_1(), [RunScenario("free-page", "6.1.0-56-amd64", "PASS", LOG)])
    c612 = coverage(kernel_6_12(), [])
    table = markdown([c61, c612], ["run-a", "run-b"])
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()}
    assert rows["`free buddy page`"].split(" | ")[1:] == ["free-page", "**not reached** |"]
    assert "not in this kernel" in rows["`kernel slab page`"]
    assert "6.1 has no path to it" in rows["`kernel slab page`"]
    order = [line.split(" | ")[0].lstrip("| ") for line in table.split("\n\n")[0].splitlines()[2:]]
    assert order[:6] == ["`reserved kernel page`", "`high-order kernel page`", "`kernel slab page`",
                         "`different compound page after locking`", "`huge page`", "`free huge page`"]
    assert order.index("`get hwpoison page`") == order.index("`free huge page`") + 1
    assert order.index("`already poisoned`") == order.index("`unsplit thp`") + 1
    assert order[-4:] == ["(memory outside kernel control)", "(already hardware poisoned)", "(panic with recovery off)",
                          "**page types reached**"]
    assert "**10%** (2/20)" in table and "**0%** (0/20)" in table
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{START}\nold\n{END}\nafter\n")
    update(readme, table, START, END)
    assert readme.read_text() == f"before\n{START}\n{table}{END}\nafter\n"


def test_load_runs_reads_each_scenarios_logs(tmp_path):
    (tmp_path / "free-page").mkdir()
    (tmp_path / "free-page" / "guest-kernel.log").write_text(LOG)
    (tmp_path / "report.json").write_text(json.dumps({"scenarios": [
        {"name": "free-page", "kernel_release": "6.1.0-56-amd64", "outcome": "PASS",
         "artifacts": str(tmp_path / "free-page")}]}))
    [run] = load_runs([tmp_path])
    assert (run.name, run.release, run.outcome) == ("free-page", "6.1.0-56-amd64", "PASS")
    assert "free buddy page" in run.logs


def cached_release(image: str) -> str | None:
    """The kernel release of the newest cached build of `image` (whatever the archive served
    when it was built: never a release written here, which the archive replaces)."""
    from orchestrator.report.coverage import IMAGE_CACHE
    builds = sorted(IMAGE_CACHE.glob(f"{image}/*/image.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(builds[-1].read_text())["kernel_release"] if builds else None


def test_the_cached_kernels_themselves():
    """Reads the real vmlinux of each cached image, where the image cache exists."""
    release = cached_release("debian-6.1")
    if release is None:
        pytest.skip("no cached debian-6.1 image")
    k = kernel_outcomes(find_vmlinux(release), release)
    assert k == dataclasses.replace(kernel_6_1(), release=release)
    release = cached_release("debian-6.12")
    if release is None:
        return
    names = [o.name for o in kernel_outcomes(find_vmlinux(release), release).outcomes if o.page_type]
    assert names == [n for n in NAMES_6_12 if n]


HIGH_ORDER_LOG = "[   37.6] Memory failure: 0x6900: recovery action for high-order kernel page: Ignored\n"


def test_a_forced_interleaving_is_marked_as_such(tmp_path):
    for name, forced in (("high-order-kernel-page", True), ("free-page", False)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "guest-kernel.log").write_text(HIGH_ORDER_LOG if forced else LOG)
        if forced:
            (tmp_path / name / "gdbstub-transcript.txt").write_text("-> ?\n")
    (tmp_path / "report.json").write_text(json.dumps({"scenarios": [
        {"name": n, "kernel_release": "6.1.0-56-amd64", "outcome": "PASS", "artifacts": str(tmp_path / n)}
        for n in ("high-order-kernel-page", "free-page")]}))
    runs = load_runs([tmp_path])
    assert [r.forced for r in runs] == [True, False]
    k = kernel_6_1()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in markdown([coverage(k, runs)], ["run"]).splitlines()}
    assert rows["`high-order kernel page`"] == "| `high-order kernel page` | high-order-kernel-page (forced interleaving) |"
    assert rows["`free buddy page`"] == "| `free buddy page` | free-page |"
