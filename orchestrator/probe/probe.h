/*
 * The probe's shared header: the includes, the constants more than one file
 * uses, the program's state and what each file gives the others. One static
 * binary is built from every .c file here (orchestrator/probe/__init__.py):
 *
 *   probe.c        the protocol (options, stdin commands, one JSON object a
 *                  line on stdout), the SIGBUS handling and the main loop
 *   memory.c       the memory kinds: mapping them, their content, the states
 *                  a target is put in (swap cache, pinned, truncated, KSM)
 *   fuse.c         the FUSE file system the fuse-mlock kinds map (its daemon)
 *   lock_race.c    the lock race of the fuse-mlock kinds, made and observed
 *   block_races.c  the guest halves of the races the host forces with QEMU's
 *                  gdbstub: --take-free-block and --retake-thp-block
 */
#ifndef MCE_PROBE_H
#define MCE_PROBE_H

#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
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
#include <sys/mount.h>
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
/* Patterns: what was written and synced to the file (and to every other
 * kind of memory), and what a dirty file page holds on top of it. */
#define ON_DISK 0
#define UNSYNCED 1000

extern char busy_loop_start[], busy_loop_end[];

/* /proc/kpageflags bits (include/uapi/linux/kernel-page-flags.h) */
#define KPF_LOCKED 0
#define KPF_UPTODATE 3
#define KPF_DIRTY 4
#define KPF_LRU 5
#define KPF_WRITEBACK 8
#define KPF_BUDDY 10
#define KPF_MMAP 11
#define KPF_SWAPCACHE 13
#define KPF_COMPOUND_HEAD 15
#define KPF_HUGE 17
#define KPF_UNEVICTABLE 18
#define KPF_HWPOISON 19
#define KPF_THP 22
#define KPF_MLOCKED 33

/* The fuse-mlock kinds' file, and the lock race's held write. */
#define FUSE_MNT "/tmp/mce-fuse"
#define FUSE_FILE FUSE_MNT "/file"
#define MPOL_MF_MOVE_FLAG (1 << 1)
#define RACE_WRITE 64      /* bytes of the held write: partial, so the page stays not uptodate */

/* probe.c: the options and the memory under test (file scope, so siglongjmp cannot clobber them) */
extern int pages, target, cpu, timeout, busy, processes, find_free, page_locks;
extern const char *memory, *file_path, *file_state;
extern volatile int touched;
extern int file_fd, generation, is_child, same_content;
extern pid_t child;
extern unsigned char *mem;
extern size_t mem_size;
extern long page_size;

double now_ms(void);
void fail(const char *what) __attribute__((noreturn));
uint64_t pfn_of(int pagemap, void *va);
int kpageflags_of(uint64_t pfn, unsigned long long *flags);
const char *errno_name(int e);

/* memory.c */
unsigned char *map_memory(void);
int mapping_is_pfnmap(const void *va);
void fill(unsigned char *p, int page);
int holds_zeros(const unsigned char *p);
int only_read(int page);
int holds(const unsigned char *p, int page);
int left_clean(int page);
int all_merged(int pagemap);
void page_out_to_swap_cache(int pagemap, unsigned char *target_va, uint64_t target_pfn);
uint64_t swap_in_dirty(int pagemap, unsigned char *target_va, uint64_t target_pfn);
void pin_for_dma(int pagemap, unsigned char *target_va, uint64_t target_pfn);
void truncate_target(unsigned char *target_va, uint64_t target_pfn);
void pin_target(unsigned char *target_va, uint64_t target_pfn);
unsigned long long free_buddy_pfn(void);
int print_found_page(const char *kind);
int ksm_remerge(int n);

/* fuse.c */
unsigned char *map_fuse_mlock(void);
char fuse_wait_event(int seconds);
void fuse_command(char c);

/* lock_race.c */
extern pid_t race_holder;
extern unsigned char race_bytes[RACE_WRITE];
extern char race_json[3072];
extern size_t race_len;
void race_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
pid_t fork_race_child(const char *what);
unsigned long long target_flags(uint64_t pfn);
void lock_target(unsigned char *target_va, uint64_t target_pfn);
void run_lock_race(unsigned char *target_va, uint64_t target_pfn);

/* block_races.c */
int take_free_block(const char *cpu_arg, const char *timeout_arg);
int retake_thp_block(const char *cpu_arg, const char *timeout_arg);

#endif
