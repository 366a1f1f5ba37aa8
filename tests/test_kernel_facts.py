"""Kernel behaviour umig builds on, each pinned by a tiny C program (STYLE.md §12).

Every program ASSERTs on a value or an errno and exits non-zero otherwise.
It runs as a child of the test, so a crash is a readable failure, and every
process it forks is killed and reaped by it (atexit), dies with it
(PR_SET_PDEATHSIG) and, should it linger anyway, is reaped here.  What each
fact means for umig is in docs/kernel-findings.md.  Skips come from the
probes of `umig check` (umig/check.py) and say why.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import reap_orphans
from umig import check

HAS_VCLOCK = "[vvar_vclock]" in Path("/proc/self/maps").read_text()
CAP_SYS_RESOURCE = 24


def _skip_unless(name: str):
    return pytest.mark.skipif(not check.available(name), reason=check.why_not(name))


PRELUDE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>

#define ASSERT(cond, ...) do { if (!(cond)) { int e_ = errno; \
    fprintf(stderr, "line %d: ASSERT(%s) failed: ", __LINE__, #cond); \
    fprintf(stderr, __VA_ARGS__); \
    fprintf(stderr, " [errno %d: %s]\n", e_, strerror(e_)); exit(1); } } while (0)

/* every child is killed and reaped when the program exits, ASSERTs included */
static pid_t children[8];
static int nchildren;
static void reap_children(void)
{
    for (int i = 0; i < nchildren; i++) {
        kill(children[i], SIGKILL);
        waitpid(children[i], NULL, __WALL);
    }
}

/* fork a child that runs fn and exits; it dies with us */
static pid_t fork_child(void (*fn)(void))
{
    pid_t parent = getpid();
    if (!nchildren)
        atexit(reap_children);
    pid_t pid = fork();
    ASSERT(pid >= 0, "fork");
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(99);
        fn();
        _exit(0);
    }
    children[nchildren++] = pid;
    return pid;
}

static int wait_status(pid_t pid)
{
    int st;
    ASSERT(waitpid(pid, &st, __WALL) == pid, "waitpid %d", pid);
    return st;
}

static void sleeper(void)
{
    for (;;)
        pause();
}

/* seize pid and stop it with PTRACE_INTERRUPT */
static void seize_and_stop(pid_t pid)
{
    ASSERT(ptrace(PTRACE_SEIZE, pid, 0, PTRACE_O_EXITKILL) == 0, "PTRACE_SEIZE");
    ASSERT(ptrace(PTRACE_INTERRUPT, pid, 0, 0) == 0, "PTRACE_INTERRUPT");
    int st = wait_status(pid);
    ASSERT(WIFSTOPPED(st) && st >> 16 == PTRACE_EVENT_STOP, "status %#x", st);
}

/* wait (up to 5 s) until pid is blocked in syscall nr (/proc/PID/syscall) */
static void wait_in_syscall(pid_t pid, long nr)
{
    char path[64], text[256], prefix[16];
    snprintf(path, sizeof path, "/proc/%d/syscall", pid);
    snprintf(prefix, sizeof prefix, "%ld ", nr);
    for (int i = 0;; i++) {
        int fd = open(path, O_RDONLY);
        ASSERT(fd >= 0, "open %s", path);
        ssize_t n = read(fd, text, sizeof text - 1);
        close(fd);
        text[n > 0 ? n : 0] = 0;
        if (strncmp(text, prefix, strlen(prefix)) == 0)
            return;
        ASSERT(i < 5000, "child %d never blocked in syscall %ld: %s", pid, nr, text);
        usleep(1000);
    }
}

/* [start, end) of the mapping of /proc/self/maps named name; read with
 * raw read(2) into a static buffer (no stdio, no malloc) */
static char maps_buf[1 << 17];
static int find_map(const char *name, unsigned long *start, unsigned long *end)
{
    int fd = open("/proc/self/maps", O_RDONLY);
    ASSERT(fd >= 0, "open /proc/self/maps");
    size_t n = 0;
    ssize_t r;
    while ((r = read(fd, maps_buf + n, sizeof maps_buf - 1 - n)) > 0)
        n += r;
    close(fd);
    maps_buf[n] = 0;
    for (char *line = maps_buf; *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = 0;
        char *path = strrchr(line, ' ');
        if (path && strcmp(path + 1, name) == 0) {
            char *p;
            *start = strtoul(line, &p, 16);
            *end = strtoul(p + 1, NULL, 16);
            return 1;
        }
        if (!nl)
            break;
        line = nl + 1;
    }
    return 0;
}
"""


def run_c(tmp_path: Path, name: str, body: str, *args: str, timeout: float = 20) -> str:
    """Compile PRELUDE + body, run it, and fail with its words unless it
    exits 0.  Returns what it printed to stdout."""
    src = tmp_path / f"{name}.c"
    exe = tmp_path / name
    src.write_text(PRELUDE + body)
    cc = subprocess.run(["gcc", "-O1", "-Wall", "-o", str(exe), str(src)],
                        capture_output=True, text=True)
    assert cc.returncode == 0, f"compiling {name}.c:\n{cc.stderr}"
    try:
        r = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    finally:
        reap_orphans()
    if r.returncode < 0:
        pytest.fail(f"{name} {' '.join(args)} was killed by {signal.Signals(-r.returncode).name}"
                    f"\nstdout: {r.stdout}\nstderr: {r.stderr}")
    assert r.returncode == 0, f"{name} {' '.join(args)}: {r.stderr.strip()} (exit {r.returncode})"
    return r.stdout


# ---- the vDSO ------------------------------------------------------------------

@pytest.mark.skipif(not HAS_VCLOCK, reason="no [vvar_vclock] mapping: the kernel is older "
                    "than 6.13 and lays out its vDSO block differently")
def test_vdso_block_is_vvar_vclock_vdso(tmp_path):
    """GIVEN a fresh process on this kernel
    WHEN it looks at its vDSO mappings
    THEN they are [vvar] 16 KiB, [vvar_vclock] 8 KiB and [vdso] 8 KiB,
    contiguous in that order, and [vdso] is where AT_SYSINFO_EHDR says."""
    run_c(tmp_path, "vdso_layout", r"""
#include <sys/auxv.h>
int main(void)
{
    unsigned long vs, ve, cs, ce, ds, de;
    ASSERT(find_map("[vvar]", &vs, &ve), "no [vvar]");
    ASSERT(find_map("[vvar_vclock]", &cs, &ce), "no [vvar_vclock]");
    ASSERT(find_map("[vdso]", &ds, &de), "no [vdso]");
    ASSERT(ve - vs == 16 << 10, "[vvar] is %lu bytes", ve - vs);
    ASSERT(ce - cs == 8 << 10, "[vvar_vclock] is %lu bytes", ce - cs);
    ASSERT(de - ds == 8 << 10, "[vdso] is %lu bytes", de - ds);
    ASSERT(ve == cs && ce == ds, "not contiguous: %#lx-%#lx %#lx-%#lx %#lx-%#lx",
           vs, ve, cs, ce, ds, de);
    ASSERT(ds == getauxval(AT_SYSINFO_EHDR), "AT_SYSINFO_EHDR %#lx", getauxval(AT_SYSINFO_EHDR));
    return 0;
}
""")


