/*
 * Guest-side probe for the MCE orchestrator.
 *
 * Allocates target memory, reports where it lives (VA, PFN, GPA) and waits for
 * the orchestrator; catches SIGBUS with SA_SIGINFO and reports what the kernel
 * delivered. Static, so it runs on any x86_64 Linux guest. Output is one JSON
 * object per line on stdout; commands arrive one per line on stdin.
 *
 *   probe [--pages N] [--target K] [--mode wait|busy] [--cpu N] [--timeout S]
 *   probe --kpageflags PFN      (prints that PFN's /proc/kpageflags word)
 *
 * Modes:
 *   wait  report "ready", then obey stdin: "touch" reads every page (late kill
 *         shows up here), "report" finishes. A SIGBUS that arrives while waiting
 *         (early kill, BUS_MCEERR_AO) ends the wait.
 *   busy  report "ready", then read the target page in a tight loop between the
 *         symbols busy_loop_start/busy_loop_end, so the orchestrator can check
 *         that the vCPU is in this loop (user mode) before an SRAR.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#ifndef BUS_MCEERR_AR
#define BUS_MCEERR_AR 4
#endif
#ifndef BUS_MCEERR_AO
#define BUS_MCEERR_AO 5
#endif

extern char busy_loop_start[], busy_loop_end[];

static sigjmp_buf recover;
static volatile sig_atomic_t got_sigbus, got_alarm;
static volatile int sig_code, sig_lsb;
static void *volatile sig_addr;

static void on_sigbus(int sig, siginfo_t *info, void *uctx)
{
    (void)sig; (void)uctx;
    got_sigbus = 1;
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
static uint64_t pfn_of(int pagemap, void *va, long page_size)
{
    uint64_t entry;
    off_t off = (off_t)((uintptr_t)va / page_size) * sizeof(entry);
    if (pread(pagemap, &entry, sizeof(entry), off) != sizeof(entry))
        fail("pread /proc/self/pagemap");
    if (!(entry & (1ULL << 63)))
        return 0;
    return entry & ((1ULL << 55) - 1);
}

static unsigned char pattern(int page, size_t i)
{
    return (unsigned char)(0x5a ^ (page * 31) ^ (i & 0xff));
}

static void fill(unsigned char *p, int page, long page_size)
{
    for (long i = 0; i < page_size; i++)
        p[i] = pattern(page, i);
}

static int intact(const unsigned char *p, int page, long page_size)
{
    for (long i = 0; i < page_size; i++)
        if (p[i] != pattern(page, i))
            return 0;
    return 1;
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

/* Reads the target forever; leaves only through SIGBUS or SIGALRM. */
static void busy_read(volatile unsigned char *target)
{
    __asm__ volatile(
        ".globl busy_loop_start\n"
        "busy_loop_start:\n"
        "1: movb (%0), %%al\n"
        "   jmp 1b\n"
        ".globl busy_loop_end\n"
        "busy_loop_end:\n"
        : : "r"(target) : "rax", "memory");
}

static int print_kpageflags(const char *arg)
{
    unsigned long long pfn = strtoull(arg, NULL, 0), flags;
    int fd = open("/proc/kpageflags", O_RDONLY);
    if (fd < 0)
        fail("open /proc/kpageflags");
    if (pread(fd, &flags, sizeof(flags), (off_t)(pfn * sizeof(flags))) != sizeof(flags))
        fail("pread /proc/kpageflags");
    printf("{\"event\":\"kpageflags\",\"pfn\":%llu,\"flags\":%llu}\n", pfn, flags);
    return 0;
}

/* File scope, so siglongjmp cannot clobber them. */
static int pages = 4, target = 1, cpu = -1, timeout = 60, busy;
static volatile int touched;

static void print_page_list(const char *key, unsigned char *mem, long page_size,
                            uintptr_t skip, int want_intact)
{
    int first = 1;
    printf(",\"%s\":[", key);
    for (int p = 0; p < pages; p++) {
        unsigned char *page = mem + p * page_size;
        if ((uintptr_t)page == skip || (got_sigbus && p == target))
            continue;
        if (intact(page, p, page_size) == want_intact)
            printf("%s%d", first ? "" : ",", p), first = 0;
    }
    printf("]");
}

