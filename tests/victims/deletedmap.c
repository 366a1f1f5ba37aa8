/* Deleted files that are mapped.  File A (64 KiB of 'a', then deleted) is
 * mapped shared twice and privately once (its first byte written: 'p');
 * file B (deleted) is mapped shared and also held open at an fd.  Prints
 * "ready"; on SIGUSR1 checks the contents, that both shared mappings of A
 * are one object (a write through one is seen through the other) and that
 * B's mapping and fd are one file (pwrite seen in the mapping): PASS or
 * FAIL why. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

int main(int argc, char **argv)
{
    char a_path[4096], b_path[4096];
    snprintf(a_path, sizeof a_path, "%s/a", argv[1]);
    snprintf(b_path, sizeof b_path, "%s/b", argv[1]);
    int a = open(a_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    int b = open(b_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (a < 0 || b < 0 || ftruncate(a, 65536) || ftruncate(b, 8192))
        return 1;
    char *s1 = mmap(0, 65536, PROT_READ | PROT_WRITE, MAP_SHARED, a, 0);
    char *s2 = mmap(0, 65536, PROT_READ | PROT_WRITE, MAP_SHARED, a, 0);
    char *pv = mmap(0, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE, a, 0);
    char *bm = mmap(0, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, b, 0);
    memset(s1, 'a', 65536);
    pv[0] = 'p';
    memcpy(bm, "bee", 3);
    close(a);
    unlink(a_path);
    unlink(b_path);
    signal(SIGUSR1, on_usr1);
    printf("ready\n");
    fflush(stdout);
    while (!go)
        usleep(10000);
    const char *why = NULL;
    if (s1[40000] != 'a' || s2[40000] != 'a')
        why = "shared contents";
    else if (pv[0] != 'p' || pv[30000] != 'a')
        why = "private contents";
    else if (memcmp(bm, "bee", 3))
        why = "B contents";
    if (!why) {
        s1[12345] = 'z';
        if (s2[12345] != 'z')
            why = "the two shared mappings are not one object";
        else if (pv[12345] != 'z' && pv[12345] != 'a')
            why = "private mapping";
    }
    if (!why) {
        if (pwrite(b, "fd!", 3, 100) != 3 || memcmp(bm + 100, "fd!", 3))
            why = "B's fd and mapping are not one file";
    }
    printf(why ? "FAIL %s\n" : "PASS\n", why);
    fflush(stdout);
    return 0;
}
