/* Signal state across a grab: a SIGUSR1 handler that runs on a sigaltstack,
 * SIGUSR2 blocked with one instance pending, SIGHUP ignored.  Prints
 * "ready"; after SIGUSR1 it checks all of it and prints PASS or FAIL: why. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char altstack[64 * 1024];
static volatile sig_atomic_t usr1_seen, usr1_on_altstack, usr2_seen;

static void on_usr1(int s)
{
    char here;
    (void)s;
    usr1_seen = 1;
    usr1_on_altstack = &here >= altstack && &here < altstack + sizeof(altstack);
}

static void on_usr2(int s) { (void)s; usr2_seen++; }

int main(void)
{
    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof(altstack), .ss_flags = 0};
    sigaltstack(&ss, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_ONSTACK;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_usr2;
    sa.sa_flags = 0;
    sigaction(SIGUSR2, &sa, NULL);
    signal(SIGHUP, SIG_IGN);
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR2);
    sigprocmask(SIG_BLOCK, &block, NULL);
    raise(SIGUSR2);                       /* pending from now on */
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("ready\n");
    sigset_t wait_mask;
    sigprocmask(SIG_BLOCK, NULL, &wait_mask);
    sigdelset(&wait_mask, SIGUSR1);
    while (!usr1_seen)
        sigsuspend(&wait_mask);

    const char *why = NULL;
    sigset_t now, pending;
    sigprocmask(SIG_BLOCK, NULL, &now);
    sigpending(&pending);
    stack_t cur;
    sigaltstack(NULL, &cur);
    if (!usr1_on_altstack) why = "SIGUSR1 handler did not run on the altstack";
    else if (!sigismember(&now, SIGUSR2)) why = "SIGUSR2 is no longer blocked";
    else if (!sigismember(&pending, SIGUSR2)) why = "SIGUSR2 is no longer pending";
    else if (usr2_seen) why = "SIGUSR2 was delivered while blocked";
    else if (cur.ss_sp != altstack || cur.ss_size != sizeof(altstack)) why = "altstack changed";
    if (!why) {
        kill(getpid(), SIGHUP);          /* ignored: must not kill us */
        sigprocmask(SIG_UNBLOCK, &block, NULL);
        if (usr2_seen != 1) why = "pending SIGUSR2 was not delivered once on unblock";
    }
    if (why)
        printf("FAIL: %s\n", why);
    else
        printf("PASS\n");
    return why ? 1 : 0;
}
