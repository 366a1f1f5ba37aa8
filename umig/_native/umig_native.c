/*
 * umig's native helpers (ordinary C with libc): bulk page copy between
 * processes, page scans, a checksum, and thin wrappers over the kernel
 * interfaces Python has no binding for.  Python decides what to move; this
 * file only moves it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/uio.h>
#include <stdio.h>
#include <unistd.h>
#include <cpuid.h>

#include "umig_native.h"
#include "plan.h"

#ifndef UMIG_VERSION
#define UMIG_VERSION "unknown"
#endif

#define PAGE 4096UL
#define IOV_BATCH 1024

int umig_native_abi(void) { return UMIG_NATIVE_ABI; }
int umig_plan_abi(void) { return UMIG_PLAN_ABI; }
const char *umig_native_version(void) { return UMIG_VERSION; }

/*
 * Buffers of a few MiB are allocated and freed per page chunk (lz4's output
 * among them).  glibc serves them with fresh mmaps by default, and the page
 * faults on those cost more than compressing (docs/kernel-findings.md).
 */
void umig_tune_malloc(void)
{
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
}

/* ---- moving pages between processes ------------------------------------ */

/* Copy [addr, addr+len) of the remote process into local, falling back to
 * /proc/PID/mem (which also reads PROT_NONE memory) where
 * process_vm_readv stops. */
static int64_t read_remote(int pid, int memfd, const struct iovec *remote, unsigned n,
                           uint8_t *local)
{
    uint64_t want = 0;
    for (unsigned i = 0; i < n; i++)
        want += remote[i].iov_len;
    struct iovec l = {local, want};
    /* pid 0: /proc/PID/mem only.  process_vm_readv pins the pages it reads
     * (FOLL_PIN), which unshares anonymous pages a process shares
     * copy-on-write with another (kernel-findings.md) */
    ssize_t got = pid > 0 ? process_vm_readv(pid, &l, 1, remote, n, 0) : 0;
    if (got < 0)
        got = 0;
    if ((uint64_t)got == want)
        return got;
    /* find the iovec where it stopped; pread the rest one iovec at a time */
    uint64_t off = 0;
    for (unsigned i = 0; i < n; i++) {
        uint64_t end = off + remote[i].iov_len;
        if ((uint64_t)got < end) {
            uint64_t done = (uint64_t)got > off ? (uint64_t)got - off : 0;
            while (done < remote[i].iov_len) {
                ssize_t r = pread(memfd, local + off + done, remote[i].iov_len - done,
                                  (off_t)((uint64_t)remote[i].iov_base + done));
                if (r < 0 && errno == EINTR)
                    continue;
                if (r <= 0)
                    return r < 0 ? -errno : -EIO;
                done += r;
            }
            got = end;
        }
        off = end;
    }
    return want;
}

static int page_is_zero(const uint8_t *p)
{
    const uint64_t *q = (const uint64_t *)p;
    /* most data pages differ from zero in their first bytes: stop there */
    if (q[0] | q[1] | q[2] | q[3])
        return 0;
    uint64_t acc = 0;
    for (unsigned i = 0; i < PAGE / 8; i += 8) {
        acc |= q[i] | q[i + 1] | q[i + 2] | q[i + 3] | q[i + 4] | q[i + 5] | q[i + 6] | q[i + 7];
        if (acc)
            return 0;
    }
    return 1;
}

static int add_run(struct umig_run *runs, uint32_t maxruns, uint32_t *nruns, uint64_t addr,
                   uint32_t kind)
{
    if (*nruns) {
        struct umig_run *last = &runs[*nruns - 1];
        if (last->kind == kind && last->addr + last->npages * PAGE == addr) {
            last->npages++;
            return 0;
        }
    }
    if (*nruns == maxruns)
        return -ENOSPC;
    runs[*nruns].addr = addr;
    runs[*nruns].npages = 1;
    runs[*nruns].kind = kind;
    (*nruns)++;
    return 0;
}

/*
 * Read the ranges of pid into buf, then describe them as runs of data and
 * zero pages: pages of ranges flagged UMIG_RANGE_ELIDE_ZERO that hold only
 * zeros become zero runs and their bytes are dropped from buf.  Returns the
 * number of data bytes left at the front of buf.
 */
