/* The memory kinds: map_memory() maps --memory's kind; the content every page
 * holds; what puts a target in its state (swap cache, pinned, truncated); the
 * pages no mapping gives (--find-page, --find-free); KSM's second process. */
#include "probe.h"

/* Pages in a state no probe mapping can give, found in /proc/kpageflags: the
 * highest PFN (far from where allocations happen) whose flags match.
 * free-huge: the head of a hugetlb page in the pool that nothing maps. */
int print_found_page(const char *kind)
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
#define PM_SWAP (1ULL << 62)

/* swapcache: page the target out until its PTE holds a swap entry and its
 * page, still at target_pfn, is in the swap cache with the write finished
 * (SWAPCACHE, not DIRTY, not WRITEBACK). Up to 10 s. */
void page_out_to_swap_cache(int pagemap, unsigned char *target_va, uint64_t target_pfn)
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

void fill(unsigned char *p, int page)
{
    for (long i = 0; i < page_size; i++)
        p[i] = pattern(page, i);
}

/* A page only read holds what a fresh page holds: zeros. */
int holds_zeros(const unsigned char *p)
{
    for (long i = 0; i < page_size; i++)
        if (p[i])
            return 0;
    return 1;
}

/* The pages a kind only reads (see left_clean). */
int only_read(int page)
{
    if (!strcmp(memory, "perf-ring"))
        return 1;  /* the kernel's pages: the probe never writes them */
    return page == target && (!strcmp(memory, "shm-locked-clean") || !strcmp(memory, "zero-page"));
}

int holds(const unsigned char *p, int page)
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
uint64_t swap_in_dirty(int pagemap, unsigned char *target_va, uint64_t target_pfn)
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

void pin_for_dma(int pagemap, unsigned char *target_va, uint64_t target_pfn)
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

static int memfd = -1;              /* truncated: the file */
static int spliced[2] = {-1, -1};   /* truncated: the pipe that holds the old page */

/* truncated: keep a reference to the target's page in a pipe (vmsplice),
 * punch the page out of the memfd (truncate_inode_folio: off the page cache,
 * mapping NULL, still on the LRU while the pipe holds it) and write the data
 * again through the mapping (a new page). */
void truncate_target(unsigned char *target_va, uint64_t target_pfn)
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
void pin_target(unsigned char *target_va, uint64_t target_pfn)
{
    struct iovec iov = {target_va, page_size};
    unsigned long long flags = 0;
    if (!kpageflags_of(target_pfn, &flags) || !(flags >> KPF_THP & 1))
        fail("the target is not in a transparent huge page");
    if (pipe(spliced) || vmsplice(spliced[1], &iov, 1, 0) != page_size)
        fail("vmsplice");
}

/* Every page of the mapping on page 0's physical page (KSM has merged them all). */
int all_merged(int pagemap)
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
int left_clean(int page)
{
    if (!only_read(page))
        return 0;
    (void)*(volatile unsigned char *)(mem + page * page_size);
    return 1;
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

/* Whether the mapping holding `va` is VM_PFNMAP ("pf" in its smaps VmFlags):
 * /proc/PID/pagemap walks skip such a mapping, so its PFNs read as not present. */
int mapping_is_pfnmap(const void *va)
{
    FILE *smaps = fopen("/proc/self/smaps", "r");
    char line[512];
    unsigned long start = 0, end = 0, at = (unsigned long)va;
    int inside = 0, pfnmap = 0;
    if (!smaps)
        return 0;
    while (fgets(line, sizeof(line), smaps)) {
        if (sscanf(line, "%lx-%lx ", &start, &end) == 2)  /* a mapping's header line */
            inside = start <= at && at < end;
        else if (inside && !strncmp(line, "VmFlags:", 8)) {
            pfnmap = strstr(line, " pf") != NULL;
            break;
        }
    }
    fclose(smaps);
    return pfnmap;
}

unsigned char *map_memory(void)
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


/* The highest PFN whose only flag is KPF_BUDDY: a free page, at the end of RAM
 * where the allocator rarely goes. 0 if there is none. */
unsigned long long free_buddy_pfn(void)
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
int ksm_remerge(int n)
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
