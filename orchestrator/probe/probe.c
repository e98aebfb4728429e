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
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef BUS_MCEERR_AR
#define BUS_MCEERR_AR 4
#endif
#ifndef BUS_MCEERR_AO
#define BUS_MCEERR_AO 5
#endif
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

/* include/uapi/linux/random.h (musl has no kernel headers) */
#ifndef RNDADDENTROPY
#define RNDADDENTROPY _IOW('R', 0x03, int[2])
#endif
#ifndef RNDRESEEDCRNG
#define RNDRESEEDCRNG _IO('R', 0x07)
#endif

#define HUGE_SIZE (2UL << 20)
#define KPF_HUGE 17
#define KPF_THP 22
/* Patterns: what was written and synced to the file (and to every other
 * kind of memory), and what a dirty file page holds on top of it. */
#define ON_DISK 0
#define UNSYNCED 1000

extern char busy_loop_start[], busy_loop_end[];

static sigjmp_buf recover;
static volatile sig_atomic_t got_sigbus, got_alarm;
static volatile sig_atomic_t reporting, sigbus_in_report;  /* a SIGBUS while report() reads the pages */
static volatile int sig_code, sig_lsb;
static void *volatile sig_addr;

/* File scope, so siglongjmp cannot clobber them. */
static int pages = 4, target = 1, cpu = -1, timeout = 60, busy, processes = 1, find_free;
static const char *memory = "anon", *file_path, *file_state = "dirty";
static volatile int touched;
static int file_fd = -1, generation = ON_DISK, is_child, same_content;
static pid_t child = -1;
static unsigned char *mem;
static size_t mem_size;
static long page_size;
static int memfd = -1;              /* truncated: the file */
static int spliced[2] = {-1, -1};   /* truncated: the pipe that holds the old page */

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

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void fail(const char *what)
{
    printf("{\"event\":\"error\",\"what\":\"%s\",\"errno\":%d,\"strerror\":\"%s\"}\n",
           what, errno, strerror(errno));
    fflush(stdout);
    exit(3);
}

/* Bits 0-54 of a pagemap entry are the PFN (visible to root only), bit 63 "present". */
static uint64_t pfn_of(int pagemap, void *va)
{
    uint64_t entry;
    off_t off = (off_t)((uintptr_t)va / page_size) * sizeof(entry);
    if (pread(pagemap, &entry, sizeof(entry), off) != sizeof(entry))
        fail("pread /proc/self/pagemap");
    if (!(entry & (1ULL << 63)))
        return 0;
    return entry & ((1ULL << 55) - 1);
}

static int kpageflags_of(uint64_t pfn, unsigned long long *flags)
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

#define KPF_MMAP 11
#define KPF_COMPOUND_HEAD 15

/* Pages in a state no probe mapping can give, found in /proc/kpageflags: the
 * highest PFN (far from where allocations happen) whose flags match.
 * free-huge: the head of a hugetlb page in the pool that nothing maps. */
static int print_found_page(const char *kind)
{
    unsigned long long mask, want;
    if (!strcmp(kind, "free-huge"))
        mask = 1ULL << KPF_HUGE | 1ULL << KPF_COMPOUND_HEAD | 1ULL << KPF_MMAP,
        want = 1ULL << KPF_HUGE | 1ULL << KPF_COMPOUND_HEAD;
    else {
        fprintf(stderr, "probe: unknown page kind %s\n", kind);
        return 2;
    }
    static unsigned long long flags[4096];
    int fd = open("/proc/kpageflags", O_RDONLY);
    unsigned long long found = 0, base = 0;
    ssize_t n;
    if (fd < 0)
        fail("open /proc/kpageflags");
    while ((n = read(fd, flags, sizeof(flags))) > 0) {
        for (ssize_t i = 0; i < n / 8; i++)
            if ((flags[i] & mask) == want)
                found = base + i;
        base += n / 8;
    }
    close(fd);
    printf("{\"event\":\"found\",\"kind\":\"%s\",\"pfn\":%llu}\n", kind, found);
    return 0;
}

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif
#define KPF_DIRTY 4
#define KPF_LRU 5
#define KPF_WRITEBACK 8
#define KPF_SWAPCACHE 13
#define PM_SWAP (1ULL << 62)

/* swapcache: page the target out until its PTE holds a swap entry and its
 * page, still at target_pfn, is in the swap cache with the write finished
 * (SWAPCACHE, not DIRTY, not WRITEBACK). Up to 10 s. */
static void page_out_to_swap_cache(int pagemap, unsigned char *target_va, uint64_t target_pfn)
{
    off_t off = (off_t)((uintptr_t)target_va / page_size) * 8;
    for (int i = 0; i < 1000; i++) {
        uint64_t entry = 0;
        unsigned long long flags = 0;
        if (pread(pagemap, &entry, sizeof(entry), off) != sizeof(entry))
            fail("pread /proc/self/pagemap");
        if (!(entry & PM_SWAP) && madvise(target_va, page_size, MADV_PAGEOUT))
            fail("madvise MADV_PAGEOUT");
        if ((entry & PM_SWAP) && kpageflags_of(target_pfn, &flags)
            && (flags & (1ULL << KPF_SWAPCACHE | 1ULL << KPF_DIRTY | 1ULL << KPF_WRITEBACK)) == 1ULL << KPF_SWAPCACHE)
            return;
        usleep(10000);
    }
    fail("the target did not settle in the swap cache (is swap on?)");
}

static unsigned char pattern(int page, size_t i)
{
    return (unsigned char)(0x5a ^ (page * 31) ^ (i & 0xff));
}

static void fill(unsigned char *p, int page)
{
    for (long i = 0; i < page_size; i++)
        p[i] = pattern(page, i);
}

/* A page only read holds what a fresh page holds: zeros. */
static int holds_zeros(const unsigned char *p)
{
    for (long i = 0; i < page_size; i++)
        if (p[i])
            return 0;
    return 1;
}

/* The pages a kind only reads (see left_clean). */
static int only_read(int page)
{
    if (!strcmp(memory, "perf-ring"))
        return 1;  /* the kernel's pages: the probe never writes them */
    return page == target && (!strcmp(memory, "shm-locked-clean") || !strcmp(memory, "zero-page"));
}

static int holds(const unsigned char *p, int page)
{
    for (long i = 0; i < page_size; i++)
        if (p[i] != pattern(page, i))
            return 0;
    return 1;
}

/* swapcache-dirty: swap the paged-out target in by reading it (a read fault
 * keeps the page in the swap cache; a write fault would free the swap slot),
 * then write it (the same data): the exclusive page is reused writable and
 * dirty, still in the swap cache. Retried from the page-out until the page is
 * in the swap cache. Its PFN. */
static uint64_t swap_in_dirty(int pagemap, unsigned char *target_va, uint64_t target_pfn)
{
    for (int i = 0; i < 50; i++) {
        unsigned long long flags = 0;
        if (!holds(target_va, target))
            fail("the swapped-in target lost its data");
        fill(target_va, target);
        uint64_t pfn = pfn_of(pagemap, target_va);
        if (pfn && kpageflags_of(pfn, &flags) && (flags >> KPF_SWAPCACHE & 1))
            return pfn;
        page_out_to_swap_cache(pagemap, target_va, pfn ? pfn : target_pfn);
    }
    fail("the written target did not stay in the swap cache");
    return 0;
}