int64_t umig_gather(int pid, int memfd, const struct umig_range *ranges, uint32_t nranges,
                    uint8_t *buf, uint64_t buflen, struct umig_run *runs, uint32_t maxruns,
                    uint32_t *nruns)
{
    struct iovec remote[IOV_BATCH];
    uint64_t total = 0;
    for (uint32_t i = 0; i < nranges; i++)
        total += ranges[i].npages * PAGE;
    if (total > buflen)
        return -EOVERFLOW;

    uint64_t off = 0;
    for (uint32_t i = 0; i < nranges;) {
        unsigned n = 0;
        uint64_t start = off;
        for (; i < nranges && n < IOV_BATCH; i++, n++) {
            remote[n].iov_base = (void *)ranges[i].addr;
            remote[n].iov_len = ranges[i].npages * PAGE;
            off += remote[n].iov_len;
        }
        int64_t r = read_remote(pid, memfd, remote, n, buf + start);
        if (r < 0)
            return r;
    }

    *nruns = 0;
    uint64_t in = 0, out = 0;
    for (uint32_t i = 0; i < nranges; i++) {
        int elide = ranges[i].flags & UMIG_RANGE_ELIDE_ZERO;
        for (uint32_t k = 0; k < ranges[i].npages; k++, in += PAGE) {
            uint64_t addr = ranges[i].addr + k * PAGE;
            int zero = elide && page_is_zero(buf + in);
            int r = add_run(runs, maxruns, nruns, addr, zero ? UMIG_RUN_ZERO : UMIG_RUN_DATA);
            if (r < 0)
                return r;
            if (!zero) {
                if (out != in)
                    memmove(buf + out, buf + in, PAGE);
                out += PAGE;
            }
        }
    }
    return out;
}

static int64_t write_remote(int pid, int memfd, struct iovec *local, struct iovec *remote,
                            unsigned n)
{
    uint64_t want = 0;
    for (unsigned i = 0; i < n; i++)
        want += remote[i].iov_len;
    ssize_t got = process_vm_writev(pid, local, n, remote, n, 0);
    if (got < 0)
        got = 0;
    if ((uint64_t)got == want)
        return got;
    uint64_t off = 0;
    for (unsigned i = 0; i < n; i++) {
        uint64_t end = off + remote[i].iov_len;
        if ((uint64_t)got < end) {
            uint64_t done = (uint64_t)got > off ? (uint64_t)got - off : 0;
            while (done < remote[i].iov_len) {
                ssize_t r = pwrite(memfd, (uint8_t *)local[i].iov_base + done,
                                   remote[i].iov_len - done,
                                   (off_t)((uint64_t)remote[i].iov_base + done));
                if (r < 0 && errno == EINTR)
                    continue;
                if (r <= 0)
                    return r < 0 ? -errno : -EIO;
                done += r;
            }
            got = end;
        }
        off = end;
    }
    return want;
}

static const uint8_t zero_block[64 * 1024];

/*
 * Write a page chunk into pid: data runs take their bytes from data in
 * order; zero runs are written as zeros only if write_zero (the page may
 * hold older data), otherwise left to the fresh mapping.
 */
int64_t umig_scatter(int pid, int memfd, const struct umig_run *runs, uint32_t nruns,
                     const uint8_t *data, uint64_t datalen, uint32_t write_zero)
{
    struct iovec local[IOV_BATCH], remote[IOV_BATCH];
    unsigned n = 0;
    uint64_t off = 0;
    for (uint32_t i = 0; i < nruns; i++) {
        uint64_t len = runs[i].npages * PAGE;
        if (runs[i].kind == UMIG_RUN_DATA) {
            if (off + len > datalen)
                return -EOVERFLOW;
            local[n].iov_base = (void *)(data + off);
            local[n].iov_len = len;
            remote[n].iov_base = (void *)runs[i].addr;
            remote[n].iov_len = len;
            off += len;
            n++;
        } else if (runs[i].kind == UMIG_RUN_ZERO) {
            if (!write_zero)
                continue;
            for (uint64_t z = 0; z < len;) {
                uint64_t piece = len - z < sizeof(zero_block) ? len - z : sizeof(zero_block);
                if (n == IOV_BATCH) {
                    int64_t r = write_remote(pid, memfd, local, remote, n);
                    if (r < 0)
                        return r;
                    n = 0;
                }
                local[n].iov_base = (void *)zero_block;
                local[n].iov_len = piece;
                remote[n].iov_base = (void *)(runs[i].addr + z);
                remote[n].iov_len = piece;
                n++;
                z += piece;
            }
            continue;
        } else {
            return -EINVAL;
        }
        if (n == IOV_BATCH) {
            int64_t r = write_remote(pid, memfd, local, remote, n);
            if (r < 0)
                return r;
            n = 0;
        }
    }
    if (n) {
        int64_t r = write_remote(pid, memfd, local, remote, n);
        if (r < 0)
            return r;
    }
    return off == datalen ? 0 : -EOVERFLOW;
}

