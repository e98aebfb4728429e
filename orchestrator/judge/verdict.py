"""Expectations + evidence -> outcome with reasons. Pure.

A check is FAIL when the evidence shows the kernel did something else than
expected, ERROR when the evidence it needs could not be gathered.
"""
from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field

from orchestrator.judge import crashes, logmatch, printk

from orchestrator.judge.logmatch import LineExpectation

from orchestrator.plumbing.bounded import TRUNCATED

from orchestrator.plumbing.guest_data import Unreadable, bool_field, hex_field, int_field, int_list_field, shown

from orchestrator.plumbing.outcome import Outcome, worst

from orchestrator.scenario import NONE, Expectations, Scenario


KPF_HWPOISON = 19  # include/uapi/linux/kernel-page-flags.h
KPF_NOPAGE = 20    # the same header: no page frame at this PFN
PAGE_SHIFT = 12
HUGE_PAGES = 512   # 4 KiB pages in a 2 MiB hugetlb page


@dataclass
class Evidence:
    """Everything observed about one scenario run; filled in phase by phase."""
    ready: dict | None = None              # the probe's "ready" report (va, pfn, gpa, pages...)
    injected_address: int | None = None
    checked_pfn: int | None = None         # the page the page checks look at
    probe_result: dict | None = None       # the probe's "result" report
    child_results: list[dict] = field(default_factory=list)  # the forked child's, with processes: 2
    steps: list[dict] = field(default_factory=list)          # answers to fsync/reread/collapse/touch
    probe_exit_status: int | None = None   # the probe's exit status as its shell saw it (128+N: signal N)
    second_ready: list = field(default_factory=list)  # pids of ready reports after the first: one is forged
    kpageflags: int | None = None
    hardware_corrupted_kb_before: int | None = None
    hardware_corrupted_kb_after: int | None = None
    kernel_log: str | None = None
    events: list[dict] = field(default_factory=list)
    guest_answered_after: bool | None = None
    console_tail: str = ""
    sshd_log: str | None = None
    ras_log: str | None = None             # `ras-mc-ctl --errors` in the guest, as printed
    ras_records: list[dict] | None = None  # its machine-check records: {bank, status, addr}
    unavailable: dict[str, str] = field(default_factory=dict)  # what could not be gathered, and why
    # What the guest did to the harness (went down, stormed, flooded), first cause first.
    causes: list[str] = field(default_factory=list)
    down: str | None = None                # why the guest stopped answering, when it went down
    # Read on the host from the kernel image under test, not from the guest: for each
    # printk phrase the scenario names, the kernel's formats that hold it. None: not read.
    printk_formats: dict[str, list[str]] | None = None

    def add_cause(self, cause: str) -> None:
        if cause not in self.causes:
            self.causes.append(cause)

    @property
    def panicked(self) -> bool:
        return any(e.get("event") == "GUEST_PANICKED" for e in self.events)


@dataclass(frozen=True)
class Check:
    name: str
    outcome: Outcome
    detail: str


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    checks: tuple[Check, ...]

    @property
    def reasons(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if c.outcome != Outcome.PASS]


def _ok(name: str, detail: str) -> Check:
    return Check(name, Outcome.PASS, detail)


def _fail(name: str, detail: str) -> Check:
    return Check(name, Outcome.FAIL, detail)


def _missing(name: str, ev: Evidence, what: str) -> Check:
    # An unexpected panic explains missing evidence: that is the kernel's doing.
    if ev.panicked:
        return _fail(name, f"no {what}: the guest panicked")
    return Check(name, Outcome.ERROR, f"no {what}: {ev.unavailable.get(what, 'not gathered')}")


