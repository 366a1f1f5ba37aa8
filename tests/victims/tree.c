/*
 * A process tree that checks itself after a grab --tree and resume.
 *
 *   parent ─┬─ child 0 ── grandchild
 *           ├─ child 1
 *           └─ child 2   (exits before the grab: a zombie until reaped)
 *
 * A MAP_SHARED|MAP_ANONYMOUS page holds the counters they share.  The
 * parent fills a pipe to each of children 0 and 1 with LINES numbered
 * lines before the grab; children say hello on a pipe back to the parent,
 * which reads nothing yet.  So at the grab every pipe holds unread data.
 *
 * On SIGUSR1 (sent after resume) the parent sets `go`: children 0 and 1
 * read their lines in order, add each to the shared counter and echo it
 * back; the grandchild adds its own count and exits 21, which child 0
 * checks.  The parent checks each child's lines arrive in order, the
 * shared counter holds every addition, and reaps the children with their
 * own exit codes (10 + i).  It prints PASS or FAIL ...
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LINES 100

struct shared {
    atomic_int up;
    atomic_int go;
    atomic_long sum;
    atomic_int grandchild_adds;
};

static struct shared *sh;
static volatile sig_atomic_t go_req;

static void on_usr1(int s) { (void)s; go_req = 1; }

static void nap(void)
{
    struct timespec t = {0, 1000000};
    nanosleep(&t, NULL);
}

static void wait_go(void)
{
    while (!atomic_load(&sh->go))
        nap();
}

static int read_line(FILE *f, char *buf, size_t n)
{
    return fgets(buf, n, f) != NULL;
}

static void child(int i, int in_fd, int out_fd)
{
    char hello[32];
    int n = snprintf(hello, sizeof hello, "hello %d\n", i);
    if (write(out_fd, hello, n) != n)
        _exit(90);
    pid_t gc = -1;
    if (i == 0) {
        gc = fork();
        if (gc == 0) {
            atomic_fetch_add(&sh->up, 1);
            wait_go();
            for (int k = 0; k < 50; k++)
                atomic_fetch_add(&sh->grandchild_adds, 1);
            _exit(21);
        }
    }
    if (i == 2) {
        atomic_fetch_add(&sh->up, 1);
        _exit(12);                       /* the zombie */
    }
    atomic_fetch_add(&sh->up, 1);
    wait_go();
    FILE *in = fdopen(in_fd, "r");
    char line[64];
    for (int k = 0; k < LINES; k++) {
        if (!read_line(in, line, sizeof line))
            _exit(91);
        long v = atol(line);
        if (v != i * 1000 + k)
            _exit(92);
        atomic_fetch_add(&sh->sum, v);
        n = snprintf(line, sizeof line, "%d %ld\n", i, v);
        if (write(out_fd, line, n) != n)
            _exit(93);
    }
    if (i == 0) {
        int st;
        if (waitpid(gc, &st, 0) != gc || !WIFEXITED(st) || WEXITSTATUS(st) != 21)
            _exit(94);
    }
    _exit(10 + i);
}

static void fail(const char *what, long a, long b)
{
    printf("FAIL %s (%ld, %ld)\n", what, a, b);
    fflush(stdout);
    exit(1);
}

int main(void)
{
    sh = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED)
        return 1;
    signal(SIGUSR1, on_usr1);
    int to[3][2], back[2];
    if (pipe(back))
        return 1;
    pid_t kids[3];
    for (int i = 0; i < 3; i++) {
        if (pipe(to[i]))
            return 1;
        for (int k = 0; k < LINES && i < 2; k++)
            dprintf(to[i][1], "%d\n", i * 1000 + k);
        kids[i] = fork();
        if (kids[i] == 0) {
            close(back[0]);
            close(to[i][1]);
            child(i, to[i][0], back[1]);
        }
        close(to[i][0]);
    }
    close(back[1]);
    while (atomic_load(&sh->up) < 4)
        nap();
    /* the zombie is a zombie before we say ready */
    siginfo_t si;
    for (;;) {
        memset(&si, 0, sizeof si);
        if (waitid(P_PID, kids[2], &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid)
            break;
        nap();
    }
    printf("ready\n");
    fflush(stdout);
    while (!go_req)
        pause();
    atomic_store(&sh->go, 1);

    FILE *in = fdopen(back[0], "r");
    char line[64];
    int next[2] = {0, 0}, hellos = 0;
    long want_sum = 0;
    for (int k = 0; k < LINES; k++)
        want_sum += k + (1000 + k);
    while (read_line(in, line, sizeof line)) {
        int who;
        long v;
        if (strncmp(line, "hello ", 6) == 0) {
            hellos++;
            continue;
        }
        if (sscanf(line, "%d %ld", &who, &v) != 2 || who < 0 || who > 1)
            fail("bad line from a child", 0, 0);
        if (v != who * 1000 + next[who])
            fail("lines out of order", who, v);
        next[who]++;
    }
    if (hellos != 3 || next[0] != LINES || next[1] != LINES)
        fail("lines missing", hellos, next[0] * 1000 + next[1]);
    for (int i = 0; i < 3; i++) {
        int st;
        if (waitpid(kids[i], &st, 0) != kids[i])
            fail("waitpid", i, errno);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 10 + i)
            fail("exit code", i, st);
    }
    if (atomic_load(&sh->sum) != want_sum)
        fail("shared sum", atomic_load(&sh->sum), want_sum);
    if (atomic_load(&sh->grandchild_adds) != 50)
        fail("grandchild adds", atomic_load(&sh->grandchild_adds), 50);
    printf("PASS\n");
    fflush(stdout);
    return 0;
}
