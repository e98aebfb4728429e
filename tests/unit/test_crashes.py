"""Every crash signature against real kernel output; benign lines of the catalog's logs are not crashes.

Samples are kernel output as printed (6.1 and 6.12 unless noted), taken from
syzkaller's pkg/report/testdata/linux/report/* and public bug reports, with
their timestamps; they are data, kept verbatim apart from shortening.
"""
import pytest

from orchestrator.judge import crashes


SAMPLES = {
    "kernel BUG": [
        # 6.1: BUG_ON() prints no "Oops" word, only these two lines.
        "[  112.043474] kernel BUG at mm/memory-failure.c:1713!\n"
        "[  112.043931] invalid opcode: 0000 [#1] PREEMPT SMP NOPTI\n"
        "[  112.044137] CPU: 0 PID: 173 Comm: mce-probe Tainted: G   M               6.1.0-56-amd64 #1  Debian 6.1.192-2\n",
        # 6.12
        "[   45.911325] kernel BUG at mm/filemap.c:1538!\n"
        "[   45.911702] Oops: invalid opcode: 0000 [#1] PREEMPT SMP NOPTI\n",
    ],
    "Oops": ["[   21.337411] Oops: general protection fault, probably for non-canonical address "
             "0xdffffc0000000001: 0000 [#1] PREEMPT SMP KASAN NOPTI\n",
             "[   63.3] Oops: 0000 [#1] PREEMPT SMP NOPTI\n"],
    "invalid opcode": ["[  112.043931] invalid opcode: 0000 [#1] PREEMPT SMP NOPTI\n"],
    "general protection fault": [
        "[   75.134506] general protection fault, probably for non-canonical address 0xdead000000000122: "
        "0000 [#1] PREEMPT SMP NOPTI\n",
        "[   75.2] general protection fault: 0000 [#1] SMP KASAN\n"],
    "divide error": ["[ 3307.393826] divide error: 0000 [#1] PREEMPT SMP NOPTI\n"
                     "[ 3307.393962] CPU: 1 PID: 27 Comm: kworker/1:0 Not tainted 6.1.0-56-amd64 #1\n"],
    "stack segment fault": ["[  304.182012] stack segment: 0000 [#1] PREEMPT SMP KASAN\n"],
    "double fault": ["[   12.101928] PANIC: double fault, error_code: 0x0\n"],
    "KASAN": ["[   94.510264] BUG: KASAN: slab-use-after-free in memory_failure+0x11b/0x1f70\n"
              "[   94.510879] Read of size 8 at addr ffff888010b5a7c8 by task mce-probe/172\n"],
    "KFENCE": ["[   33.2] BUG: KFENCE: use-after-free read in test_use_after_free_read+0xb3/0x143\n"],
    "KMSAN": ["[   55.0] BUG: KMSAN: uninit-value in __filemap_get_folio+0x1f1/0x1190\n"],
    "UBSAN": ["[    5.321457] UBSAN: array-index-out-of-bounds in drivers/scsi/megaraid/megaraid_sas_fp.c:103:32\n"
              "[    5.321613] index 1 is out of range for type 'MR_LD_SPAN_MAP [1]'\n",
              "[    9.1] UBSAN: shift-out-of-bounds in mm/memory-failure.c:412:22\n"],
    "soft lockup": ["[  112.501229] watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [kworker/u32:9:1234]\n"],
    "hard lockup": ["[  310.014512] watchdog: Watchdog detected hard LOCKUP on cpu 2\n",
                    "[  310.0] NMI watchdog: Watchdog detected hard LOCKUP on cpu 1\n"],
    "RCU stall": ["[   60.474005] rcu: INFO: rcu_sched detected stalls on CPUs/tasks:\n"
                  "[   60.475000] rcu:  1-...0: (0 ticks this GP) idle=02a/1/0x4000000000000000 softirq=1/1 fqs=15000\n",
                  "[   94.535626] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n",
                  "[  211.4] rcu: INFO: rcu_preempt self-detected stall on CPU\n",
                  "[   90.1] rcu: INFO: rcu_preempt detected expedited stalls on CPUs/tasks: { 0-... } 21002 jiffies s: 1193 root: 0x1/.\n"],
    "hung task": ["[  242.906364] INFO: task kworker/u4:1:35 blocked for more than 120 seconds.\n"
                  "[  242.906708]       Not tainted 6.1.0-56-amd64 #1 Debian 6.1.192-2\n"
                  "[  242.906901] \"echo 0 > /proc/sys/kernel/hung_task_timeout_secs\" disables this message.\n",
                  "[  123.0] INFO: task mce-probe:172 blocked for more than 1 seconds.\n"],
    "bad page state": ["[  121.412903] BUG: Bad page state in process mce-probe  pfn:0671e\n"
                       "[  121.413102] page:00000000b9c5d3c5 refcount:0 mapcount:0 mapping:0000000000000000 index:0x0 pfn:0x671e\n",
                       "[   88.1] BUG: Bad page map in process khugepaged  pte:8000000012345067 pmd:0b5f4067\n"],
    "page fault in kernel": [
        # Our 6.12 guest, ksm-poisoned-page-rescan (docs/guest-kernel-bugs.md): the Oops line is part of it.
        "[    6.733891] BUG: unable to handle page fault for address: ffff888002b82000\n"
        "[    6.735409] #PF: supervisor read access in kernel mode\n"
        "[    6.735499] #PF: error_code(0x0000) - not-present page\n"
        "[    6.834242] Oops: Oops: 0000 [#1] PREEMPT SMP PTI\n",
        "[   47.117311] BUG: unable to handle page fault for address: ffff888002bb1000\n"
        "[   47.117502] #PF: supervisor read access in kernel mode\n",
                             "[   12.0] BUG: kernel NULL pointer dereference, address: 0000000000000008\n"],
    "slab corruption": ["[   74.1] BUG kmalloc-128 (Tainted: G        W        ): Poison overwritten\n"
                        "[   74.1] First byte 0x0 instead of 0x6b\n",
                        "[   74.2] BUG kmalloc-4k (Not tainted): Poison overwritten\n",
                        "[   74.3] BUG skbuff_head_cache (Tainted: G    B            ): Object already free\n",
                        "[   74.4] BUG kmalloc-64 (Not tainted): Redzone overwritten\n"],
    "list corruption": ["[  401.1] list_add corruption. prev->next should be next (ffff88807c8a9a40), but was "
                        "ffff88801f1b3c40. (prev=ffff88801f1b3c40).\n",
                        "[  401.2] list_del corruption, ffff888013c41e60->next is LIST_POISON1 (dead000000000100)\n",
                        "[  401.3] list_add double add: new=ffff8880, prev=ffff8880, next=ffff8880.\n"],
    "refcount_t": ["[   88.913312] refcount_t: underflow; use-after-free.\n"
                   "[   88.913540] WARNING: CPU: 0 PID: 172 at lib/refcount.c:28 refcount_warn_saturate+0xba/0x110\n",
                   "[   88.9] refcount_t: addition on 0; use-after-free.\n",
                   "[   88.9] refcount_t: saturated; leaking memory.\n"],
    "BUG": ["[   31.2] BUG: sleeping function called from invalid context at mm/migrate.c:1453\n",
            "[   31.3] BUG: scheduling while atomic: mce-probe/172/0x00000002\n",
            "[   31.4] BUG: workqueue lockup - pool cpus=0 node=0 flags=0x0 nice=0 stuck for 33s!\n",
            "[   31.5] BUG: Bad rss-counter state mm:00000000c0d4d5a1 type:MM_ANONPAGES val:1\n"],
    "WARNING": ["[   25.183305] ------------[ cut here ]------------\n"
                "[   25.183309] WARNING: CPU: 0 PID: 47 at mm/memory-failure.c:2270 memory_failure+0x9e/0x1f70\n"
                "[   25.183330] Modules linked in: hwpoison_inject virtio_net\n",
                "[    9.358800] WARNING: CPU: 1 PID: 0 at kernel/context_tracking.c:128 ct_kernel_exit+0xf0/0x100\n",
                "[   77.1] WARNING: possible circular locking dependency detected\n",
                "[   77.2] WARNING: suspicious RCU usage\n"],
    "Unable to handle kernel": ["[    9.1] Unable to handle kernel paging request at virtual address ffff800009d5b000\n",
                                "[    9.2] Unable to handle kernel NULL pointer dereference at virtual address 0000000000000008\n"],
    "task exited in bad state": ["[    6.960298] note: ksmd[34] exited with irqs disabled\n",  # our 6.12 guest
                                 "[   10.811775] note: kworker/0:6[117] exited with irqs disabled\n"
                                 "[   10.817444] note: kworker/0:6[117] exited with preempt_count 1\n",
                                 "[ 2613.518974] note: fsstress[17987] exited with irqs disabled\n"],
    "recursive fault": ["[ 2613.629176] Fixing recursive fault but reboot is needed!\n"],
    "kernel panic": ["[    3.197897] Kernel panic - not syncing: Memory failure on page 421b\n"],
}