def judge(scenario: Scenario, ev: Evidence) -> Verdict:
    expect = scenario.expect
    checks = []

    def add(name: str, check, *args) -> None:
        # Guest-provided values the probe should never print are evidence too:
        # the check says which one, and the other checks still run.
        try:
            result = check(*args)
        except Unreadable as exc:
            result = Check(name, Outcome.ERROR, str(exc))
        checks.extend(result if isinstance(result, list) else [result])

    add("guest", _check_guest, expect, ev)
    if ev.second_ready:
        # The probe prints one ready report; the first was taken, and it may be the other one.
        checks.append(Check("probe's reports", Outcome.ERROR,
                            f"{1 + len(ev.second_ready)} ready reports on the probe's stream (the others from "
                            f"{', '.join(ev.second_ready)}): the target it named may not be the probe's"))
    if expect.guest == "alive":
        add("probe ended", _check_probe_ended, ev)
    if expect.sigbus is not None:
        add("sigbus", _check_sigbus, expect, ev)
        if ev.ready and ev.ready.get("processes", 1) > 1:
            add("sigbus (child)", _check_children, expect, ev)
    add("steps", _check_steps, expect, ev)
    if ev.ready and str(ev.ready.get("memory", "")).startswith(LOCK_RACE_KINDS):
        add("lock race", _check_lock_race, ev)
    if expect.other_pages_intact is not None:
        add("other pages intact", _check_intact, expect.other_pages_intact, ev)
    if expect.page_poisoned is not None:
        add("page poisoned", _check_poisoned, expect.page_poisoned, ev)
    if expect.hardware_corrupted_kb is not None:
        add("HardwareCorrupted", _check_corrupted, expect.hardware_corrupted_kb, ev)
    if expect.ras_record is not None:
        add("RAS daemon record", _check_ras_record, expect.ras_record, scenario, ev)
    if expect.kernel_log or expect.kernel_log_absent:
        add("kernel log", _check_kernel_log, expect, ev)
    if expect.memory_failure_event is not None:
        add("MEMORY_FAILURE event", _check_event, expect, ev)
    if expect.no_kernel_bugs:
        add("no kernel bugs", _check_kernel_health, ev, expect.guest == "panic")
    if expect.ksm_remerge is not None:
        # After the health check: an oops that killed ksmd is the first reason given.
        add("ksm remerge", _check_ksm_remerge, expect.ksm_remerge, ev)
    return Verdict(worst(c.outcome for c in checks), tuple(checks))


# Probe memory kinds whose setup is an observed interleaving (the probe's lock_race.c: run_lock_race).
LOCK_RACE_KINDS = ("fuse-mlock",)
# What the page must have been when the mover waited behind memory_failure() for its lock.
_ISOLATED = {"lru": 0, "mlocked": 1, "locked": 1, "hwpoison": 1}


def _check_lock_race(ev: Evidence) -> Check:
    """The fuse-mlock kinds: the interleaving the scenario is about happened, step by
    step as the probe saw it, or the run is an ERROR naming the step that was not seen
    (the harness could not set the kernel up, which says nothing about the kernel)."""
    name = "lock race"
    if ev.probe_result is None:
        return _missing(name, ev, "probe result")
    race = ev.probe_result.get("lock_race")
    if not isinstance(race, dict):
        return Check(name, Outcome.ERROR, "the probe reported no lock race")
    if "error" not in race:
        return Check(name, Outcome.ERROR, "the lock race did not finish (the probe was interrupted)")
    if race["error"] is not None:
        return Check(name, Outcome.ERROR, f"step {shown(race['error'])}")
    isolated = race.get("isolated")
    if not isinstance(isolated, dict) or any(isolated.get(k) != v for k, v in _ISOLATED.items()):
        return Check(name, Outcome.ERROR, f"the page was not isolated, mlocked, locked and poisoned while both "
                                          f"waited: {shown(isolated)}")
    where = race.get("memory_failure_again", race.get("memory_failure", {}))
    at = where.get("at") if isinstance(where, dict) else None
    moved = race.get("move_pages")
    left = moved.get("rc") if isinstance(moved, dict) else None
    locks = race.get("learned_page_locks") or race.get("page_locks")
    return _ok(name, f"memory_failure() waited for the page lock ({shown(at)}) while the page was mlocked and "
                     f"isolated by move_pages(), which waited behind it (and then left {shown(left)} page(s) "
                     f"unmoved)" + ({1: "; this kernel takes the page lock once", 2: "; this kernel takes the "
                                     "page lock twice"}.get(locks, "")
                                    + (" (learned in this run)" if race.get("learned_page_locks") else "")))