/* ---- finding present pages --------------------------------------------- */

/* Linux 6.7+ UAPI; Debian 12's headers predate it (KERNEL-NOTES.md). */
struct pm_scan_arg {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
    uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)

int64_t umig_scan(int pagemap_fd, uint64_t start, uint64_t end, uint64_t anyof_mask,
                  uint64_t return_mask, struct umig_region *out, uint64_t max,
                  uint64_t *walk_end)
{
    struct pm_scan_arg a;
    memset(&a, 0, sizeof(a));
    a.size = sizeof(a);
    a.start = start;
    a.end = end;
    a.vec = (uint64_t)out;
    a.vec_len = max;
    a.category_anyof_mask = anyof_mask;
    a.return_mask = return_mask;
    long r = ioctl(pagemap_fd, PAGEMAP_SCAN, &a);
    if (r < 0)
        return -errno;
    /* With a full vec, walk_end can lie before the end of regions already
     * returned (seen on 6.18 with 4096 one-page regions): resuming there
     * would report pages twice.  Go on after what was reported. */
    *walk_end = a.walk_end;
    if (r > 0 && out[r - 1].end > *walk_end)
        *walk_end = out[r - 1].end;
    return r;
}

#define PM_PRESENT (1ULL << 63)
#define PM_SWAPPED (1ULL << 62)
#define PM_FILE (1ULL << 61)
#define PM_PFN_MASK ((1ULL << 55) - 1)
#define CAT_FILE 4
#define CAT_PRESENT 8
#define CAT_SWAPPED 16

/* Add the page at addr with categories cat to out[], merging it into the
 * last region when it continues it.  0, or 1 when out[] is full (the page
 * was not added). */
static int add_page(struct umig_region *out, uint64_t *n, uint64_t max, uint64_t addr,
                    uint64_t cat)
{
    if (*n && out[*n - 1].end == addr && out[*n - 1].categories == cat) {
        out[*n - 1].end += PAGE;
        return 0;
    }
    if (*n == max)
        return 1;
    out[*n].start = addr;
    out[*n].end = addr + PAGE;
    out[*n].categories = cat;
    (*n)++;
    return 0;
}

/* The same answer as umig_scan, from /proc/PID/pagemap, for kernels
 * without PAGEMAP_SCAN. */
int64_t umig_scan_pagemap(int pagemap_fd, uint64_t start, uint64_t end,
                          struct umig_region *out, uint64_t max, uint64_t *walk_end)
{
    uint64_t ent[512];
    uint64_t n = 0, addr = start;
    while (addr < end) {
        uint64_t pages = (end - addr) / PAGE;
        if (pages > 512)
            pages = 512;
        ssize_t r = pread(pagemap_fd, ent, pages * 8, (off_t)(addr / PAGE * 8));
        if (r < 0)
            return -errno;
        if (r == 0)
            break;
        for (uint64_t k = 0; k < (uint64_t)r / 8; k++, addr += PAGE) {
            uint64_t e = ent[k], cat = 0;
            if (e & PM_PRESENT)
                cat |= CAT_PRESENT;
            if (e & PM_SWAPPED)
                cat |= CAT_SWAPPED;
            if (e & PM_FILE)
                cat |= CAT_FILE;
            if (!(cat & (CAT_PRESENT | CAT_SWAPPED)))
                continue;
            if (add_page(out, &n, max, addr, cat)) {
                *walk_end = addr;
                return n;
            }
        }
    }
    *walk_end = end;
    return n;
}