def test_every_signature_has_real_samples():
    assert set(SAMPLES) == {s.name for s in crashes.SIGNATURES}


@pytest.mark.parametrize("name, sample", [(n, s) for n, samples in SAMPLES.items() for s in samples])
def test_each_signature_finds_its_reports(name, sample):
    found = crashes.scan("[    1.000000] Linux version 6.1.0-56-amd64\n" + sample)
    assert found, sample
    assert found[0].signature.name == name
    reported = [line.split("] ", 1)[1].strip() for line in sample.splitlines() if "cut here" not in line]
    assert found[0].head[0] == reported[0]
    assert set(found[0].head) <= set(reported)
    assert len(found) == 1  # the lines after the first (Oops, invalid opcode, ...) belong to its report


def test_the_head_of_a_6_1_kernel_bug_is_kept():
    log = SAMPLES["kernel BUG"][0] + "[  112.2] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996)\n" \
                                     "[  112.3] RIP: 0010:memory_failure+0x9e/0x1f70\n[  112.4] Call Trace:\n"
    finding, = crashes.scan(log)
    assert finding.signature.name == "kernel BUG"
    assert finding.summary() == ("kernel BUG at mm/memory-failure.c:1713! | invalid opcode: 0000 [#1] PREEMPT SMP NOPTI | "
                                 "CPU: 0 PID: 173 Comm: mce-probe Tainted: G   M               6.1.0-56-amd64 #1  "
                                 "Debian 6.1.192-2 | RIP: 0010:memory_failure+0x9e/0x1f70")