def _check_steps(expect: Expectations, ev: Evidence) -> list[Check]:
    """What the probe's and the harness's steps after the injection answered."""
    checks = []
    if expect.fsync is not None:
        got = [step.get("result") for step in ev.steps if step.get("event") == "fsync"]
        checks.append(_compare("fsync results", list(expect.fsync), got))
    if expect.reread is not None:
        got = [step.get("result") for step in ev.steps if step.get("event") == "reread"]
        checks.append(_compare("reread", expect.reread, got[-1] if got else None))
    for key, event in (("soft_offline", "soft-offline"), ("soft_poison", "soft-poison"), ("unpoison", "unpoison"),
                       ("madvise_hwpoison", "madvise-hwpoison")):
        want = getattr(expect, key)
        if want is not None:
            got = [step.get("result") for step in ev.steps if step.get("event") == event]
            checks.append(_compare(event, want, got[-1] if got else None))
    if expect.target_moved is not None:
        touches = [step for step in ev.steps if step.get("event") == "touched" and "target_pfn" in step]
        now = int_field(touches[-1], "target_pfn") if touches else None
        if now is None:
            checks.append(_fail("target moved", "no touch step answered"))
        elif now == 0:
            # pagemap shows no present page: neither moved nor in place.
            checks.append(_fail("target moved", f"target PFN {ev.ready['pfn']:#x} -> not present in pagemap (PFN 0)"))
        else:
            moved = now != ev.ready["pfn"]
            checks.append((_ok if moved == expect.target_moved else _fail)(
                "target moved", f"target PFN {ev.ready['pfn']:#x} -> {now:#x}"))
    collapses = [step for step in ev.steps if step.get("event") == "collapse"]
    if expect.collapse is not None:
        checks.append(_compare("MADV_COLLAPSE", expect.collapse, collapses[-1].get("result") if collapses else None))
    if expect.huge_regions_after_collapse is not None:
        checks.append(_compare("huge pages after collapse", list(expect.huge_regions_after_collapse),
                               collapses[-1].get("huge_regions") if collapses else None))
    return checks


def _check_ksm_remerge(want: str, ev: Evidence) -> Check:
    """ksmd's progress over the fresh pages of the ksm-remerge step, and whether ksmd is still there."""
    name = "ksmd scanned again"
    answers = [step for step in ev.steps if step.get("event") == "ksm-remerge"]
    if not answers:
        return _fail(name, f"expected {want}, but the ksm-remerge step never answered")
    a = answers[-1]
    got = a.get("result")
    if got == "error":
        return Check(name, Outcome.ERROR, f"the ksm-remerge step failed: {a.get('output') or 'no output'}")
    scans = a.get("full_scans", [None, None])
    ksmd = f"ksmd pid {a.get('ksmd_pid')} state {a.get('ksmd_state')}" if a.get("ksmd_pid") else "no ksmd thread"
    detail = (f"{got}: full_scans {scans[0]} -> {scans[1]} in {a.get('elapsed_ms', 0) / 1000:.1f} s over "
              f"{a.get('pages')} fresh pages ({a.get('distinct_pfns')} distinct PFNs after, the first "
              f"{a.get('first_pfn', 0):#x}{', the poisoned page' if a.get('first_pfn') == ev.checked_pfn else ''}); "
              f"{ksmd}")
    # Scanned, yet a zombie or dead ksmd is no healthy ksmd.
    if got == "scanned" and a.get("ksmd_state") in ("Z", "X"):
        got = "ksmd-gone"
    return _ok(name, detail) if got == want else _fail(name, detail + f"; expected {want}")


def _signal_name(number: int) -> str:
    # The guest is x86_64 Linux, as is the host: the same signal numbers.
    try:
        return signal.Signals(number).name
    except ValueError:
        return "?"


def _check_probe_ended(ev: Evidence) -> Check:
    """Judged in every scenario: the probe must report its result and exit normally.
    It catches the one SIGBUS a scenario may expect and reports it; any other end
    (SIGKILL from memory_failure()'s "forcibly killing", a second SIGBUS, a crash)
    is the kernel doing something no scenario asked for."""
    name = "probe ended"
    oom = _oom_kill(ev)
    if oom:
        # As for sigbus: the scenario asked for more memory than the guest has.
        return Check(name, Outcome.ERROR, f"the guest ran out of memory before the probe reported: {oom}")
    status = ev.probe_exit_status
    how = (f"killed by signal {status - 128} ({_signal_name(status - 128)})" if status is not None and status > 128
           else f"exit status {status}")
    if ev.probe_result is None:
        if status is not None:
            return _fail(name, f"{how} before reporting its result")
        return _missing(name, ev, "probe result")
    if status not in (0, None):
        return _fail(name, f"reported its result, then {how}")
    if ev.ready and ev.ready.get("processes", 1) > 1 and not ev.probe_result.get("children_reported"):
        return _fail(name, "the forked child did not exit normally")
    return _ok(name, "reported its result and exited normally" if status == 0
               else "reported its result (its exit was not seen)")