@pytest.mark.skipif(not HAS_VCLOCK, reason="no [vvar_vclock] mapping: the kernel is older "
                    "than 6.13 and lays out its vDSO block differently")
@_skip_unless("arch_map_vdso")
def test_arch_map_vdso_maps_a_fresh_block_anywhere(tmp_path):
    """GIVEN a process that unmapped all three vDSO mappings
    WHEN it calls arch_prctl(ARCH_MAP_VDSO_64, addr) for a free addr
    THEN the call returns the vDSO's size (8192, not 0: check for < 0), and
    a fresh block appears at addr with [vdso] at addr+0x6000, holding
    the same code, and __vdso_clock_gettime called there agrees with the
    clock_gettime syscall."""
    out = run_c(tmp_path, "vdso_move", r"""
#include <elf.h>
#define ARCH_MAP_VDSO_64 0x2003

/* offset of a dynamic symbol in the vDSO image at base */
static unsigned long vdso_sym(unsigned long base, const char *name)
{
    Elf64_Ehdr *eh = (Elf64_Ehdr *)base;
    Elf64_Phdr *ph = (Elf64_Phdr *)(base + eh->e_phoff);
    Elf64_Shdr *sh = (Elf64_Shdr *)(base + eh->e_shoff);
    unsigned long load = 0;
    for (int i = 0; i < eh->e_phnum; i++)
        if (ph[i].p_type == PT_LOAD) {
            load = ph[i].p_vaddr;
            break;
        }
    for (int i = 0; i < eh->e_shnum; i++) {
        if (sh[i].sh_type != SHT_DYNSYM)
            continue;
        Elf64_Sym *sym = (Elf64_Sym *)(base + sh[i].sh_offset);
        const char *str = (const char *)(base + sh[sh[i].sh_link].sh_offset);
        for (unsigned long k = 0; k < sh[i].sh_size / sizeof *sym; k++)
            if (strcmp(str + sym[k].st_name, name) == 0)
                return sym[k].st_value - load;
    }
    return 0;
}

static unsigned char saved[64 << 10];

int main(void)
{
    unsigned long vs, ve, cs, ce, ds, de;
    ASSERT(find_map("[vvar]", &vs, &ve) && find_map("[vvar_vclock]", &cs, &ce) &&
           find_map("[vdso]", &ds, &de), "no vDSO block");
    unsigned long size = de - vs, vdso_size = de - ds;
    ASSERT(ds - vs == 0x6000, "[vdso] at block+%#lx", ds - vs);
    unsigned long off = vdso_sym(ds, "__vdso_clock_gettime");
    ASSERT(off, "no __vdso_clock_gettime");
    memcpy(saved, (void *)ds, vdso_size);

    /* a free address: a hole with a guard page each side */
    char *hole = mmap(NULL, size + 2 * 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT(hole != MAP_FAILED, "mmap");
    munmap(hole, size + 2 * 4096);
    unsigned long addr = (unsigned long)hole + 4096;

    ASSERT(syscall(SYS_munmap, vs, size) == 0, "munmap of the block");
    /* from here on glibc's clock_gettime would jump into nothing: raw syscalls only */
    unsigned long s, e;
    ASSERT(!find_map("[vdso]", &s, &e) && !find_map("[vvar]", &s, &e) &&
           !find_map("[vvar_vclock]", &s, &e), "still mapped");
    long r = syscall(SYS_arch_prctl, ARCH_MAP_VDSO_64, addr);
    /* success returns the size of the vDSO image, not 0 */
    ASSERT(r == (long)vdso_size, "arch_prctl(ARCH_MAP_VDSO_64, %#lx) returned %ld", addr, r);

    unsigned long vs2, ve2, cs2, ce2, ds2, de2;
    ASSERT(find_map("[vvar]", &vs2, &ve2) && find_map("[vvar_vclock]", &cs2, &ce2) &&
           find_map("[vdso]", &ds2, &de2), "no fresh vDSO block");
    ASSERT(vs2 == addr && ve2 - vs2 == ve - vs, "[vvar] at %#lx-%#lx, asked %#lx", vs2, ve2, addr);
    ASSERT(cs2 == addr + 0x4000 && ce2 - cs2 == ce - cs, "[vvar_vclock] at %#lx", cs2);
    ASSERT(ds2 == addr + 0x6000 && de2 - ds2 == vdso_size, "[vdso] at %#lx", ds2);
    ASSERT(memcmp((void *)ds2, saved, vdso_size) == 0, "the fresh vDSO's code differs");

    int (*vdso_clock_gettime)(clockid_t, struct timespec *) = (void *)(ds2 + off);
    clockid_t clocks[] = {CLOCK_MONOTONIC, CLOCK_REALTIME, CLOCK_BOOTTIME};
    for (int i = 0; i < 3; i++) {
        struct timespec a, b;
        ASSERT(vdso_clock_gettime(clocks[i], &a) == 0, "vDSO clock_gettime(%d)", clocks[i]);
        ASSERT(syscall(SYS_clock_gettime, clocks[i], &b) == 0, "clock_gettime syscall");
        long long d = (b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
        ASSERT(d >= 0 && d < 100000000, "clock %d: the vDSO is %lld ns off", clocks[i], d);
    }
    printf("%#lx %#lx\n", ds, ds2);
    return 0;
}
""")
    old, new = (int(x, 16) for x in out.split())
    assert old != new


# ---- memory ----------------------------------------------------------------------

