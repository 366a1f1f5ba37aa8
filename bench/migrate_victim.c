/* The victim of bench/migrate.py: fills MIB MiB of memory, either with
 * xorshift random bytes ("random": lz4 cannot shrink it) or with words
 * picked at random from a small vocabulary and small counters ("heap": like
 * a program's heap, lz4 shrinks it a few times), prints "ready" and counts
 * on stdout every 20 ms. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    size_t size = (size_t)atol(argv[1]) << 20;
    int heap = argc > 2 && !strcmp(argv[2], "heap");
    uint64_t *p = malloc(size), x = 88172645463325252ULL;
    static const char *words[] = {"alpha", "beta", "gamma", "delta", "key", "value", "node",
                                  "next", "prev", "name", "count", "total", "index", "item"};
    char *c = (char *)p;
    for (size_t i = 0; i < size / 8; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        if (!heap) {
            p[i] = x;
        } else if (i % 4 == 0) {
            memcpy(c + i * 8, words[x % 14], 8);
        } else if (i % 4 == 1) {
            p[i] = x & 0xFFFF;             /* a small counter */
        } else {
            /* a pointer to a nearby object, as allocators make them */
            p[i] = (uint64_t)(uintptr_t)(c + ((i * 8 + (x % 256) * 64) % size));
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    for (long n = 0;; n++) {
        printf("%ld\n", n);
        usleep(20000);
    }
}