def _check_guest(expect: Expectations, ev: Evidence) -> Check:
    name = f"guest {expect.guest}"
    if expect.guest == "panic":
        if ev.panicked:
            return _ok(name, "GUEST_PANICKED seen")
        return _fail(name, "no panic" + (f" ({ev.down})" if ev.down else
                                         " (the guest still answered over SSH)" if ev.guest_answered_after else ""))
    if ev.panicked:
        return _fail(name, f"the guest panicked: {_panic_line(ev.console_tail)}")
    if ev.down:
        # A reboot, halt, power-off or reset is not "did not answer": say what happened.
        # Not a panic, so nothing here says the kernel's handling failed: the harness cannot tell.
        return Check(name, Outcome.ERROR, ev.down)
    if ev.guest_answered_after:
        return _ok(name, "answered over SSH after the injection")
    if ev.guest_answered_after is None:
        return _missing(name, ev, "liveness check")
    return _fail(name, "did not answer over SSH after the injection")


def _panic_line(console: str) -> str:
    lines = [l.strip() for l in console.splitlines() if l.strip()]
    for l in lines:
        if "Kernel panic" in l or "Machine check:" in l:
            return l
    return lines[-1] if lines else "(console empty)"


def _map_shift(ev: Evidence) -> int:
    """log2 of the size of the page that maps the probe's target (4 KiB; 2 MiB for hugetlb/THP)."""
    size = (ev.ready or {}).get("map_page_size") or (ev.ready or {}).get("page_size") or 1 << PAGE_SHIFT
    return size.bit_length() - 1


def _size(shift: int) -> str:
    return f"{1 << shift - 20} MiB" if shift >= 20 else f"{1 << shift - 10} KiB"


def _compare(name: str, want, got) -> Check:
    if got is None or got == []:
        return _fail(name, f"expected {want}, but the probe never answered that step (it may have been signalled)")
    return _ok(name, f"{got}") if got == want else _fail(name, f"got {str(got)[:200]}, expected {want}")


def _check_children(expect: Expectations, ev: Evidence) -> Check:
    wanted = ev.ready.get("processes", 1) - 1
    if len(ev.child_results) < wanted:
        return _fail("sigbus (child)", f"{len(ev.child_results)} of {wanted} child processes reported")
    verdicts = [_check_sigbus(expect, ev, result) for result in ev.child_results]
    bad = [v.detail for v in verdicts if v.outcome != Outcome.PASS]
    if bad:
        return _fail("sigbus (child)", "; ".join(bad))
    return _ok("sigbus (child)", "; ".join(v.detail for v in verdicts))


def _check_sigbus(expect: Expectations, ev: Evidence, result: dict | None = None) -> Check:
    result = result if result is not None else ev.probe_result
    if result is None:
        oom = _oom_kill(ev)
        if oom:
            # The scenario asked for more memory than the guest has: nothing is known about the MCE handling.
            return Check("sigbus", Outcome.ERROR, f"the guest ran out of memory before the probe reported: {oom}")
        if ev.probe_exit_status is not None:
            return _fail("sigbus", f"the probe died (exit status {ev.probe_exit_status}) before reporting")
        return _missing("sigbus", ev, "probe result")
    sigbus = bool_field(result, "sigbus")
    got = (f"{str(result.get('si_code_name'))[:40]} (si_code {str(result.get('si_code'))[:40]}) "
           f"at {str(result.get('si_addr'))[:40]} lsb {str(result.get('si_addr_lsb'))[:40]}"
           + (" (on the probe's read-back for its report)" if result.get("sigbus_in_report") is True else "")
           ) if sigbus else "no SIGBUS"
    want = expect.sigbus
    if want == NONE:
        return _ok("sigbus", "none, as expected") if not sigbus else _fail("sigbus", f"expected none, got {got}")
    if not sigbus:
        return _fail("sigbus", f"expected {want.code}, got no SIGBUS" + (" (probe timed out)" if result.get("timeout") else ""))
    problems = []
    if result.get("si_code_name") != want.code:
        problems.append(f"code {str(result.get('si_code_name'))[:40]} != {want.code}")
    lsb = int_field(result, "si_addr_lsb", high=64)
    map_shift = _map_shift(ev)
    if want.lsb is not None and lsb != want.lsb:
        problems.append(f"si_addr_lsb {lsb} != {want.lsb}")
    if lsb > map_shift:
        # The kernel claims more memory is lost than the page that maps the target.
        problems.append(f"si_addr_lsb {lsb} is wider than the mapping's {_size(map_shift)} pages")
    if want.addr == "target_page":
        target = hex_field(ev.ready, "va")
        si_addr = hex_field(result, "si_addr")
        # At the mapping's page size, or finer if the kernel reported a finer lsb:
        # never at whatever (wider) granularity the kernel claimed.
        shift = min(map_shift, max(lsb, PAGE_SHIFT))
        if si_addr >> shift != target >> shift:
            problems.append(f"si_addr {si_addr:#x} is not on the target page {target:#x} "
                            f"(compared at {_size(shift)})")
    if problems:
        return _fail("sigbus", "; ".join(problems) + f" (got {got})")
    return _ok("sigbus", got)


