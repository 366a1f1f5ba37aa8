/* Prints 0, 1, 2, ... one per line, every INTERVAL_US (default 20000).
 * With BALLAST_MIB, first fills that much memory with random bytes (so the
 * image is big).  Tests check the sequence continues without gap or repeat. */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long interval = argc > 1 ? atol(argv[1]) : 20000;
    long ballast = argc > 2 ? atol(argv[2]) : 0;
    if (ballast) {
        uint64_t *p = malloc(ballast << 20), x = 88172645463325252ULL;
        for (size_t i = 0; i < (size_t)(ballast << 20) / 8; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            p[i] = x;
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (long i = 0;; i++) {
        printf("%ld\n", i);
        usleep(interval);
    }
}
