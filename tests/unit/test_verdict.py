from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.plumbing.outcome import Outcome


from orchestrator.scenario import NONE, load_scenario, parse_scenario


from orchestrator.judge.verdict import Evidence, judge



SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
PFN = 0x73E2
VA = 0x7F600D5E5000
KPF_HWPOISON_SET = 1 << 19 | 1 << 5


def late_kill():
    return load_scenario(SCENARIOS / "srao-anon-late-kill.yaml")


def good_evidence(**over) -> Evidence:
    ev = Evidence(
        ready={"va": hex(VA), "pfn": PFN, "gpa": hex(PFN << 12), "page_size": 4096, "target": 1, "pid": 84,
               "pages": [{"va": hex(VA + (i - 1) * 4096), "pfn": PFN - 0x100 + i if i != 1 else PFN} for i in range(4)]},
        injected_address=PFN << 12, checked_pfn=PFN,
        probe_result={"sigbus": True, "si_code": 4, "si_code_name": "BUS_MCEERR_AR", "si_addr": hex(VA),
                      "si_addr_lsb": 12, "intact": [0, 2, 3], "corrupt": [], "skipped": {"sigbus": [1], "ksm": []},
                      "timeout": False},
        kpageflags=KPF_HWPOISON_SET, hardware_corrupted_kb_before=0, hardware_corrupted_kb_after=4,
        kernel_log=f"[ 5.1] Memory failure: {PFN:#x}: recovery action for dirty LRU page: Recovered\n",
        events=[{"event": "MEMORY_FAILURE", "data": {"recipient": "guest", "action": "inject",
                                                     "flags": {"action-required": False, "recursive": False}}}],
        guest_answered_after=True, probe_exit_status=0)
    for key, value in over.items():
        setattr(ev, key, value)
    return ev


def failing(verdict):
    return {c.name: c.detail for c in verdict.checks if c.outcome != Outcome.PASS}


def test_matching_evidence_passes():
    verdict = judge(late_kill(), good_evidence())
    assert verdict.outcome == Outcome.PASS, verdict.reasons
    assert len(verdict.checks) == 9


@pytest.mark.parametrize("change, check, words", [
    ({"probe_result": {"sigbus": False, "timeout": False, "intact": [0, 1, 2, 3], "corrupt": [], "skipped": {}}},
     "sigbus", "got no SIGBUS"),
    ({"kpageflags": 1 << 5}, "page poisoned", "HWPOISON clear"),
    ({"hardware_corrupted_kb_after": 8}, "HardwareCorrupted", "0 kB -> 8 kB (+8), expected +4"),
    ({"kernel_log": "nothing here"}, f"kernel log has 'Memory failure: {PFN:#x}: recovery action for dirty LRU page: Recovered'", "not found"),
    ({"events": []}, "MEMORY_FAILURE event", "none received"),
    ({"guest_answered_after": False}, "guest alive", "did not answer"),
    ({"kernel_log": f"Memory failure: {PFN:#x}: recovery action for dirty LRU page: Recovered\n"
                    "BUG: unable to handle page fault for address: ffff888002bb1000\n"},
     "no kernel bugs", "the kernel reported: BUG: unable to handle page fault"),
    ({"events": [{"event": "GUEST_PANICKED", "data": {}}], "console_tail": "Kernel panic - not syncing: Fatal machine check"},
     "guest alive", "the guest panicked: Kernel panic - not syncing: Fatal machine check"),
])
def test_each_wrong_observation_fails(change, check, words):
    verdict = judge(late_kill(), good_evidence(**change))
    assert verdict.outcome == Outcome.FAIL
    assert words in failing(verdict)[check]


def test_sigbus_on_another_page_fails():
    ev = good_evidence()
    ev.probe_result = ev.probe_result | {"si_addr": hex(VA + 4096)}
    assert "is not on the target page" in failing(judge(late_kill(), ev))["sigbus"]


def test_wrong_code_and_lsb_fail():
    ev = good_evidence()
    ev.probe_result = ev.probe_result | {"si_code_name": "BUS_MCEERR_AO", "si_code": 5, "si_addr_lsb": 21}
    detail = failing(judge(late_kill(), ev))["sigbus"]
    assert "code BUS_MCEERR_AO != BUS_MCEERR_AR" in detail and "si_addr_lsb 21 != 12" in detail


