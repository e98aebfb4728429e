/* Meddles with a forced race from the race process's vCPU: pinned to CPU, for SECONDS it
   reads /proc/kpageflags over all of RAM without pause and writes KEY to
   /proc/sysrq-trigger every 100 ms. Usage: race_interferer CPU SECONDS [KEY] */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    int cpu = argc > 1 ? atoi(argv[1]) : 1;
    double seconds = argc > 2 ? atof(argv[2]) : 30;
    char key = argc > 3 ? argv[3][0] : 'm';
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
    int flags = open("/proc/kpageflags", O_RDONLY);
    static uint64_t buf[4096];
    double start = now(), next_key = start;
    off_t at = 0;
    while (now() - start < seconds) {
        if (flags >= 0 && pread(flags, buf, sizeof buf, at) <= 0)
            at = 0;
        else
            at += sizeof buf;
        if (now() >= next_key) {
            int sysrq = open("/proc/sysrq-trigger", O_WRONLY);
            if (sysrq >= 0) {
                (void)!write(sysrq, &key, 1);
                close(sysrq);
            }
            next_key += 0.1;
        }
    }
    return 0;
}
