/*
 * Guest-side probe for the MCE orchestrator.
 *
 * Allocates target memory of a chosen kind, reports where it lives (VA, PFN,
 * GPA) and waits for the orchestrator; catches SIGBUS with SA_SIGINFO and
 * reports what the kernel delivered. Static, so it runs on any x86_64 Linux
 * guest. Output is one JSON object per line on stdout; commands arrive one per
 * line on stdin.
 *
 *   probe [--pages N] [--target K] [--mode wait|busy] [--cpu N] [--timeout S]
 *         [--memory anon|mlock|shmem|ksm|hugetlb|thp|thp-eligible|file|swapcache|swapcache-dirty|truncated|thp-pinned|shm-locked|
 *                   shm-locked-clean|hugetlb-file|zero-page|swapcache-pinned|perf-ring|
 *                   fuse-mlock|fuse-mlock-dirty]
 *         [--file PATH]
 *         [--file-state clean|dirty] [--processes 1|2] [--find-free]
 *         [--page-locks 0|1|2]  (fuse-mlock kinds: how often memory_failure()
 *                   takes the page lock on this kernel, 0: unknown, learn it; see lock_race.c)
 *   probe --kpageflags PFN      (prints that PFN's /proc/kpageflags word)
 *   probe --ksm-remerge N [--timeout S]
 *         (a second process: N fresh pages with the content of the ksm kind's
 *         pages, MADV_MERGEABLE; waits for ksmd to scan them, see ksm_remerge)
 *   probe --fresh-identity SEED_HEX EPOCH_NS MARKER
 *         (after a restore: mixes SEED into the random pool and reseeds the
 *         CRNG, sets the clock to EPOCH_NS, writes MARKER to the kernel log)
 *   probe --find-page free-huge   (prints the highest PFN in that state)
 *   probe --take-free-block CPU TIMEOUT
 *         (the guest half of the high-order race, see take_free_block)
 *   probe --retake-thp-block CPU TIMEOUT
 *         (the guest half of the different-compound race, see retake_thp_block)
 *
 * Modes:
 *   wait  report "ready", then obey stdin (below). A SIGBUS that arrives while
 *         waiting (early kill, BUS_MCEERR_AO) ends the wait.
 *   busy  report "ready", then read the target page in a tight loop between the
 *         symbols busy_loop_start/busy_loop_end, so the orchestrator can check
 *         that the vCPU is in this loop (user mode) before an SRAR.
 * Commands: touch (read every page: late kill shows up here), fsync (msync +
 * fsync of a file mapping), reread (pread the target page of the file),
 * collapse (MADV_COLLAPSE over the mapping), madvise-hwpoison
 * (madvise(MADV_HWPOISON) on the target page: the kernel's software injection,
 * needs CAP_SYS_ADMIN), report (finish).
 *
 * Memory kinds: anon (private anonymous, 4 KiB pages only), mlock (the same,
 * mlocked), shmem (shared anonymous), hugetlb (MAP_HUGETLB, 2 MiB pages),
 * ksm (anonymous pages of identical content, MADV_MERGEABLE; "ready" waits
 * until ksmd has merged every page into one), thp (anonymous, 2 MiB
 * aligned, MADV_HUGEPAGE), thp-eligible (the same range
 * as 4 KiB pages, MADV_NOHUGEPAGE until the collapse step makes it eligible
 * with MADV_HUGEPAGE and asks for MADV_COLLAPSE), file (a MAP_SHARED mapping of
 * PATH, written and synced first; clean: mapped read-only, dirty: rewritten
 * through the mapping and not synced).
 * swapcache (anonymous 4 KiB pages; the target written, paged out with
 * MADV_PAGEOUT and left in the swap cache, clean and unmapped: "ready" reports
 * the PFN it had, where its swap-cache copy still is; needs swap on),
 * swapcache-dirty (the same target then written again: swapped in, mapped
 * dirty, still in the swap cache).
 * hugetlb-file (a MAP_SHARED mapping of a hugetlbfs file: memfd_create
 * with MFD_HUGETLB, 2 MiB pages),
 * shm-locked (System V shared memory locked with SHM_LOCK: unevictable),
 * shm-locked-clean (the same, the target only read: a clean page),
 * zero-page (anon, the target only read: it maps the shared zero page, a
 * reserved kernel page; "ready" reports the zero page's PFN),
 * perf-ring (the data pages of a perf_event ring buffer, only read: kernel
 * pages that are neither on an LRU nor reserved nor slab; --pages a power of
 * two),
 * thp-pinned (thp, the target subpage also held by a pipe through vmsplice:
 * an extra reference that makes the THP unsplittable),
 * truncated (a memfd, MAP_SHARED: the target's page is spliced into a pipe,
 * which keeps a reference, then punched out of the file; the mapping gets a
 * fresh page with the same data, and "ready" reports the old PFN: an LRU page
 * no file owns any more).
 * fuse-mlock, fuse-mlock-dirty (a MAP_SHARED, mlocked page of a file on a FUSE
 * file system the probe serves; after "ready" the probe itself makes and
 * watches the lock-ordered interleaving described at map_fuse_mlock's section).
 * --processes 2 forks a child that shares the pages (copy-on-write, none
 * written after the fork) and reports its own result; --find-free adds
 * "free_pfn" to the ready report: the highest PFN that /proc/kpageflags shows
 * as a free buddy page and nothing else (far from where allocations happen).
 */
