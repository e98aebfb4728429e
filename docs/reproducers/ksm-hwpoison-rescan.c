// SPDX-License-Identifier: GPL-2.0
/*
 * ksm-hwpoison-rescan: ksmd compares fresh pages with a KSM page that memory_failure() handled.
 *
 * As root in a guest with CONFIG_KSM and CONFIG_MEMORY_FAILURE:
 *   ksm-hwpoison-rescan mce       prints the KSM page's physical address and waits for a line
 *                                 on stdin: inject an SRAO there first, on the QEMU monitor:
 *                                   mce 0 9 0xbd000000000000c0 0x5 <ADDR> 0x8c
 *   ksm-hwpoison-rescan madvise   poisons it itself with madvise(MADV_HWPOISON) (no
 *                                 set_mce_nospec() then: the direct map stays)
 * Then it maps 16 fresh pages of the same content, MADV_MERGEABLE, and waits until ksmd's
 * full_scans advanced twice (or ksmd is gone), and says where the fresh pages went.
 * Exit: 0 ksmd scanned on, 1 ksmd is gone, 2 set-up failed.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define KSM "/sys/kernel/mm/ksm/"

static volatile sig_atomic_t sigbus_code = -1;

static void on_sigbus(int sig, siginfo_t *si, void *ctx)
{
	(void)sig; (void)ctx;
	sigbus_code = si->si_code;	/* BUS_MCEERR_AO: the early kill; we return */
}

static void put(const char *file, const char *value)
{
	int fd = open(file, O_WRONLY);

	if (fd < 0 || write(fd, value, strlen(value)) < 0) {
		perror(file);
		exit(2);
	}
	close(fd);
}

static long get(const char *file)
{
	char buf[32] = "";
	int fd = open(file, O_RDONLY);

	if (fd < 0 || read(fd, buf, sizeof(buf) - 1) < 0) {
		perror(file);
		exit(2);
	}
	close(fd);
	return atol(buf);
}

static uint64_t pfn_of(void *va)
{
	uint64_t entry = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY);

	if (fd < 0 || pread(fd, &entry, 8, (uintptr_t)va / PAGE * 8) != 8) {
		perror("/proc/self/pagemap");
		exit(2);
	}
	close(fd);
	return (entry >> 63) ? entry & ((1ULL << 55) - 1) : 0;
}

static pid_t ksmd_pid(void)
{
	DIR *proc = opendir("/proc");
	struct dirent *d;
	pid_t found = 0;

	while (proc && (d = readdir(proc))) {
		char path[300], comm[32] = "";
		FILE *f;

		snprintf(path, sizeof(path), "/proc/%s/comm", d->d_name);
		f = fopen(path, "r");
		if (!f)
			continue;
		if (fgets(comm, sizeof(comm), f) && !strcmp(comm, "ksmd\n"))
			found = atoi(d->d_name);
		fclose(f);
	}
	if (proc)
		closedir(proc);
	return found;
}

static void nap(void)
{
	nanosleep(&(struct timespec){ .tv_nsec = 50 * 1000 * 1000 }, NULL);
}

static int fill = 0x5a;	/* the same in every page, and not zero; 0xa5 for madvise */

static char *mergeable(int pages)
{
	char *p = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	for (int i = 0; i < pages; i++)
		memset(p + i * PAGE, fill, PAGE);
	if (madvise(p, pages * PAGE, MADV_MERGEABLE)) {
		perror("madvise(MADV_MERGEABLE)");
		exit(2);
	}
	return p;
}

int main(int argc, char **argv)
{
	int use_madvise = argc > 1 && !strcmp(argv[1], "madvise");
	struct sigaction sa = { .sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO | SA_RESTART };
	uint64_t kpfn = 0, pfn;
	char *old, *fresh, path[64], line[16];
	long scans;
	pid_t ksmd;
	int i, t;

	if (use_madvise)
		fill = 0xa5;	/* not merged with a page poisoned in mce mode before */
	sigaction(SIGBUS, &sa, NULL);
	put(KSM "sleep_millisecs", "10");
	put(KSM "pages_to_scan", "1000");
	put(KSM "run", "1");
	ksmd = ksmd_pid();
	if (!ksmd) {
		fprintf(stderr, "no ksmd\n");
		return 2;
	}

	/* 1. Four pages of one content, merged into one KSM page. */
	old = mergeable(4);
	for (t = 0; t < 1200 && !kpfn; t++, nap()) {
		pfn = pfn_of(old);
		for (i = 1; i < 4 && pfn && pfn_of(old + i * PAGE) == pfn; i++)
			;
		if (i == 4)
			kpfn = pfn;
	}
	if (!kpfn) {
		fprintf(stderr, "ksmd did not merge the 4 pages within 60 s\n");
		return 2;
	}
	printf("KSM page: pfn %#llx, physical address %#llx\n", (unsigned long long)kpfn,
	       (unsigned long long)(kpfn * PAGE));

	/* 2. Poison it. */
	if (use_madvise) {
		if (madvise(old, PAGE, MADV_HWPOISON))
			perror("madvise(MADV_HWPOISON)");	/* 6.1 refuses KSM pages: goes on */
	} else {
		printf("inject now, on the QEMU monitor:\n  mce 0 9 0xbd000000000000c0 0x5 %#llx 0x8c\n"
		       "then press Enter\n", (unsigned long long)(kpfn * PAGE));
		fflush(stdout);
		/* The early kill's SIGBUS may arrive while we wait: SA_RESTART resumes the read. */
		if (!fgets(line, sizeof(line), stdin))
			return 2;
	}
	printf("SIGBUS si_code %d\n", (int)sigbus_code);

	/* 3. Fresh pages of the same content: ksmd compares them with the stable tree. */
	scans = get(KSM "full_scans");
	fresh = mergeable(16);
	snprintf(path, sizeof(path), "/proc/%d", (int)ksmd);
	for (t = 0; t < 1200; t++, nap()) {
		if (access(path, F_OK)) {
			printf("ksmd (pid %d) is gone: see the kernel log\n", (int)ksmd);
			return 1;
		}
		if (get(KSM "full_scans") >= scans + 2)
			break;
	}
	printf("ksmd alive, full_scans %ld -> %ld\n", scans, get(KSM "full_scans"));
	for (i = 0; i < 16; i++) {
		pfn = pfn_of(fresh + i * PAGE);
		printf("fresh page %2d: pfn %#llx%s\n", i, (unsigned long long)pfn,
		       pfn == kpfn ? "  <- the poisoned KSM page" : "");
	}
	return 0;
}