@_skip_unless("pagemap_scan")
def test_pagemap_scan_finds_exactly_the_touched_pages(tmp_path):
    """GIVEN a fresh 1 MiB private anonymous mapping with every 3rd page written
    WHEN PAGEMAP_SCAN (values from the 6.7 UAPI, absent from Debian 12's
    headers) asks for PRESENT pages
    THEN it returns exactly those pages, each as PRESENT only; and a page
    then faulted by a read is reported as PRESENT|PFNZERO (32)."""
    run_c(tmp_path, "pagemap_scan", r"""
#include <sys/ioctl.h>
struct pm_scan_arg {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
    uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
struct page_region { uint64_t start, end, categories; };
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#define PAGE_IS_PRESENT 8
#define PAGE_IS_PFNZERO 32
#define NPAGES 256

static long scan(int fd, char *start, char *end, struct page_region *vec, uint64_t n,
                 uint64_t *walk_end)
{
    struct pm_scan_arg a = {.size = sizeof a, .start = (uint64_t)start, .end = (uint64_t)end,
                            .vec = (uint64_t)vec, .vec_len = n,
                            .category_anyof_mask = PAGE_IS_PRESENT,
                            .return_mask = PAGE_IS_PRESENT | PAGE_IS_PFNZERO};
    long r = ioctl(fd, PAGEMAP_SCAN, &a);
    *walk_end = a.walk_end;
    return r;
}

int main(void)
{
    ASSERT(sizeof(struct pm_scan_arg) == 96, "%zu", sizeof(struct pm_scan_arg));
    ASSERT(PAGEMAP_SCAN == 0xc0606610, "PAGEMAP_SCAN is %#lx", (unsigned long)PAGEMAP_SCAN);
    char *m = mmap(NULL, NPAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    ASSERT(m != MAP_FAILED, "mmap");
    for (int i = 0; i < NPAGES; i += 3)
        m[i * 4096] = 1;
    int fd = open("/proc/self/pagemap", O_RDONLY);
    ASSERT(fd >= 0, "open pagemap");
    static struct page_region vec[NPAGES];
    uint64_t walk_end;
    long n = scan(fd, m, m + NPAGES * 4096, vec, NPAGES, &walk_end);
    ASSERT(n == (NPAGES + 2) / 3, "%ld regions", n);
    for (long k = 0; k < n; k++) {
        ASSERT(vec[k].start == (uint64_t)(m + 3 * k * 4096) && vec[k].end == vec[k].start + 4096,
               "region %ld is pages %ld-%ld", k, (long)(vec[k].start - (uint64_t)m) / 4096,
               (long)(vec[k].end - (uint64_t)m) / 4096);
        ASSERT(vec[k].categories == PAGE_IS_PRESENT, "region %ld: categories %#lx", k,
               (unsigned long)vec[k].categories);
    }
    ASSERT(walk_end == (uint64_t)(m + NPAGES * 4096), "walk_end %#lx", (unsigned long)walk_end);

    volatile char c = m[4096];          /* a read fault: the shared zero page */
    (void)c;
    n = scan(fd, m, m + NPAGES * 4096, vec, NPAGES, &walk_end);
    ASSERT(n == (NPAGES + 2) / 3 + 1, "%ld regions after the read", n);
    ASSERT(vec[1].start == (uint64_t)(m + 4096) && vec[1].end == vec[1].start + 4096 &&
           vec[1].categories == (PAGE_IS_PRESENT | PAGE_IS_PFNZERO),
           "page 1: pages %ld-%ld, categories %#lx", (long)(vec[1].start - (uint64_t)m) / 4096,
           (long)(vec[1].end - (uint64_t)m) / 4096, (unsigned long)vec[1].categories);
    return 0;
}
""")


@pytest.mark.skipif(check.available("soft_dirty"), reason="soft-dirty is compiled into this "
                    "kernel; this test pins its absence on our machines")
def test_clear_refs_4_accepted_but_no_soft_dirty_bit(tmp_path):
    """GIVEN a child that writes to a private anonymous page
    WHEN we read its pagemap entry, write "4" to /proc/PID/clear_refs and
    let it write again
    THEN the write of "4" is accepted, the page stays present, and bit 55
    (soft-dirty) is never set: soft-dirty is compiled out, so umig cannot
    track dirty pages with it (it uses userfaultfd WP_ASYNC instead)."""
    run_c(tmp_path, "clear_refs", r"""
static int to_child[2], to_parent[2];
static volatile char *page;

static void writer(void)
{
    char c;
    while (read(to_child[0], &c, 1) == 1) {
        page[0] = c;
        write(to_parent[1], &c, 1);
    }
}

static void poke(void)
{
    char c = 'x';
    ASSERT(write(to_child[1], &c, 1) == 1 && read(to_parent[0], &c, 1) == 1, "poke");
}

static uint64_t entry(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/pagemap", pid);
    int fd = open(path, O_RDONLY);
    ASSERT(fd >= 0, "open %s", path);
    uint64_t e;
    ASSERT(pread(fd, &e, 8, (uint64_t)page / 4096 * 8) == 8, "pread pagemap");
    close(fd);
    return e;
}

int main(void)
{
    page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT(page != MAP_FAILED && pipe(to_child) == 0 && pipe(to_parent) == 0, "setup");
    pid_t pid = fork_child(writer);
    poke();
    uint64_t e = entry(pid);
    ASSERT(e >> 63 & 1, "the written page is not present: %#lx", (unsigned long)e);
    ASSERT(!(e >> 55 & 1), "soft-dirty after the first write: %#lx", (unsigned long)e);

    char path[64];
    snprintf(path, sizeof path, "/proc/%d/clear_refs", pid);
    int fd = open(path, O_WRONLY);
    ASSERT(fd >= 0, "open %s", path);
    ASSERT(write(fd, "4", 1) == 1, "writing 4 to clear_refs");
    close(fd);
    e = entry(pid);
    ASSERT(e >> 63 & 1, "not present after clear_refs: %#lx", (unsigned long)e);
    ASSERT(!(e >> 55 & 1), "soft-dirty after clear_refs: %#lx", (unsigned long)e);
    poke();
    e = entry(pid);
    ASSERT(!(e >> 55 & 1), "soft-dirty after a write following clear_refs: %#lx",
           (unsigned long)e);
    return 0;
}
""")


