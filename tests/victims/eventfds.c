/*
 * Event fds with state in them, used after a grab and resume.
 *
 *   counter   eventfd holding 8
 *   sem       eventfd in semaphore mode holding 3
 *   tick      timerfd, CLOCK_MONOTONIC, every 100 ms
 *   fired     timerfd that fired once before the grab, not read (ticks 1)
 *   wall      timerfd, CLOCK_REALTIME, TFD_TIMER_ABSTIME, now + WALL_MS
 *   sfd       signalfd for SIGUSR2 (blocked)
 *   ep        epoll: counter (data 0xAAAA), pipe a (EPOLLET, 0xBBBB), sfd (0xCCCC)
 *   ep2       epoll watching ep (0xDDDD)
 *   ep3       epoll watching pipe b; a thread waits in epoll_wait(ep3, -1)
 *
 * Prints "ready WALL_DEADLINE_NS".  On SIGUSR1 it checks everything (the
 * test sends SIGUSR2 first, to be read from sfd) and prints PASS or FAIL.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define WALL_MS 1500

static int counter, sem, tick, fired, wall, sfd, ep, ep2, ep3, pa[2], pb[2];
static volatile sig_atomic_t go;
static volatile uint64_t waiter_got;
static long long wall_deadline;

static void on_usr1(int s) { (void)s; go = 1; }

static void fail(const char *what, long long a, long long b)
{
    printf("FAIL %s (%lld, %lld)\n", what, a, b);
    fflush(stdout);
    exit(1);
}

static long long now_ns(clockid_t c)
{
    struct timespec t;
    clock_gettime(c, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void *waiter(void *arg)
{
    (void)arg;
    struct epoll_event ev;
    int n = epoll_wait(ep3, &ev, 1, -1);
    waiter_got = n == 1 ? ev.data.u64 : (uint64_t)-errno;
    return NULL;
}

static uint64_t wait_one(int epfd, int timeout_ms)
{
    struct epoll_event ev;
    int n = epoll_wait(epfd, &ev, 1, timeout_ms);
    return n == 1 ? ev.data.u64 : 0;
}

static void add(int epfd, int fd, uint32_t events, uint64_t data)
{
    struct epoll_event ev = {.events = events, .data.u64 = data};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev))
        fail("epoll_ctl", fd, errno);
}

int main(void)
{
    uint64_t v = 5;
    counter = eventfd(5, 0);
    v = 3;
    if (write(counter, &v, 8) != 8)
        fail("eventfd write", 0, 0);
    sem = eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK);
    tick = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct itimerspec every = {{0, 100000000}, {0, 100000000}};
    timerfd_settime(tick, 0, &every, NULL);
    fired = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct itimerspec once = {{0, 0}, {0, 1000000}};
    timerfd_settime(fired, 0, &once, NULL);
    wall = timerfd_create(CLOCK_REALTIME, 0);
    wall_deadline = now_ns(CLOCK_REALTIME) + WALL_MS * 1000000LL;
    struct itimerspec at = {{0, 0}, {wall_deadline / 1000000000, wall_deadline % 1000000000}};
    timerfd_settime(wall, TFD_TIMER_ABSTIME, &at, NULL);
    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    sigprocmask(SIG_BLOCK, &usr2, NULL);
    sfd = signalfd(-1, &usr2, SFD_NONBLOCK);
    if (pipe(pa) || pipe(pb))
        fail("pipe", 0, 0);
    ep = epoll_create1(0);
    ep2 = epoll_create1(0);
    ep3 = epoll_create1(0);
    add(ep, counter, EPOLLIN, 0xAAAA);
    add(ep, pa[0], EPOLLIN | EPOLLET, 0xBBBB);
    add(ep, sfd, EPOLLIN, 0xCCCC);
    add(ep2, ep, EPOLLIN, 0xDDDD);
    add(ep3, pb[0], EPOLLIN, 0xEEEE);
    signal(SIGUSR1, on_usr1);
    pthread_t th;
    pthread_create(&th, NULL, waiter, NULL);
    struct timespec settle = {0, 50000000};
    nanosleep(&settle, NULL);           /* `fired` fires; the waiter blocks */
    printf("ready %lld\n", wall_deadline);
    fflush(stdout);
    while (!go)
        pause();

    /* eventfds */
    if (read(counter, &v, 8) != 8 || v != 8)
        fail("counter", (long long)v, 8);
    for (int i = 0; i < 3; i++)
        if (read(sem, &v, 8) != 8 || v != 1)
            fail("semaphore read", i, (long long)v);
    if (read(sem, &v, 8) != -1 || errno != EAGAIN)
        fail("semaphore not empty", 0, errno);
    /* timerfds */
    if (read(fired, &v, 8) != 8 || v != 1)
        fail("fired timer's expiration", (long long)v, 1);
    struct timespec wait300 = {0, 300000000};
    nanosleep(&wait300, NULL);
    if (read(tick, &v, 8) != 8 || v < 2)
        fail("ticking timer", (long long)v, 2);
    if (read(wall, &v, 8) != 8 || v != 1)
        fail("wall timer", (long long)v, 1);
    if (now_ns(CLOCK_REALTIME) < wall_deadline)
        fail("wall timer fired early", now_ns(CLOCK_REALTIME), wall_deadline);
    /* epoll: ep2 sees ep ready (counter was readable before it was read:
     * write again), ep reports counter, then the pipe, then the signal */
    v = 1;
    if (write(counter, &v, 8) != 8)
        fail("eventfd write", 0, 0);
    if (wait_one(ep2, 1000) != 0xDDDD)
        fail("nested epoll", 0, 0);
    if (write(pa[1], "x", 1) != 1)
        fail("pipe a", 0, 0);
    /* counter, pipe and signalfd are all ready now, each reported with its data */
    int seen = 0;
    for (int i = 0; i < 3 && seen != 7; i++) {
        struct epoll_event evs[4];
        int n = epoll_wait(ep, evs, 4, 1000);
        for (int k = 0; k < n; k++)
            seen |= evs[k].data.u64 == 0xAAAA ? 1 : evs[k].data.u64 == 0xBBBB ? 2
                  : evs[k].data.u64 == 0xCCCC ? 4 : 8;
    }
    if (seen != 7)
        fail("epoll events (1 counter, 2 pipe, 4 signalfd, 8 other)", seen, 7);
    struct signalfd_siginfo si;
    if (read(sfd, &si, sizeof si) != sizeof si || si.ssi_signo != SIGUSR2)
        fail("signalfd", si.ssi_signo, SIGUSR2);
    /* the thread blocked in epoll_wait wakes with its event */
    if (write(pb[1], "y", 1) != 1)
        fail("pipe b", 0, 0);
    pthread_join(th, NULL);
    if (waiter_got != 0xEEEE)
        fail("thread in epoll_wait", (long long)waiter_got, 0xEEEE);
    printf("PASS\n");
    fflush(stdout);
    return 0;
}
