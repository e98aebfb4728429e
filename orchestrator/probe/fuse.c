/* The FUSE file system the fuse-mlock kinds map: the raw /dev/fuse protocol,
 * served by a forked daemon that the lock race commands (lock_race.c). */
#include "probe.h"

#define FUSE_ROOT_MODE 040755
#define FUSE_FILE_MODE 0100600

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
static pid_t fuse_daemon = -1;

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

char fuse_wait_event(int seconds)
{
    struct pollfd fd = {fuse_evt, POLLIN, 0};
    char c = 0;
    if (poll(&fd, 1, seconds * 1000) == 1 && read(fuse_evt, &c, 1) == 1)
        return c;
    return 0;
}

void fuse_command(char c)
{
    if (write(fuse_ctl, &c, 1) != 1)
        fail("write to the FUSE daemon");
}

/* Mount the FUSE file system served by a forked daemon, map its file MAP_SHARED
 * (not inherited by the writer and mover: one mapping, mapcount 1), fault every
 * page in (read; dirty: rewritten through the mapping), mlock. */
unsigned char *map_fuse_mlock(void)
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