def test_expected_none_but_sigbus_came_fails():
    scenario = late_kill()
    scenario = replace(scenario, expect=replace(scenario.expect, sigbus=NONE))
    assert "expected none, got BUS_MCEERR_AR" in failing(judge(scenario, good_evidence()))["sigbus"]


def test_missing_evidence_is_error_not_fail():
    ev = good_evidence(probe_result=None, kpageflags=None, probe_exit_status=None)
    ev.unavailable["probe result"] = "SSH dropped"
    verdict = judge(late_kill(), ev)
    assert verdict.outcome == Outcome.ERROR
    assert "SSH dropped" in failing(verdict)["sigbus"]


def test_missing_evidence_after_unexpected_panic_is_fail():
    ev = good_evidence(probe_result=None, kpageflags=None, guest_answered_after=None,
                       events=[{"event": "GUEST_PANICKED", "data": {}}])
    assert judge(late_kill(), ev).outcome == Outcome.FAIL


def test_expected_panic():
    scenario = late_kill()
    scenario = replace(scenario, expect=replace(scenario.expect, guest="panic", sigbus=None, page_poisoned=None,
                                                hardware_corrupted_kb=None, other_pages_intact=None,
                                                kernel_log=(), memory_failure_event=None))
    assert judge(scenario, good_evidence(events=[{"event": "GUEST_PANICKED", "data": {}}])).outcome == Outcome.PASS
    assert "no panic" in failing(judge(scenario, good_evidence()))["guest panic"]


def test_dead_probe_is_fail():
    ev = good_evidence(probe_result=None, probe_exit_status=137)
    assert "died (exit status 137)" in failing(judge(late_kill(), ev))["sigbus"]


def test_probe_killed_by_the_oom_killer_is_error_not_fail():
    oom = ("[ 9.2] Out of memory: Killed process 84 (mce-probe) total-vm:530000kB, anon-rss:510000kB\n")
    ev = good_evidence(probe_result=None, probe_exit_status=137, kernel_log=good_evidence().kernel_log + oom)
    verdict = judge(late_kill(), ev)
    sigbus = next(c for c in verdict.checks if c.name == "sigbus")
    assert sigbus.outcome == Outcome.ERROR and "ran out of memory" in sigbus.detail and "(mce-probe)" in sigbus.detail
    assert verdict.outcome == Outcome.ERROR
    # Another process OOM-killed, the probe killed otherwise: still the probe's death, a FAIL.
    other = ev.kernel_log.replace("(mce-probe)", "(stress)")
    verdict = judge(late_kill(), good_evidence(probe_result=None, probe_exit_status=137, kernel_log=other))
    assert next(c for c in verdict.checks if c.name == "sigbus").outcome == Outcome.FAIL


def with_expect(**changes):
    scenario = late_kill()
    return replace(scenario, expect=replace(scenario.expect, **changes))


def test_step_answers_are_compared_in_order():
    scenario = with_expect(fsync=("EIO", "ok"), reread="original", collapse="EINVAL",
                           huge_regions_after_collapse=(True, False))
    ev = good_evidence(steps=[{"event": "fsync", "result": "EIO"}, {"event": "fsync", "result": "ok"},
                              {"event": "reread", "result": "original"},
                              {"event": "collapse", "result": "EINVAL", "huge_regions": [True, False]}])
    assert judge(scenario, ev).outcome == Outcome.PASS
    ev.steps[1] = {"event": "fsync", "result": "EIO"}        # the error reported twice
    ev.steps[3] = {"event": "collapse", "result": "ok", "huge_regions": [True, True]}  # built over the poison
    failed = failing(judge(scenario, ev))
    assert failed["fsync results"] == "got ['EIO', 'EIO'], expected ['EIO', 'ok']"
    assert "got ok, expected EINVAL" in failed["MADV_COLLAPSE"]
    assert "expected [True, False]" in failed["huge pages after collapse"]


def test_the_madvise_hwpoison_answer_is_checked():
    scenario = with_expect(madvise_hwpoison="EBUSY")
    assert judge(scenario, good_evidence(steps=[{"event": "madvise-hwpoison", "result": "EBUSY"}])).outcome \
        == Outcome.PASS
    failed = failing(judge(scenario, good_evidence(steps=[{"event": "madvise-hwpoison", "result": "ok"}])))
    assert "got ok, expected EBUSY" in failed["madvise-hwpoison"]
    assert "never answered" in failing(judge(scenario, good_evidence(steps=[])))["madvise-hwpoison"]