/* A page's identity for copy-on-write sharing: its frame when present,
 * its swap entry when swapped, 0 when neither or when the frame number is
 * hidden (no CAP_SYS_ADMIN: the kernel reports PFN 0). */
static uint64_t cow_ident(uint64_t e)
{
    if (!(e & (PM_PRESENT | PM_SWAPPED)) || (e & PM_FILE))
        return 0;
    return (e & PM_PFN_MASK) | (e & PM_SWAPPED);
}

static int cow_private(uint64_t e)
{
    return (e & (PM_PRESENT | PM_SWAPPED)) && !(e & PM_FILE);
}

/* Read npages pages at addr through /proc/PID/mem (which, unlike
 * process_vm_readv, does not pin them: no copy-on-write page is unshared
 * by comparing it); 0 or -errno. */
static int read_pages(int memfd, uint64_t addr, uint64_t npages, uint8_t *buf)
{
    uint64_t done = 0, want = npages * PAGE;
    while (done < want) {
        ssize_t r = pread(memfd, buf + done, want - done, (off_t)(addr + done));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return r < 0 ? -errno : -EFAULT;
        done += r;
    }
    return 0;
}

#define COW_SAME 0
#define COW_COMPARE 3

/* Compare a child's private pages with its parent's over [start, end), a
 * range both map alike (the child inherits it when it is forked in the
 * restorer).  Out: UMIG_COW_WRITE regions hold pages of the child's own
 * (write them), UMIG_COW_DISCARD regions pages only the parent has
 * privately (drop them in the child: it gets zeros or the file's page).
 * Pages both share are in neither: the same frame or swap entry, or, where
 * the frame numbers are hidden (no CAP_SYS_ADMIN), the same bytes (read
 * from both processes: inheriting the parent's page then gives the child
 * exactly its own).  Resumable like umig_scan_pagemap. */
int64_t umig_cow_diff(int child_mem, int parent_mem, int child_pm, int parent_pm,
                      uint64_t start, uint64_t end, struct umig_region *out, uint64_t max,
                      uint64_t *walk_end)
{
    static uint8_t *cbuf, *pbuf;
    uint64_t c[512], p[512];
    uint8_t cls[512];
    uint64_t n = 0, addr = start;
    if (!cbuf) {
        cbuf = mmap(NULL, 512 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        pbuf = mmap(NULL, 512 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (cbuf == MAP_FAILED || pbuf == MAP_FAILED) {
            cbuf = pbuf = NULL;
            return -ENOMEM;
        }
    }
    while (addr < end) {
        uint64_t pages = (end - addr) / PAGE;
        if (pages > 512)
            pages = 512;
        ssize_t rc = pread(child_pm, c, pages * 8, (off_t)(addr / PAGE * 8));
        ssize_t rp = pread(parent_pm, p, pages * 8, (off_t)(addr / PAGE * 8));
        if (rc < 0 || rp < 0)
            return -errno;
        if (rc == 0)
            break;
        uint64_t got = (uint64_t)rc / 8;
        for (uint64_t k = 0; k < got; k++) {
            uint64_t pe = k < (uint64_t)rp / 8 ? p[k] : 0;
            cls[k] = COW_SAME;
            if (cow_private(c[k])) {
                uint64_t idc = cow_ident(c[k]), idp = cow_ident(pe);
                if (idc && idc == idp)
                    cls[k] = COW_SAME;
                else if (!idc && cow_private(pe) && !idp)
                    cls[k] = COW_COMPARE;          /* frames hidden: compare bytes */
                else
                    cls[k] = UMIG_COW_WRITE;
            } else if (cow_private(pe)) {
                cls[k] = UMIG_COW_DISCARD;
            }
        }
        /* the pages to compare: read runs of them from both at once */
        for (uint64_t k = 0; k < got;) {
            if (cls[k] != COW_COMPARE) {
                k++;
                continue;
            }
            uint64_t e = k;
            while (e < got && cls[e] == COW_COMPARE)
                e++;
            uint64_t at = addr + k * PAGE;
            int r1 = read_pages(child_mem, at, e - k, cbuf);
            int r2 = r1 ? r1 : read_pages(parent_mem, at, e - k, pbuf);
            for (uint64_t j = k; j < e; j++)
                cls[j] = (r1 || r2 || memcmp(cbuf + (j - k) * PAGE, pbuf + (j - k) * PAGE, PAGE))
                             ? UMIG_COW_WRITE : COW_SAME;
            k = e;
        }
        for (uint64_t k = 0; k < got; k++, addr += PAGE) {
            if (cls[k] && add_page(out, &n, max, addr, cls[k])) {
                *walk_end = addr;
                return n;
            }
        }
    }
    *walk_end = end;
    return n;
}

/* ---- checksum ---------------------------------------------------------- */

static uint32_t crc32c_table[256];

static void crc32c_init_table(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82F63B78 : c >> 1;
        crc32c_table[i] = c;
    }
}

__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc, const uint8_t *p,
                                                            uint64_t len)
{
    uint64_t c = crc;
    while (len && ((uintptr_t)p & 7)) {
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
        len--;
    }
    while (len >= 8) {
        c = __builtin_ia32_crc32di(c, *(const uint64_t *)p);
        p += 8;
        len -= 8;
    }
    while (len--)
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
    return (uint32_t)c;
}

