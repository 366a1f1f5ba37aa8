/*
 * 8 threads working across a grab, then checking themselves.
 *
 * thread 0 waits on a condition variable until main signals it;
 * threads 1..7 count, each in its own TLS counter and in `shared` under a
 * normal mutex, taking a recursive, an error-checking and a
 * priority-inheriting mutex on every round; thread 1 holds a robust mutex
 * throughout and exits holding it.
 *
 * Main prints `shared` every 20 ms.  On SIGUSR1 (the test sends it after
 * resume) it stops the counters, wakes the waiter, sends each thread
 * SIGUSR2 with pthread_kill (the handler records gettid(): it must be the
 * tid the thread had at start), joins all, and checks:
 *   - each counter's TLS total equals what it returned and shared equals
 *     their sum;
 *   - the robust mutex comes back EOWNERDEAD (the dead owner's robust list
 *     was walked by the kernel);
 *   - the error-checking mutex still detects a relock.
 * It prints `PASS shared=N` or `FAIL ...`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define N 8

static __thread long tls_count;
static __thread int my_index = -1;
static pthread_t th[N];
static pid_t start_tid[N];
static volatile pid_t hit_tid[N];
static long returned[N];
static long shared;
static int woken;
static volatile int stop_counting;
static volatile sig_atomic_t stop_req;
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t rec, ec, pi, rob;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static pthread_barrier_t started;

static void on_usr1(int sig) { (void)sig; stop_req = 1; }

static void on_usr2(int sig)
{
    (void)sig;
    if (my_index >= 0)
        hit_tid[my_index] = syscall(SYS_gettid);
}

static void fail(const char *what, long a, long b)
{
    printf("FAIL %s (%ld, %ld)\n", what, a, b);
    fflush(stdout);
    exit(1);
}

static void *worker(void *arg)
{
    int i = (int)(long)arg;
    my_index = i;
    start_tid[i] = syscall(SYS_gettid);
    if (i == 1 && pthread_mutex_lock(&rob))
        fail("robust lock", i, 0);
    pthread_barrier_wait(&started);
    if (i == 0) {
        pthread_mutex_lock(&m);
        while (!woken)
            pthread_cond_wait(&cv, &m);
        pthread_mutex_unlock(&m);
        while (!hit_tid[i])
            usleep(1000);
        return (void *)0;
    }
    struct timespec ms = {0, 1000000};
    while (!stop_counting) {
        pthread_mutex_lock(&m);
        shared++;
        tls_count++;
        pthread_mutex_unlock(&m);
        if (pthread_mutex_lock(&rec) || pthread_mutex_lock(&rec))
            fail("recursive lock", i, tls_count);
        pthread_mutex_unlock(&rec);
        pthread_mutex_unlock(&rec);
        if (pthread_mutex_lock(&ec))
            fail("errorcheck lock", i, tls_count);
        pthread_mutex_unlock(&ec);
        if (pthread_mutex_lock(&pi))
            fail("pi lock", i, tls_count);
        pthread_mutex_unlock(&pi);
        nanosleep(&ms, NULL);
    }
    while (!hit_tid[i])
        usleep(1000);
    return (void *)tls_count;        /* thread 1 exits holding `rob` */
}

int main(void)
{
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&rec, &a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ERRORCHECK);
    pthread_mutex_init(&ec, &a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_NORMAL);
    pthread_mutexattr_setprotocol(&a, PTHREAD_PRIO_INHERIT);
    pthread_mutex_init(&pi, &a);
    pthread_mutexattr_setprotocol(&a, PTHREAD_PRIO_NONE);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&rob, &a);

    signal(SIGUSR1, on_usr1);
    signal(SIGUSR2, on_usr2);
    pthread_barrier_init(&started, NULL, N + 1);
    for (long i = 0; i < N; i++)
        if (pthread_create(&th[i], NULL, worker, (void *)i))
            fail("pthread_create", i, 0);
    pthread_barrier_wait(&started);
    printf("ready\n");
    fflush(stdout);

    struct timespec tick = {0, 20000000};
    while (!stop_req) {
        pthread_mutex_lock(&m);
        long s = shared;
        pthread_mutex_unlock(&m);
        printf("%ld\n", s);
        fflush(stdout);
        nanosleep(&tick, NULL);
    }

    stop_counting = 1;
    pthread_mutex_lock(&m);
    woken = 1;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&m);
    for (int i = 0; i < N; i++) {
        int r = pthread_kill(th[i], SIGUSR2);
        if (r)
            fail("pthread_kill", i, r);
        for (int k = 0; k < 2000 && !hit_tid[i]; k++)
            usleep(1000);
        if (hit_tid[i] != start_tid[i])
            fail("pthread_kill reached the wrong thread", hit_tid[i], start_tid[i]);
    }
    long sum = 0;
    for (int i = 0; i < N; i++) {
        void *ret;
        if (pthread_join(th[i], &ret))
            fail("pthread_join", i, 0);
        returned[i] = (long)ret;
        sum += returned[i];
    }
    if (sum != shared)
        fail("shared != sum of the threads' counts", shared, sum);
    int r = pthread_mutex_lock(&rob);
    if (r != EOWNERDEAD)
        fail("robust mutex of a dead owner", r, EOWNERDEAD);
    pthread_mutex_consistent(&rob);
    pthread_mutex_unlock(&rob);
    pthread_mutex_lock(&ec);
    r = pthread_mutex_lock(&ec);
    if (r != EDEADLK)
        fail("errorcheck relock", r, EDEADLK);
    pthread_mutex_unlock(&ec);
    printf("PASS shared=%ld\n", shared);
    fflush(stdout);
    return 0;
}
