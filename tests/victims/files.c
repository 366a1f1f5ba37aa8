/* Open files across a grab: A opened O_APPEND, B opened read-write at
 * offset 2.  Writes "a1" to A and "b1b1" to B, prints "ready", and after
 * SIGUSR1 writes "a2" to A and "XX" at B's offset: A = a1a2, B = b1XX. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    int a = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_TRUNC, 0644);
    int b = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (a < 0 || b < 0 || write(a, "a1", 2) != 2 || write(b, "b1b1", 4) != 4)
        return 3;
    lseek(b, 2, SEEK_SET);
    signal(SIGUSR1, on_usr1);
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("ready\n");
    while (!go)
        pause();
    lseek(a, 0, SEEK_SET);             /* O_APPEND must still win */
    if (write(a, "a2", 2) != 2 || write(b, "XX", 2) != 2)
        return 4;
    printf("done\n");
    return 0;
}