uint32_t umig_crc32c(uint32_t crc, const uint8_t *buf, uint64_t len)
{
    static int hw = -1;
    if (hw < 0) {
        unsigned a, b, c, d;
        hw = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_SSE4_2);
        crc32c_init_table();
    }
    crc = ~crc;
    if (hw)
        crc = crc32c_hw(crc, buf, len);
    else
        while (len--)
            crc = crc32c_table[(crc ^ *buf++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* ---- kernel interfaces without a Python binding -------------------------- */

long umig_ptrace(long req, int pid, uint64_t addr, uint64_t data)
{
    long r = syscall(SYS_ptrace, req, pid, addr, data);
    return r < 0 ? -errno : r;
}

long umig_syscall6(long nr, long a, long b, long c, long d, long e, long f)
{
    long r = syscall(nr, a, b, c, d, e, f);
    return r < 0 ? -errno : r;
}

struct clone_args_v2 {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
    uint64_t set_tid, set_tid_size;
};

/*
 * Start the process that becomes the resumed one: clone3 (with set_tid when
 * set_tid > 0), and in the child: die with the parent, become a tracee,
 * stop for the parent, then enter the restorer.  The child never returns
 * to Python, and uses raw syscalls only: glibc's cached thread state is
 * the parent's.
 */
int umig_spawn(uint64_t entry, uint64_t plan, int32_t set_tid)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t tid = set_tid;
    pid_t parent = syscall(SYS_getpid);
    struct clone_args_v2 args;
    memset(&args, 0, sizeof(args));
    args.exit_signal = SIGCHLD;
    if (set_tid > 0) {
        args.set_tid = (uint64_t)&tid;
        args.set_tid_size = 1;
    }
    long r = syscall(SYS_clone3, &args, sizeof(args));
    if (r != 0) {
        int e = errno;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        return r < 0 ? -e : (int)r;
    }
    syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    /* our parent died before PDEATHSIG was set (in a new PID namespace the
     * parent outside it reads as 0) */
    long ppid = syscall(SYS_getppid);
    if (ppid != parent && ppid != 0)
        syscall(SYS_exit_group, 127);
    if (syscall(SYS_ptrace, PTRACE_TRACEME, 0, 0, 0) < 0)
        syscall(SYS_exit_group, 126);
    syscall(SYS_tgkill, syscall(SYS_getpid), syscall(SYS_gettid), SIGSTOP);
    ((void (*)(uint64_t))entry)(plan);
    syscall(SYS_exit_group, 125);
    return -1;
}

uint64_t umig_xgetbv(uint32_t index)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(index));
    return ((uint64_t)hi << 32) | lo;
}

void umig_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t *out)
{
    __cpuid_count(leaf, subleaf, out[0], out[1], out[2], out[3]);
}

uint64_t umig_vdso_base(void) { return getauxval(AT_SYSINFO_EHDR); }

struct kcmp_ctx {
    const int32_t *pids, *fds;
    int err;
};

