/* --take-free-block CPU TIMEOUT: the guest half of the high-order race
 * (orchestrator/inject/races/highorder.py). Pinned to CPU, it picks the target: a page in
 * the middle of a 2 MiB block it got as a transparent huge page and freed at
 * once (that block is then free, first in line for the next order-9
 * allocation). It reports the target and a mailbox page (mlocked; its GPA is
 * read by the host with the monitor's xp, so the state is seen while other
 * vCPUs are held), waits until the target shows HWPOISON (memory_failure()
 * sets it before get_hwpoison_page()), passes the gate (a getpriority() call,
 * where the host holds it until the kernel is where it must be), then faults
 * THPs and 4 KiB chunks until
 * no free block can hold the target any more, never below a MemFree margin,
 * and holds that memory until a line (or EOF) on stdin or the timeout. */
#include "probe.h"

#define TAKER_MAGIC 0x4d43454f52434831ULL  /* "1HCROECM": the mailbox is ours */
#define TAKER_MARGIN (48UL << 20)
#define TAKER_CHUNK (2UL << 20)
enum { TAKER_WAITING = 1, TAKER_TAKING, TAKER_TAKEN, TAKER_NO_MEMORY, TAKER_NO_POISON };

/* Is pfn in a free buddy block? /proc/kpageflags answers with the kernel's
 * own is_free_buddy_page() for a page with no references (fs/proc/page.c). */
static int maybe_free(uint64_t pfn)
{
    return !!(target_flags(pfn) & (1ULL << KPF_BUDDY));
}

/* MemFree, by a plain system call: no malloc or fopen, whose free() may munmap,
 * which would flush TLBs with an IPI to every CPU of the mm, the held one too. */
static unsigned long free_bytes(void)
{
    struct sysinfo info;
    if (sysinfo(&info))
        fail("sysinfo");
    return info.freeram * (unsigned long)info.mem_unit;
}