#include "probe.h"

static sigjmp_buf recover;
static volatile sig_atomic_t got_sigbus, got_alarm;
static volatile sig_atomic_t reporting, sigbus_in_report;  /* a SIGBUS while report() reads the pages */
static volatile int sig_code, sig_lsb;
static void *volatile sig_addr;

/* File scope, so siglongjmp cannot clobber them. */
int pages = 4, target = 1, cpu = -1, timeout = 60, busy, processes = 1, find_free, page_locks;
const char *memory = "anon", *file_path, *file_state = "dirty";
volatile int touched;
int file_fd = -1, generation = ON_DISK, is_child, same_content;
pid_t child = -1;
unsigned char *mem;
size_t mem_size;
long page_size;

static void on_sigbus(int sig, siginfo_t *info, void *uctx)
{
    (void)sig; (void)uctx;
    got_sigbus = 1;
    sigbus_in_report = reporting;
    sig_code = info->si_code;
    sig_addr = info->si_addr;
    sig_lsb = info->si_addr_lsb;
    siglongjmp(recover, 1);
}

static void on_alarm(int sig)
{
    (void)sig;
    got_alarm = 1;
    siglongjmp(recover, 2);
}

/* stdio is not async-signal-safe: a SIGBUS (early kill) or SIGALRM that
 * siglongjmps out of a printf leaves stdout's buffer in a state that repeats
 * old output and loses new (seen: the ready line twice, the result never).
 * So output is written with both signals blocked; one that arrives meanwhile
 * is delivered when they are unblocked, outside stdio. */
static sigset_t async_signals;

static void output_begin(void)
{
    sigprocmask(SIG_BLOCK, &async_signals, NULL);
}

static void output_end(void)
{
    fflush(stdout);
    sigprocmask(SIG_UNBLOCK, &async_signals, NULL);
}

double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

void fail(const char *what)
{
    printf("{\"event\":\"error\",\"what\":\"%s\",\"errno\":%d,\"strerror\":\"%s\"}\n",
           what, errno, strerror(errno));
    fflush(stdout);
    exit(3);
}

/* Bits 0-54 of a pagemap entry are the PFN (visible to root only), bit 63 "present". */
uint64_t pfn_of(int pagemap, void *va)
{
    uint64_t entry;
    off_t off = (off_t)((uintptr_t)va / page_size) * sizeof(entry);
    if (pread(pagemap, &entry, sizeof(entry), off) != sizeof(entry))
        fail("pread /proc/self/pagemap");
    if (!(entry & (1ULL << 63)))
        return 0;
    return entry & ((1ULL << 55) - 1);
}

int kpageflags_of(uint64_t pfn, unsigned long long *flags)
{
    int fd = open("/proc/kpageflags", O_RDONLY);
    int ok = fd >= 0 && pread(fd, flags, sizeof(*flags), (off_t)(pfn * sizeof(*flags))) == sizeof(*flags);
    if (fd >= 0)
        close(fd);
    return ok;
}