def test_a_step_the_probe_never_answered_fails():
    failed = failing(judge(with_expect(reread="original"), good_evidence(steps=[])))
    assert "never answered" in failed["reread"]


def test_target_moved():
    scenario = with_expect(target_moved=True)
    moved = good_evidence(steps=[{"event": "touched", "target_pfn": PFN + 7}])
    stayed = good_evidence(steps=[{"event": "touched", "target_pfn": PFN}])
    assert judge(scenario, moved).outcome == Outcome.PASS
    assert failing(judge(scenario, stayed))["target moved"] == f"target PFN {PFN:#x} -> {PFN:#x}"


def test_a_reboot_is_named_not_blamed_on_the_kernel():
    cause = "the guest rebooted (QEMU SHUTDOWN, reason guest-reset; -no-reboot keeps it down)"
    ev = good_evidence(guest_answered_after=False, kpageflags=None, down=cause)
    ev.unavailable["kpageflags"] = cause
    verdict = judge(late_kill(), ev)
    checks = {c.name: c for c in verdict.checks}
    assert checks["guest alive"].outcome == Outcome.ERROR and checks["guest alive"].detail == cause
    assert checks["page poisoned"].outcome == Outcome.ERROR and cause in checks["page poisoned"].detail
    assert verdict.outcome == Outcome.ERROR


def test_a_6_1_kernel_bug_without_the_word_oops_fails():
    log = (f"[ 5.1] Memory failure: {PFN:#x}: recovery action for dirty LRU page: Recovered\n"
           "[ 5.2] kernel BUG at mm/memory-failure.c:1713!\n"
           "[ 5.3] invalid opcode: 0000 [#1] PREEMPT SMP NOPTI\n"
           "[ 5.4] CPU: 0 PID: 173 Comm: mce-probe Tainted: G   M               6.1.0-56-amd64 #1\n")
    detail = failing(judge(late_kill(), good_evidence(kernel_log=log)))["no kernel bugs"]
    assert detail == ("the kernel reported: kernel BUG at mm/memory-failure.c:1713! | "
                      "invalid opcode: 0000 [#1] PREEMPT SMP NOPTI | "
                      "CPU: 0 PID: 173 Comm: mce-probe Tainted: G   M               6.1.0-56-amd64 #1")


def test_with_an_expected_panic_a_crash_before_it_fails():
    scenario = with_expect(guest="panic", sigbus=None, page_poisoned=None, hardware_corrupted_kb=None,
                           other_pages_intact=None, kernel_log=(), memory_failure_event=None)
    panicked = [{"event": "GUEST_PANICKED", "data": {}}]
    only_panic = "[ 3.1] Kernel panic - not syncing: Memory failure on page 73e2\n[ 3.2] CPU: 0 PID: 47\n"
    assert judge(scenario, good_evidence(events=panicked, kernel_log=only_panic)).outcome == Outcome.PASS
    oops_first = "[ 3.0] BUG: kernel NULL pointer dereference, address: 0000000000000008\n" + only_panic
    assert "BUG: kernel NULL pointer dereference" in failing(
        judge(scenario, good_evidence(events=panicked, kernel_log=oops_first)))["no kernel bugs"]


@pytest.mark.parametrize("change, detail", [
    ({"probe_result": None, "probe_exit_status": 137}, "killed by signal 9 (SIGKILL) before reporting its result"),
    ({"probe_exit_status": 135}, "reported its result, then killed by signal 7 (SIGBUS)"),
])
def test_how_the_probe_ended_is_judged_even_when_the_scenario_lists_nothing_about_it(change, detail):
    # The audit's case: a scenario that says nothing about sigbus.
    scenario = with_expect(sigbus=None, other_pages_intact=None)
    failed = failing(judge(scenario, good_evidence(**change)))
    assert failed["probe ended"] == detail


def test_a_normal_end_passes_and_an_unseen_one_is_error():
    checks = {c.name: c for c in judge(late_kill(), good_evidence()).checks}
    assert checks["probe ended"].detail == "reported its result and exited normally"
    ev = good_evidence(probe_result=None, probe_exit_status=None)
    ev.unavailable["probe result"] = "SSH dropped"
    assert {c.name: c.outcome for c in judge(with_expect(sigbus=None), ev).checks}["probe ended"] == Outcome.ERROR


