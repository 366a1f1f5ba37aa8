/* 64 MiB of pages, each "counter | pattern of the counter"; the first 8 MiB
 * are rewritten without pause (the hot part), the rest stay as written.
 * `total` holds the sum of all counters.  Prints "ready"; on SIGUSR1 checks
 * every page and the total and prints PASS or FAIL (a page copied before a
 * write and kept after it, or torn by one, fails).  With argument "zap" it
 * also drops a page of the cold part every 2000 rewrites (MADV_DONTNEED:
 * it reads as zeros, counter 0), so a page copied before it was dropped
 * and kept after fails too.  With "noise" the pattern is a pseudo-random
 * function of the counter and the word's place: pages lz4 cannot shrink, so
 * a page rewritten keeps its chunk's size in the image. */
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#define SIZE (64UL << 20)
#define HOT (8UL << 20)
#define PAGE 4096UL
#define WORDS (PAGE / 8)

static volatile sig_atomic_t go;
static volatile uint64_t total;

static int noise;

static void on_usr1(int s) { (void)s; go = 1; }

static uint64_t word(uint64_t c, unsigned i)
{
    uint64_t z = c * 0x9E3779B97F4A7C15ULL + i;
    if (!noise)
        return z;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;     /* splitmix64's finalizer */
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void fill(uint64_t *pg, uint64_t c)
{
    pg[0] = c;
    for (unsigned i = 1; i < WORDS; i++)
        pg[i] = word(c, i);
}

static int check(uint64_t *mem)
{
    uint64_t sum = 0;
    for (size_t p = 0; p < SIZE / PAGE; p++) {
        uint64_t *pg = mem + p * WORDS;
        int zero = 1;
        for (unsigned i = 0; i < WORDS && zero; i++)
            zero = pg[i] == 0;
        if (zero)
            continue;                 /* dropped: counter 0 */
        for (unsigned i = 1; i < WORDS; i++)
            if (pg[i] != word(pg[0], i))
                return 0;
        sum += pg[0];
    }
    return sum == total;
}

int main(int argc, char **argv)
{
    int zap = argc > 1 && strcmp(argv[1], "zap") == 0;
    noise = argc > 1 && strcmp(argv[1], "noise") == 0;
    unsigned long n = 0;
    uint64_t *mem = mmap(NULL, SIZE, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return 1;
    signal(SIGUSR1, on_usr1);
    for (size_t p = 0; p < SIZE / PAGE; p++) {
        fill(mem + p * WORDS, p + 1);
        total += p + 1;
    }
    printf("ready\n");
    fflush(stdout);
    uint64_t x = 88172645463325252ULL;
    while (!go) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        size_t p = x % (HOT / PAGE);
        uint64_t *pg = mem + p * WORDS;
        uint64_t c = pg[0];
        /* the signal is blocked while a page and the total disagree */
        sigset_t all, old;
        sigfillset(&all);
        sigprocmask(SIG_BLOCK, &all, &old);
        fill(pg, c + 1);
        total += 1;
        if (zap && ++n % 2000 == 0) {
            size_t q = HOT / PAGE + x % ((SIZE - HOT) / PAGE);
            uint64_t *cold = mem + q * WORDS;
            total -= cold[0];
            madvise(cold, PAGE, MADV_DONTNEED);
        }
        sigprocmask(SIG_SETMASK, &old, NULL);
    }
    printf("%s\n", check(mem) ? "PASS" : "FAIL");
    fflush(stdout);
    return 0;
}