static int print_kpageflags(const char *arg)
{
    unsigned long long pfn = strtoull(arg, NULL, 0), flags;
    if (!kpageflags_of(pfn, &flags))
        fail("read /proc/kpageflags");
    printf("{\"event\":\"kpageflags\",\"pfn\":%llu,\"flags\":%llu}\n", pfn, flags);
    return 0;
}

/* Every restore of a saved guest starts with the same random pool, the
 * clock of the moment it was saved and the same kernel log. Credit the host's
 * bytes to the pool and reseed the CRNG (its generation changes, so every
 * per-CPU key and batch is refilled: /dev/urandom, ASLR and the kernel's own
 * randomness differ from here on), take the host's time, and mark the log. */
static int fresh_identity(const char *seed_hex, const char *epoch_ns, const char *marker)
{
    struct { int entropy_count, buf_size; unsigned char buf[256]; } pool = {0};
    size_t len = strlen(seed_hex) / 2;
    if (len == 0 || len > sizeof(pool.buf) || strlen(seed_hex) % 2) {
        fprintf(stderr, "probe: the seed must be 2 to 512 hex digits\n");
        return 2;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned int byte;
        if (sscanf(seed_hex + 2 * i, "%2x", &byte) != 1) {
            fprintf(stderr, "probe: the seed is not hex\n");
            return 2;
        }
        pool.buf[i] = (unsigned char)byte;
    }
    pool.buf_size = (int)len;
    pool.entropy_count = (int)len * 8;
    int fd = open("/dev/urandom", O_WRONLY);
    if (fd < 0 || ioctl(fd, RNDADDENTROPY, &pool) || ioctl(fd, RNDRESEEDCRNG))
        fail("reseed the random pool (RNDADDENTROPY, RNDRESEEDCRNG on /dev/urandom)");
    close(fd);
    long long ns = strtoll(epoch_ns, NULL, 10);
    struct timespec now = { .tv_sec = ns / 1000000000LL, .tv_nsec = ns % 1000000000LL };
    if (clock_settime(CLOCK_REALTIME, &now))
        fail("clock_settime");
    fd = open("/dev/kmsg", O_WRONLY);
    if (fd < 0 || dprintf(fd, "%s\n", marker) < 0)
        fail("write /dev/kmsg");
    close(fd);
    return 0;
}

static const char *code_name(int code)
{
    switch (code) {
    case BUS_MCEERR_AR: return "BUS_MCEERR_AR";
    case BUS_MCEERR_AO: return "BUS_MCEERR_AO";
    case BUS_ADRERR: return "BUS_ADRERR";
    case BUS_ADRALN: return "BUS_ADRALN";
    case BUS_OBJERR: return "BUS_OBJERR";
    default: return "OTHER";
    }
}

const char *errno_name(int e)
{
    switch (e) {
    case 0: return "ok";
    case EIO: return "EIO";
    case EINVAL: return "EINVAL";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EBUSY: return "EBUSY";
    case EFAULT: return "EFAULT";
    case EHWPOISON: return "EHWPOISON";
    case EPERM: return "EPERM";
    default: return "other";
    }
}

/* Reads the target forever; leaves only through SIGBUS or SIGALRM. */
static void busy_read(volatile unsigned char *target_va)
{
    __asm__ volatile(
        ".globl busy_loop_start\n"
        "busy_loop_start:\n"
        "1: movb (%0), %%al\n"
        "   jmp 1b\n"
        ".globl busy_loop_end\n"
        "busy_loop_end:\n"
        : : "r"(target_va) : "rax", "memory");
}

/* Why page p is not read back, or NULL: never read a page the kernel reported
 * lost (that would fault again). */
static const char *skip_reason(int p)
{
    if (!got_sigbus)
        return NULL;
    /* KSM: every page is the same physical page as the one the SIGBUS named. */
    if (same_content)
        return "ksm";
    /* A huge page is poisoned whole: every subpage in si_addr_lsb's range is off limits. */
    int lsb = sig_lsb > 12 ? sig_lsb : 12;
    uintptr_t addr = (uintptr_t)(mem + p * page_size);
    return (addr >> lsb) == ((uintptr_t)sig_addr >> lsb) ? "sigbus" : NULL;
}