_OOM_KILL = re.compile(r"Out of memory: Killed process \d+ \(mce-probe\)|oom-kill:.*task=mce-probe")


def _oom_kill(ev: Evidence) -> str | None:
    """The kernel log's line saying the OOM killer killed the probe, if it did."""
    if ev.probe_exit_status != 128 + 9 or not ev.kernel_log:
        return None
    return next((line.strip() for line in ev.kernel_log.splitlines() if _OOM_KILL.search(line)), None)


def _expected_lost(ev: Evidence) -> set[int]:
    """The probe's pages the scenario expects to lose: the checked page's (the injected
    one unless the scenario says otherwise; several with KSM, which merged them), and
    with hugetlb the whole 2 MiB page around it. Every other page is "other"."""
    if ev.checked_pfn is None or not ev.ready:
        return set()
    pages = ev.ready.get("pages", [])
    hit = {i for i, page in enumerate(pages) if page["pfn"] == ev.checked_pfn}
    group = HUGE_PAGES if ev.ready.get("huge") else 1
    return {j for i in hit for j in range(i - i % group, min(i - i % group + group, len(pages)))}


def _check_intact(want: bool, ev: Evidence) -> Check:
    name = "other pages intact"
    result = ev.probe_result
    if result is None:
        return _missing(name, ev, "probe result")
    if "skipped" not in result:
        return Check(name, Outcome.ERROR, "the probe did not say which pages it skipped")
    intact, corrupt = int_list_field(result, "intact"), int_list_field(result, "corrupt")
    skipped = result["skipped"]
    if not isinstance(skipped, dict) or not all(isinstance(v, list) and all(type(p) is int for p in v)
                                                 for v in skipped.values()):
        raise Unreadable(f"the probe reported an unreadable skipped: {str(skipped)[:120]!r}")
    if not intact and not corrupt:
        return Check(name, Outcome.ERROR, f"the probe checked no page (skipped: {_pages(result['skipped'])})")
    lost = _expected_lost(ev)
    unexpected = {why: [p for p in pages if p not in lost] for why, pages in result["skipped"].items()}
    unexpected = {why: pages for why, pages in unexpected.items() if pages}
    if unexpected:
        return _fail(name, f"pages skipped that the scenario does not expect to lose: {_pages(unexpected)} "
                           f"(expected to lose {_ranges(sorted(lost)) or 'none'})")
    if (not corrupt) == want:
        return _ok(name, f"pages {_ranges(intact)} kept their data; skipped {_pages(result['skipped']) or 'none'}"
                   if want else f"pages {_ranges(corrupt)} changed")
    return _fail(name, f"pages {_ranges(corrupt)} lost their data" if corrupt else "every page kept its data")


def _pages(by_reason: dict[str, list[int]]) -> str:
    return ", ".join(f"{_ranges(pages)} ({why})" for why, pages in by_reason.items() if pages)