@_skip_unless("userfaultfd")
@_skip_unless("pagemap_scan")
def test_user_mode_only_uffd_wp_async_tracks_kernel_writes_too(tmp_path):
    """GIVEN a userfaultfd made with UFFD_USER_MODE_ONLY (all a plain user may
    make here: vm.unprivileged_userfaultfd=0) and WP_ASYNC, registered for
    write-protect on 16 written pages, all then write-protected
    WHEN the process writes one page itself and the kernel writes another
    (read() from a pipe into it)
    THEN read() succeeds, and PAGEMAP_SCAN reports exactly those two pages
    as WRITTEN: dirty tracking needs no privilege and misses no kernel write."""
    run_c(tmp_path, "uffd_wp_async", r"""
#include <sys/ioctl.h>
#include <linux/userfaultfd.h>
#define UFFD_USER_MODE_ONLY 1
#define FEATURE_WP_UNPOPULATED (1ULL << 13)     /* newer than Debian 12's headers */
#define FEATURE_WP_ASYNC (1ULL << 15)
struct pm_scan_arg {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
    uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
struct page_region { uint64_t start, end, categories; };
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#define PAGE_IS_WRITTEN 2
#define N 16

int main(void)
{
    int uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    ASSERT(uffd >= 0, "userfaultfd(UFFD_USER_MODE_ONLY)");
    struct uffdio_api api = {.api = UFFD_API,
                             .features = FEATURE_WP_ASYNC | FEATURE_WP_UNPOPULATED};
    ASSERT(ioctl(uffd, UFFDIO_API, &api) == 0, "UFFDIO_API with WP_ASYNC");
    char *m = mmap(NULL, N * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT(m != MAP_FAILED, "mmap");
    for (int i = 0; i < N; i++)
        m[i * 4096] = 1;
    struct uffdio_register reg = {.range = {(uint64_t)m, N * 4096},
                                  .mode = UFFDIO_REGISTER_MODE_WP};
    ASSERT(ioctl(uffd, UFFDIO_REGISTER, &reg) == 0, "UFFDIO_REGISTER");
    struct uffdio_writeprotect wp = {.range = {(uint64_t)m, N * 4096},
                                     .mode = UFFDIO_WRITEPROTECT_MODE_WP};
    ASSERT(ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) == 0, "UFFDIO_WRITEPROTECT");

    int pm = open("/proc/self/pagemap", O_RDONLY);
    ASSERT(pm >= 0, "open pagemap");
    struct page_region vec[N];
    struct pm_scan_arg a = {.size = sizeof a, .start = (uint64_t)m, .end = (uint64_t)m + N * 4096,
                            .vec = (uint64_t)vec, .vec_len = N,
                            .category_anyof_mask = PAGE_IS_WRITTEN,
                            .return_mask = PAGE_IS_WRITTEN};
    long n = ioctl(pm, PAGEMAP_SCAN, &a);
    ASSERT(n == 0, "%ld pages WRITTEN right after write-protecting", n);

    m[2 * 4096] = 2;                              /* written in user mode */
    int p[2];
    ASSERT(pipe(p) == 0 && write(p[1], "k", 1) == 1, "pipe");
    ssize_t r = read(p[0], m + 5 * 4096, 1);      /* written by the kernel */
    ASSERT(r == 1, "read() into a write-protected page returned %zd", r);
    n = ioctl(pm, PAGEMAP_SCAN, &a);
    ASSERT(n == 2, "%ld regions WRITTEN", n);
    ASSERT(vec[0].start == (uint64_t)m + 2 * 4096 && vec[0].end == vec[0].start + 4096 &&
           vec[1].start == (uint64_t)m + 5 * 4096 && vec[1].end == vec[1].start + 4096,
           "WRITTEN: pages %ld and %ld", (long)(vec[0].start - (uint64_t)m) / 4096,
           (long)(vec[1].start - (uint64_t)m) / 4096);
    return 0;
}
""")


# ---- registers and syscalls -----------------------------------------------------

def test_xstate_size_and_xcr0_in_sw_reserved(tmp_path):
    """GIVEN a seized, stopped child
    WHEN PTRACE_GETREGSET NT_X86_XSTATE reads its extended state
    THEN the size is CPUID(0xD,0).EBX and the first u64 of the sw_reserved
    bytes (offset 464) is XCR0 (not FP_XSTATE_MAGIC1, so umig writes its own
    _fpx_sw_bytes); and the kernel's own signal frames carry, at the same
    offset, MAGIC1, size + 4, XCR0 and size, with MAGIC2 after the area:
    the layout umig's sigframe fpstate copies."""
    out = run_c(tmp_path, "xstate", r"""
#include <cpuid.h>
#include <elf.h>
#include <ucontext.h>
#define FP_XSTATE_MAGIC1 0x46505853U
#define FP_XSTATE_MAGIC2 0x46505845U

static uint8_t frame_sw[48];
static uint32_t frame_magic2;
static unsigned ebx;

static void handler(int sig, siginfo_t *si, void *ctx)
{
    uint8_t *fp = (uint8_t *)((ucontext_t *)ctx)->uc_mcontext.fpregs;
    memcpy(frame_sw, fp + 464, 48);
    memcpy(&frame_magic2, fp + ebx, 4);
}

int main(void)
{
    unsigned a, c, d;
    __cpuid_count(0xD, 0, a, ebx, c, d);
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    uint64_t xcr0 = (uint64_t)hi << 32 | lo;

    pid_t pid = fork_child(sleeper);
    seize_and_stop(pid);
    static uint8_t buf[1 << 16];
    struct iovec iov = {buf, sizeof buf};
    ASSERT(ptrace(PTRACE_GETREGSET, pid, NT_X86_XSTATE, &iov) == 0, "GETREGSET NT_X86_XSTATE");
    ASSERT(iov.iov_len == ebx, "NT_X86_XSTATE gave %zu bytes, CPUID(0xD,0).EBX is %u",
           iov.iov_len, ebx);
    uint64_t sw, bv;
    memcpy(&sw, buf + 464, 8);
    memcpy(&bv, buf + 512, 8);
    ASSERT(sw == xcr0, "sw_reserved[0] is %#lx, XCR0 is %#lx", (unsigned long)sw,
           (unsigned long)xcr0);
    ASSERT((bv & ~xcr0) == 0, "xstate_bv %#lx has bits outside XCR0", (unsigned long)bv);

    struct sigaction sa = {.sa_sigaction = handler, .sa_flags = SA_SIGINFO};
    sigaction(SIGUSR1, &sa, NULL);
    raise(SIGUSR1);
    uint32_t magic1, extended, xsize;
    uint64_t xfeatures;
    memcpy(&magic1, frame_sw, 4);
    memcpy(&extended, frame_sw + 4, 4);
    memcpy(&xfeatures, frame_sw + 8, 8);
    memcpy(&xsize, frame_sw + 16, 4);
    ASSERT(magic1 == FP_XSTATE_MAGIC1, "signal frame magic1 %#x", magic1);
    ASSERT(extended == ebx + 4 && xsize == ebx, "extended_size %u, xstate_size %u (area %u)",
           extended, xsize, ebx);
    ASSERT(xfeatures == xcr0, "signal frame xfeatures %#lx", (unsigned long)xfeatures);
    ASSERT(frame_magic2 == FP_XSTATE_MAGIC2, "MAGIC2 after the area: %#x", frame_magic2);
    printf("%u %#lx\n", ebx, (unsigned long)xcr0);
    return 0;
}
""")
    size, xcr0 = out.split()
    from umig import cpu
    assert (int(size), int(xcr0, 16)) == (cpu.xsave_size(), cpu.xcr0())


SLEEP_CASES = {
    # name: (how the child sleeps, syscall number, rax at the stop)
    "clock_nanosleep": ("1", 230, -516),          # -ERESTART_RESTARTBLOCK
    "nanosleep": ("0", 35, -516),
    "clock_nanosleep_abstime": ("2", 230, -514),  # -ERESTARTNOHAND: simply restarted
}