/* swapcache-pinned: the swapcache-dirty target then pinned for DMA the way
 * io_uring fixed buffers (and RDMA) pin memory: IORING_REGISTER_BUFFERS calls
 * pin_user_pages(FOLL_WRITE | FOLL_LONGTERM) on it. The pin lasts while the
 * ring is open (until the probe exits). */
#define IORING_REGISTER_BUFFERS 0
static int uring_fd = -1;

static void pin_for_dma(int pagemap, unsigned char *target_va, uint64_t target_pfn)
{
    uint32_t params[30] = {0};  /* struct io_uring_params (120 bytes): all defaults */
    struct iovec iov = {target_va, page_size};
    unsigned long long flags = 0;
    uring_fd = syscall(SYS_io_uring_setup, 1, params);
    if (uring_fd < 0 || syscall(SYS_io_uring_register, uring_fd, IORING_REGISTER_BUFFERS, &iov, 1))
        fail("io_uring_register IORING_REGISTER_BUFFERS");
    if (pfn_of(pagemap, target_va) != target_pfn || !kpageflags_of(target_pfn, &flags) || !(flags >> KPF_SWAPCACHE & 1))
        fail("the pinned target left the swap cache");
}

/* truncated: keep a reference to the target's page in a pipe (vmsplice),
 * punch the page out of the memfd (truncate_inode_folio: off the page cache,
 * mapping NULL, still on the LRU while the pipe holds it) and write the data
 * again through the mapping (a new page). */
static void truncate_target(unsigned char *target_va, uint64_t target_pfn)
{
    struct iovec iov = {target_va, page_size};
    unsigned long long flags = 0;
    if (pipe(spliced) || vmsplice(spliced[1], &iov, 1, 0) != page_size)
        fail("vmsplice");
    if (fallocate(memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)target * page_size, page_size))
        fail("fallocate PUNCH_HOLE");
    fill(target_va, target);
    if (!kpageflags_of(target_pfn, &flags) || !(flags >> KPF_LRU & 1) || (flags >> KPF_MMAP & 1))
        fail("the punched-out page is not an unmapped LRU page");
}

/* thp-pinned: a pipe holds a reference to the target subpage (vmsplice), so
 * split_huge_page() finds more references than mappings and refuses. */
