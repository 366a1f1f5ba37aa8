/*
 * cowtree MIB CHILDREN: a parent fills MIB MiB with random bytes and forks
 * CHILDREN children that share it copy-on-write.  After the fork child 1
 * rewrites its first MiB, child 2 drops its first MiB (MADV_DONTNEED: it
 * reads zeros), and the parent rewrites its last MiB; the others leave it
 * alone.  Each process prints "PID SUM" of its whole buffer, then waits;
 * on SIGUSR2 it sums again and prints "PID SUM again".
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static uint8_t *buf;
static size_t len;
static volatile sig_atomic_t again;

static void on_usr2(int s) { (void)s; again = 1; }

static uint64_t sum(void)
{
    uint64_t h = 1469598103934665603ULL;
    const uint64_t *w = (const uint64_t *)buf;
    for (size_t i = 0; i < len / 8; i++)
        h = (h ^ w[i]) * 1099511628211ULL;
    return h;
}

static void report_and_wait(void)
{
    printf("%d %llu\n", getpid(), (unsigned long long)sum());
    fflush(stdout);
    for (;;) {
        while (!again)
            pause();
        again = 0;
        printf("%d %llu again\n", getpid(), (unsigned long long)sum());
        fflush(stdout);
    }
}

int main(int argc, char **argv)
{
    len = (size_t)atoi(argv[1]) << 20;
    int n = atoi(argv[2]);
    signal(SIGUSR2, on_usr2);
    buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED)
        return 1;
    uint64_t x = 88172645463325252ULL;
    for (size_t i = 0; i < len / 8; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ((uint64_t *)buf)[i] = x;
    }
    for (int i = 0; i < n; i++) {
        if (fork() == 0) {
            if (i == 1)
                memset(buf, 0x5a, 1 << 20);
            if (i == 2)
                madvise(buf, 1 << 20, MADV_DONTNEED);
            report_and_wait();
        }
    }
    memset(buf + len - (1 << 20), 0xa5, 1 << 20);
    report_and_wait();
}