@_skip_unless("ptrace_seize")
@pytest.mark.parametrize("case", list(SLEEP_CASES))
def test_interrupted_sleep_shows_its_restart_code(tmp_path, case):
    """GIVEN a child sleeping 10 s in (clock_)nanosleep with a remaining-time
    pointer
    WHEN it is seized and stopped with PTRACE_INTERRUPT
    THEN orig_rax is the sleep's syscall number, rax is -516
    (ERESTART_RESTARTBLOCK) for a relative sleep and -514 (ERESTARTNOHAND)
    for an absolute one, rip is just past a `syscall` instruction, and a
    relative sleep has already written its remaining time to rmtp: what
    umig's restart logic (restore/plan.py restart_regs) relies on."""
    mode, nr, rax = SLEEP_CASES[case]
    run_c(tmp_path, "sleep_stop", r"""
static struct timespec *shared;     /* [0] unused, [1] the remaining time */
static int mode;

static void sleep10(void)
{
    struct timespec req = {10, 0};
    if (mode == 0)
        syscall(SYS_nanosleep, &req, &shared[1]);
    else if (mode == 1)
        syscall(SYS_clock_nanosleep, CLOCK_MONOTONIC, 0, &req, &shared[1]);
    else {
        syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &req);
        req.tv_sec += 10;
        syscall(SYS_clock_nanosleep, CLOCK_MONOTONIC, TIMER_ABSTIME, &req, &shared[1]);
    }
}

int main(int argc, char **argv)
{
    mode = atoi(argv[1]);
    long nr = atol(argv[2]), want_rax = atol(argv[3]);
    shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ASSERT(shared != MAP_FAILED, "mmap");
    shared[1].tv_sec = shared[1].tv_nsec = -1;
    pid_t pid = fork_child(sleep10);

    wait_in_syscall(pid, nr);

    seize_and_stop(pid);
    struct user_regs_struct regs;
    ASSERT(ptrace(PTRACE_GETREGS, pid, 0, &regs) == 0, "GETREGS");
    ASSERT((long)regs.orig_rax == nr, "orig_rax %ld", (long)regs.orig_rax);
    ASSERT((long)regs.rax == want_rax, "rax %ld, expected %ld", (long)regs.rax, want_rax);
    errno = 0;
    long insn = ptrace(PTRACE_PEEKTEXT, pid, regs.rip - 2, 0);
    ASSERT(errno == 0 && (insn & 0xffff) == 0x050f, "no syscall instruction before rip: %#lx",
           insn & 0xffff);
    if (mode != 2) {
        long long rem = shared[1].tv_sec * 1000000000LL + shared[1].tv_nsec;
        ASSERT(rem > 5000000000LL && rem <= 10000000000LL, "rmtp holds %ld.%09ld s",
               (long)shared[1].tv_sec, (long)shared[1].tv_nsec);
    } else
        ASSERT(shared[1].tv_sec == -1, "an absolute sleep wrote rmtp");
    return 0;
}
""", mode, str(nr), str(rax))


def test_a_new_process_cannot_restart_a_restart_block(tmp_path):
    """GIVEN a fresh process (whose restart_block nobody set)
    WHEN it calls restart_syscall, as the kernel would after
    ERESTART_RESTARTBLOCK
    THEN it gets EINTR: the restart block lives in the kernel's task and does
    not travel with an image, so umig re-issues the sleep itself."""
    run_c(tmp_path, "restart_syscall", r"""
int main(void)
{
    errno = 0;
    long r = syscall(SYS_restart_syscall);
    ASSERT(r == -1 && errno == EINTR, "restart_syscall returned %ld", r);
    return 0;
}
""")


@_skip_unless("ptrace_seize")
def test_rt_sigreturn_exit_stop_has_orig_rax_minus_1(tmp_path):
    """GIVEN a traced child returning from a signal handler
    WHEN the tracer follows it with PTRACE_SYSCALL
    THEN the entry stop of rt_sigreturn shows orig_rax 15, but its exit stop
    shows orig_rax -1 (rt_sigreturn disables syscall restart that way), so
    the exit can only be recognised by remembering the entry."""
    out = run_c(tmp_path, "sigreturn", r"""
static void on_usr1(int sig) { (void)sig; }

static void child(void)
{
    signal(SIGUSR1, on_usr1);
    ptrace(PTRACE_TRACEME, 0, 0, 0);
    raise(SIGSTOP);
    raise(SIGUSR1);
}

int main(void)
{
    pid_t pid = fork_child(child);
    int st = wait_status(pid);
    ASSERT(WIFSTOPPED(st) && WSTOPSIG(st) == SIGSTOP, "status %#x", st);
    ASSERT(ptrace(PTRACE_SETOPTIONS, pid, 0, PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL) == 0,
           "SETOPTIONS");
    int sig = 0, in_sigreturn = 0, checked = 0;
    for (;;) {
        ASSERT(ptrace(PTRACE_SYSCALL, pid, 0, sig) == 0, "PTRACE_SYSCALL");
        sig = 0;
        st = wait_status(pid);
        if (WIFEXITED(st) || WIFSIGNALED(st))
            break;
        if (WSTOPSIG(st) == SIGUSR1) {
            sig = SIGUSR1;
            continue;
        }
        if (WSTOPSIG(st) != (SIGTRAP | 0x80))
            continue;
        struct user_regs_struct regs;
        struct __ptrace_syscall_info info;
        ASSERT(ptrace(PTRACE_GETREGS, pid, 0, &regs) == 0, "GETREGS");
        ASSERT(ptrace(PTRACE_GET_SYSCALL_INFO, pid, sizeof info, &info) > 0, "GET_SYSCALL_INFO");
        if (info.op == PTRACE_SYSCALL_INFO_ENTRY && info.entry.nr == SYS_rt_sigreturn) {
            ASSERT(regs.orig_rax == SYS_rt_sigreturn, "orig_rax at entry %ld",
                   (long)regs.orig_rax);
            in_sigreturn = 1;
        } else if (in_sigreturn) {
            ASSERT(info.op == PTRACE_SYSCALL_INFO_EXIT, "after the entry of rt_sigreturn: op %d",
                   info.op);
            ASSERT((long)regs.orig_rax == -1, "orig_rax at the exit of rt_sigreturn: %ld",
                   (long)regs.orig_rax);
            in_sigreturn = 0;
            checked++;
        }
    }
    ASSERT(checked == 1, "saw %d rt_sigreturn exits", checked);
    printf("ok\n");
    return 0;
}
""")
    assert out.strip() == "ok"


@_skip_unless("ptrace_seize")
@pytest.mark.parametrize("how", ["ignored", "blocked"])
def test_int3_resets_an_ignored_or_blocked_sigtrap_to_default(tmp_path, how):
    """GIVEN a traced child whose SIGTRAP is ignored, or blocked with a handler
    WHEN it executes int3 and the tracer suppresses the SIGTRAP
    THEN afterwards its SIGTRAP disposition is SIG_DFL and SIGTRAP is
    unblocked (the kernel forces the signal): umig's restorer sets the
    target's SIGTRAP action only after its last int3."""
    run_c(tmp_path, "int3", r"""
static int blocked;
static void on_trap(int sig) { (void)sig; }

static void child(void)
{
    ptrace(PTRACE_TRACEME, 0, 0, 0);
    if (blocked) {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGTRAP);
        signal(SIGTRAP, on_trap);
        sigprocmask(SIG_BLOCK, &set, NULL);
    } else
        signal(SIGTRAP, SIG_IGN);
    raise(SIGSTOP);
    __asm__ volatile("int3");
    struct sigaction sa;
    sigset_t cur;
    sigaction(SIGTRAP, NULL, &sa);
    sigprocmask(SIG_BLOCK, NULL, &cur);
    if (sa.sa_handler != SIG_DFL || sigismember(&cur, SIGTRAP)) {
        fprintf(stderr, "after int3: handler %s, SIGTRAP %sblocked\n",
                sa.sa_handler == SIG_IGN ? "SIG_IGN" : sa.sa_handler == SIG_DFL ? "SIG_DFL"
                                                                                : "a function",
                sigismember(&cur, SIGTRAP) ? "" : "not ");
        _exit(2);
    }
}

int main(int argc, char **argv)
{
    blocked = strcmp(argv[1], "blocked") == 0;
    pid_t pid = fork_child(child);
    int st = wait_status(pid);
    ASSERT(WIFSTOPPED(st) && WSTOPSIG(st) == SIGSTOP, "status %#x", st);
    ASSERT(ptrace(PTRACE_CONT, pid, 0, 0) == 0, "CONT");
    st = wait_status(pid);
    ASSERT(WIFSTOPPED(st) && WSTOPSIG(st) == SIGTRAP, "after int3: status %#x", st);
    ASSERT(ptrace(PTRACE_CONT, pid, 0, 0) == 0, "CONT without the signal");
    st = wait_status(pid);
    ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child ended with status %#x", st);
    return 0;
}
""", how)