static void pin_target(unsigned char *target_va, uint64_t target_pfn)
{
    struct iovec iov = {target_va, page_size};
    unsigned long long flags = 0;
    if (!kpageflags_of(target_pfn, &flags) || !(flags >> KPF_THP & 1))
        fail("the target is not in a transparent huge page");
    if (pipe(spliced) || vmsplice(spliced[1], &iov, 1, 0) != page_size)
        fail("vmsplice");
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

static const char *errno_name(int e)
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

/* Every page of the mapping on page 0's physical page (KSM has merged them all). */
static int all_merged(int pagemap)
{
    uint64_t first = pfn_of(pagemap, mem);
    for (int p = 1; p < pages; p++)
        if (!first || pfn_of(pagemap, mem + p * page_size) != first)
            return 0;
    return 1;
}

/* shm-locked: a System V shared memory segment locked with SHM_LOCK
 * (shmem_lock -> mapping_set_unevictable): its pages go to the unevictable
 * LRU. Removed (IPC_RMID) at once; it lives while attached. */
static unsigned char *map_shm_locked(void)
{
    int id = shmget(IPC_PRIVATE, mem_size, IPC_CREAT | 0600);
    if (id < 0 || shmctl(id, SHM_LOCK, NULL))
        fail("shmget/SHM_LOCK");
    unsigned char *p = shmat(id, NULL, 0);
    shmctl(id, IPC_RMID, NULL);
    return p == (void *)-1 ? MAP_FAILED : p;
}

/* shm-locked-clean: the target is read, never written, so its page stays
 * clean (zeros: check_pages() expects zeros there).
 * zero-page: the same read of a private anonymous page maps the shared zero
 * page (do_anonymous_page on a read fault), which is a reserved kernel page. */
static int left_clean(int page)
{
    if (!only_read(page))
        return 0;
    (void)*(volatile unsigned char *)(mem + page * page_size);
    return 1;
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

/* perf-ring: the data pages of a perf_event ring buffer (a software dummy
 * event, created disabled, so nothing is ever recorded: they stay zero).
 * perf_mmap_fault() maps the kernel's own pages (alloc_pages, order 0): not
 * on an LRU, not reserved, not slab. The ring is its header page plus a power
 * of two data pages; the probe's pages are the data pages. */
#define PERF_TYPE_SOFTWARE 1
#define PERF_COUNT_SW_DUMMY 9
#define PERF_ATTR_SIZE_VER0 64

static unsigned char *map_perf_ring(void)
{
    /* struct perf_event_attr as first published (musl has no linux/ headers):
     * type, size, config, ..., and the flag bits at byte 40, "disabled" first. */
    uint64_t attr[PERF_ATTR_SIZE_VER0 / 8] = {
        [0] = PERF_TYPE_SOFTWARE | (uint64_t)PERF_ATTR_SIZE_VER0 << 32,
        [1] = PERF_COUNT_SW_DUMMY,
        [5] = 1,
    };
    if (pages & (pages - 1)) {
        fprintf(stderr, "probe: --memory perf-ring needs --pages to be a power of two\n");
        exit(2);
    }
    int fd = syscall(SYS_perf_event_open, attr, 0, -1, -1, 0);
    if (fd < 0)
        fail("perf_event_open");
    unsigned char *ring = mmap(NULL, mem_size + page_size, PROT_READ, MAP_SHARED, fd, 0);
    if (ring == MAP_FAILED)
        fail("mmap perf ring");
    return ring + page_size;
}

/* ---- fuse-mlock / fuse-mlock-dirty: an mlocked FUSE file page identified off the LRU ----
 *
 * memory_failure() takes its reference while the page is on the (unevictable)
 * LRU, then waits for the page lock; identify_page_state() without
 * hwpoison_user_mappings() needs the page off the LRU when it gets the lock.
 * The probe serves a FUSE file system itself (raw /dev/fuse protocol) and
 * makes that interleaving in lock order, observing each step:
 *  setup: the target page is mapped MAP_SHARED and mlocked; a write() to it
 *    that the daemon fails (EIO) leaves it not uptodate (fuse_send_write_pages
 *    clears PG_uptodate), so the next partial write() keeps it LOCKED while its
 *    FUSE_WRITE is out (fuse_fill_write_pages: page_locked); the daemon holds
 *    that one unanswered. Checked: PG_locked in /proc/kpageflags, the writer in
 *    fuse_simple_request.
 *  after "ready" (the injection): 1. memory_failure() is seen waiting for the
 *    page lock (a kernel stack with memory_failure and __folio_lock);
 *    2. a mover move_pages()es the page to node 1: the migration isolates it
 *    (PG_lru clear in kpageflags) and waits for its lock too (its stack);
 *    3. the daemon answers the held write: the lock goes to memory_failure()
 *    first (waiters in order), then to the migration; 4. the mover returns.
 * A step not seen in time ends the race with "error" naming it (the harness:
 * ERROR). */
#include <poll.h>
#include <sys/mount.h>

#define FUSE_MNT "/tmp/mce-fuse"
#define FUSE_FILE FUSE_MNT "/file"
#define FUSE_ROOT_MODE 040755
#define FUSE_FILE_MODE 0100600
#define KPF_LOCKED 0
#define KPF_UPTODATE 3
#define KPF_DIRTY 4
#define KPF_LRU 5
#define KPF_UNEVICTABLE 18
#define KPF_HWPOISON 19
#define KPF_MLOCKED 33
#define MPOL_MF_MOVE_FLAG (1 << 1)
#define RACE_WRITE 64      /* bytes of the held write: partial, so the page stays not uptodate */

/* include/uapi/linux/fuse.h, protocol 7.31 (musl has no kernel headers) */
enum { FUSE_LOOKUP = 1, FUSE_FORGET = 2, FUSE_GETATTR = 3, FUSE_SETATTR = 4, FUSE_OPEN = 14, FUSE_READ = 15,
       FUSE_WRITE = 16, FUSE_STATFS = 17, FUSE_RELEASE = 18, FUSE_FSYNC = 20, FUSE_FLUSH = 25, FUSE_INIT = 26,
       FUSE_OPENDIR = 27, FUSE_READDIR = 28, FUSE_RELEASEDIR = 29, FUSE_ACCESS = 34, FUSE_INTERRUPT = 36,
       FUSE_DESTROY = 38, FUSE_BATCH_FORGET = 42 };
#define FOPEN_KEEP_CACHE 2
#define FOPEN_NOFLUSH 32
#define FUSE_WRITE_CACHE 1
struct fz_in_header { uint32_t len, opcode; uint64_t unique, nodeid; uint32_t uid, gid, pid; uint16_t extlen, pad; };
struct fz_out_header { uint32_t len; int32_t error; uint64_t unique; };
struct fz_attr { uint64_t ino, size, blocks, atime, mtime, ctime;
                 uint32_t atimensec, mtimensec, ctimensec, mode, nlink, uid, gid, rdev, blksize, flags; };
struct fz_entry_out { uint64_t nodeid, generation, entry_valid, attr_valid;
                      uint32_t entry_valid_nsec, attr_valid_nsec; struct fz_attr attr; };
struct fz_attr_out { uint64_t attr_valid; uint32_t attr_valid_nsec, dummy; struct fz_attr attr; };
struct fz_init_in { uint32_t major, minor, max_readahead, flags; };
struct fz_init_out { uint32_t major, minor, max_readahead, flags; uint16_t max_background, congestion_threshold;
                     uint32_t max_write, time_gran; uint16_t max_pages, map_alignment; uint32_t flags2, unused[7]; };
struct fz_open_out { uint64_t fh; uint32_t open_flags, padding; };
struct fz_rw_in { uint64_t fh, offset; uint32_t size, rw_flags; uint64_t lock_owner; uint32_t flags, padding; };
struct fz_write_out { uint32_t size, padding; };
struct fz_statfs_out { uint64_t blocks, bfree, bavail, files, ffree; uint32_t bsize, namelen, frsize, padding, spare[6]; };

static int fuse_ctl = -1, fuse_evt = -1;   /* the daemon's command pipe, and its answers */
static pid_t fuse_daemon = -1, race_holder = -1;  /* race_holder: the task whose request holds the page lock */
static unsigned char race_bytes[RACE_WRITE];
static char race_json[3072];               /* the race's observations, for report() */
static size_t race_len;

static void race_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void race_note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(race_json + race_len, sizeof(race_json) - race_len, fmt, ap);
    va_end(ap);
    if (n > 0)
        race_len = race_len + n < sizeof(race_json) ? race_len + n : sizeof(race_json) - 1;
}

static void fuse_reply(int fd, uint64_t unique, int error, const void *body, size_t size)
{
    if (error)
        size = 0;
    struct fz_out_header h = {(uint32_t)(sizeof(h) + size), -error, unique};
    struct iovec iov[2] = {{&h, sizeof(h)}, {(void *)body, size}};
    (void)!writev(fd, iov, size ? 2 : 1);
}

static void fuse_attr_of(uint64_t node, struct fz_attr *a)
{
    memset(a, 0, sizeof(*a));
    a->ino = node;
    a->mode = node == 1 ? FUSE_ROOT_MODE : FUSE_FILE_MODE;
    a->nlink = node == 1 ? 2 : 1;
    a->size = node == 1 ? 0 : mem_size;
    a->blocks = a->size / 512;
    a->blksize = page_size;
}

/* The daemon (a child): serves the file (its content in `data`) and follows the
 * parent's commands: 'E' fail the next write() at the target page with EIO, 'H'
 * hold the next one (answer 'h' when it is here), 'F' hold the next read of
 * the target page ('f'), 'R' answer the held request ('r'). */
static void fuse_serve(int dev, unsigned char *data)
{
    size_t bufsize = (1 << 17) + 4096;
    unsigned char *buf = malloc(bufsize);
    char policy = 0, held_kind = 0;
    uint64_t held = 0, held_offset = 0;
    uint32_t held_size = 0;
    for (;;) {
        struct pollfd fds[2] = {{dev, POLLIN, 0}, {fuse_ctl, POLLIN, 0}};
        if (poll(fds, 2, -1) < 0 && errno != EINTR)
            _exit(1);
        if (fds[1].revents) {
            char c;
            if (read(fuse_ctl, &c, 1) != 1)
                _exit(0);  /* the probe is gone */
            if (c == 'R' && held) {
                struct fz_write_out out = {held_size, 0};
                size_t off = held_offset < mem_size ? held_offset : mem_size;
                if (held_kind == 'F')
                    fuse_reply(dev, held, 0, data + off, held_size < mem_size - off ? held_size : mem_size - off);
                else
                    fuse_reply(dev, held, 0, &out, sizeof(out));
                held = 0;
                (void)!write(fuse_evt, "r", 1);
            } else {
                policy = c;
            }
        }
        if (!fds[0].revents)
            continue;
        ssize_t n = read(dev, buf, bufsize);
        if (n < 0 && (errno == EINTR || errno == ENOENT || errno == EAGAIN))
            continue;
        if (n < (ssize_t)sizeof(struct fz_in_header))
            _exit(0);  /* unmounted (ENODEV) */
        struct fz_in_header *in = (void *)buf;
        void *arg = buf + sizeof(*in);
        union { struct fz_entry_out entry; struct fz_attr_out attr; struct fz_init_out init;
                struct fz_open_out open; struct fz_write_out write; struct fz_statfs_out statfs; } out;
        memset(&out, 0, sizeof(out));
        switch (in->opcode) {
        case FUSE_INIT: {
            struct fz_init_in *init = arg;
            out.init = (struct fz_init_out){.major = 7, .minor = 31, .max_readahead = init->max_readahead,
                                            .max_background = 16, .congestion_threshold = 12,
                                            .max_write = 1 << 17, .time_gran = 1};
            fuse_reply(dev, in->unique, 0, &out, sizeof(out.init));
            break;
        }
        case FUSE_LOOKUP:
            if (in->nodeid != 1 || strcmp(arg, "file")) {
                fuse_reply(dev, in->unique, ENOENT, NULL, 0);
                break;
            }
            out.entry.nodeid = 2;
            out.entry.entry_valid = out.entry.attr_valid = 86400;
            fuse_attr_of(2, &out.entry.attr);
            fuse_reply(dev, in->unique, 0, &out, sizeof(out.entry));
            break;
        case FUSE_GETATTR:
        case FUSE_SETATTR:
            out.attr.attr_valid = 86400;
            fuse_attr_of(in->nodeid, &out.attr.attr);
            fuse_reply(dev, in->unique, 0, &out, sizeof(out.attr));
            break;
        case FUSE_OPEN:
        case FUSE_OPENDIR:
            out.open.fh = 1;
            /* No invalidation of the cache on open; no writeback on close (a
             * child's exit would otherwise queue for the page lock). */
            out.open.open_flags = FOPEN_KEEP_CACHE | FOPEN_NOFLUSH;
            fuse_reply(dev, in->unique, 0, &out, sizeof(out.open));
            break;
        case FUSE_READ: {
            struct fz_rw_in *rd = arg;
            if (policy == 'F' && rd->offset <= (uint64_t)target * page_size
                && rd->offset + rd->size > (uint64_t)target * page_size) {
                policy = 0;
                held = in->unique, held_kind = 'F', held_offset = rd->offset, held_size = rd->size;
                (void)!write(fuse_evt, "f", 1);
                break;
            }
            size_t off = rd->offset < mem_size ? rd->offset : mem_size;
            size_t len = rd->size < mem_size - off ? rd->size : mem_size - off;
            fuse_reply(dev, in->unique, 0, data + off, len);
            break;
        }
        case FUSE_WRITE: {
            struct fz_rw_in *wr = arg;
            /* Only write()'s requests, never writeback's (FUSE_WRITE_CACHE). */
            int at_target = wr->offset / page_size == (uint64_t)target && !(wr->rw_flags & FUSE_WRITE_CACHE);
            if (at_target && policy == 'E') {
                policy = 0;
                fuse_reply(dev, in->unique, EIO, NULL, 0);
            } else if (at_target && policy == 'H') {
                policy = 0;
                held = in->unique, held_kind = 'H', held_size = wr->size;
                (void)!write(fuse_evt, "h", 1);
            } else {
                if (wr->offset < mem_size && wr->size <= mem_size - wr->offset)
                    memcpy(data + wr->offset, (unsigned char *)arg + sizeof(*wr), wr->size);
                out.write.size = wr->size;
                fuse_reply(dev, in->unique, 0, &out, sizeof(out.write));
            }
            break;
        }
        case FUSE_STATFS:
            out.statfs.bsize = out.statfs.frsize = page_size;
            out.statfs.namelen = 255;
            fuse_reply(dev, in->unique, 0, &out, sizeof(out.statfs));
            break;
        case FUSE_READDIR:
            fuse_reply(dev, in->unique, 0, NULL, 0);  /* empty: nobody lists it */
            break;
        case FUSE_RELEASE: case FUSE_RELEASEDIR: case FUSE_FLUSH: case FUSE_FSYNC: case FUSE_ACCESS:
            fuse_reply(dev, in->unique, 0, NULL, 0);
            break;
        case FUSE_FORGET: case FUSE_BATCH_FORGET: case FUSE_INTERRUPT:
            break;  /* no answer */
        case FUSE_DESTROY:
            fuse_reply(dev, in->unique, 0, NULL, 0);
            _exit(0);
        default:
            fuse_reply(dev, in->unique, ENOSYS, NULL, 0);
        }
    }
}

static char fuse_wait_event(int seconds)
{
    struct pollfd fd = {fuse_evt, POLLIN, 0};
    char c = 0;
    if (poll(&fd, 1, seconds * 1000) == 1 && read(fuse_evt, &c, 1) == 1)
        return c;
    return 0;
}

static void fuse_command(char c)
{
    if (write(fuse_ctl, &c, 1) != 1)
        fail("write to the FUSE daemon");
}

/* /proc/PID/task/TID/stack, function names only ("a,b,c"), at most `size` bytes. */
static int kernel_stack(const char *path, char *out, size_t size)
{
    char raw[4096];
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, raw, sizeof(raw) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    raw[n] = 0;
    size_t len = 0;
    out[0] = 0;
    for (char *line = strtok(raw, "\n"); line; line = strtok(NULL, "\n")) {
        char *fn = strchr(line, ']');
        fn = fn ? fn + 1 : line;
        while (*fn == ' ')
            fn++;
        size_t fl = strcspn(fn, "+ ");
        if (len + fl + 2 >= size)
            break;
        if (len)
            out[len++] = ',';
        memcpy(out + len, fn, fl);
        len += fl;
        out[len] = 0;
    }
    return 1;
}

static int waits_for_page_lock(const char *stack)
{
    return strstr(stack, "__folio_lock") || strstr(stack, "folio_wait_bit_common") || strstr(stack, "__lock_page");
}

/* Any task whose kernel stack holds `function` and a page-lock wait: its pid, stack. */
static pid_t find_lock_waiter(const char *function, char *stack, size_t size)
{
    DIR *proc = opendir("/proc");
    struct dirent *p;
    pid_t found = 0;
    while (proc && !found && (p = readdir(proc))) {
        if (p->d_name[0] < '0' || p->d_name[0] > '9')
            continue;
        char path[64];
        snprintf(path, sizeof(path), "/proc/%d/task", atoi(p->d_name));
        DIR *tasks = opendir(path);
        struct dirent *t;
        while (tasks && !found && (t = readdir(tasks))) {
            if (t->d_name[0] < '0' || t->d_name[0] > '9')
                continue;
            snprintf(path, sizeof(path), "/proc/%d/task/%d/stack", atoi(p->d_name), atoi(t->d_name));
            if (kernel_stack(path, stack, size) && strstr(stack, function) && waits_for_page_lock(stack))
                found = atoi(t->d_name);
        }
        if (tasks)
            closedir(tasks);
    }
    if (proc)
        closedir(proc);
    return found;
}

/* Every task waiting for a page lock: "tid:stack;..." into out. */
static void page_lock_waiters(char *out, size_t size)
{
    DIR *proc = opendir("/proc");
    struct dirent *p;
    size_t len = 0;
    out[0] = 0;
    while (proc && (p = readdir(proc))) {
        if (p->d_name[0] < '0' || p->d_name[0] > '9')
            continue;
        char path[64], stack[512];
        snprintf(path, sizeof(path), "/proc/%d/task", atoi(p->d_name));
        DIR *tasks = opendir(path);
        struct dirent *t;
        while (tasks && (t = readdir(tasks))) {
            if (t->d_name[0] < '0' || t->d_name[0] > '9')
                continue;
            snprintf(path, sizeof(path), "/proc/%d/task/%d/stack", atoi(p->d_name), atoi(t->d_name));
            if (kernel_stack(path, stack, sizeof(stack)) && waits_for_page_lock(stack) && len + 8 < size) {
                int n = snprintf(out + len, size - len, "%s%d:%s", len ? ";" : "", atoi(t->d_name), stack);
                len = n > 0 && len + n < size ? len + n : size - 1;
            }
        }
        if (tasks)
            closedir(tasks);
    }
    if (proc)
        closedir(proc);
}

/* fork() for one of the lock race's processes (fail()s with `what`); the child gets
 * the default SIGALRM and SIGBUS: not the parent's handlers, no report from a child. */
static pid_t fork_race_child(const char *what)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        fail(what);
    if (pid == 0) {
        signal(SIGALRM, SIG_DFL);
        signal(SIGBUS, SIG_DFL);
    }
    return pid;
}