static int kcmp_files(const void *a, const void *b, void *arg)
{
    struct kcmp_ctx *c = arg;
    uint32_t i = *(const uint32_t *)a, j = *(const uint32_t *)b;
    long r = syscall(SYS_kcmp, c->pids[i], c->pids[j], 0 /* KCMP_FILE */, c->fds[i], c->fds[j]);
    if (r < 0) {
        c->err = errno;
        return (i > j) - (i < j);
    }
    return r == 0 ? 0 : r == 1 ? -1 : 1;
}

int64_t umig_kcmp_sort(const int32_t *pids, const int32_t *fds, uint32_t n,
                       uint32_t *order, uint8_t *same)
{
    struct kcmp_ctx c = {pids, fds, 0};
    for (uint32_t i = 0; i < n; i++)
        order[i] = i;
    qsort_r(order, n, sizeof *order, kcmp_files, &c);
    if (c.err)
        return -c.err;
    for (uint32_t k = 0; k < n; k++)
        same[k] = k && kcmp_files(&order[k - 1], &order[k], &c) == 0;
    return c.err ? -c.err : 0;
}

static void fdinfo_pos_flags(const char *p, uint32_t len, struct umig_fdstat *o)
{
    const char *end = p + len;
    while (p < end) {
        int is_pos = end - p > 4 && !memcmp(p, "pos:", 4);
        int is_flags = end - p > 6 && !memcmp(p, "flags:", 6);
        if (is_pos || is_flags) {
            p += is_pos ? 4 : 6;
            while (p < end && (*p == ' ' || *p == '\t'))
                p++;
            uint64_t v = 0;
            while (p < end && *p >= '0' && *p <= '9')
                v = is_pos ? v * 10 + (*p++ - '0') : v * 8 + (*p++ - '0');
            if (is_pos)
                o->pos = v;
            else
                o->flags = v;
        }
        while (p < end && *p != '\n')
            p++;
        p++;
    }
}

static int sockopt_int(int s, int level, int opt, int32_t *out)
{
    int v = 0;
    socklen_t len = sizeof v;
    if (getsockopt(s, level, opt, &v, &len) < 0)
        return -errno;
    *out = v;
    return 0;
}

