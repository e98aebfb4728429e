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
#include "probe.h"

pid_t race_holder = -1;                   /* the task whose request holds the page lock */
unsigned char race_bytes[RACE_WRITE];
char race_json[3072];                     /* the race's observations, for report() */
size_t race_len;

void race_note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(race_json + race_len, sizeof(race_json) - race_len, fmt, ap);
    va_end(ap);
    if (n > 0)
        race_len = race_len + n < sizeof(race_json) ? race_len + n : sizeof(race_json) - 1;
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
pid_t fork_race_child(const char *what)
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

unsigned long long target_flags(uint64_t pfn)
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
 * flags differs between kernels: 6.1 once (mm/memory-failure.c: lock_page(p),
 * then page_flags); 6.12 twice (folio_lock() around hwpoison_filter(), unlocked,
 * shake_folio(), then folio_lock() again before page_flags = folio->flags). The
 * harness passes what it learned of this kernel (--page-locks 1|2), or 0: the
 * race then learns it from the kernel (learn_page_locks). */

/* Is task `tid` (a kworker) still inside `function`? -1: its stack unreadable. */
static int task_in(pid_t tid, const char *function)
{
    char path[64], stack[512];
    snprintf(path, sizeof(path), "/proc/%d/stack", (int)tid);
    if (!kernel_stack(path, stack, sizeof(stack)))
        return -1;
    return strstr(stack, function) != NULL;
}

/* Once the first lock memory_failure() waited for (at `first`) was handed to it,
 * with a reader queued behind it: 2 when it is seen waiting for the page lock
 * again at another call site (a second lock), 1 when it has left memory_failure()
 * without (it read the flags under that one lock and went on), 0 when neither
 * shows within `seconds`. */
static int learn_page_locks(pid_t mf, const char *first, int seconds)
{
    char stack[512], again[96];
    for (double end = now_ms() + seconds * 1e3; now_ms() < end; usleep(20000)) {
        pid_t waiting = find_lock_waiter("memory_failure", stack, sizeof(stack));
        if (waiting == mf) {
            stack_frame(mf, "memory_failure", again, sizeof(again));
            if (again[0] && strcmp(again, first))
                return 2;
        } else if (task_in(mf, "memory_failure") == 0) {
            return 1;
        }
    }
    return 0;
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
void lock_target(unsigned char *target_va, uint64_t target_pfn)
{
    /* With vm.page_lock_unfairness 0 an unlock hands the lock to the first
     * waiter (WQ_FLAG_CUSTOM from its first wait); otherwise it only wakes it,
     * and whoever runs first may take the lock. */
    char fair[16] = "";
    int sysctl = open("/proc/sys/vm/page_lock_unfairness", O_RDONLY);
    if (sysctl < 0 || read(sysctl, fair, sizeof(fair) - 1) <= 0 || atoi(fair) != 0)
        fail("needs vm.page_lock_unfairness 0 (page locks handed over in order)");
    close(sysctl);
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
void run_lock_race(unsigned char *target_va, uint64_t target_pfn)
{
    char stack[512], frame[96];
    const char *error = NULL;
    pid_t mf, mover = -1;
    int back[2] = {-1, -1}, locks = page_locks;
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
    race_note(",\"page_locks\":%d", locks);
    if (locks != 1) {
        /* Two locks (6.12): the first wait is hwpoison_filter()'s lock. A reader
         * (a second writer would wait for the inode lock the first one holds)
         * queues behind memory_failure(), takes the lock when memory_failure()
         * lets it go and holds it (its FUSE_READ held) while memory_failure()
         * waits for its second lock. Not known (0): the same steps show which
         * it is; with one lock the interleaving is lost (memory_failure() reads
         * the flags with the page still on the LRU), and learned for the next
         * guest. */
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
        if (!locks) {
            locks = learn_page_locks(mf, frame, 10);
            race_note(",\"learned_page_locks\":%d", locks);
            if (locks == 1) {
                error = "1b: memory_failure() took the page lock once and went on: this kernel takes it once "
                        "(learned; the interleaving needs a guest where that is known)";
                goto release;
            }
            if (!locks) {
                error = "1b: memory_failure() was neither seen waiting for the page lock again nor leaving";
                goto release;
            }
        }
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
