/* Blocks in one syscall (argv[1]: nanosleep, nanosleep-norem, read, pause)
 * after printing "ready", then prints what the call returned. */
#include <errno.h>
#include <stdlib.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void on_usr1(int s) { (void)s; }

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "nanosleep";
    double sleep_s = argc > 2 ? atof(argv[2]) : 2.0;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("ready\n");
    double t0 = now();
    long r;
    if (!strcmp(mode, "nanosleep") || !strcmp(mode, "nanosleep-norem")) {
        struct timespec req = {(time_t)sleep_s, (long)((sleep_s - (time_t)sleep_s) * 1e9)}, rem;
        r = nanosleep(&req, strcmp(mode, "nanosleep") ? NULL : &rem);
        printf("returned %ld errno=%d elapsed=%.3f\n", r, r ? errno : 0, now() - t0);
    } else if (!strcmp(mode, "read")) {
        char buf[64] = {0};
        r = read(0, buf, sizeof(buf) - 1);
        printf("returned %ld errno=%d data=%s\n", r, r < 0 ? errno : 0, buf);
    } else if (!strcmp(mode, "pause")) {
        r = pause();
        printf("returned %ld errno=%d\n", r, errno);
    } else {
        return 2;
    }
    return 0;
}
