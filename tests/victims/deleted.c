/*
 * deleted DIR SIZE: writes SIZE bytes of a pattern into DIR/scratch,
 * unlinks it and keeps it open at offset 1000 (a second fd holds it open
 * read-only).  On SIGUSR1 it checks, after resume: still unlinked, the
 * offset, every byte, that writes work and the read-only fd refuses them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

static void fail(const char *what, long a, long b)
{
    printf("FAIL %s (%ld, %ld)\n", what, a, b);
    fflush(stdout);
    exit(1);
}

int main(int argc, char **argv)
{
    char path[4096];
    long size = atol(argv[2]);
    snprintf(path, sizeof path, "%s/scratch", argv[1]);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    int ro = open(path, O_RDONLY);
    if (fd < 0 || ro < 0)
        fail("open", errno, 0);
    for (long i = 0; i < size; i++) {
        char c = (char)(i * 7 + 3);
        if (write(fd, &c, 1) != 1)
            fail("write", i, errno);
    }
    unlink(path);
    lseek(fd, 1000, SEEK_SET);
    signal(SIGUSR1, on_usr1);
    printf("ready\n");
    fflush(stdout);
    while (!go)
        pause();

    struct stat st;
    if (fstat(fd, &st) || st.st_nlink != 0 || st.st_size != size)
        fail("unlinked, same size", (long)st.st_nlink, (long)st.st_size);
    if (lseek(fd, 0, SEEK_CUR) != 1000)
        fail("offset", lseek(fd, 0, SEEK_CUR), 1000);
    char *buf = malloc(size);
    if (pread(ro, buf, size, 0) != size)
        fail("read all", 0, 0);
    for (long i = 0; i < size; i++)
        if (buf[i] != (char)(i * 7 + 3))
            fail("byte", i, buf[i]);
    if (write(fd, "new", 3) != 3 || pread(ro, buf, 3, 1000) != 3 || memcmp(buf, "new", 3))
        fail("write through the read-write fd", errno, 0);
    if (write(ro, "x", 1) != -1 || errno != EBADF)
        fail("the read-only fd writes", errno, EBADF);
    printf("PASS\n");
    fflush(stdout);
    return 0;
}