int umig_fd_probe(int pidfd, int fd, int sock, struct umig_fdprobe *p)
{
    memset(p, 0, sizeof *p);
    p->v6only = -1;
    int s = (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
    if (s < 0)
        return -(p->err = errno);
    int r = 0, q = 0;
    /* -1: cannot tell (a listener, or a family without FIONREAD): the
     * caller looks for itself or refuses by family */
    p->queued = ioctl(s, FIONREAD, &q) == 0 ? q : -1;
    if (!sock) {
        int sz = fcntl(s, F_GETPIPE_SZ);
        if (sz < 0)
            r = -errno;
        p->pipe_size = sz;
        goto out;
    }
    if ((r = sockopt_int(s, SOL_SOCKET, SO_DOMAIN, &p->family)) ||
        (r = sockopt_int(s, SOL_SOCKET, SO_TYPE, &p->type)) ||
        (r = sockopt_int(s, SOL_SOCKET, SO_PROTOCOL, &p->proto)))
        goto out;
    if (p->family != AF_INET && p->family != AF_INET6)
        goto out;                    /* unix sockets: sock_diag tells the rest */
    if ((r = sockopt_int(s, SOL_SOCKET, SO_ACCEPTCONN, &p->listening)) ||
        (r = sockopt_int(s, SOL_SOCKET, SO_REUSEADDR, &p->reuseaddr)) ||
        (r = sockopt_int(s, SOL_SOCKET, SO_REUSEPORT, &p->reuseport)) ||
        (r = sockopt_int(s, SOL_SOCKET, SO_KEEPALIVE, &p->keepalive)) ||
        (r = sockopt_int(s, SOL_SOCKET, SO_BROADCAST, &p->broadcast)))
        goto out;
    if (p->type == SOCK_STREAM && (r = sockopt_int(s, IPPROTO_TCP, TCP_NODELAY, &p->nodelay)))
        goto out;
    if (p->family == AF_INET6 && (r = sockopt_int(s, IPPROTO_IPV6, IPV6_V6ONLY, &p->v6only)))
        goto out;
    socklen_t len = sizeof p->name;
    if (getsockname(s, (struct sockaddr *)p->name, &len) < 0) {
        r = -errno;
        goto out;
    }
    p->name_len = len < sizeof p->name ? len : sizeof p->name;
    len = sizeof p->peer;
    if (getpeername(s, (struct sockaddr *)p->peer, &len) == 0)
        p->peer_len = len < sizeof p->peer ? len : sizeof p->peer;
    else if (errno != ENOTCONN)
        r = -errno;
out:
    close(s);
    p->err = -r;
    return r;
}

/* readlink, stat and fdinfo of each of fds of process pid, without a
 * Python round trip per call (10,000 fds: three syscalls each); with a
 * pidfd (else -1) sockets and pipes are probed too (umig_fd_probe).  An
 * fd whose text does not fit gets err ENOSPC (the caller reads it
 * itself); a closed one ENOENT.  Returns the bytes of text used, or
 * -errno. */
int64_t umig_fd_scan(int pid, int pidfd, const int32_t *fds, uint32_t n,
                     struct umig_fdstat *out, uint8_t *text, uint64_t textlen)
{
    char path[64], name[16];
    snprintf(path, sizeof path, "/proc/%d/fd", pid);
    int dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -errno;
    snprintf(path, sizeof path, "/proc/%d/fdinfo", pid);
    int ifd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (ifd < 0) {
        int e = errno;
        close(dfd);
        return -e;
    }
    uint64_t used = 0;
    struct umig_fdstat known[3];          /* a stat'ed socket [1] and pipe [2] */
    memset(known, 0, sizeof known);
    for (uint32_t i = 0; i < n; i++) {
        struct umig_fdstat *o = &out[i];
        struct stat st;
        memset(o, 0, sizeof *o);
        o->fd = fds[i];
        o->probe.err = -1;
        snprintf(name, sizeof name, "%d", fds[i]);
        uint64_t room = textlen - used;
        ssize_t ln = readlinkat(dfd, name, (char *)text + used, room);
        if (ln < 0 || (uint64_t)ln >= room) {
            o->err = ln < 0 ? errno : ENOSPC;
            continue;
        }
        o->link_off = used;
        o->link_len = ln;
        used += ln;
        /* sockets and pipes: the link names the inode, and they all share
         * their filesystem's device and mode, so one stat of each kind
         * stands for the rest (a third of the /proc work for them) */
        const char *lk = (const char *)text + o->link_off;
        int cls = ln > 8 && !memcmp(lk, "socket:[", 8) ? 1 : ln > 6 && !memcmp(lk, "pipe:[", 6) ? 2 : 0;
        if (cls && known[cls].mode) {
            *o = known[cls];
            o->fd = fds[i];
            o->link_off = used - ln;
            o->link_len = ln;
            o->ino = strtoull(lk + (cls == 1 ? 8 : 6), NULL, 10);
            o->probe.err = -1;
        } else {
            if (fstatat(dfd, name, &st, 0) < 0) {
                o->err = errno;
                continue;
            }
            o->mode = st.st_mode;
            o->nlink = st.st_nlink;
            o->dev = st.st_dev;
            o->ino = st.st_ino;
            o->rdev = st.st_rdev;
            o->size = st.st_size;
            o->mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
            if (cls) {
                known[cls] = *o;
                known[cls].size = 0;
                known[cls].mtime_ns = 0;
            }
        }
        int f = openat(ifd, name, O_RDONLY | O_CLOEXEC);
        if (f < 0) {
            o->err = errno;
            continue;
        }
        o->info_off = used;
        ssize_t got;
        uint64_t want;
        /* fdinfo is one seq_file record: a read shorter than asked is all
         * of it (saves a second read per fd) */
        do {
            want = textlen - used;
            got = read(f, text + used, want);
            if (got > 0)
                used += got;
        } while (got > 0 && (uint64_t)got == want);
        if (got < 0)
            o->err = errno;
        else if (used == textlen)
            o->err = ENOSPC;       /* maybe cut short */
        close(f);
        o->info_len = used - o->info_off;
        fdinfo_pos_flags((const char *)text + o->info_off, o->info_len, o);
        if (cls && pidfd >= 0)
            umig_fd_probe(pidfd, fds[i], cls == 1, &o->probe);
    }
    close(dfd);
    close(ifd);
    return used;
}
