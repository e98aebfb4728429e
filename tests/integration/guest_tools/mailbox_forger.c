/* Forges a race process's report: finds the mailbox page of the processes running the
   probe with OPTION (its first word the probe's magic, in a writable mapping, through
   /proc/PID/mem) and, pinned to CPU as a real-time task (so the race process on that
   CPU runs only when it lets it), the moment a mailbox says "allocating" (2) past its
   gate (fourth word nonzero) stops those processes and writes "taken" (3) there,
   though nothing was taken.
   With MODE "kill" it kills them with SIGBUS instead (as if their page were poisoned
   under them) and writes nothing.
   Usage: mailbox_forger CPU OPTION [SECONDS [MODE]] */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAGIC 0x4D43454F52434831ULL

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* The mailbox's address in process `pid` (0 when none), its /proc/PID/mem open in *fd. */
static uint64_t find_mailbox(int pid, const char *option, int *fd)
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
    *fd = open(path, O_RDWR);
    if (!maps || *fd < 0) return 0;
    char line[512];
    unsigned long start, end;
    char perms[8];
    while (fgets(line, sizeof line, maps)) {
        if (sscanf(line, "%lx-%lx %7s", &start, &end, perms) != 3 || perms[1] != 'w') continue;
        for (unsigned long a = start; a < end && a - start < (64UL << 20); a += 4096) {
            uint64_t word = 0;
            if (pread(*fd, &word, 8, a) == 8 && word == MAGIC) {
                fclose(maps);
                return a;
            }
        }
    }
    fclose(maps);
    close(*fd);
    return 0;
}

int main(int argc, char **argv)
{
    int cpu = argc > 1 ? atoi(argv[1]) : 1;
    const char *option = argc > 2 ? argv[2] : "--take-free-block";
    double seconds = argc > 3 ? atof(argv[3]) : 60, start = now();
    int kill_them = argc > 4 && !strcmp(argv[4], "kill");
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
    int fds[8], pids[8], found = 0;
    uint64_t boxes[8];
    while (!found && now() - start < seconds) {
        DIR *d = opendir("/proc");
        struct dirent *e;
        while (found < 8 && d && (e = readdir(d))) {
            int pid = atoi(e->d_name), fd = -1;
            if (pid <= 0 || pid == getpid()) continue;
            uint64_t box = find_mailbox(pid, option, &fd);
            if (box) { fds[found] = fd; pids[found] = pid; boxes[found++] = box; }
        }
        if (d) closedir(d);
    }
    struct sched_param rt = {.sched_priority = 50};
    sched_setscheduler(0, SCHED_FIFO, &rt);
    while (found && now() - start < seconds)
        for (int i = 0; i < found; i++) {
            uint64_t words[4] = {0}, taken = 3;
            if (pread(fds[i], words, sizeof words, boxes[i]) == sizeof words && words[1] == 2 && words[3]) {
                for (int j = 0; j < found; j++) kill(pids[j], kill_them ? SIGBUS : SIGSTOP);
                if (!kill_them)
                    (void)!pwrite(fds[i], &taken, 8, boxes[i] + 8);
                printf("forged\n");
                return 0;
            }
        }
    return 1;
}