def _ranges(pages: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    out, start = [], None
    for i, p in enumerate(pages):
        if start is None:
            start = p
        if i + 1 == len(pages) or pages[i + 1] != p + 1:
            out.append(f"{start}" if start == p else f"{start}-{p}")
            start = None
    return ", ".join(out)


def _check_poisoned(want: bool | str, ev: Evidence) -> Check:
    if ev.kpageflags is None:
        return _missing("page poisoned", ev, "kpageflags")
    pfn = ev.checked_pfn
    if want == "no-page":
        # ZONE_DEVICE memory (a pmem page): fs/proc/page.c finds no online page there.
        detail = f"PFN {pfn:#x} kpageflags {ev.kpageflags:#x}"
        if ev.kpageflags == 1 << KPF_NOPAGE:
            return _ok("page poisoned", detail + ": NOPAGE only, the kernel exposes no flags for this PFN")
        return _fail("page poisoned", detail + f", expected NOPAGE only ({1 << KPF_NOPAGE:#x}): "
                                               "the kernel exposes this PFN's flags")
    if want == "no-flags":
        # The same page on kernels whose kpage_read() gives 0 where pfn_to_online_page() is NULL.
        detail = f"PFN {pfn:#x} kpageflags {ev.kpageflags:#x}"
        if ev.kpageflags == 0:
            return _ok("page poisoned", detail + ": no flags at all, the kernel exposes none for this PFN")
        return _fail("page poisoned", detail + ", expected 0 (no flags, not even NOPAGE): "
                                               + ("NOPAGE, as kernels before the kpage_read() refactor show it"
                                                  if ev.kpageflags == 1 << KPF_NOPAGE else
                                                  "the kernel exposes this PFN's flags"))
    poisoned = bool(ev.kpageflags >> KPF_HWPOISON & 1)
    detail = f"PFN {pfn:#x} kpageflags {ev.kpageflags:#x}: HWPOISON {'set' if poisoned else 'clear'}"
    return _ok("page poisoned", detail) if poisoned == want else _fail("page poisoned", detail + f", expected {'set' if want else 'clear'}")


def _check_corrupted(want_kb: int, ev: Evidence) -> Check:
    before, after = ev.hardware_corrupted_kb_before, ev.hardware_corrupted_kb_after
    if before is None or after is None:
        return _missing("HardwareCorrupted", ev, "meminfo")
    grown = after - before
    detail = f"{before} kB -> {after} kB (+{grown})"
    return _ok("HardwareCorrupted", detail) if grown == want_kb else _fail("HardwareCorrupted", detail + f", expected +{want_kb}")


def log_values(ev: Evidence) -> dict[str, int]:
    """What the placeholders of kernel-log expectations stand for in this run."""
    values = {}
    if ev.checked_pfn is not None:
        values |= {"pfn": ev.checked_pfn, "gpa": ev.checked_pfn << PAGE_SHIFT}
    if ev.ready:
        values["va"] = hex_field(ev.ready, "va")
        if "pid" in ev.ready:
            values["pid"] = ev.ready["pid"]
    if ev.injected_address is not None:
        values |= {"injected_pfn": ev.injected_address >> PAGE_SHIFT, "injected_gpa": ev.injected_address}
    if ev.child_results and "pid" in ev.child_results[0]:
        values["child_pid"] = ev.child_results[0]["pid"]
    return values


def _check_kernel_log(expect: Expectations, ev: Evidence) -> list[Check]:
    log = ev.kernel_log
    values = log_values(ev)
    checks = []
    for wanted, present in [(p, True) for p in expect.kernel_log] + [(p, False) for p in expect.kernel_log_absent]:
        kernel_format = None
        if wanted.printk:
            try:
                kernel_format = _kernel_format(wanted, ev)
                wanted = printk.expectation(kernel_format, wanted.values)
            except logmatch.ExpectationError as exc:
                checks.append(Check(f"kernel log {'has' if present else 'lacks'} {wanted}", Outcome.ERROR, str(exc)))
                continue
        try:
            pattern = logmatch.compile_expectation(wanted, values)
        except KeyError as exc:
            checks.append(Check(f"kernel log {wanted}", Outcome.ERROR, f"cannot fill in {exc}: not known in this run"))
            continue
        shown = LineExpectation(logmatch.fill(wanted.text, values), wanted.regex)
        name = f"kernel log {'has' if present else 'lacks'} {shown}"
        if kernel_format is not None:
            name = f"kernel log {'has' if present else 'lacks'} the kernel's '{kernel_format}' as /{shown.text}/"
        if log is None:
            checks.append(_missing(name, ev, "kernel log"))
            continue
        # An absent entry matches anywhere in a message: a part of a message is never vacuous there.
        found = logmatch.find(log, pattern) if present else logmatch.find_anywhere(log, pattern)
        if present and not found and TRUNCATED in log:
            # A flooded console standing in for the kernel log was cut: the line may be in the cut part.
            checks.append(Check(name, Outcome.ERROR, "not in the parts of the kernel log that were kept "
                                                     "(the console standing in for it was cut)"))
        elif present:
            checks.append(_ok(name, "found") if found else _fail(name, "not found"))
        else:
            checks.append(_ok(name, "absent") if not found else _fail(name, f"found: {found[0]}"))
    return checks


def _kernel_format(wanted: LineExpectation, ev: Evidence) -> str:
    """The kernel's one printk format holding the phrase (ExpectationError: not read, none, several)."""
    if ev.printk_formats is None or wanted.text not in ev.printk_formats:
        why = ev.unavailable.get("printk formats", "no kernel image on the host for this guest")
        raise logmatch.ExpectationError(f"the printk formats of the kernel under test were not read ({why})")
    return printk.the_format(ev.printk_formats[wanted.text], wanted.text, "under test")


def _check_kernel_health(ev: Evidence, expect_panic: bool) -> Check:
    """No crash report of any kind (see crashes.SIGNATURES) in the kernel log; with an
    expected panic, none before it."""
    name = "no kernel bugs"
    if ev.kernel_log is None:
        return _missing(name, ev, "kernel log")
    found = crashes.scan(ev.kernel_log)
    if expect_panic:
        panic = next((f.index for f in found if f.signature.name == "kernel panic"), None)
        found = [f for f in found if panic is None or f.index < panic]
    if not found:
        return _ok(name, f"no crash report ({len(crashes.SIGNATURES)} kinds looked for)"
                         + (" before the panic" if expect_panic else ""))
    more = (f" (and {len(found) - 1} more report(s): {', '.join(f.signature.name for f in found[1:4])})"
            if len(found) > 1 else "")
    return _fail(name, f"the kernel reported: {found[0].summary()}{more}")


def _check_event(expect: Expectations, ev: Evidence) -> Check:
    events = [e for e in ev.events if e.get("event") == "MEMORY_FAILURE" and e["data"].get("recipient") == "guest"]
    want = expect.memory_failure_event
    if want == NONE:
        return _ok("MEMORY_FAILURE event", "none") if not events else _fail("MEMORY_FAILURE event", f"expected none, got {len(events)}")
    if not events:
        if "QEMU events" in ev.unavailable:
            return _missing("MEMORY_FAILURE event", ev, "QEMU events")
        return _fail("MEMORY_FAILURE event", "none received")
    data = events[0]["data"]
    got_ar = data.get("flags", {}).get("action-required")
    detail = f"action {data.get('action')}, action-required {got_ar}"
    if data.get("action") == want.action and got_ar == want.action_required:
        return _ok("MEMORY_FAILURE event", detail)
    return _fail("MEMORY_FAILURE event", detail + f"; expected action {want.action}, action-required {want.action_required}")


def _check_ras_record(want: bool, scenario: Scenario, ev: Evidence) -> Check:
    """The guest's own account of the error: a RAS daemon record with the injected
    bank, status and address (other vCPUs' broadcast records do not count)."""
    name = "RAS daemon record"
    if ev.ras_records is None:
        return _missing(name, ev, "ras record")
    fields = scenario.inject.fields
    wanted = (fields.bank, fields.status, ev.injected_address) if fields else None
    matching = [r for r in ev.ras_records if (r.get("bank"), r.get("status"), r.get("addr")) == wanted]
    shown = ", ".join(f"bank {r.get('bank')} status {r.get('status', 0):#x} addr "
                      f"{'none' if r.get('addr') is None else hex(r['addr'])}" for r in ev.ras_records) or "none"
    if wanted is None:
        detail = f"nothing injected; records: {shown}"
    else:
        detail = (f"{'a' if matching else 'no'} record of bank {wanted[0]} status {wanted[1]:#x} addr "
                  f"{wanted[2]:#x} (records: {shown})")
    return (_ok if bool(matching) == want else _fail)(name, detail)