/* What report() found for each page: 1 intact, 0 corrupt, or skipped. */
enum { CORRUPT, INTACT, SKIPPED_SIGBUS, SKIPPED_KSM };
static unsigned char page_state[4096];

/* All pages are read before anything is printed: a read that faults (the first
 * access to a poisoned page the kernel had not signalled yet) jumps back to
 * main, which reports again, now skipping that page; no half-printed line. */
static void check_pages(void)
{
    reporting = 1;
    for (int p = 0; p < pages; p++) {
        const char *why = skip_reason(p);
        page_state[p] = why ? (!strcmp(why, "ksm") ? SKIPPED_KSM : SKIPPED_SIGBUS)
                        : only_read(p) ? holds_zeros(mem + p * page_size)
                        : holds(mem + p * page_size, same_content ? 0 : p + generation);
    }
    reporting = 0;
}

static void print_pages(const char *sep, const char *key, int state)
{
    int first = 1;
    printf("%s\"%s\":[", sep, key);
    for (int p = 0; p < pages; p++)
        if (page_state[p] == state)
            printf("%s%d", first ? "" : ",", p), first = 0;
    printf("]");
}

static void announce_ready(unsigned char *target_va, uint64_t target_pfn, int pagemap)
{
    unsigned long long flags = 0;
    int have_flags = kpageflags_of(target_pfn, &flags);
    printf("{\"event\":\"ready\",\"pid\":%d,\"child_pid\":%d,\"page_size\":%ld,\"target\":%d,\"memory\":\"%s\","
           "\"va\":\"%p\",\"pfn\":%llu,\"gpa\":\"0x%llx\",\"cpu\":%d,\"processes\":%d,"
           "\"huge\":%s,\"thp\":%s,\"map_page_size\":%lu,\"merged\":%s,\"free_pfn\":%llu,"
           "\"loop_start\":\"%p\",\"loop_end\":\"%p\",\"pages\":[",
           getpid(), child > 0 ? (int)child : 0, page_size, target, memory, (void *)target_va,
           (unsigned long long)target_pfn, (unsigned long long)target_pfn * page_size, cpu, processes,
           have_flags && (flags >> KPF_HUGE & 1) ? "true" : "false",
           have_flags && (flags >> KPF_THP & 1) ? "true" : "false",
           /* The size of the page that maps the target (hugetlb or THP: 2 MiB). */
           have_flags && (flags >> KPF_HUGE & 1 || flags >> KPF_THP & 1) ? HUGE_SIZE : (unsigned long)page_size,
           same_content && all_merged(pagemap) ? "true" : "false",
           find_free ? free_buddy_pfn() : 0ULL,
           (void *)busy_loop_start, (void *)busy_loop_end);
    for (int p = 0; p < pages; p++)
        printf("%s{\"va\":\"%p\",\"pfn\":%llu}", p ? "," : "", (void *)(mem + p * page_size),
               (unsigned long long)pfn_of(pagemap, mem + p * page_size));
    printf("]}\n");
}

static void touch_all(void)
{
    touched = 1;
    for (int p = 0; p < pages; p++)
        (void)*(volatile unsigned char *)(mem + p * page_size);
}

static void do_fsync(void)
{
    errno = 0;
    int rc = msync(mem, mem_size, MS_SYNC);
    int msync_errno = rc ? errno : 0;
    rc = file_fd >= 0 ? fsync(file_fd) : 0;
    int fsync_errno = rc ? errno : 0;
    /* The error is reported once per file: whichever call saw it is the result. */
    printf("{\"event\":\"fsync\",\"result\":\"%s\",\"msync\":\"%s\",\"fsync\":\"%s\"}\n",
           errno_name(msync_errno ? msync_errno : fsync_errno), errno_name(msync_errno), errno_name(fsync_errno));
}

