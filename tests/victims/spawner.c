/*
 * Threads being created and exiting all the time, by the leader and by
 * other threads:
 *  - main starts a thread every ~0.5 ms and joins each one RING rounds
 *    later; a thread missing after resume would never be joined and the
 *    round counter would stop;
 *  - a relay: each relay thread starts the next (detached) and exits; a
 *    relay thread missing after resume would end the relay counter.
 * Main prints "ROUND RELAY" every 100 rounds.
 */
#include <pthread.h>
#include <stdio.h>
#include <time.h>

#define RING 16

static volatile long relays;
static pthread_attr_t detached;

static void *relay(void *arg)
{
    pthread_t next;
    struct timespec t = {0, 200000};
    (void)arg;
    relays++;
    nanosleep(&t, NULL);
    if (pthread_create(&next, &detached, relay, NULL)) {
        printf("FAIL relay create\n");
        fflush(stdout);
    }
    return NULL;
}

static void *brief(void *arg)
{
    struct timespec t = {0, 2000000};
    nanosleep(&t, NULL);
    return arg;
}

int main(void)
{
    pthread_t ring[RING];
    struct timespec pace = {0, 500000};
    pthread_t first;
    pthread_attr_init(&detached);
    pthread_attr_setdetachstate(&detached, PTHREAD_CREATE_DETACHED);
    pthread_create(&first, &detached, relay, NULL);
    for (long round = 0;; round++) {
        int slot = round % RING;
        if (round >= RING) {
            void *ret;
            if (pthread_join(ring[slot], &ret) || (long)ret != round - RING) {
                printf("FAIL join of round %ld\n", round - RING);
                fflush(stdout);
                return 1;
            }
        }
        if (pthread_create(&ring[slot], NULL, brief, (void *)round)) {
            printf("FAIL create\n");
            return 1;
        }
        if (round % 100 == 0) {
            printf("%ld %ld\n", round, relays);
            fflush(stdout);
        }
        nanosleep(&pace, NULL);
    }
}