static unsigned long long target_flags(uint64_t pfn)
{
    unsigned long long flags = 0;
    if (!kpageflags_of(pfn, &flags))
        fail("read /proc/kpageflags");
    return flags;
}

static void note_flags(const char *key, unsigned long long f)
{
    race_note("%s\"%s\":{\"locked\":%d,\"uptodate\":%d,\"dirty\":%d,\"lru\":%d,\"unevictable\":%d,"
              "\"mlocked\":%d,\"hwpoison\":%d}", race_len ? "," : "", key, (int)(f >> KPF_LOCKED & 1), (int)(f >> KPF_UPTODATE & 1),
              (int)(f >> KPF_DIRTY & 1), (int)(f >> KPF_LRU & 1), (int)(f >> KPF_UNEVICTABLE & 1),
              (int)(f >> KPF_MLOCKED & 1), (int)(f >> KPF_HWPOISON & 1));
}

/* Mount the FUSE file system served by a forked daemon, map its file MAP_SHARED
 * (not inherited by the writer and mover: one mapping, mapcount 1), fault every
 * page in (read; dirty: rewritten through the mapping), mlock. */
static unsigned char *map_fuse_mlock(void)
{
    int dev = open("/dev/fuse", O_RDWR);
    if (dev < 0)
        fail("open /dev/fuse (fuse not loaded?)");
    mkdir(FUSE_MNT, 0700);
    char opts[128];
    snprintf(opts, sizeof(opts), "fd=%d,rootmode=40000,user_id=0,group_id=0", dev);
    if (mount("mce-probe", FUSE_MNT, "fuse", MS_NOSUID | MS_NODEV, opts))
        fail("mount fuse");
    int ctl[2], evt[2];
    if (pipe(ctl) || pipe(evt))
        fail("pipe");
    unsigned char *data = malloc(mem_size);
    /* What the pages will hold (dirty: rewritten with the same): a read of a
     * page brings back what the mapping saw. */
    int dirty = !strcmp(memory, "fuse-mlock-dirty");
    for (int i = 0; i < pages; i++)
        fill(data + i * page_size, i + (dirty ? UNSYNCED : ON_DISK));
    fuse_daemon = fork_race_child("fork the FUSE daemon");
    if (fuse_daemon == 0) {
        close(ctl[1]);
        close(evt[0]);
        fuse_ctl = ctl[0];
        fuse_evt = evt[1];
        fuse_serve(dev, data);
    }
    close(dev);
    close(ctl[0]);
    close(evt[1]);
    fuse_ctl = ctl[1];
    fuse_evt = evt[0];
    /* FUSE's bdi is a strictlimit one with no writeout history: its dirty limit
     * is ~0 and the flusher writes back (cleans) a dirty page at once. Its
     * min_ratio (at most its max_ratio, 1) keeps a few pages dirty. */
    struct stat st;
    char bdi[96];
    if (stat(FUSE_MNT, &st))
        fail("stat " FUSE_MNT);
    snprintf(bdi, sizeof(bdi), "/sys/class/bdi/%u:%u/min_ratio", major(st.st_dev), minor(st.st_dev));
    int ratio = open(bdi, O_WRONLY);
    if (ratio < 0 || write(ratio, "1", 1) != 1)
        fail("set the FUSE bdi's min_ratio");
    close(ratio);
    file_fd = open(FUSE_FILE, O_RDWR);
    if (file_fd < 0)
        fail("open " FUSE_FILE);
    unsigned char *p = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_SHARED, file_fd, 0);
    if (p == MAP_FAILED || madvise(p, mem_size, MADV_DONTFORK))
        fail("mmap " FUSE_FILE);
    for (int i = 0; i < pages; i++)
        (void)*(volatile unsigned char *)(p + i * page_size);
    if (dirty) {
        for (int i = 0; i < pages; i++)
            fill(p + i * page_size, i + UNSYNCED);
        generation = UNSYNCED;
    }
    if (mlock(p, mem_size))
        fail("mlock");
    return p;
}

