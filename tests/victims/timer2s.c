/* A timerfd armed for 2 s (CLOCK_MONOTONIC, relative, one shot).  Prints
 * "armed T" (CLOCK_MONOTONIC, ns), blocks in read() and prints
 * "fired N T" with the expirations read and the time it fired. */
#include <stdint.h>
#include <stdio.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(void)
{
    int t = timerfd_create(CLOCK_MONOTONIC, 0);
    struct itimerspec its = {.it_value = {.tv_sec = 2}};
    timerfd_settime(t, 0, &its, NULL);
    printf("armed %lld\n", now_ns());
    fflush(stdout);
    uint64_t n = 0;
    if (read(t, &n, sizeof n) != sizeof n)
        return 1;
    printf("fired %llu %lld\n", (unsigned long long)n, now_ns());
    fflush(stdout);
    pause();
    return 0;
}