static void do_reread(void)
{
    unsigned char *buf = malloc(page_size);
    const char *what;
    ssize_t n = file_fd >= 0 ? pread(file_fd, buf, page_size, (off_t)target * page_size) : -1;
    if (file_fd < 0)
        what = "no-file";
    else if (n != page_size)
        what = n < 0 ? errno_name(errno) : "short";
    else if (holds(buf, target + ON_DISK))
        what = "original";
    else if (holds(buf, target + UNSYNCED))
        what = "rewritten";
    else
        what = "other";
    free(buf);
    printf("{\"event\":\"reread\",\"result\":\"%s\"}\n", what);
}

static void do_collapse(int pagemap)
{
    /* Eligible only now: nothing (khugepaged included) could collapse the range,
     * and move its pages, before the poison was in place. */
    int rc = madvise(mem, mem_size, MADV_HUGEPAGE);
    if (!rc)
        rc = madvise(mem, mem_size, MADV_COLLAPSE);
    int saved = rc ? errno : 0;
    /* Which 2 MiB regions are huge pages now (KPF_THP of each region's first page). */
    output_begin();
    printf("{\"event\":\"collapse\",\"result\":\"%s\",\"huge_regions\":[", errno_name(saved));
    for (size_t off = 0; off < mem_size; off += HUGE_SIZE) {
        unsigned long long flags = 0;
        uint64_t pfn = pfn_of(pagemap, mem + off);
        int thp = pfn && kpageflags_of(pfn, &flags) && (flags >> KPF_THP & 1);
        printf("%s%s", off ? "," : "", thp ? "true" : "false");
    }
    printf("]}\n");
    output_end();
}

static void report(double start, int children_ok)
{
    double elapsed = now_ms() - start;
    check_pages();
    printf("{\"event\":\"result\",\"process\":\"%s\",\"pid\":%d,\"sigbus\":%s,\"timeout\":%s,\"touched\":%s",
           is_child ? "child" : "parent", getpid(), got_sigbus ? "true" : "false",
           got_alarm ? "true" : "false", touched ? "true" : "false");
    if (got_sigbus)
        /* Not %p: glibc prints a NULL si_addr as "(nil)". */
        printf(",\"si_code\":%d,\"si_code_name\":\"%s\",\"si_addr\":\"0x%lx\",\"si_addr_lsb\":%d,"
               "\"sigbus_in_report\":%s",
               sig_code, code_name(sig_code), (unsigned long)sig_addr, sig_lsb, sigbus_in_report ? "true" : "false");
    printf(",\"elapsed_ms\":%.1f", elapsed);
    /* Every page is either checked (intact or corrupt) or skipped, with the reason:
     * never read back the page(s) the kernel reported (that would fault again). */
    print_pages(",", "intact", INTACT);
    print_pages(",", "corrupt", CORRUPT);
    printf(",\"skipped\":{");
    print_pages("", "sigbus", SKIPPED_SIGBUS);
    print_pages(",", "ksm", SKIPPED_KSM);
    printf("}");
    if (!is_child)
        printf(",\"children_reported\":%d", children_ok);
    if (race_len)
        printf(",\"lock_race\":{%s}", race_json);
    printf("}\n");
}

/* The child shares the pages copy-on-write; it follows "touch" and "report"
 * through a pipe from the parent, so only the parent reads stdin. */
