/*
 * A memfd with contents, a file offset and seals, also mapped shared.
 * Before the grab: "hello memfd" at 0, 64 KiB long, "mapped" written at
 * 4096 through the mapping, offset 6, seals SHRINK|GROW.  On SIGUSR1 it
 * checks, after resume: name, offset, contents, seals (growing fails),
 * and that the mapping and the fd are one object both ways.  PASS or FAIL.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

static void fail(const char *what, long a, long b)
{
    printf("FAIL %s (%ld, %ld)\n", what, a, b);
    fflush(stdout);
    exit(1);
}

int main(void)
{
    int fd = memfd_create("umig-test", MFD_ALLOW_SEALING);
    if (fd < 0 || write(fd, "hello memfd", 11) != 11 || ftruncate(fd, 65536))
        fail("setup", errno, 0);
    char *m = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED)
        fail("mmap", errno, 0);
    memcpy(m + 4096, "mapped", 6);
    lseek(fd, 6, SEEK_SET);
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW))
        fail("seal", errno, 0);
    signal(SIGUSR1, on_usr1);
    printf("ready %d\n", fd);
    fflush(stdout);
    while (!go)
        pause();

    char path[64], link[128] = {0}, buf[16] = {0};
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    if (readlink(path, link, sizeof link - 1) < 0 || strcmp(link, "/memfd:umig-test (deleted)"))
        fail("name", 0, 0);
    if (read(fd, buf, 5) != 5 || memcmp(buf, "memfd", 5))
        fail("offset and contents", 0, 0);
    if (pread(fd, buf, 6, 4096) != 6 || memcmp(buf, "mapped", 6))
        fail("what the mapping wrote, read through the fd", 0, 0);
    memcpy(m + 8192, "again", 5);
    if (pread(fd, buf, 5, 8192) != 5 || memcmp(buf, "again", 5))
        fail("mapping and fd are one object", 0, 0);
    if (pwrite(fd, "fd", 2, 100) != 2 || memcmp(m + 100, "fd", 2))
        fail("fd and mapping are one object", 0, 0);
    if (fcntl(fd, F_GET_SEALS) != (F_SEAL_SHRINK | F_SEAL_GROW))
        fail("seals", fcntl(fd, F_GET_SEALS), F_SEAL_SHRINK | F_SEAL_GROW);
    if (ftruncate(fd, 1 << 20) != -1 || errno != EPERM)
        fail("the grow seal", errno, EPERM);
    printf("PASS\n");
    fflush(stdout);
    return 0;
}
