/*
 * Forks a child every ~0.5 ms; each child sleeps 2 ms and exits with its
 * round number modulo 200.  The parent reaps each one RING rounds later
 * with waitpid on its pid and checks that exit code: a child missing after
 * resume makes waitpid fail (ECHILD) and the program print FAIL.  It
 * prints its round every 100 rounds.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RING 8

int main(void)
{
    pid_t ring[RING];
    struct timespec pace = {0, 500000}, life = {0, 2000000};
    for (long round = 0;; round++) {
        int slot = round % RING;
        if (round >= RING) {
            int st;
            pid_t r = waitpid(ring[slot], &st, 0);
            if (r != ring[slot] || !WIFEXITED(st) || WEXITSTATUS(st) != (round - RING) % 200) {
                printf("FAIL round %ld: waitpid %d errno %d status %#x\n", round - RING, r,
                       errno, st);
                fflush(stdout);
                return 1;
            }
        }
        pid_t pid = fork();
        if (pid == 0) {
            nanosleep(&life, NULL);
            _exit(round % 200);
        }
        if (pid < 0) {
            printf("FAIL fork\n");
            return 1;
        }
        ring[slot] = pid;
        if (round % 100 == 0) {
            printf("%ld\n", round);
            fflush(stdout);
        }
        nanosleep(&pace, NULL);
    }
}