@pytest.mark.parametrize("si_addr, lsb, words", [
    (VA + 3 * 4096, 21, ["si_addr_lsb 21 is wider than the mapping's 4 KiB pages", "is not on the target page"]),
    (0x1000, 63, ["si_addr_lsb 63 is wider than the mapping's 4 KiB pages", "is not on the target page"]),
    (VA + 4096, 12, ["is not on the target page 0x7f600d5e5000 (compared at 4 KiB)"]),
])
def test_without_lsb_the_address_is_compared_at_the_mappings_page_size(si_addr, lsb, words):
    scenario = with_expect(sigbus=replace(late_kill().expect.sigbus, lsb=None))
    ev = good_evidence()
    ev.ready = ev.ready | {"map_page_size": 4096}
    ev.probe_result = ev.probe_result | {"si_addr": hex(si_addr), "si_addr_lsb": lsb}
    detail = failing(judge(scenario, ev))["sigbus"]
    assert all(w in detail for w in words), detail
    assert f"lsb {lsb}" in detail  # the lsb seen is reported


def test_a_huge_mapping_is_compared_at_2_mib():
    scenario = with_expect(sigbus=replace(late_kill().expect.sigbus, lsb=None))
    ev = good_evidence()
    ev.ready = ev.ready | {"map_page_size": 2 << 20, "va": hex(0x7F6000200000 + 5 * 4096)}
    # hugetlb: the first access to the huge page faults, five subpages before the target.
    ev.probe_result = ev.probe_result | {"si_addr": hex(0x7F6000200000), "si_addr_lsb": 21}
    assert judge(scenario, ev).outcome == Outcome.PASS, judge(scenario, ev).reasons
    ev.probe_result = ev.probe_result | {"si_addr": hex(0x7F6000400000)}   # the next huge page
    assert "compared at 2 MiB" in failing(judge(scenario, ev))["sigbus"]
    ev.probe_result = ev.probe_result | {"si_addr": hex(0x7F6000200000), "si_addr_lsb": 12}
    assert "compared at 4 KiB" in failing(judge(scenario, ev))["sigbus"]   # a finer report is held to it


def test_a_page_skipped_that_the_injection_should_not_have_cost_fails():
    # The audit's case: the SIGBUS named page 2, the probe left it out, and the rest "intact".
    ev = good_evidence()
    ev.probe_result = ev.probe_result | {"intact": [0, 1, 3], "skipped": {"sigbus": [2], "ksm": []}}
    detail = failing(judge(late_kill(), ev))["other pages intact"]
    assert detail == "pages skipped that the scenario does not expect to lose: 2 (sigbus) (expected to lose 1)"


def test_checking_no_page_is_an_error_never_a_pass():
    ev = good_evidence()
    ev.probe_result = ev.probe_result | {"intact": [], "corrupt": [], "skipped": {"sigbus": [], "ksm": [0, 1, 2, 3]}}
    verdict = judge(late_kill(), ev)
    check = {c.name: c for c in verdict.checks}["other pages intact"]
    assert check.outcome == Outcome.ERROR and "checked no page (skipped: 0-3 (ksm))" in check.detail
    ev.probe_result = ev.probe_result | {"intact": [0, 2, 3], "skipped": None}
    del ev.probe_result["skipped"]
    assert {c.name: c for c in judge(late_kill(), ev).checks}["other pages intact"].outcome == Outcome.ERROR


def test_a_whole_huge_page_may_be_skipped_with_hugetlb():
    ev = good_evidence()
    pages = [{"va": hex(VA + i * 4096), "pfn": 0x6000 + i} for i in range(1024)]
    ev.ready = ev.ready | {"huge": True, "pages": pages, "target": 5}
    ev.injected_address, ev.checked_pfn = (0x6000 + 5) << 12, 0x6000 + 5
    ev.probe_result = ev.probe_result | {"intact": list(range(512, 1024)), "skipped": {"sigbus": list(range(512)), "ksm": []}}
    assert {c.name: c.outcome for c in judge(late_kill(), ev).checks}["other pages intact"] == Outcome.PASS
    ev.probe_result = ev.probe_result | {"intact": list(range(513, 1024)), "skipped": {"sigbus": list(range(513)), "ksm": []}}
    assert "512 (sigbus)" in failing(judge(late_kill(), ev))["other pages intact"]


