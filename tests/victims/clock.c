/* Calls the vDSO's clocks in a loop (clock_gettime, gettimeofday, time,
 * getcpu through glibc, which caches their vDSO addresses) and prints a
 * counter with the monotonic time, every 20 ms.  A broken vDSO after a
 * resume shows as a crash or time going backwards (then "FAIL"). */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    double last = 0;
    for (long i = 0;; i++) {
        struct timespec ts, r = {0, 20000000};
        struct timeval tv;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        gettimeofday(&tv, NULL);
        time_t t = time(NULL);
        int cpu = sched_getcpu();
        double now = ts.tv_sec + ts.tv_nsec / 1e9;
        if (now < last || tv.tv_sec < 1000000000 || t < 1000000000 || cpu < 0) {
            printf("FAIL %ld\n", i);
            return 1;
        }
        last = now;
        printf("%ld %.6f\n", i, now);
        nanosleep(&r, NULL);
    }
}
