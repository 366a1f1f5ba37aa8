/*
 * The helper module's interface (cffi cdef and C header): a few coarse
 * calls that move bytes or wrap one kernel interface.  Policy stays in
 * Python.  Every call returns a count or a negative errno.
 */

#define UMIG_NATIVE_ABI 6

/* A page range to read: npages pages from addr; flags UMIG_RANGE_*. */
struct umig_range {
    uint64_t addr;
    uint32_t npages;
    uint32_t flags;
};
#define UMIG_RANGE_ELIDE_ZERO 1

/* A run of pages in a page chunk, exactly as it is stored in the image. */
struct umig_run {
    uint64_t addr;
    uint32_t npages;
    uint32_t kind;
};
#define UMIG_RUN_DATA 0
#define UMIG_RUN_ZERO 1

/* = struct page_region of PAGEMAP_SCAN */
struct umig_region {
    uint64_t start;
    uint64_t end;
    uint64_t categories;
};

int umig_native_abi(void);
int umig_plan_abi(void);
const char *umig_native_version(void);
void umig_tune_malloc(void);

int64_t umig_gather(int pid, int memfd, const struct umig_range *ranges, uint32_t nranges,
                    uint8_t *buf, uint64_t buflen, struct umig_run *runs, uint32_t maxruns,
                    uint32_t *nruns);
int64_t umig_scatter(int pid, int memfd, const struct umig_run *runs, uint32_t nruns,
                     const uint8_t *data, uint64_t datalen, uint32_t write_zero);
int64_t umig_scan(int pagemap_fd, uint64_t start, uint64_t end, uint64_t anyof_mask,
                  uint64_t return_mask, struct umig_region *out, uint64_t max,
                  uint64_t *walk_end);
int64_t umig_scan_pagemap(int pagemap_fd, uint64_t start, uint64_t end,
                          struct umig_region *out, uint64_t max, uint64_t *walk_end);
#define UMIG_COW_WRITE 1
#define UMIG_COW_DISCARD 2
int64_t umig_cow_diff(int child_mem, int parent_mem, int child_pm, int parent_pm,
                      uint64_t start, uint64_t end, struct umig_region *out, uint64_t max,
                      uint64_t *walk_end);

uint32_t umig_crc32c(uint32_t crc, const uint8_t *buf, uint64_t len);

/* What /proc says of one fd of another process: stat of /proc/PID/fd/N,
 * and where its readlink and fdinfo text went in the text buffer. */
/* What a socket or pipe of another process shows through a duplicate of
 * it (pidfd_getfd), read by the scan threads so that Python does not make
 * a dozen calls per socket while the process is frozen.  err: -1 not
 * looked at, 0 read, else the errno that stopped it. */
struct umig_fdprobe {
    int32_t err;
    int32_t queued;            /* FIONREAD: bytes (stream, pipe) or the next datagram;
                                  -1 when it cannot tell (a listener, some families) */
    int32_t pipe_size;         /* F_GETPIPE_SZ; 0 for a socket */
    int32_t family, type, proto;
    int32_t listening;         /* SO_ACCEPTCONN */
    int32_t reuseaddr, reuseport, keepalive, broadcast;
    int32_t nodelay;           /* TCP_NODELAY (TCP only, else 0) */
    int32_t v6only;            /* IPV6_V6ONLY (IPv6 only, else -1) */
    uint32_t name_len, peer_len;   /* sockaddr bytes; peer_len 0: not connected */
    uint8_t name[28];
    uint8_t peer[28];
};

struct umig_fdstat {
    int32_t fd;
    int32_t err;               /* 0, or the errno of the step that failed */
    uint32_t mode;
    uint32_t nlink;
    uint64_t dev;
    uint64_t ino;
    uint64_t rdev;
    uint64_t size;
    int64_t mtime_ns;
    uint64_t pos;              /* fdinfo's pos: and flags: (octal) */
    uint32_t flags;
    uint32_t link_off, link_len;
    uint32_t info_off, info_len;
    struct umig_fdprobe probe;  /* sockets and pipes, when the scan had a pidfd */
};
/* Sort n fds (of processes pids[i], fd fds[i]) by their open file
 * description (kcmp KCMP_FILE order) into order[]; same[k] = 1 when the
 * k-th in that order shares its description with the one before. */
int64_t umig_kcmp_sort(const int32_t *pids, const int32_t *fds, uint32_t n,
                       uint32_t *order, uint8_t *same);
int64_t umig_fd_scan(int pid, int pidfd, const int32_t *fds, uint32_t n,
                     struct umig_fdstat *out, uint8_t *text, uint64_t textlen);
/* Fill *p for fd of the process behind pidfd (a socket when sock, else a
 * pipe).  Returns 0 or -errno (also in p->err). */
int umig_fd_probe(int pidfd, int fd, int sock, struct umig_fdprobe *p);

long umig_ptrace(long req, int pid, uint64_t addr, uint64_t data);
long umig_syscall6(long nr, long a, long b, long c, long d, long e, long f);
int umig_spawn(uint64_t entry, uint64_t plan, int32_t set_tid);

uint64_t umig_xgetbv(uint32_t index);
void umig_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t *out);
uint64_t umig_vdso_base(void);
