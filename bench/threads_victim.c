/*
 * Victim of bench/threads.py: N threads, each blocked in a call.
 *
 *     threads_victim N
 *
 * Even threads wait on a condition variable (futex wait), odd threads sleep
 * in nanosleep(1 h).  Every thread records its tid, then meets main at a
 * barrier and blocks.  Main prints `ready N CREATE_US`, CREATE_US being the
 * microseconds from the first pthread_create to the barrier (the cost of
 * making the threads, a reference for resume), then naps 50 ms at a time.
 *
 * On SIGUSR1 (the bench sends it after resume) main wakes them all: a
 * broadcast for the waiters, SIGUSR2 (a handler that does nothing, so
 * nanosleep fails with EINTR) for the sleepers, re-sent until the thread
 * is joined.  Each thread returns its index and the tid it sees now; main
 * checks both against what it had at start and prints `PASS N` or
 * `FAIL why`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct slot {
    pthread_t th;
    long index;
    pid_t start_tid;
    pid_t end_tid;
};

static struct slot *slots;
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static pthread_barrier_t started;
static volatile int wake;                  /* under m for the waiters */
static volatile sig_atomic_t check;

static void on_usr1(int s) { (void)s; check = 1; }
static void on_usr2(int s) { (void)s; }

static void fail(const char *what, long a, long b)
{
    printf("FAIL %s (%ld, %ld)\n", what, a, b);
    fflush(stdout);
    exit(1);
}

static void *worker(void *arg)
{
    struct slot *s = arg;
    s->start_tid = (pid_t)syscall(SYS_gettid);
    pthread_barrier_wait(&started);
    if (s->index % 2 == 0) {
        pthread_mutex_lock(&m);
        while (!wake)
            pthread_cond_wait(&cv, &m);
        pthread_mutex_unlock(&m);
    } else {
        struct timespec hour = {3600, 0};
        while (!wake)
            nanosleep(&hour, NULL);           /* EINTR on SIGUSR2 */
    }
    s->end_tid = (pid_t)syscall(SYS_gettid);
    return (void *)s->index;
}

static long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    long n = atol(argv[1]);
    if (n < 1)
        return 2;
    slots = calloc((size_t)n, sizeof *slots);
    if (!slots)
        return 3;

    struct sigaction sa = {0};
    sa.sa_handler = on_usr2;                  /* no SA_RESTART */
    sigaction(SIGUSR2, &sa, NULL);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);

    pthread_barrier_init(&started, NULL, (unsigned)n + 1);
    long long t0 = now_us();
    for (long i = 0; i < n; i++) {
        slots[i].index = i;
        int r = pthread_create(&slots[i].th, NULL, worker, &slots[i]);
        if (r)
            fail("pthread_create", i, r);
    }
    pthread_barrier_wait(&started);
    long long create_us = now_us() - t0;
    printf("ready %ld %lld\n", n, create_us);
    fflush(stdout);

    struct timespec nap = {0, 50 * 1000 * 1000};
    while (!check)
        nanosleep(&nap, NULL);

    pthread_mutex_lock(&m);
    wake = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&m);
    for (long i = 0; i < n; i++) {
        void *ret;
        int r;
        for (int k = 0;; k++) {
            if (i % 2 && (r = pthread_kill(slots[i].th, SIGUSR2)) && r != ESRCH)
                fail("pthread_kill", i, r);
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += 100 * 1000 * 1000;
            if (until.tv_nsec >= 1000000000) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000;
            }
            r = pthread_timedjoin_np(slots[i].th, &ret, &until);
            if (r == 0)
                break;
            if (r != ETIMEDOUT || k == 50)
                fail("thread did not end", i, r);
        }
        if ((long)ret != i)
            fail("thread returned another index", (long)ret, i);
        if (slots[i].end_tid != slots[i].start_tid)
            fail("thread has another tid", slots[i].end_tid, slots[i].start_tid);
    }
    printf("PASS %ld\n", n);
    fflush(stdout);
    for (;;)
        nanosleep(&nap, NULL);
}