def test_a_second_report_after_the_first_is_found_too():
    log = SAMPLES["WARNING"][0] + "[ 30.0] RIP: 0010:memory_failure+0x9e/0x1f70\n[ 30.1] Call Trace:\n" \
        + SAMPLES["task exited in bad state"][0]
    assert [f.signature.name for f in crashes.scan(log)] == ["WARNING", "task exited in bad state"]


# Lines every catalog run prints (6.1 and 6.12), some with words a crash report uses.
BENIGN = """\
[    0.187690] RETBleed: WARNING: Spectre v2 mitigation leaves CPU vulnerable to RETBleed attacks, data leaks possible!
[    0.301000] RAS: Correctable Errors collector initialized.
[    3.244292] mce: [Hardware Error]: CPU 0: Machine Check Exception: 7 Bank 9: bd80000000000134
[    3.245546] mce: [Hardware Error]: PROCESSOR 0:506e3 TIME 1795700656 SOCKET 0 APIC 0 microcode 1
[    3.245888] mce: [Hardware Error]: Machine check events logged
[    3.451565] mce: Uncorrected hardware memory error in user-access at 2983000
[    3.456382] Memory failure: 0x2983: Sending SIGBUS to mce-probe:162 due to hardware memory corruption
[    3.457281] Memory failure: 0x2983: recovery action for dirty LRU page: Recovered
[    3.5] Memory failure: 0x1001: recovery action for unknown page: Ignored
[    3.6] Memory failure: 0x3728: recovery action for already poisoned page: Failed
[    3.7] MCE: Killing mce-probe:162 due to hardware memory corruption fault at 7f1a6777d000
[    3.8] Unpoison: Disabled after HW memory failure 0x420e
[    3.9] soft offline: 0x3721: page migration succeeded
MCEORCH-READY init=2.02 modules=2.28 sshd=2.45
"""


def test_benign_lines_are_not_crashes():
    assert crashes.scan(BENIGN) == []


def test_a_report_after_a_tasks_exit_note_is_a_report_of_its_own():
    # The exit note ends the oops before it; a WARNING printed next is another report, not part of the note.
    log = ("[    7.08] note: ksmd[34] exited with irqs disabled\n"
           "[    7.09] note: ksmd[34] exited with preempt_count 1\n"
           "[    9.10] WARNING: CPU: 0 PID: 1 at mm/memory-failure.c:2208 memory_failure+0x1/0x2\n")
    found = crashes.scan(log)
    assert [f.signature.name for f in found] == ["task exited in bad state", "WARNING"]
    assert len(found[0].head) == 2