def test_a_target_not_present_in_pagemap_is_not_moved():
    for want in (True, False):
        failed = failing(judge(with_expect(target_moved=want), good_evidence(steps=[{"event": "touched", "target_pfn": 0}])))
        assert failed["target moved"] == f"target PFN {PFN:#x} -> not present in pagemap (PFN 0)"


@pytest.mark.parametrize("inject, expect, pfn", [
    ({}, {}, PFN),                                          # the target is the injected page
    ({"address": 0x8000000}, {}, 0x8000),                   # inject.address: the injected page
    ({"address": 0x8000000}, {"checked_page": "target"}, PFN),
    ({"page_offset": 1}, {}, PFN),                          # the negative controls' design
    ({"page_offset": 1}, {"checked_page": "injected"}, PFN + 1),
])
def test_the_checked_page_follows_the_injection_unless_the_scenario_says_otherwise(inject, expect, pfn):
    from orchestrator.runner import _injection_address, checked_pfn


    scenario = late_kill()
    scenario = replace(scenario, inject=replace(scenario.inject, **inject), expect=replace(scenario.expect, **expect))
    ready = {"pfn": PFN, "gpa": hex(PFN << 12), "target": 1, "page_size": 4096,
             "pages": [{"pfn": PFN - 1}, {"pfn": PFN}, {"pfn": PFN + 1}, {"pfn": PFN + 2}]}
    assert checked_pfn(scenario, ready, _injection_address(scenario, ready)) == pfn


# What rasdaemon 0.6.8's `ras-mc-ctl --errors` printed in debian-12-full for an SRAO (address changed).
RAS_ERRORS = (
    "No Memory errors.\n\nNo PCIe AER errors.\n\nNo Extlog errors.\n\nMCE events:\n"
    "1 2026-11-26 14:54:23 +0000 error: MEMORY CONTROLLER MS_CHANNEL0_ERR Transaction: Memory scrubbing error, "
    "mcg mcgstatus=5 RIPV MCIP, mci Uncorrected_error Error_enabled SRAO, n_errors=0, mcgcap=0x0100010a, "
    f"mcgstatus=0x00000005, status=0xbd000000000000c0, addr=0x{PFN << 12:08x}, misc=0x0000008c, "
    "ip=0xffffffffc0243082, tsc=0x308a7502e5, walltime=0x6b08481f, cpuid=0x000506e3, cs=0x00000010, "
    "bank=0x00000009\n")


def test_ras_records_parse_bank_status_address():
    from orchestrator.observe import parse_ras_errors


    assert parse_ras_errors(RAS_ERRORS) == [{"bank": 9, "status": 0xBD000000000000C0, "addr": PFN << 12}]
    assert parse_ras_errors("No Memory errors.\n\nNo MCE errors.\n") == []


def test_ras_record_matching_the_injection_passes_and_its_absence_fails():
    from orchestrator.observe import parse_ras_errors


    expect_record = replace(late_kill(), expect=replace(late_kill().expect, ras_record=True))
    assert judge(expect_record, good_evidence(ras_records=parse_ras_errors(RAS_ERRORS))).outcome == Outcome.PASS
    verdict = judge(expect_record, good_evidence(ras_records=[]))
    assert verdict.outcome == Outcome.FAIL and "no record of bank 9" in failing(verdict)["RAS daemon record"]
    # Another address is not this injection's record.
    other = [{"bank": 9, "status": 0xBD000000000000C0, "addr": (PFN + 1) << 12}]
    assert judge(expect_record, good_evidence(ras_records=other)).outcome == Outcome.FAIL
    # Negative control: expecting no record when there is one fails.
    expect_none = replace(late_kill(), expect=replace(late_kill().expect, ras_record=False))
    assert judge(expect_none, good_evidence(ras_records=parse_ras_errors(RAS_ERRORS))).outcome == Outcome.FAIL


def test_ras_record_not_gathered_is_an_error_naming_why():
    expect_record = replace(late_kill(), expect=replace(late_kill().expect, ras_record=True))
    verdict = judge(expect_record, good_evidence(unavailable={"ras record": "the guest has no RAS daemon"}))
    assert verdict.outcome == Outcome.ERROR and "no RAS daemon" in verdict.reasons[0]