/* A writer: write()s RACE_WRITE bytes of what the target holds at its offset;
 * exits 0 when the write completed. */
static pid_t start_writer(void)
{
    pid_t pid = fork_race_child("fork a writer");
    if (pid == 0) {
        ssize_t n = pwrite(file_fd, race_bytes, sizeof(race_bytes), (off_t)target * page_size);
        _exit(n == (ssize_t)sizeof(race_bytes) ? 0 : 1);
    }
    return pid;
}

/* The "fn+0x../0x.." frame of `function` in /proc/TID/stack: which call site waits. */
static void stack_frame(pid_t tid, const char *function, char *out, size_t size)
{
    char path[64], raw[4096];
    snprintf(path, sizeof(path), "/proc/%d/stack", (int)tid);
    out[0] = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return;
    ssize_t n = read(fd, raw, sizeof(raw) - 1);
    close(fd);
    raw[n > 0 ? n : 0] = 0;
    char *at = strstr(raw, function);
    if (at) {
        size_t len = strcspn(at, " \n");
        snprintf(out, size, "%.*s", (int)(len < size ? len : size - 1), at);
    }
}

/* How many times memory_failure() takes the page lock before it reads the page
 * flags: 6.1 once (mm/memory-failure.c: lock_page(p), then page_flags); 6.12
 * twice (folio_lock() around hwpoison_filter(), unlocked, shake_folio(), then
 * folio_lock() again before page_flags = folio->flags). Other kernels: not
 * verified, 0. */
static int memory_failure_page_locks(void)
{
    struct utsname u;
    int major = 0, minor = 0;
    if (uname(&u) || sscanf(u.release, "%d.%d", &major, &minor) != 2)
        return 0;
    return major == 6 && minor == 1 ? 1 : major == 6 && minor == 12 ? 2 : 0;
}

/* A reader: maps the file (a mapping of its own) and reads the target page:
 * filemap_fault() takes the page lock (__folio_lock_killable, no inode lock)
 * and, the page not uptodate, reads it in (fuse_read_folio: a FUSE_READ) with
 * the lock held. Exits 0 when the read completed. */