static void run_child(int from_parent, int armed, double start)
{
    is_child = 1;
    if (sigsetjmp(recover, 1) == 0) {
        char c = 'r';
        /* Tell the parent we can take a SIGBUS: only then does it announce ready. */
        if (write(armed, &c, 1) != 1)
            fail("write to parent");
        close(armed);
        while (read(from_parent, &c, 1) == 1)
            if (c == 't')
                touch_all();
    }
    report(start, 0);
    exit(0);
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "--kpageflags"))
        return print_kpageflags(argv[2]);
    if (argc == 3 && !strcmp(argv[1], "--find-page"))
        return print_found_page(argv[2]);
    if (argc == 4 && !strcmp(argv[1], "--take-free-block"))
        return take_free_block(argv[2], argv[3]);
    if (argc == 4 && !strcmp(argv[1], "--retake-thp-block"))
        return retake_thp_block(argv[2], argv[3]);
    int remerge = 0;
    if (argc == 5 && !strcmp(argv[1], "--fresh-identity"))
        return fresh_identity(argv[2], argv[3], argv[4]);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--find-free")) find_free = 1;
        else if (!v) { fprintf(stderr, "probe: bad argument %s\n", a); return 2; }
        else if (!strcmp(a, "--pages")) pages = atoi(v), i++;
        else if (!strcmp(a, "--target")) target = atoi(v), i++;
        else if (!strcmp(a, "--cpu")) cpu = atoi(v), i++;
        else if (!strcmp(a, "--timeout")) timeout = atoi(v), i++;
        else if (!strcmp(a, "--processes")) processes = atoi(v), i++;
        else if (!strcmp(a, "--page-locks")) page_locks = atoi(v), i++;
        else if (!strcmp(a, "--memory")) memory = v, i++;
        else if (!strcmp(a, "--file")) file_path = v, i++;
        else if (!strcmp(a, "--file-state")) file_state = v, i++;
        else if (!strcmp(a, "--ksm-remerge")) remerge = atoi(v) > 0 && atoi(v) <= 4096 ? atoi(v) : -1, i++;
        else if (!strcmp(a, "--mode")) {
            if (!strcmp(v, "busy")) busy = 1;
            else if (strcmp(v, "wait")) { fprintf(stderr, "probe: unknown mode %s\n", v); return 2; }
            i++;
        } else {
            fprintf(stderr, "probe: bad argument %s\n", a);
            return 2;
        }
    }
    if (pages < 1 || pages > 4096 || target < 0 || target >= pages || processes < 1 || processes > 2
        || page_locks < 0 || page_locks > 2) {
        fprintf(stderr, "probe: need 0 <= target < pages <= 4096, 1 <= processes <= 2 and 0 <= page-locks <= 2\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    page_size = sysconf(_SC_PAGESIZE);
    if (remerge < 0) {
        fprintf(stderr, "probe: --ksm-remerge needs 1 to 4096 pages\n");
        return 2;
    }
    if (remerge)
        return ksm_remerge(remerge);

    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        if (sched_setaffinity(0, sizeof(set), &set))
            fail("sched_setaffinity");
    }

    sigemptyset(&async_signals);
    sigaddset(&async_signals, SIGBUS);
    sigaddset(&async_signals, SIGALRM);
    struct sigaction sa = {0};
    sa.sa_sigaction = on_sigbus;
    /* One report only: a second SIGBUS (the poison hit memory the probe itself
     * needs to report) takes the default action and kills the probe, instead
     * of looping through the handler forever. */
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGBUS, &sa, NULL))
        fail("sigaction SIGBUS");
    signal(SIGALRM, on_alarm);

    mem = map_memory();
    same_content = !strcmp(memory, "ksm");  /* identical pages, for KSM to merge */
    if (strcmp(memory, "file") && strncmp(memory, "fuse-mlock", 10)) {  /* those filled as they were mapped */
        for (int p = 0; p < pages; p++)
            if (!left_clean(p))
                fill(mem + p * page_size, same_content ? 0 : p);
    } else if (generation == UNSYNCED)
        for (int p = 0; p < pages; p++)
            fill(mem + p * page_size, p + UNSYNCED);
    if (!strcmp(memory, "mlock") && mlock(mem, mem_size))
        fail("mlock");

    int pagemap = open("/proc/self/pagemap", O_RDONLY);
    if (pagemap < 0)
        fail("open /proc/self/pagemap");
    unsigned char *target_va = mem + target * page_size;
    if (same_content) {
        /* Wait (up to 30 s) until ksmd has merged every page into page 0's: with
         * only the target merged, ksmd can still be merging the others while the
         * error is handled, and 6.12's unmap then races with it ("failed to unmap
         * page (folio mapcount=1)", "unmapping failed page: Failed", seen 1 in 11). */
        if (madvise(mem, mem_size, MADV_MERGEABLE))
            fail("madvise MADV_MERGEABLE");
        for (int i = 0; i < 3000 && !all_merged(pagemap); i++)
            usleep(10000);
    }
    uint64_t target_pfn = pfn_of(pagemap, target_va);
    if (!target_pfn && mapping_is_pfnmap(target_va)) {
        /* 7.3.4's perf_mmap() maps the ring up front with remap_pfn_range()
         * (kernel/events/core.c map_range()): pagemap skips it, and
         * madvise(MADV_HWPOISON)'s get_user_pages_fast() cannot take its pages. */
        errno = 0;  /* not a failed call: no errno text after the reason */
        fail("target PFN not visible: the mapping is VM_PFNMAP on this kernel (pagemap skips it, "
             "and neither madvise(MADV_HWPOISON) nor this probe can reach its pages)");
    }
    if (!target_pfn)
        fail("target PFN not visible (not root, or page not present)");
    if (!strncmp(memory, "swapcache", 9))
        page_out_to_swap_cache(pagemap, target_va, target_pfn);
    if (!strcmp(memory, "swapcache-dirty") || !strcmp(memory, "swapcache-pinned"))
        target_pfn = swap_in_dirty(pagemap, target_va, target_pfn);
    if (!strcmp(memory, "swapcache-pinned"))
        pin_for_dma(pagemap, target_va, target_pfn);
    if (!strcmp(memory, "truncated"))
        truncate_target(target_va, target_pfn);
    if (!strcmp(memory, "thp-pinned"))
        pin_target(target_va, target_pfn);
    int lock_race = !strncmp(memory, "fuse-mlock", 10);
    if (lock_race)
        lock_target(target_va, target_pfn);

    double start = now_ms();
    int to_child = -1;
    if (processes == 2) {
        int fds[2], back[2];
        char c;
        if (pipe(fds) || pipe(back))
            fail("pipe");
        fflush(stdout);
        child = fork();
        if (child < 0)
            fail("fork");
        if (child == 0) {
            close(fds[1]);
            close(back[0]);
            run_child(fds[0], back[1], start);
        }
        close(fds[0]);
        close(back[1]);
        to_child = fds[1];
        if (read(back[0], &c, 1) != 1)
            fail("child did not start");
        close(back[0]);
    }
    /* Armed before "ready" goes out: the orchestrator injects as soon as it
     * reads that line, and a SIGBUS before sigsetjmp would jump nowhere. */
    if (sigsetjmp(recover, 1) == 0) {
        output_begin();
        announce_ready(target_va, target_pfn, pagemap);
        output_end();
        alarm(timeout);
        if (lock_race)
            run_lock_race(target_va, target_pfn);
        if (busy) {
            busy_read(target_va);
        } else {
            char line[64];
            while (fgets(line, sizeof(line), stdin)) {
                if (!strncmp(line, "touch", 5)) {
                    if (to_child >= 0 && write(to_child, "t", 1) != 1)
                        fail("write to child");
                    touch_all();
                    /* Where the target lives now (soft offline migrates it). */
                    output_begin();
                    printf("{\"event\":\"touched\",\"target_pfn\":%llu}\n",
                           (unsigned long long)pfn_of(pagemap, target_va));
                    output_end();
                } else if (!strncmp(line, "fsync", 5)) {
                    output_begin();
                    do_fsync();
                    output_end();
                } else if (!strncmp(line, "reread", 6)) {
                    output_begin();
                    do_reread();
                    output_end();
                } else if (!strncmp(line, "madvise-hwpoison", 16)) {
                    /* The kernel's software injection: memory_failure() on the
                     * page this address maps, with the reference GUP took. */
                    int rc = madvise(target_va, page_size, MADV_HWPOISON);
                    int saved = rc ? errno : 0;
                    output_begin();
                    printf("{\"event\":\"madvise-hwpoison\",\"result\":\"%s\"}\n", errno_name(saved));
                    output_end();
                } else if (!strncmp(line, "collapse", 8)) {
                    do_collapse(pagemap);  /* prints nothing until the madvise calls are done */
                } else if (!strncmp(line, "report", 6)) {
                    break;
                }
            }
        }
    }
    alarm(0);
    /* Static, and the child reaped once: a SIGBUS in report() comes back here. */
    static int children_ok;
    if (child > 0) {
        int status;
        close(to_child);  /* EOF: the child reports and exits */
        if (waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0)
            children_ok = 1;
        child = -1;
    }
    report(start, children_ok);
    return 0;
}