static unsigned char *map_thp_chunk(void)
{
    unsigned char *raw = mmap(NULL, 2 * TAKER_CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        fail("mmap");
    unsigned char *chunk = (unsigned char *)(((uintptr_t)raw + TAKER_CHUNK - 1) & ~(TAKER_CHUNK - 1));
    if (madvise(chunk, TAKER_CHUNK, MADV_HUGEPAGE))
        fail("madvise(MADV_HUGEPAGE)");
    return chunk;
}

/* Waits until pfn's poison flag is `want` (1: memory_failure() has begun with it; 0: it
 * cleared it to start again) or the deadline passes. Each look at the flags calls
 * is_free_buddy_page() on the page, where the host may have a breakpoint during a race:
 * look every 2 ms, not faster. */
static int wait_poison(uint64_t pfn, int want, double deadline)
{
    struct timespec pause = {0, 2000000};
    unsigned long long flags;
    for (;;) {
        if (kpageflags_of(pfn, &flags) && !!(flags & (1ULL << KPF_HWPOISON)) == want)
            return 1;
        if (now_ms() > deadline)
            return 0;
        nanosleep(&pause, NULL);
    }
}

/* What the guest process of both races (--take-free-block, --retake-thp-block) sets up alike. */
struct race_process {
    int pagemap;
    volatile uint64_t *mailbox;  /* a locked page the host reads with the monitor's xp */
    uint64_t mailbox_pfn;
    uint64_t head, victim;       /* the THP block it had and freed, and the page in its middle */
};

/* Pins this process to `on` and forks. Nonzero: return that, *status: in the parent, which
 * only waits, the child's exit status; in the child, 3 when it got no THP (reported). Zero:
 * the child, with *rp set up. The work is done by a child forked here: its address space has
 * only ever been on this CPU. This process may have started on the held CPU, which can keep
 * its mm loaded (lazy TLB) and would then be sent (and waited for) TLB flushes. */
static int race_process_start(int on, uint64_t first_state, struct race_process *rp, int *status)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(on, &set);
    if (sched_setaffinity(0, sizeof(set), &set))
        fail("sched_setaffinity");
    pid_t worker = fork();
    if (worker < 0)
        fail("fork");
    if (worker > 0) {
        while (waitpid(worker, status, 0) < 0 && errno == EINTR)
            ;
        *status = WIFEXITED(*status) ? WEXITSTATUS(*status) : 128 + WTERMSIG(*status);
        return 1;
    }
    page_size = sysconf(_SC_PAGESIZE);
    rp->pagemap = open("/proc/self/pagemap", O_RDONLY);
    if (rp->pagemap < 0)
        fail("open /proc/self/pagemap");
    rp->mailbox = mmap(NULL, page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (rp->mailbox == MAP_FAILED || mlock((void *)rp->mailbox, page_size))
        fail("mailbox");
    rp->mailbox[0] = TAKER_MAGIC;
    rp->mailbox[1] = first_state;
    rp->mailbox_pfn = pfn_of(rp->pagemap, (void *)rp->mailbox);

    unsigned char *first = map_thp_chunk();
    first[0] = 1;
    rp->head = pfn_of(rp->pagemap, first);
    unsigned long long flags = 0;
    if (!rp->head || !kpageflags_of(rp->head, &flags) || !(flags & (1ULL << KPF_THP))) {
        printf("{\"event\":\"taker\",\"error\":\"no transparent huge page (THP enabled=always|madvise?)\"}\n");
        fflush(stdout);
        *status = 3;
        return 1;
    }
    rp->victim = rp->head + (TAKER_CHUNK / page_size) / 2;
    munmap(first, TAKER_CHUNK);
    return 0;
}

/* Keeps what the process holds until the host says "release" on stdin (or `seconds` pass). */
static int wait_release(int seconds)
{
    signal(SIGALRM, SIG_DFL);
    alarm(seconds);
    char line[16];
    (void)!read(0, line, sizeof(line));
    return 0;
}

int take_free_block(const char *cpu_arg, const char *timeout_arg)
{
    int on = atoi(cpu_arg), seconds = atoi(timeout_arg), status;
    struct race_process rp;
    if (race_process_start(on, TAKER_WAITING, &rp, &status))
        return status;
    int pagemap = rp.pagemap;
    volatile uint64_t *mailbox = rp.mailbox;
    uint64_t victim = rp.victim, head = rp.head, mailbox_pfn = rp.mailbox_pfn;
    unsigned long long flags = 0;
    printf("{\"event\":\"taker\",\"pfn\":%llu,\"block_pfn\":%llu,\"mailbox_gpa\":\"%#llx\",\"cpu\":%d}\n",
           (unsigned long long)victim, (unsigned long long)head,
           (unsigned long long)(mailbox_pfn * page_size), on);
    fflush(stdout);

    double start = now_ms(), deadline = start + seconds * 1e3;
    if (!wait_poison(victim, 1, deadline)) {
        mailbox[1] = TAKER_NO_POISON;
        printf("{\"event\":\"taker-result\",\"state\":\"no-poison\"}\n");
        return 0;
    }
    double poisoned = now_ms();
    mailbox[1] = TAKER_TAKING;
    /* The gate: the host holds this vCPU at getpriority()'s entry until
     * memory_failure() has looked at the page for the last time before its
     * report (the poison flag is set before it looks at all). */
    errno = 0;
    (void)syscall(SYS_getpriority, 0 /* PRIO_PROCESS */, 0);
    mailbox[3] = 1;  /* past the gate: word 3 counts steps, word 2 chunks, for the host's report */
    unsigned long chunks = 0, thp_chunks = 0;
    int taken = 0;
    while (!(taken = !maybe_free(victim))) {
        if (free_bytes() < TAKER_MARGIN + TAKER_CHUNK) {
            mailbox[2] = chunks;
            mailbox[1] = TAKER_NO_MEMORY;
            break;
        }
        mailbox[3]++;
        unsigned char *chunk = map_thp_chunk();
        mailbox[3]++;
        for (size_t off = 0; off < TAKER_CHUNK; off += page_size) {
            chunk[off] = 1;
            if (off == 0 && kpageflags_of(pfn_of(pagemap, chunk), &flags) && (flags & (1ULL << KPF_THP))) {
                thp_chunks++;
                break;  /* one fault took the whole 2 MiB block */
            }
        }
        mailbox[2] = ++chunks;
        mailbox[3]++;
    }
    double took = now_ms();
    if (taken) {
        mailbox[2] = chunks;
        mailbox[1] = TAKER_TAKEN;
    }
    kpageflags_of(victim, &flags);
    printf("{\"event\":\"taker-result\",\"state\":\"%s\",\"chunks\":%lu,\"thp_chunks\":%lu,"
           "\"victim_flags\":%llu,\"poison_seen_ms\":%.1f,\"take_ms\":%.1f,\"mem_free_kb\":%lu}\n",
           taken ? "taken" : "no-memory", chunks, thp_chunks, flags, poisoned - start, took - poisoned,
           free_bytes() >> 10);
    fflush(stdout);
    /* Hold the memory until the host has let memory_failure() look again. */
    return wait_release(seconds);
}

/* --retake-thp-block CPU TIMEOUT: the guest half of the "different compound
 * page after locking" race (orchestrator/inject/races/recompound.py). Pinned to CPU (a
 * forked child, as --take-free-block), it faults a transparent huge page and
 * frees it: the block goes to this CPU's per-CPU list of order-9 pages (with
 * vm.percpu_pagelist_high_fraction raised it stays there). The target is a
 * page in its middle. Then, each step ending at the gate (getpriority(), where
 * the host holds this vCPU until the injected one is where it must be):
 *   1. wait for the poison flag (memory_failure() set it), gate;
 *   2. fault a THP again: the same block, off the per-CPU list (LIFO), unless
 *      the allocator refuses it; gate;
 *   3. wait until the flag is clear (memory_failure() saw the page compound
 *      after locking and starts again), gate;
 *   4. free the THP (back on the per-CPU list), gate;
 *   5. fault a THP again (the injected vCPU set the flag and is held before
 *      get_hwpoison_page() takes its reference), gate.
 * Mailbox: magic, state, the PFN the last fault got, the step. The THP is kept
 * until a line (or EOF) on stdin or the timeout. */
enum { RETAKE_WAITING = 1, RETAKE_TAKEN, RETAKE_CLEARED, RETAKE_FREED, RETAKE_TAKEN_AGAIN,
       RETAKE_OTHER_BLOCK, RETAKE_LEFT_PCP, RETAKE_TIMEOUT };

static void retake_gate(volatile uint64_t *mailbox, uint64_t state)
{
    mailbox[1] = state;
    mailbox[3]++;
    (void)syscall(SYS_getpriority, 0 /* PRIO_PROCESS */, 0);
}

/* Fault a THP where the block should be; 0 when the block had left the per-CPU
 * list (it shows as free buddy: the kernel's is_free_buddy_page()) -- nothing
 * the kernel refused, the harness lost the block. */
static unsigned char *retake(volatile uint64_t *mailbox, int pagemap, uint64_t victim, uint64_t head)
{
    if (maybe_free(victim)) {
        retake_gate(mailbox, RETAKE_LEFT_PCP);
        return NULL;
    }
    unsigned char *chunk = map_thp_chunk();
    chunk[0] = 1;
    uint64_t got = pfn_of(pagemap, chunk);
    mailbox[2] = got;
    if (got != head) {
        retake_gate(mailbox, RETAKE_OTHER_BLOCK);
        return NULL;
    }
    return chunk;
}

int retake_thp_block(const char *cpu_arg, const char *timeout_arg)
{
    int on = atoi(cpu_arg), seconds = atoi(timeout_arg), status;
    struct race_process rp;
    if (race_process_start(on, RETAKE_WAITING, &rp, &status))
        return status;
    int pagemap = rp.pagemap;
    volatile uint64_t *mailbox = rp.mailbox;
    uint64_t victim = rp.victim, head = rp.head, mailbox_pfn = rp.mailbox_pfn;
    unsigned long long flags = 0;
    unsigned char *chunk;
    mailbox[2] = head;
    printf("{\"event\":\"taker\",\"pfn\":%llu,\"block_pfn\":%llu,\"mailbox_gpa\":\"%#llx\",\"cpu\":%d}\n",
           (unsigned long long)victim, (unsigned long long)head,
           (unsigned long long)(mailbox_pfn * page_size), on);
    fflush(stdout);

    double deadline = now_ms() + seconds * 1e3;
    const char *end = "taken-again";
    if (!wait_poison(victim, 1, deadline)) {
        mailbox[1] = RETAKE_TIMEOUT;
        end = "no-poison";
    } else {
        retake_gate(mailbox, RETAKE_WAITING);
        if (!(chunk = retake(mailbox, pagemap, victim, head)))
            end = "not-retaken";
        else {
            retake_gate(mailbox, RETAKE_TAKEN);
            if (!wait_poison(victim, 0, deadline)) {
                mailbox[1] = RETAKE_TIMEOUT;
                end = "no-retry";
            } else {
                retake_gate(mailbox, RETAKE_CLEARED);
                munmap(chunk, TAKER_CHUNK);
                retake_gate(mailbox, RETAKE_FREED);
                if (!(chunk = retake(mailbox, pagemap, victim, head)))
                    end = "not-retaken-again";
                else
                    retake_gate(mailbox, RETAKE_TAKEN_AGAIN);
            }
        }
    }
    kpageflags_of(victim, &flags);
    printf("{\"event\":\"taker-result\",\"state\":\"%s\",\"last_pfn\":%llu,\"victim_flags\":%llu}\n",
           end, (unsigned long long)mailbox[2], flags);
    fflush(stdout);
    /* Keep the THP (its tail poisoned) until memory_failure() has reported it. */
    return wait_release(seconds);
}