static pid_t start_reader(void)
{
    pid_t pid = fork_race_child("fork a reader");
    if (pid == 0) {
        unsigned char *p = mmap(NULL, mem_size, PROT_READ, MAP_SHARED, file_fd, 0);
        if (p == MAP_FAILED)
            _exit(2);
        _exit(*(volatile unsigned char *)(p + target * page_size) == race_bytes[0] ? 0 : 1);
    }
    return pid;
}

static int task_waits_for_lock(pid_t pid, const char *function, char *stack, size_t size)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/stack", (int)pid);
    return kernel_stack(path, stack, size) && strstr(stack, function) && waits_for_page_lock(stack);
}

/* Setup, before "ready": the target page not uptodate (a failed write), then
 * locked by a held write. */
static void lock_target(unsigned char *target_va, uint64_t target_pfn)
{
    /* With vm.page_lock_unfairness 0 an unlock hands the lock to the first
     * waiter (WQ_FLAG_CUSTOM from its first wait); otherwise it only wakes it,
     * and whoever runs first may take the lock. */
    char fair[16] = "";
    int sysctl = open("/proc/sys/vm/page_lock_unfairness", O_RDONLY);
    if (sysctl < 0 || read(sysctl, fair, sizeof(fair) - 1) <= 0 || atoi(fair) != 0)
        fail("needs vm.page_lock_unfairness 0 (page locks handed over in order)");
    close(sysctl);
    if (!memory_failure_page_locks())
        fail("this kernel: how often memory_failure() takes the page lock is not known (6.1 and 6.12 are)");
    note_flags("mapped", target_flags(target_pfn));
    memcpy(race_bytes, target_va, sizeof(race_bytes));  /* writes of what it holds: data unchanged */
    fuse_command('E');
    errno = 0;
    if (pwrite(file_fd, race_bytes, sizeof(race_bytes), (off_t)target * page_size) != -1 || errno != EIO)
        fail("the failed write (EIO expected)");
    unsigned long long f = target_flags(target_pfn);
    if (f >> KPF_UPTODATE & 1)
        fail("the failed write left the target uptodate");
    note_flags("failed_write", f);
    fuse_command('H');
    race_holder = start_writer();
    if (fuse_wait_event(10) != 'h')
        fail("the writer's FUSE_WRITE did not reach the daemon");
    char path[64], stack[512] = "";
    for (int i = 0; i < 500; i++) {  /* the writer reaches its wait a moment after sending */
        snprintf(path, sizeof(path), "/proc/%d/stack", (int)race_holder);
        f = target_flags(target_pfn);
        if (kernel_stack(path, stack, sizeof(stack)) && strstr(stack, "fuse_simple_request") && (f >> KPF_LOCKED & 1))
            break;
        usleep(10000);
    }
    if (!strstr(stack, "fuse_simple_request") || !(f >> KPF_LOCKED & 1)) {
        static char why[700];
        snprintf(why, sizeof(why), "the held write does not hold the target page locked (PG_locked %d, "
                 "the writer in %s)", (int)(f >> KPF_LOCKED & 1), stack);
        fail(why);
    }
    race_note(",\"writer\":{\"pid\":%d,\"stack\":\"%s\"}", (int)race_holder, stack);
    note_flags("locked", f);
    if ((int)(f >> KPF_DIRTY & 1) != (generation == UNSYNCED))
        fail(generation == UNSYNCED ? "the target is not dirty when locked" : "the target is dirty when locked");
}

/* waitpid() for at most `seconds`: the status, or -1. */
static int wait_child(pid_t pid, int seconds)
{
    int status;
    for (int i = 0; i < seconds * 100; i++) {
        pid_t got = waitpid(pid, &status, WNOHANG);
        if (got == pid)
            return status;
        if (got < 0)
            return -1;
        usleep(10000);
    }
    return -1;
}

/* Answer the held request; the task that made it must end (a writer: its write
 * completed; a reader may take the SIGBUS of the page memory_failure() has
 * poisoned meanwhile). NULL, or what went wrong. */