# ---- privileges: PR_SET_MM, rlimits -------------------------------------------------

@_skip_unless("pr_set_mm_map")
def test_pr_set_mm_map_works_without_cap_sys_resource(tmp_path):
    """GIVEN a process (root without CAP_SYS_RESOURCE here, or a plain user)
    WHEN it calls prctl(PR_SET_MM, PR_SET_MM_MAP) with its own current values
    from /proc/self/stat (exe_fd -1), then with a new argv range
    THEN PR_SET_MM_MAP_SIZE says 104, the calls succeed and
    /proc/self/cmdline shows the new argv when it lies in anonymous memory
    (a file-backed argv reads as empty: FOLL_ANON): how umig restores the
    mm fields.  Setting /proc/PID/exe (exe_fd) needs CAP_CHECKPOINT_RESTORE
    (else EPERM) and, even then, fails with EBUSY while the old executable
    is still mapped."""
    exe_errno = errno.EBUSY if _have_cap(40) or _have_cap(21) else errno.EPERM
    run_c(tmp_path, "set_mm_map", r"""
static char newargs[] = "kernel\0facts";     /* 13 bytes with both NULs */

int main(int argc, char **argv)
{
    int want_exe_errno = atoi(argv[1]);
    unsigned int size = 0;
    ASSERT(prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE, &size, 0, 0) == 0, "PR_SET_MM_MAP_SIZE");
    ASSERT(size == sizeof(struct prctl_mm_map) && size == 104, "size %u", size);

    static char stat[4096];
    int fd = open("/proc/self/stat", O_RDONLY);
    ssize_t n = read(fd, stat, sizeof stat - 1);
    close(fd);
    ASSERT(n > 0, "read stat");
    stat[n] = 0;
    unsigned long f[64] = {0};          /* f[k]: field k of proc(5), from field 3 on */
    char *p = strrchr(stat, ')') + 4;   /* past ") S " (field 3, the state) */
    for (int k = 4; k < 64 && *p && *p != '\n'; k++)
        f[k] = strtoul(p, &p, 10);
    struct prctl_mm_map m = {
        .start_code = f[26], .end_code = f[27], .start_data = f[45], .end_data = f[46],
        .start_brk = f[47], .brk = syscall(SYS_brk, 0), .start_stack = f[28],
        .arg_start = f[48], .arg_end = f[49], .env_start = f[50], .env_end = f[51],
        .auxv = NULL, .auxv_size = 0, .exe_fd = -1,
    };
    ASSERT(m.start_code && m.arg_start && m.env_end, "parsing /proc/self/stat");
    ASSERT(prctl(PR_SET_MM, PR_SET_MM_MAP, &m, sizeof m, 0) == 0, "PR_SET_MM_MAP, own values");

    /* argv in anonymous memory (as on a stack): /proc/self/cmdline shows it */
    char *anon = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT(anon != MAP_FAILED, "mmap");
    memcpy(anon, newargs, 13);
    m.arg_start = (unsigned long)anon;
    m.arg_end = (unsigned long)anon + 13;
    ASSERT(prctl(PR_SET_MM, PR_SET_MM_MAP, &m, sizeof m, 0) == 0, "PR_SET_MM_MAP, new argv");
    char cmdline[64];
    fd = open("/proc/self/cmdline", O_RDONLY);
    n = read(fd, cmdline, sizeof cmdline);
    close(fd);
    ASSERT(n == 13 && memcmp(cmdline, newargs, 13) == 0, "cmdline is %zd bytes: %.*s", n,
           (int)(n > 0 ? n : 0), cmdline);

    /* argv in a file-backed mapping (this program's .data, even written to):
     * the kernel reads cmdline with FOLL_ANON, so it reads as empty */
    newargs[0] = 'K';
    m.arg_start = (unsigned long)newargs;
    m.arg_end = (unsigned long)newargs + 13;
    ASSERT(prctl(PR_SET_MM, PR_SET_MM_MAP, &m, sizeof m, 0) == 0, "PR_SET_MM_MAP, .data argv");
    fd = open("/proc/self/cmdline", O_RDONLY);
    n = read(fd, cmdline, sizeof cmdline);
    close(fd);
    ASSERT(n == 0, "cmdline from a file-backed mapping is %zd bytes", n);

    /* a new /proc/PID/exe: refused without CAP_CHECKPOINT_RESTORE (EPERM);
     * with it, refused while the old executable is still mapped (EBUSY) */
    m.exe_fd = open("/proc/self/exe", O_RDONLY);
    ASSERT((int)m.exe_fd >= 0, "open /proc/self/exe");
    errno = 0;
    ASSERT(prctl(PR_SET_MM, PR_SET_MM_MAP, &m, sizeof m, 0) == -1 && errno == want_exe_errno,
           "PR_SET_MM_MAP with exe_fd: expected errno %d", want_exe_errno);
    return 0;
}
""", str(exe_errno))


def _have_cap(cap: int) -> bool:
    from umig import procfs
    eff = int(procfs.parse_status(procfs.read("self", "status"))["CapEff"], 16)
    return bool(eff >> cap & 1)


@pytest.mark.skipif(_have_cap(CAP_SYS_RESOURCE), reason="this process has CAP_SYS_RESOURCE: "
                    "the test documents a machine without it (ours: not even in the bounding set)")
