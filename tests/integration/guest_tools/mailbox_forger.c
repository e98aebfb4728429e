/* Forges a race process's report, at the one moment that counts: finds the process running
   the probe with OPTION whose memory holds the mailbox (its first word the probe's magic, in
   a writable mapping, read through /proc/PID/mem), traces its system calls (ptrace, pinned
   to CPU: the race process's vCPU, the only one running while the host holds the other) and
   creates READY_FILE. When the process comes back from its gate (getpriority(), where the
   host held it) it is stopped there, before it allocates anything, and "taken" (3) is
   written into its mailbox, though nothing was taken; it stays stopped for SECONDS.
   With MODE "kill" it is killed with SIGBUS there instead (as if its page were poisoned
   under it), and nothing is written.
   No scheduler luck: the process is stopped by the kernel's own syscall-exit stop.
   Usage: mailbox_forger CPU OPTION SECONDS MODE READY_FILE */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAGIC 0x4D43454F52434831ULL

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* The mailbox's address in process `pid`, 0 when it has none. */
static uint64_t find_mailbox(int pid, const char *option)
{
    char path[64], cmdline[512] = {0};
    snprintf(path, sizeof path, "/proc/%d/cmdline", pid);
    int c = open(path, O_RDONLY);
    if (c < 0) return 0;
    ssize_t n = read(c, cmdline, sizeof cmdline - 1);
    close(c);
    int match = 0;
    for (ssize_t i = 0; i < n; i += strlen(cmdline + i) + 1)
        if (!strcmp(cmdline + i, option)) match = 1;
    if (!match) return 0;
    snprintf(path, sizeof path, "/proc/%d/maps", pid);
    FILE *maps = fopen(path, "r");
    snprintf(path, sizeof path, "/proc/%d/mem", pid);
    int fd = open(path, O_RDONLY);
    uint64_t found = 0;
    char line[512];
    unsigned long start, end;
    char perms[8];
    while (maps && fd >= 0 && !found && fgets(line, sizeof line, maps)) {
        if (sscanf(line, "%lx-%lx %7s", &start, &end, perms) != 3 || perms[1] != 'w') continue;
        for (unsigned long a = start; a < end && a - start < (64UL << 20); a += 4096) {
            uint64_t word = 0;
            if (pread(fd, &word, 8, a) == 8 && word == MAGIC) { found = a; break; }
        }
    }
    if (maps) fclose(maps);
    if (fd >= 0) close(fd);
    return found;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: mailbox_forger CPU OPTION SECONDS forge|kill READY_FILE\n");
        return 2;
    }
    int cpu = atoi(argv[1]);
    const char *option = argv[2], *ready = argv[5];
    double seconds = atof(argv[3]), start = now();
    int kill_it = !strcmp(argv[4], "kill");
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
    int pid = 0;
    uint64_t box = 0;
    while (!box && now() - start < seconds) {
        DIR *d = opendir("/proc");
        struct dirent *e;
        while (!box && d && (e = readdir(d))) {
            pid = atoi(e->d_name);
            if (pid > 0 && pid != getpid()) box = find_mailbox(pid, option);
        }
        if (d) closedir(d);
    }
    if (!box) { fprintf(stderr, "no race process with a mailbox\n"); return 1; }
    if (ptrace(PTRACE_SEIZE, pid, 0, PTRACE_O_TRACESYSGOOD) || ptrace(PTRACE_INTERRUPT, pid, 0, 0)) {
        perror("ptrace");
        return 1;
    }
    int status, sig = 0;
    if (waitpid(pid, &status, 0) != pid) { perror("waitpid"); return 1; }
    close(open(ready, O_WRONLY | O_CREAT | O_TRUNC, 0644));
    printf("tracing pid %d, mailbox at %#llx\n", pid, (unsigned long long)box);
    fflush(stdout);
    for (;;) {
        if (ptrace(PTRACE_SYSCALL, pid, 0, sig)) { perror("PTRACE_SYSCALL"); return 1; }
        sig = 0;
        if (waitpid(pid, &status, 0) != pid || WIFEXITED(status) || WIFSIGNALED(status)) {
            fprintf(stderr, "the race process ended before its gate\n");
            return 1;
        }
        if (WSTOPSIG(status) != (SIGTRAP | 0x80)) {
            /* A signal for it (passed on), or an event stop (nothing to pass on). */
            if (status >> 16 == 0) sig = WSTOPSIG(status);
            continue;
        }
        struct user_regs_struct regs;
        if (ptrace(PTRACE_GETREGS, pid, 0, &regs)) { perror("PTRACE_GETREGS"); return 1; }
        /* At a syscall-entry stop rax is -ENOSYS; at its exit stop, what it returned. */
        if (regs.orig_rax != SYS_getpriority || regs.rax == (unsigned long long)-ENOSYS)
            continue;
        break;
    }
    if (kill_it) {
        kill(pid, SIGBUS);
        ptrace(PTRACE_DETACH, pid, 0, SIGBUS);
        printf("killed\n");
        return 0;
    }
    if (ptrace(PTRACE_POKEDATA, pid, box + 8, 3) || ptrace(PTRACE_POKEDATA, pid, box + 24, 1)) {
        perror("PTRACE_POKEDATA");
        return 1;
    }
    printf("forged\n");
    fflush(stdout);
    while (now() - start < seconds)
        sleep(1);
    return 0;  /* the process is let go as the tracer ends */
}
