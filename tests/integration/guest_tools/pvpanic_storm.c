/* Writes PVPANIC_CRASH_LOADED to the pvpanic-pci device's BAR in a loop: QEMU sends
   a GUEST_CRASHLOADED event per write. Usage: storm SECONDS [WRITES_PER_SECOND]
   (as fast as it can without the second argument). */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static int read_file(const char *path, char *buf, size_t len)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, len - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    return 1;
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 5;
    double rate = argc > 2 ? atof(argv[2]) : 0;
    DIR *d = opendir("/sys/bus/pci/devices");
    struct dirent *e;
    char path[512], vendor[32], device[32];
    while (d && (e = readdir(d))) {
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/vendor", e->d_name);
        if (!read_file(path, vendor, sizeof vendor) || strncmp(vendor, "0x1b36", 6)) continue;
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/device", e->d_name);
        if (!read_file(path, device, sizeof device) || strncmp(device, "0x0011", 6)) continue;
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/resource0", e->d_name);
        int fd = open(path, O_RDWR | O_SYNC);
        if (fd < 0) { perror(path); return 1; }
        volatile unsigned char *bar = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (bar == MAP_FAILED) { perror("mmap"); return 1; }
        struct timespec start, now;
        clock_gettime(CLOCK_MONOTONIC, &start);
        unsigned long writes = 0;
        double elapsed;
        do {
            for (int i = 0; i < (rate > 0 ? 10 : 1000); i++) bar[0] = 2;
            writes += rate > 0 ? 10 : 1000;
            clock_gettime(CLOCK_MONOTONIC, &now);
            elapsed = (now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9;
            if (rate > 0 && writes > rate * elapsed) {
                struct timespec pause = {0, (long)((writes / rate - elapsed) * 1e9)};
                nanosleep(&pause, NULL);
            }
        } while (elapsed < seconds);
        printf("%lu writes\n", writes);
        return 0;
    }
    fprintf(stderr, "no pvpanic-pci device\n");
    return 1;
}