def test_without_cap_sys_resource_hard_limits_and_mm_fields_stay(tmp_path):
    """GIVEN this machine, where even root lacks CAP_SYS_RESOURCE
    WHEN we lower a child's hard RLIMIT_NOFILE with prlimit and try to raise
    it back, and try a single-field PR_SET_MM (PR_SET_MM_BRK)
    THEN lowering works, raising fails with EPERM, and PR_SET_MM_BRK fails
    with EPERM: resume keeps this host's hard limit where the image's is
    higher, and sets mm fields only through PR_SET_MM_MAP."""
    run_c(tmp_path, "no_sys_resource", r"""
int main(void)
{
    pid_t pid = fork_child(sleeper);
    struct rlimit old, lower;
    ASSERT(prlimit(pid, RLIMIT_NOFILE, NULL, &old) == 0, "reading the child's limit");
    lower.rlim_max = old.rlim_max - 1;
    lower.rlim_cur = old.rlim_cur < lower.rlim_max ? old.rlim_cur : lower.rlim_max;
    ASSERT(prlimit(pid, RLIMIT_NOFILE, &lower, NULL) == 0, "lowering the child's hard limit");
    errno = 0;
    ASSERT(prlimit(pid, RLIMIT_NOFILE, &old, NULL) == -1 && errno == EPERM,
           "raising the child's hard limit back");
    errno = 0;
    ASSERT(prctl(PR_SET_MM, PR_SET_MM_BRK, syscall(SYS_brk, 0), 0, 0) == -1 && errno == EPERM,
           "PR_SET_MM_BRK");
    return 0;
}
""")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a process of another uid")
@pytest.mark.skipif(_have_cap(CAP_SYS_RESOURCE), reason="this process has CAP_SYS_RESOURCE: "
                    "the test documents a machine without it")
def test_prlimit_on_another_uid_is_refused_even_to_root(tmp_path):
    """GIVEN a child that switched to uid 65534, and root without
    CAP_SYS_RESOURCE
    WHEN root calls prlimit on it, only to read
    THEN it fails with EPERM, while /proc/PID/limits is readable: umig reads
    a target's limits from /proc."""
    run_c(tmp_path, "prlimit_other", r"""
static void nobody(void)
{
    ASSERT(setresgid(65534, 65534, 65534) == 0 && setresuid(65534, 65534, 65534) == 0,
           "setresuid");
    prctl(PR_SET_PDEATHSIG, SIGKILL);   /* cleared by the change of credentials */
    for (;;)
        pause();
}

int main(void)
{
    pid_t pid = fork_child(nobody);
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    for (int i = 0;; i++) {
        int fd = open(path, O_RDONLY);
        ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
        if (fd >= 0)
            close(fd);
        buf[n > 0 ? n : 0] = 0;
        if (strstr(buf, "\nUid:\t65534\t65534\t65534"))
            break;
        ASSERT(i < 5000, "the child did not become uid 65534");
        usleep(1000);
    }
    struct rlimit r;
    errno = 0;
    ASSERT(prlimit(pid, RLIMIT_NOFILE, NULL, &r) == -1 && errno == EPERM, "prlimit (read)");
    snprintf(path, sizeof path, "/proc/%d/limits", pid);
    int fd = open(path, O_RDONLY);
    ASSERT(fd >= 0 && read(fd, buf, sizeof buf) > 0, "reading %s", path);
    close(fd);
    return 0;
}
""")


# ---- glibc malloc and lz4 ----------------------------------------------------------

FAULTS_PER_PAIR = r"""
import resource, sys
if sys.argv[1] == "umig":
    import umig.native  # noqa: F401  (tunes malloc at import)
mib = 1 << 20

def pairs(n):
    for _ in range(n):
        p = bytearray(b"x") * mib             # written through, like lz4's output
        q = bytearray(b"x") * mib
        del q, p

pairs(3)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
pairs(100)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 100)
"""


