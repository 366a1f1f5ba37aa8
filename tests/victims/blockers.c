/*
 * 64 threads, each blocked in a syscall when it is grabbed: 18 kinds, three
 * or four threads each (thread i has kind i % KINDS).  Main prints "ready" once every thread is about to block,
 * then waits for SIGUSR1 (sent after resume), releases the threads that
 * need releasing, joins them all and prints "PASS" if every thread's call
 * completed the way it should have, else "FAIL kind N: why".
 *
 * The timed kinds sleep SLEEP_MS from their start and check that at least
 * that long passed (CLOCK_MONOTONIC is continuous on one host).  The pipe
 * kinds read from an empty pipe and write into a full one; main then
 * checks every byte that went through the full pipe, in order.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define KINDS 18
#define N 64
#define PER(k) (N / KINDS + ((k) < N % KINDS))
#define CHUNK 4096

static int sleep_ms = 2500;
static const char *kind_name[KINDS] = {
    "cond_wait", "mutex_lock", "sem_wait", "nanosleep", "clock_nanosleep_abs", "poll",
    "select", "pause", "sigsuspend", "sigtimedwait", "sigwaitinfo", "barrier_wait",
    "futex_wait", "ppoll", "rwlock_wrlock", "usleep", "read_pipe", "write_pipe"};

static pthread_mutex_t cm = PTHREAD_MUTEX_INITIALIZER, held = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int released;
static sem_t sem;
static pthread_barrier_t bar;
static pthread_rwlock_t rw = PTHREAD_RWLOCK_INITIALIZER;
static atomic_int fword;
static atomic_int about_to_block;
static volatile sig_atomic_t usr2_seen[N];
static __thread int my;
static char why[N][96];
static pthread_t th[N];
static int empty_pipe[2], full_pipe[2];
static long prefill;

static void on_usr2(int s) { (void)s; usr2_seen[my] = 1; }

static long ms_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

#define BAD(...) snprintf(why[i], sizeof(why[i]), __VA_ARGS__)

static void *blocker(void *arg)
{
    int i = (int)(long)arg, k = i % KINDS, r;
    my = i;
    struct timespec t0, d = {sleep_ms / 1000, (sleep_ms % 1000) * 1000000L};
    struct timeval tv = {sleep_ms / 1000, (sleep_ms % 1000) * 1000};
    sigset_t usr2, none;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    sigemptyset(&none);
    siginfo_t si;
    if (k == 9 || k == 10)      /* waited for, not handled */
        pthread_sigmask(SIG_BLOCK, &usr2, NULL);
    else if (k == 7)
        pthread_sigmask(SIG_UNBLOCK, &usr2, NULL);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    atomic_fetch_add(&about_to_block, 1);
    switch (k) {
    case 0:
        pthread_mutex_lock(&cm);
        while (!released)
            pthread_cond_wait(&cv, &cm);
        pthread_mutex_unlock(&cm);
        break;
    case 1:
        if ((r = pthread_mutex_lock(&held)))
            BAD("returned %d", r);
        pthread_mutex_unlock(&held);
        break;
    case 2:
        if (sem_wait(&sem))
            BAD("errno %d", errno);
        break;
    case 3:
        if (nanosleep(&d, NULL))
            BAD("errno %d", errno);
        break;
    case 4: {
        struct timespec until = t0;
        until.tv_sec += d.tv_sec;
        until.tv_nsec += d.tv_nsec;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        if ((r = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL)))
            BAD("returned %d", r);
        break;
    }
    case 5:
        if ((r = poll(NULL, 0, sleep_ms)) != 0)
            BAD("returned %d errno %d", r, errno);
        break;
    case 6:
        if ((r = select(0, NULL, NULL, NULL, &tv)) != 0)
            BAD("returned %d errno %d", r, errno);
        break;
    case 7:
        r = pause();
        if (r != -1 || errno != EINTR || !usr2_seen[i])
            BAD("returned %d errno %d seen %d", r, errno, usr2_seen[i]);
        break;
    case 8:
        r = sigsuspend(&none);
        if (r != -1 || errno != EINTR || !usr2_seen[i])
            BAD("returned %d errno %d seen %d", r, errno, usr2_seen[i]);
        break;
    case 9: {
        struct timespec long_wait = {60, 0};
        if ((r = sigtimedwait(&usr2, &si, &long_wait)) != SIGUSR2)
            BAD("returned %d errno %d", r, errno);
        break;
    }
    case 10:
        if ((r = sigwaitinfo(&usr2, &si)) != SIGUSR2)
            BAD("returned %d errno %d", r, errno);
        break;
    case 11:
        r = pthread_barrier_wait(&bar);
        if (r && r != PTHREAD_BARRIER_SERIAL_THREAD)
            BAD("returned %d", r);
        break;
    case 12:
        while (atomic_load(&fword) == 0) {
            r = syscall(SYS_futex, &fword, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
            if (r && errno != EAGAIN)
                BAD("errno %d", errno);
        }
        break;
    case 13:
        if ((r = ppoll(NULL, 0, &d, &none)) != 0)
            BAD("returned %d errno %d", r, errno);
        break;
    case 14:
        if ((r = pthread_rwlock_wrlock(&rw)))
            BAD("returned %d", r);
        pthread_rwlock_unlock(&rw);
        break;
    case 15:
        if (usleep(sleep_ms * 1000))
            BAD("errno %d", errno);
        break;
    case 16: {
        char c;
        if ((r = read(empty_pipe[0], &c, 1)) != 1 || c != 'x')
            BAD("returned %d errno %d", r, errno);
        break;
    }
    case 17: {
        char buf[CHUNK];
        memset(buf, 'A' + i % 26, sizeof(buf));   /* a whole chunk: written atomically */
        if ((r = write(full_pipe[1], buf, sizeof(buf))) != CHUNK)
            BAD("returned %d errno %d", r, errno);
        break;
    }
    }
    if ((k >= 3 && k <= 6) || k == 13 || k == 15) {
        long took = ms_since(&t0);
        if (took < sleep_ms)
            BAD("woke after %ld ms of %d", took, sleep_ms);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc > 1)
        sleep_ms = atoi(argv[1]);
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, NULL);       /* inherited: only main waits for it */
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_usr2;
    sigaction(SIGUSR2, &sa, NULL);
    sem_init(&sem, 0, 0);
    pthread_barrier_init(&bar, NULL, PER(11) + 1);
    if (pipe(empty_pipe) || pipe(full_pipe))
        return 1;
    fcntl(full_pipe[1], F_SETFL, O_NONBLOCK);
    for (char c = 0;; c++) {
        if (write(full_pipe[1], &c, 1) != 1)
            break;
        prefill++;
    }
    fcntl(full_pipe[1], F_SETFL, 0);
    pthread_mutex_lock(&held);
    pthread_rwlock_rdlock(&rw);

    for (long i = 0; i < N; i++)
        if (pthread_create(&th[i], NULL, blocker, (void *)i)) {
            printf("FAIL pthread_create %ld\n", i);
            return 1;
        }
    while (atomic_load(&about_to_block) < N)
        usleep(1000);
    usleep(100000);                       /* into their calls */
    printf("ready\n");
    fflush(stdout);

    int sig;
    sigwait(&usr1, &sig);

    pthread_mutex_lock(&cm);
    released = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&cm);
    pthread_mutex_unlock(&held);
    for (int i = 0; i < PER(2); i++)
        sem_post(&sem);
    if (write(empty_pipe[1], "xxxxxxxx", PER(16)) != PER(16))
        printf("FAIL write to the empty pipe\n");
    for (int i = 0; i < N; i++)
        if (i % KINDS >= 7 && i % KINDS <= 10)
            pthread_kill(th[i], SIGUSR2);
    pthread_barrier_wait(&bar);
    atomic_store(&fword, 1);
    syscall(SYS_futex, &fword, FUTEX_WAKE_PRIVATE, N, NULL, NULL, 0);
    pthread_rwlock_unlock(&rw);

    int bad = 0;
    /* drain the full pipe: the prefill 0, 1, 2, ... then whole chunks */
    long want = prefill + (long)PER(17) * CHUNK, got = 0;
    char buf[CHUNK];
    while (got < want) {
        int n = read(full_pipe[0], buf, sizeof(buf) < (size_t)(want - got) ? sizeof(buf) : want - got);
        if (n <= 0) {
            printf("FAIL full pipe: read %d after %ld of %ld bytes\n", n, got, want);
            bad = 1;
            break;
        }
        for (int k = 0; k < n && !bad; k++) {
            long at = got + k;
            char expect = at < prefill ? (char)at : 0;
            if (at < prefill ? buf[k] != expect
                             : (at - prefill) % CHUNK && buf[k] != buf[k - 1 < 0 ? 0 : k - 1]) {
                printf("FAIL full pipe: byte %ld is %d\n", at, buf[k]);
                bad = 1;
            }
        }
        got += n;
    }
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        if (why[i][0]) {
            printf("FAIL thread %d (%s): %s\n", i, kind_name[i % KINDS], why[i]);
            bad = 1;
        }
    }
    if (!bad)
        printf("PASS %d threads\n", N);
    fflush(stdout);
    return bad;
}