def test_page_poisoned_no_page_wants_kpageflags_to_show_nothing_but_nopage():
    scenario = with_expect(page_poisoned="no-page")
    ok = judge(scenario, good_evidence(kpageflags=1 << 20))
    assert ok.outcome == Outcome.PASS, ok.reasons
    # A PFN whose flags the kernel does expose (poisoned or not) is not what no-page says.
    for flags in (KPF_HWPOISON_SET, 1 << 5, 0):
        failed = failing(judge(scenario, good_evidence(kpageflags=flags)))
        assert list(failed) == ["page poisoned"] and "expected NOPAGE only" in failed["page poisoned"]


def test_page_poisoned_no_flags_wants_kpageflags_to_read_zero():
    scenario = with_expect(page_poisoned="no-flags")
    ok = judge(scenario, good_evidence(kpageflags=0))
    assert ok.outcome == Outcome.PASS, ok.reasons
    # NOPAGE (the older kernels' answer), HWPOISON or any other flag: not what no-flags says.
    for flags, why in ((1 << 20, "NOPAGE, as kernels before"), (KPF_HWPOISON_SET, "exposes this PFN's flags"),
                       (1 << 5, "exposes this PFN's flags")):
        failed = failing(judge(scenario, good_evidence(kpageflags=flags)))
        assert list(failed) == ["page poisoned"] and why in failed["page poisoned"]


ISOLATED = {"locked": 1, "uptodate": 0, "dirty": 0, "lru": 0, "unevictable": 1, "mlocked": 1, "hwpoison": 1}


def lock_race_evidence(race):
    ev = good_evidence(kernel_log=f"[ 3.7] Memory failure: {PFN:#x}: Failed to invalidate\n"
                                  f"[ 3.7] Memory failure: {PFN:#x}: clean mlocked LRU page still referenced by 3 users\n"
                                  f"[ 3.7] Memory failure: {PFN:#x}: recovery action for clean mlocked LRU page: Failed\n")
    ev.ready = dict(ev.ready, memory="fuse-mlock")
    ev.probe_result = dict(ev.probe_result, **({"lock_race": race} if race is not None else {}))
    return ev


def test_lock_race_seen_step_by_step_passes():
    race = {"memory_failure": {"tid": 17, "at": "memory_failure+0x6f0/0x1070"}, "isolated": ISOLATED, "error": None}
    verdict = judge(load_scenario(SCENARIOS / "mlocked-clean-off-lru.yaml"), lock_race_evidence(race))
    assert verdict.outcome == Outcome.PASS, verdict.reasons
    [check] = [c for c in verdict.checks if c.name == "lock race"]
    assert "'memory_failure+0x6f0/0x1070'" in check.detail


@pytest.mark.parametrize("race, words", [
    ({"error": "2: the mover was not seen with the page isolated (off the LRU) and waiting for its lock"},
     "step '2: the mover was not seen"),
    ({"memory_failure": {"tid": 17}}, "the lock race did not finish"),
    (None, "the probe reported no lock race"),
    ({"isolated": dict(ISOLATED, lru=1), "error": None}, "the page was not isolated, mlocked, locked and poisoned"),
    ({"isolated": dict(ISOLATED, mlocked=0), "error": None}, "the page was not isolated"),
])
def test_lock_race_not_seen_is_an_error_not_a_pass(race, words):
    # The kernel log says what the scenario expects: still ERROR, the interleaving was not shown.
    verdict = judge(load_scenario(SCENARIOS / "mlocked-clean-off-lru.yaml"), lock_race_evidence(race))
    assert verdict.outcome == Outcome.ERROR
    assert failing(verdict) == {"lock race": failing(verdict)["lock race"]}
    assert words in failing(verdict)["lock race"]


def test_lock_race_judged_only_for_the_fuse_mlock_kinds():
    assert "lock race" not in {c.name for c in judge(late_kill(), good_evidence()).checks}


def test_an_absent_entry_that_is_part_of_a_message_fails():
    # Issue 22 item 4: seen PASS beside "Memory failure: 0x29aa: recovery action for dirty LRU page: Recovered".
    scenario = parse_scenario("description: t\ninject: {preset: srao}\nexpect:\n  sigbus: none\n  page_poisoned: true\n"
                              "  kernel_log_absent: ['Memory failure: 0x{pfn:x}']\n", Path("scenarios/t.yaml"))
    failed = failing(judge(scenario, good_evidence(probe_result=None)))
    assert failed[f"kernel log lacks 'Memory failure: {PFN:#x}'"] == \
        f"found: Memory failure: {PFN:#x}: recovery action for dirty LRU page: Recovered"