def test_malloc_tuning_keeps_fresh_mib_buffers_from_faulting():
    """GIVEN a loop that allocates, fills and frees two 1 MiB buffers, as
    compressing and decompressing page chunks does
    WHEN it runs in a plain Python, then with umig.native imported
    THEN plainly glibc grows the heap with brk and trims it back on every
    free (its dynamic M_TRIM_THRESHOLD is twice the dynamic mmap threshold,
    ~2 MiB), so every buffer page-faults all its pages again (~480 faults per
    pair); with umig's mallopt (M_MMAP_THRESHOLD 64 MiB, M_TRIM_THRESHOLD
    256 MiB) none do."""
    faults = {}
    for mode in ("plain", "umig"):
        r = subprocess.run([sys.executable, "-c", FAULTS_PER_PAIR, mode], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        faults[mode] = float(r.stdout)
    assert faults["plain"] > 400, f"glibc no longer trims after each pair: {faults}"
    assert faults["umig"] < 16, f"umig's malloc tuning does not hold: {faults}"


# ---- umig check itself ------------------------------------------------------------

def _children_of(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
    return out


def _maps() -> tuple[set[str], list[int]]:
    """Named mappings (files, [vdso] and its kin) as lines, and the sizes of
    anonymous ones ([heap] aside, which just grows)."""
    named, anon = set(), []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(None, 5)
        if len(parts) > 5 and parts[5].strip():
            if parts[5].strip() != "[heap]":
                named.add(line)
        else:
            start, end = (int(x, 16) for x in parts[0].split("-"))
            anon.append(end - start)
    return named, anon


def test_probes_leave_nothing_behind():
    """GIVEN this test process
    WHEN all probes run again (uncached)
    THEN they take well under a second and leave no child, no fd and no
    mapping of their own (Python's allocator may add a 1 MiB arena; the
    probes map 4 and 32 KiB) and the vDSO where it was."""
    import time
    fds = sorted(os.listdir("/proc/self/fd"))
    named, anon = _maps()
    check.run_probes.cache_clear()
    try:
        t = time.monotonic()
        probes = check.run_probes()
        took = time.monotonic() - t
    finally:
        check.run_probes.cache_clear()
    assert took < 0.5, f"the probes took {took:.2f} s"
    assert _children_of(os.getpid()) == []
    assert sorted(os.listdir("/proc/self/fd")) == fds
    named_after, anon_after = _maps()
    assert named_after == named
    left = list(anon_after)
    for size in anon:
        if size in left:
            left.remove(size)
    assert not [n for n in left if n < 256 << 10], f"new small anonymous mappings: {left}"
    failed = {p.name: p.detail for p in probes if not p.ok and "the probe failed" in p.detail}
    assert not failed, f"probes with a bug: {failed}"


def test_umig_check_json_and_exit_code():
    """GIVEN this machine
    WHEN `umig check --json` runs
    THEN it lists every probe with name, ok, detail and needed_for, a verdict
    line, and exits 0 exactly when grab and resume both work."""
    r = subprocess.run([sys.executable, "-m", "umig", "check", "--json"], capture_output=True,
                       text=True, timeout=30, stdin=subprocess.DEVNULL)
    doc = json.loads(r.stdout)
    names = [p["name"] for p in doc["probes"]]
    for name in ("ptrace_seize", "process_vm_readv", "pidfd_getfd", "clone3_set_tid",
                 "userfaultfd", "pagemap_scan", "soft_dirty", "vdso_layout", "arch_map_vdso",
                 "pr_set_mm_map", "yama_ptrace_scope", "capabilities", "xsave", "rseq"):
        assert name in names
    assert all(set(p) == {"name", "ok", "detail", "needed_for"} for p in doc["probes"])
    assert r.returncode == (0 if doc["grab"] and doc["resume"] else 72), r.stderr
    assert doc["verdict"].startswith("umig can")
    by = {p["name"]: p for p in doc["probes"]}
    assert by["clone3_set_tid"]["ok"] == doc["keep_pids"]
    if os.geteuid() != 0 and not _have_cap(40) and not _have_cap(21):
        assert not by["clone3_set_tid"]["ok"] and "PIDs cannot be kept" in doc["verdict"]


def test_pagemap_scan_resumed_in_pieces_reports_each_page_once():
    """GIVEN 64 MiB with three of every four pages touched (16384 regions)
    WHEN umig_scan walks it with room for 4096 regions a call, resuming at the
    walk_end it gives back
    THEN every touched page is reported exactly once (the kernel's own
    walk_end may lie before regions it already returned)."""
    import mmap as mmap_mod
    from umig.native import PAGE, ffi, lib
    size = 64 << 20
    m = mmap_mod.mmap(-1, size)
    try:
        base = int(ffi.cast("uintptr_t", ffi.from_buffer(m)))
        want = [off for off in range(0, size, PAGE) if off // PAGE % 4 != 3]
        for off in want:
            m[off] = 1
        fd = os.open("/proc/self/pagemap", os.O_RDONLY)
        vec = ffi.new("struct umig_region[]", 4096)
        walk_end = ffi.new("uint64_t *")
        seen: list[int] = []
        start, end = base, base + size
        try:
            while start < end:
                n = lib.umig_scan(fd, start, end, 8, 8, vec, 4096, walk_end)
                assert n >= 0, os.strerror(-n)
                for i in range(n):
                    seen += range(vec[i].start, vec[i].end, PAGE)
                start = walk_end[0] if walk_end[0] > start else end
        finally:
            os.close(fd)
        assert seen == [base + off for off in want]
    finally:
        m.close()


# ---- threads -------------------------------------------------------------------

STOP_EINTR_CASES = {"rt_sigtimedwait": 0, "epoll_wait": 1, "semop": 2}


@pytest.mark.parametrize("case", sorted(STOP_EINTR_CASES))
def test_a_mere_stop_fails_some_waits_with_eintr(tmp_path, case):
    """GIVEN a child blocked in rt_sigtimedwait, epoll_wait or semop, with no
    signal handler anywhere
    WHEN it is seized and stopped with PTRACE_INTERRUPT
    THEN the call has already returned -EINTR (not a restart code) with
    orig_rax still its number and rip just past the `syscall`: the thread
    would see EINTR after a mere freeze (signal(7)), so umig's freeze sets
    such a call to run again (capture.Freezer._undo_stop_eintr)."""
    run_c(tmp_path, "stop_eintr", r"""
#include <sys/epoll.h>
#include <sys/sem.h>
static int mode, ep, sem;

static void waiter(void)
{
    if (mode == 0) {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGUSR1);
        sigprocmask(SIG_BLOCK, &set, NULL);
        struct timespec t = {30, 0};
        syscall(SYS_rt_sigtimedwait, &set, NULL, &t, 8);
    } else if (mode == 1) {
        struct epoll_event ev;
        syscall(SYS_epoll_wait, ep, &ev, 1, 30000);
    } else {
        struct sembuf op = {0, -1, 0};
        syscall(SYS_semop, sem, &op, 1);
    }
}

static void drop_sem(void) { semctl(sem, 0, IPC_RMID); }

int main(int argc, char **argv)
{
    mode = atoi(argv[1]);
    long nr = mode == 0 ? SYS_rt_sigtimedwait : mode == 1 ? SYS_epoll_wait : SYS_semop;
    ep = epoll_create1(0);
    ASSERT(ep >= 0, "epoll_create1");
    sem = semget(IPC_PRIVATE, 1, 0600);
    ASSERT(sem >= 0, "semget");
    atexit(drop_sem);
    pid_t pid = fork_child(waiter);
    wait_in_syscall(pid, nr);
    seize_and_stop(pid);
    struct user_regs_struct regs;
    ASSERT(ptrace(PTRACE_GETREGS, pid, 0, &regs) == 0, "GETREGS");
    ASSERT((long)regs.orig_rax == nr, "orig_rax %ld", (long)regs.orig_rax);
    ASSERT((long)regs.rax == -EINTR, "rax %ld, expected -EINTR", (long)regs.rax);
    errno = 0;
    long insn = ptrace(PTRACE_PEEKTEXT, pid, regs.rip - 2, 0);
    ASSERT(errno == 0 && (insn & 0xffff) == 0x050f, "no syscall instruction before rip");
    return 0;
}
""", str(STOP_EINTR_CASES[case]))


def test_a_thread_traced_through_traceclone_cannot_be_seized_again(tmp_path):
    """GIVEN a process seized with PTRACE_O_TRACECLONE (not stopped)
    WHEN it starts a thread
    THEN its tracer gets a PTRACE_EVENT_CLONE stop naming the new tid, the
    new thread is traced already (it stops by itself with
    PTRACE_EVENT_STOP) and PTRACE_SEIZE on it fails with EPERM: a freezer
    that lists /proc/PID/task while threads are born must take such a tid
    as its own, not fail (capture.Freezer.freeze)."""
    run_c(tmp_path, "traceclone", r"""
#include <pthread.h>
static void *idle(void *arg) { (void)arg; for (;;) pause(); return NULL; }

static void starter(void)
{
    pthread_t t;
    usleep(200000);
    pthread_create(&t, NULL, idle, NULL);
    for (;;)
        pause();
}

int main(void)
{
    pid_t pid = fork_child(starter);
    ASSERT(ptrace(PTRACE_SEIZE, pid, 0, PTRACE_O_EXITKILL | PTRACE_O_TRACECLONE) == 0,
           "PTRACE_SEIZE");
    int st = wait_status(pid);
    ASSERT(WIFSTOPPED(st) && st >> 16 == PTRACE_EVENT_CLONE, "status %#x", st);
    unsigned long tid = 0;
    ASSERT(ptrace(PTRACE_GETEVENTMSG, pid, 0, &tid) == 0, "GETEVENTMSG");
    ASSERT(tid > 0 && (pid_t)tid != pid, "new tid %lu", tid);
    errno = 0;
    ASSERT(ptrace(PTRACE_SEIZE, (pid_t)tid, 0, 0) == -1 && errno == EPERM,
           "seizing the auto-attached thread did not fail with EPERM");
    st = wait_status((pid_t)tid);
    ASSERT(WIFSTOPPED(st) && st >> 16 == PTRACE_EVENT_STOP, "new thread status %#x", st);
    /* the leader's exit is reported only after its traced thread was reaped */
    kill(pid, SIGKILL);
    waitpid((pid_t)tid, &st, __WALL);
    return 0;
}
""")
