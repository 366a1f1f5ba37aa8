/* 64 MiB of pages: untouched, written zeros, random and patterned ones,
 * plus changed globals (.data, .bss) and a stack array.  Prints
 * "ready SUM"; on SIGUSR1 recomputes and prints PASS or FAIL and exits. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SIZE (64UL << 20)
#define PAGE 4096UL

static volatile sig_atomic_t go;
static uint64_t data_word = 0x1111111111111111ULL;   /* .data, changed below */
static uint64_t bss_words[4096];                     /* .bss, changed below */

static void on_usr1(int s) { (void)s; go = 1; }

static uint64_t sum(const uint8_t *p, size_t n, uint64_t h)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

static uint64_t checksum(uint8_t *mem, uint8_t *heap, uint8_t *stack)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    h = sum(mem, SIZE, h);
    h = sum(heap, 1 << 20, h);
    h = sum(stack, 64 * 1024, h);
    h = sum((uint8_t *)&data_word, sizeof(data_word), h);
    return sum((uint8_t *)bss_words, sizeof(bss_words), h);
}

int main(void)
{
    uint8_t stack[64 * 1024];
    uint8_t *mem = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint8_t *heap = malloc(1 << 20);
    uint64_t x = 0x9E3779B97F4A7C15ULL;
    for (size_t pg = 0; pg < SIZE / PAGE; pg++) {
        uint8_t *p = mem + pg * PAGE;
        switch (pg % 4) {
        case 0: break;                                /* never touched */
        case 1: memset(p, 0, PAGE); break;            /* written zeros */
        case 2:                                       /* random */
            for (size_t i = 0; i < PAGE / 8; i++) {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                ((uint64_t *)p)[i] = x;
            }
            break;
        case 3: memset(p, (int)(pg & 0xff) | 1, PAGE); break; /* pattern */
        }
    }
    (void)mem[SIZE - 1];      /* a read fault: the shared zero page */
    for (int i = 0; i < 1 << 20; i++)
        heap[i] = (uint8_t)(i * 7);
    for (int i = 0; i < 64 * 1024; i++)
        stack[i] = (uint8_t)(i * 13);
    data_word = 0x2222222222222222ULL;
    for (int i = 0; i < 4096; i += 3)
        bss_words[i] = i * 0x10001ULL;
    signal(SIGUSR1, on_usr1);
    uint64_t before = checksum(mem, heap, stack);
    printf("ready %016llx\n", (unsigned long long)before);
    fflush(stdout);
    while (!go)
        pause();
    uint64_t after = checksum(mem, heap, stack);
    printf("%s %016llx\n", after == before ? "PASS" : "FAIL", (unsigned long long)after);
    fflush(stdout);
    return after == before ? 0 : 1;
}