static void announce_ready(unsigned char *mem, long page_size, unsigned char *target_va,
                           uint64_t target_pfn, int pagemap)
{
    printf("{\"event\":\"ready\",\"pid\":%d,\"page_size\":%ld,\"target\":%d,"
           "\"va\":\"%p\",\"pfn\":%llu,\"gpa\":\"0x%llx\",\"cpu\":%d,"
           "\"loop_start\":\"%p\",\"loop_end\":\"%p\",\"pages\":[",
           getpid(), page_size, target, (void *)target_va,
           (unsigned long long)target_pfn,
           (unsigned long long)target_pfn * page_size, cpu,
           (void *)busy_loop_start, (void *)busy_loop_end);
    for (int p = 0; p < pages; p++)
        printf("%s{\"va\":\"%p\",\"pfn\":%llu}", p ? "," : "", (void *)(mem + p * page_size),
               (unsigned long long)pfn_of(pagemap, mem + p * page_size, page_size));
    printf("]}\n");
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "--kpageflags"))
        return print_kpageflags(argv[2]);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--pages") && v) pages = atoi(v), i++;
        else if (!strcmp(a, "--target") && v) target = atoi(v), i++;
        else if (!strcmp(a, "--cpu") && v) cpu = atoi(v), i++;
        else if (!strcmp(a, "--timeout") && v) timeout = atoi(v), i++;
        else if (!strcmp(a, "--mode") && v) {
            if (!strcmp(v, "busy")) busy = 1;
            else if (strcmp(v, "wait")) { fprintf(stderr, "probe: unknown mode %s\n", v); return 2; }
            i++;
        } else {
            fprintf(stderr, "probe: bad argument %s\n", a);
            return 2;
        }
    }
    if (pages < 1 || pages > 4096 || target < 0 || target >= pages) {
        fprintf(stderr, "probe: need 0 <= target < pages <= 4096\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    long page_size = sysconf(_SC_PAGESIZE);

    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        if (sched_setaffinity(0, sizeof(set), &set))
            fail("sched_setaffinity");
    }

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

    unsigned char *mem = mmap(NULL, pages * page_size, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        fail("mmap");
    /* 4 KiB pages only: a THP would turn a page failure into a split first. */
    madvise(mem, pages * page_size, MADV_NOHUGEPAGE);
    for (int p = 0; p < pages; p++)
        fill(mem + p * page_size, p, page_size);

    int pagemap = open("/proc/self/pagemap", O_RDONLY);
    if (pagemap < 0)
        fail("open /proc/self/pagemap");
    unsigned char *target_va = mem + target * page_size;
    uint64_t target_pfn = pfn_of(pagemap, target_va, page_size);
    if (!target_pfn)
        fail("target PFN not visible (not root, or page not present)");

    double start = now_ms();
    /* Armed before "ready" goes out: the orchestrator injects as soon as it
     * reads that line, and a SIGBUS before sigsetjmp would jump nowhere. */
    if (sigsetjmp(recover, 1) == 0) {
        announce_ready(mem, page_size, target_va, target_pfn, pagemap);
        alarm(timeout);
        if (busy) {
            busy_read(target_va);
        } else {
            char line[64];
            while (fgets(line, sizeof(line), stdin)) {
                if (!strncmp(line, "touch", 5)) {
                    touched = 1;
                    for (int p = 0; p < pages; p++)
                        (void)*(volatile unsigned char *)(mem + p * page_size);
                    printf("{\"event\":\"touched\"}\n");
                } else if (!strncmp(line, "report", 6)) {
                    break;
                }
            }
        }
    }
    alarm(0);
    double elapsed = now_ms() - start;

    /* Never read back the page the kernel reported: that would fault again. */
    uintptr_t bad_page = got_sigbus ? ((uintptr_t)sig_addr & ~(uintptr_t)(page_size - 1)) : 0;
    printf("{\"event\":\"result\",\"sigbus\":%s,\"timeout\":%s,\"touched\":%s",
           got_sigbus ? "true" : "false", got_alarm ? "true" : "false",
           touched ? "true" : "false");
    if (got_sigbus)
        printf(",\"si_code\":%d,\"si_code_name\":\"%s\",\"si_addr\":\"%p\",\"si_addr_lsb\":%d",
               sig_code, code_name(sig_code), sig_addr, sig_lsb);
    printf(",\"elapsed_ms\":%.1f", elapsed);
    print_page_list("intact", mem, page_size, bad_page, 1);
    print_page_list("corrupt", mem, page_size, bad_page, 0);
    printf("}\n");
    return 0;
}