static const char *release_holder(const char *step, const char *who)
{
    static char whys[2][200];
    static int which;
    char *why = whys[which++ & 1];  /* the first error stays readable after a second */
    fuse_command('R');
    if (fuse_wait_event(10) != 'r') {
        snprintf(why, sizeof(whys[0]), "%s: the daemon did not answer the held request", step);
        return why;
    }
    int status = wait_child(race_holder, 10);
    race_note(",\"%s_end\":\"%s %d\"", who, status == -1 ? "running" : WIFEXITED(status) ? "exit" : "signal",
              status == -1 ? 0 : WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    if (status == -1 || (strcmp(who, "reader") && (!WIFEXITED(status) || WEXITSTATUS(status)))) {
        snprintf(why, sizeof(whys[0]), "%s: the %s whose request was held did not complete", step, who);
        return why;
    }
    race_holder = -1;
    return NULL;
}

/* By the clock: one look through every task's stack takes a while under TCG. */
static pid_t wait_memory_failure(char *stack, size_t size, int seconds)
{
    pid_t mf = 0;
    for (double end = now_ms() + seconds * 1e3; !(mf = find_lock_waiter("memory_failure", stack, size))
         && now_ms() < end;)
        usleep(20000);
    return mf;
}

/* After "ready": the observed interleaving (see above). */
static void run_lock_race(unsigned char *target_va, uint64_t target_pfn)
{
    char stack[512], frame[96];
    const char *error = NULL;
    pid_t mf, mover = -1;
    int back[2] = {-1, -1}, locks = memory_failure_page_locks();
    const char *holder = "writer";
    double t0 = now_ms();
    /* memory_failure() runs within milliseconds of the injection (seen: 11-48 ms
     * after "ready"); 15 s also covers a slow injection, and leaves the rest of
     * the probe's time to the steps. */
    if (!(mf = wait_memory_failure(stack, sizeof(stack), 15))) {
        error = "1: memory_failure() was not seen waiting for the page lock";
        goto release;
    }
    stack_frame(mf, "memory_failure", frame, sizeof(frame));
    race_note(",\"memory_failure\":{\"tid\":%d,\"stack\":\"%s\",\"at\":\"%s\",\"after_ms\":%.0f}", (int)mf, stack,
              frame, now_ms() - t0);
    note_flags("before_move", target_flags(target_pfn));
    if (locks == 2) {
        /* 6.12: the first wait is hwpoison_filter()'s lock. A reader (a second
         * writer would wait for the inode lock the first one holds) queues
         * behind memory_failure(), takes the lock when memory_failure() lets
         * it go and holds it (its FUSE_READ held) while memory_failure() waits
         * for its second lock. */
        fuse_command('F');
        pid_t reader = start_reader();
        int queued = 0;
        for (int i = 0; i < 500 && !(queued = task_waits_for_lock(reader, "filemap_fault", stack, sizeof(stack))); i++)
            usleep(10000);
        race_note(",\"reader\":{\"pid\":%d,\"stack\":\"%s\"}", (int)reader, stack);
        if (!queued) {
            error = "1b: the reader was not seen waiting for the page lock";
            goto release;
        }
        if ((error = release_holder("1b", "writer")))
            goto release;
        race_holder = reader, holder = "reader";
        if (fuse_wait_event(10) != 'f') {
            error = "1b: the reader's FUSE_READ did not reach the daemon";
            goto release;
        }
        char again[96] = "";
        if (!(mf = wait_memory_failure(stack, sizeof(stack), 10))) {
            error = "1b: memory_failure() was not seen waiting for the page lock a second time";
            goto release;
        }
        stack_frame(mf, "memory_failure", again, sizeof(again));
        race_note(",\"memory_failure_again\":{\"tid\":%d,\"at\":\"%s\"}", (int)mf, again);
        if (!strcmp(again, frame)) {
            error = "1b: memory_failure() waits at the same place as before";
            goto release;
        }
    }
    if (pipe(back))
        fail("pipe");
    pid_t owner = getpid();
    mover = fork_race_child("fork the mover");
    if (mover == 0) {
        void *addr = target_va;
        int node = 1, status = -9999;
        long rc = syscall(SYS_move_pages, owner, 1UL, &addr, &node, &status, MPOL_MF_MOVE_FLAG);
        int answer[3] = {(int)rc, rc < 0 ? errno : 0, status};
        _exit(write(back[1], answer, sizeof(answer)) == sizeof(answer) ? 0 : 1);
    }
    close(back[1]);
    unsigned long long f = 0;
    int seen = 0;
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/stack", (int)mover);
    for (int i = 0; i < 1000 && !seen; i++) {
        f = target_flags(target_pfn);
        seen = kernel_stack(path, stack, sizeof(stack)) && strstr(stack, "migrate_pages") && waits_for_page_lock(stack)
               && !(f >> KPF_LRU & 1) && (f >> KPF_LOCKED & 1);
        if (!seen)
            usleep(10000);
    }
    race_note(",\"mover\":{\"pid\":%d,\"stack\":\"%s\"}", (int)mover, stack);
    note_flags("isolated", f);
    if (!seen) {
        error = "2: the mover was not seen with the page isolated (off the LRU) and waiting for its lock";
        goto release;
    }
    /* Still waiting, ahead of the mover (it queued first): it gets the lock next. */
    if (find_lock_waiter("memory_failure", stack, sizeof(stack)) != mf) {
        error = "2: memory_failure() no longer waits for the page lock";
        goto release;
    }
release:
    {
        static char waiters[1536];
        page_lock_waiters(waiters, sizeof(waiters));
        race_note(",\"lock_waiters\":\"%s\"", waiters);
    }
    {
        const char *released = race_holder > 0 ? release_holder("3", holder) : NULL;
        if (!error)
            error = released;
    }
    if (mover > 0) {
        int answer[3] = {0, 0, 0};
        struct pollfd fd = {back[0], POLLIN, 0};
        if (poll(&fd, 1, 20000) == 1 && read(back[0], answer, sizeof(answer)) == sizeof(answer)) {
            race_note(",\"move_pages\":{\"rc\":%d,\"errno\":\"%s\",\"status\":%d}", answer[0],
                      errno_name(answer[1]), answer[2]);
            wait_child(mover, 10);
        } else if (!error) {
            error = "4: move_pages() did not return within 20 s of the release";
        }
        close(back[0]);
    }
    note_flags("after", target_flags(target_pfn));
    race_note(",\"error\":%s%s%s", error ? "\"" : "", error ? error : "null", error ? "\"" : "");
}

static unsigned char *map_memory(void)
{
    int prot = PROT_READ | PROT_WRITE, huge = !strncmp(memory, "hugetlb", 7) || !strncmp(memory, "thp", 3);
    if (huge && (pages % (HUGE_SIZE / page_size))) {
        fprintf(stderr, "probe: --memory %s needs --pages in multiples of %lu\n", memory, HUGE_SIZE / page_size);
        exit(2);
    }
    mem_size = pages * page_size;
    unsigned char *p;
    if (!strcmp(memory, "anon") || !strcmp(memory, "mlock") || !strncmp(memory, "swapcache", 9)
        || !strcmp(memory, "zero-page")) {
        p = mmap(NULL, mem_size, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        /* 4 KiB pages only: a THP would turn a page failure into a split first. */
        if (p != MAP_FAILED)
            madvise(p, mem_size, MADV_NOHUGEPAGE);
    } else if (!strcmp(memory, "ksm")) {
        p = mmap(NULL, mem_size, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p != MAP_FAILED)
            madvise(p, mem_size, MADV_NOHUGEPAGE);
    } else if (!strcmp(memory, "truncated")) {
        memfd = memfd_create("mce-probe", 0);
        if (memfd < 0 || ftruncate(memfd, mem_size))
            fail("memfd_create");
        p = mmap(NULL, mem_size, prot, MAP_SHARED, memfd, 0);
    } else if (!strncmp(memory, "shm-locked", 10)) {
        p = map_shm_locked();
    } else if (!strcmp(memory, "shmem")) {
        p = mmap(NULL, mem_size, prot, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    } else if (!strcmp(memory, "hugetlb-file")) {
        /* A hugetlbfs file without a mount: memfd_create(MFD_HUGETLB). */
        memfd = memfd_create("mce-probe", MFD_HUGETLB);
        if (memfd < 0 || ftruncate(memfd, mem_size))
            fail("memfd_create MFD_HUGETLB");
        p = mmap(NULL, mem_size, prot, MAP_SHARED, memfd, 0);
    } else if (!strcmp(memory, "hugetlb")) {
        p = mmap(NULL, mem_size, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
    } else if (!strcmp(memory, "thp") || !strcmp(memory, "thp-eligible") || !strcmp(memory, "thp-pinned")) {
        unsigned char *raw = mmap(NULL, mem_size + HUGE_SIZE, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (raw == MAP_FAILED)
            fail("mmap");
        p = (unsigned char *)(((uintptr_t)raw + HUGE_SIZE - 1) & ~(HUGE_SIZE - 1));
        /* thp-eligible: 4 KiB pages until the collapse step (see do_collapse). */
        if (madvise(p, mem_size, strcmp(memory, "thp-eligible") ? MADV_HUGEPAGE : MADV_NOHUGEPAGE))
            fail("madvise");
    } else if (!strcmp(memory, "perf-ring")) {
        p = map_perf_ring();
    } else if (!strcmp(memory, "fuse-mlock") || !strcmp(memory, "fuse-mlock-dirty")) {
        return map_fuse_mlock();
    } else if (!strcmp(memory, "file")) {
        if (!file_path) {
            fprintf(stderr, "probe: --memory file needs --file PATH\n");
            exit(2);
        }
        file_fd = open(file_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
        if (file_fd < 0)
            fail("open --file");
        unsigned char *buf = malloc(page_size);
        for (int i = 0; i < pages; i++) {
            fill(buf, i + ON_DISK);
            if (write(file_fd, buf, page_size) != page_size)
                fail("write --file");
        }
        free(buf);
        /* On disk, then out of the page cache: the mapping faults in clean pages. */
        if (fsync(file_fd) || posix_fadvise(file_fd, 0, 0, POSIX_FADV_DONTNEED))
            fail("fsync/fadvise --file");
        int dirty = !strcmp(file_state, "dirty");
        p = mmap(NULL, mem_size, dirty ? prot : PROT_READ, MAP_SHARED, file_fd, 0);
        if (p != MAP_FAILED) {
            for (int i = 0; i < pages; i++)
                (void)*(volatile unsigned char *)(p + i * page_size);
            if (dirty)
                generation = UNSYNCED;
        }
        if (p == MAP_FAILED)
            fail("mmap --file");
        return p;
    } else {
        fprintf(stderr, "probe: unknown memory kind %s\n", memory);
        exit(2);
    }
    if (p == MAP_FAILED)
        fail("mmap");
    return p;
}

#define KPF_BUDDY 10

/* The highest PFN whose only flag is KPF_BUDDY: a free page, at the end of RAM
 * where the allocator rarely goes. 0 if there is none. */
static unsigned long long free_buddy_pfn(void)
{
    static unsigned long long flags[4096];
    int fd = open("/proc/kpageflags", O_RDONLY);
    unsigned long long found = 0, base = 0;
    ssize_t n;
    /* /proc/kpageflags has no useful size: read it all, keep the last match. */
    while (fd >= 0 && (n = read(fd, flags, sizeof(flags))) > 0) {
        for (ssize_t i = 0; i < n / 8; i++)
            if (flags[i] == 1ULL << KPF_BUDDY)
                found = base + i;
        base += n / 8;
    }
    if (fd >= 0)
        close(fd);
    return found;
}

static void announce_ready(unsigned char *target_va, uint64_t target_pfn, int pagemap)
{
    unsigned long long flags = 0;
    int have_flags = kpageflags_of(target_pfn, &flags);
    printf("{\"event\":\"ready\",\"pid\":%d,\"page_size\":%ld,\"target\":%d,\"memory\":\"%s\","
           "\"va\":\"%p\",\"pfn\":%llu,\"gpa\":\"0x%llx\",\"cpu\":%d,\"processes\":%d,"
           "\"huge\":%s,\"thp\":%s,\"map_page_size\":%lu,\"merged\":%s,\"free_pfn\":%llu,"
           "\"loop_start\":\"%p\",\"loop_end\":\"%p\",\"pages\":[",
           getpid(), page_size, target, memory, (void *)target_va,
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

static long read_ksm_counter(const char *name)
{
    char path[96];
    long value = -1;
    snprintf(path, sizeof(path), "/sys/kernel/mm/ksm/%s", name);
    FILE *f = fopen(path, "r");
    if (f) {
        if (fscanf(f, "%ld", &value) != 1)
            value = -1;
        fclose(f);
    }
    return value;
}

/* ksmd's pid and state letter from /proc/PID/stat ('?' and pid 0 when there is no ksmd). */
static int find_ksmd(char *state)
{
    DIR *proc = opendir("/proc");
    struct dirent *entry;
    int found = 0;
    *state = '?';
    while (proc && !found && (entry = readdir(proc))) {
        char path[300], stat[256] = "";
        int pid = atoi(entry->d_name);
        if (pid <= 0)
            continue;
        snprintf(path, sizeof(path), "/proc/%d/stat", pid);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        /* "PID (comm) S ...": the state follows the last ')'. */
        if (fgets(stat, sizeof(stat), f) && strstr(stat, " (ksmd) ")) {
            char *after = strrchr(stat, ')');
            found = pid;
            if (after && after[1] == ' ')
                *state = after[2];
        }
        fclose(f);
    }
    if (proc)
        closedir(proc);
    return found;
}

/*
 * Fresh anonymous pages with the content the ksm kind gives every page
 * (pattern 0), so each is a candidate for the stable tree node of the page
 * the orchestrator poisoned. ksmd searches the stable tree first for every
 * page it scans (cmp_and_merge_page -> stable_tree_search -> memcmp_pages).
 * MADV_MERGEABLE inserts this mm just behind ksmd's cursor, so the scan pass
 * under way may miss it and the next one covers it: two more full_scans mean
 * every page was looked at. Not before the timeout: "stalled"; ksmd no
 * longer in /proc: "ksmd-gone".
 */
static int ksm_remerge(int n)
{
    long scans_before = read_ksm_counter("full_scans"), scanned_before = read_ksm_counter("pages_scanned");
    size_t size = (size_t)n * page_size;
    double start = now_ms();
    unsigned char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        fail("mmap");
    madvise(p, size, MADV_NOHUGEPAGE);
    for (int i = 0; i < n; i++)
        fill(p + i * page_size, 0);
    if (scans_before < 0)
        fail("read /sys/kernel/mm/ksm/full_scans");
    if (madvise(p, size, MADV_MERGEABLE))
        fail("madvise MADV_MERGEABLE");
    long scans = scans_before;
    char state;
    int ksmd = find_ksmd(&state), polls = 0;
    /* A ksmd that died (an oops in a kernel thread ends it) will never scan: stop looking. */
    while (scans < scans_before + 2 && ksmd && now_ms() - start < timeout * 1e3) {
        usleep(10000);
        scans = read_ksm_counter("full_scans");
        if (++polls % 10 == 0)
            ksmd = find_ksmd(&state);
    }
    ksmd = find_ksmd(&state);
    /* How many physical pages back the n pages now (1: all merged into one), and
     * the first one's PFN (the poisoned page's: merged into it). */
    int pagemap = open("/proc/self/pagemap", O_RDONLY), distinct = 0;
    uint64_t *pfns = calloc(n, sizeof(*pfns));
    for (int i = 0; pagemap >= 0 && pfns && i < n; i++) {
        pfns[i] = pfn_of(pagemap, p + i * page_size);
        int seen = 0;
        for (int j = 0; j < i; j++)
            seen |= pfns[j] == pfns[i];
        distinct += !seen;
    }
    printf("{\"event\":\"ksm-remerge\",\"result\":\"%s\",\"pages\":%d,\"distinct_pfns\":%d,\"first_pfn\":%llu,"
           "\"full_scans\":[%ld,%ld],\"pages_scanned\":[%ld,%ld],\"ksmd_pid\":%d,\"ksmd_state\":\"%c\","
           "\"elapsed_ms\":%.1f}\n",
           scans >= scans_before + 2 ? "scanned" : ksmd ? "stalled" : "ksmd-gone", n, distinct,
           (unsigned long long)(pfns ? pfns[0] : 0), scans_before, scans,
           scanned_before, read_ksm_counter("pages_scanned"), ksmd, state, now_ms() - start);
    return 0;
}

/* --take-free-block CPU TIMEOUT: the guest half of the high-order race
 * (orchestrator/highorder.py). Pinned to CPU, it picks the target: a page in
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
#define KPF_HWPOISON 19
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

static int take_free_block(const char *cpu_arg, const char *timeout_arg)
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
 * page after locking" race (orchestrator/recompound.py). Pinned to CPU (a
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

static int retake_thp_block(const char *cpu_arg, const char *timeout_arg)
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
    if (pages < 1 || pages > 4096 || target < 0 || target >= pages || processes < 1 || processes > 2) {
        fprintf(stderr, "probe: need 0 <= target < pages <= 4096 and 1 <= processes <= 2\n");
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
