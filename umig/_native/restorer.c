/*
 * The restorer: freestanding code that turns the resuming process into the
 * grabbed one.  It runs from a region of its own (code, plan, stack) that
 * Python placed where neither the resuming umig nor the image has anything,
 * unmaps everything else, maps the image's VMAs, lets the tracing umig fill
 * the pages (int3 stop), restores the rest of the task state and ends in
 * rt_sigreturn with the registers Python put in the sigframe.
 *
 * No libc: the code it could call is about to be unmapped.  Every failure
 * stops with UMIG_STOP_FAIL (rdi = step, rsi = -errno) for the tracer to
 * report, then exits with 100 + step.
 */

typedef unsigned char uint8_t;
typedef unsigned int uint32_t;
typedef int int32_t;
typedef unsigned long uint64_t;
typedef long int64_t;

#include "plan.h"
#include "rsys.h"

#define STR2(x) #x
#define STR(x) STR2(x)

/*
 * The head of restorer.bin, at fixed offsets (plan.h): the entry, a
 * `syscall; int3` gadget the tracer uses to unmap this region after the
 * jump, and the plan ABI number for a load-time check.
 */
__asm__(
    ".section .text.head,\"ax\",@progbits\n"
    ".globl umig_entry\n"
    "umig_entry:\n"                     /* rdi = plan */
    "   movq 16(%rdi), %rsp\n"          /* plan->stack_top */
    "   andq $-16, %rsp\n"
    "   call restore_main\n"
    "   ud2\n"
    ".org " STR(UMIG_BLOB_GADGET_OFF) "\n"
    "umig_gadget:\n"
    "   syscall\n"
    "   int3\n"
    ".org " STR(UMIG_BLOB_ABI_OFF) "\n"
    "   .long " STR(UMIG_PLAN_ABI) "\n"
    "   .ascii \"umig-restorer\\0\"\n"
    ".previous\n");

#define PROT_READ 1
#define PROT_WRITE 2
#define MAP_ANONYMOUS 0x20
#define MAP_FIXED_NOREPLACE 0x100000
#define O_CLOEXEC 02000000
#define SIG_SETMASK 2
#define SIGTRAP 5
#define PR_SET_PDEATHSIG 1
#define PR_SET_NAME 15
#define PR_SET_MM 35
#define PR_SET_MM_MAP 14
#define PR_SET_NO_NEW_PRIVS 38
#define PR_CAPBSET_DROP 24
#define PR_SET_KEEPCAPS 8
#define PR_SET_SECUREBITS 28
#define PR_CAP_AMBIENT 47
#define SECBIT_KEEP_CAPS 0x10
#define PR_CAP_AMBIENT_RAISE 2
#define ARCH_SET_GS 0x1001
#define ARCH_SET_FS 0x1002
#define ARCH_MAP_VDSO_64 0x2003
#define RSEQ_FLAG_UNREGISTER 1
#define MADV_DONTNEED 4
#define MADV_MERGEABLE 12
#define MADV_HUGEPAGE 14
#define MADV_NOHUGEPAGE 15
#define MADV_DONTDUMP 16
#define MADV_DONTFORK 10
#define MADV_WIPEONFORK 18
#define LINUX_CAPABILITY_VERSION_3 0x20080522
#define CLONE_VM 0x100
#define CLONE_FS 0x200
#define CLONE_FILES 0x400
#define CLONE_SIGHAND 0x800
#define CLONE_THREAD 0x10000
#define CLONE_SYSVSEM 0x40000

/* struct clone_args up to set_tid_size (CLONE_ARGS_SIZE_VER1) */
struct clone_args {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
    uint64_t set_tid, set_tid_size;
};

/* gcc may emit calls to these for struct copies; there is no libc. */
void *memset(void *d, int c, unsigned long n)
{
    unsigned char *p = d;
    while (n--)
        *p++ = (unsigned char)c;
    return d;
}

void *memcpy(void *d, const void *s, unsigned long n)
{
    unsigned char *a = d;
    const unsigned char *b = s;
    while (n--)
        *a++ = *b++;
    return d;
}

static void stop(long why, long a, long b)
{
    __asm__ volatile("int3" : : "a"(why), "D"(a), "S"(b) : "memory");
}

static void __attribute__((noreturn)) fail(struct umig_plan *p, int step, long err)
{
    p->step = step;
    p->err = (int32_t)err;
    stop(UMIG_STOP_FAIL, step, err);
    for (;;)
        sys1(NR_exit_group, 100 + step);
}

#define CHECK(step, expr)                                                   \
    do {                                                                    \
        long _r = (long)(expr);                                             \
        if (_r < 0)                                                         \
            fail(p, step, _r);                                              \
    } while (0)

static void set_mask(uint64_t mask)
{
    sys4(NR_rt_sigprocmask, SIG_SETMASK, (long)&mask, 0, 8);
}

/* Install the target's fds at their numbers; close everything else but
 * the restore-only range [aux_lo, aux_hi].  fds[] is sorted by dst; every
 * src lies in the aux range, above every dst, or is its dst already (umig
 * made it there: then only its close-on-exec bit is set). */
static void restore_fds(struct umig_plan *p)
{
    struct umig_fdmap *f = (struct umig_fdmap *)p->fds;
    long next = 0;
    for (uint32_t i = 0; i < p->nfds; i++) {
        if (f[i].src == f[i].dst)
            CHECK(UMIG_STEP_FDS, sys3(NR_fcntl, f[i].dst, 2 /* F_SETFD */,
                                      f[i].cloexec ? 1 /* FD_CLOEXEC */ : 0));
        else
            CHECK(UMIG_STEP_FDS, sys3(NR_dup3, f[i].src, f[i].dst,
                                      f[i].cloexec ? O_CLOEXEC : 0));
        if (f[i].dst > next)
            CHECK(UMIG_STEP_FDS, sys3(NR_close_range, next, f[i].dst - 1, 0));
        next = f[i].dst + 1;
    }
    if (p->aux_lo > next)
        CHECK(UMIG_STEP_FDS, sys3(NR_close_range, next, p->aux_lo - 1, 0));
    CHECK(UMIG_STEP_FDS, sys3(NR_close_range, p->aux_hi + 1, ~0U, 0));
}

/* Unmap everything but the region and the VMAs inherited from the parent. */
static void unmap_all(struct umig_plan *p)
{
    struct umig_vma *v = (struct umig_vma *)p->vmas;
    uint64_t from = 0;
    int region_done = 0;
    for (uint32_t i = 0; i <= p->nvmas; i++) {
        uint64_t start, end;
        if (i < p->nvmas && !v[i].inherit)
            continue;
        if (!region_done && (i == p->nvmas || p->blob_start < v[i].start)) {
            start = p->blob_start, end = p->blob_end;
            region_done = 1;
            i--;                   /* this VMA (if any) again, after the region */
        } else if (i < p->nvmas) {
            start = v[i].start, end = v[i].end;
        } else {
            break;
        }
        if (start > from)
            CHECK(UMIG_STEP_UNMAP, sys2(NR_munmap, from, start - from));
        from = end;
    }
    if (p->task_size > from)
        CHECK(UMIG_STEP_UNMAP, sys2(NR_munmap, from, p->task_size - from));
}

static void map_vmas(struct umig_plan *p)
{
    struct umig_vma *v = (struct umig_vma *)p->vmas;
    for (uint32_t i = 0; i < p->nvmas; i++) {
        if (v[i].inherit)
            continue;
        long flags = v[i].map_flags | MAP_FIXED_NOREPLACE;
        if (v[i].fd < 0)
            flags |= MAP_ANONYMOUS;
        long r = sys6(NR_mmap, v[i].start, v[i].end - v[i].start, v[i].init_prot, flags,
                      v[i].fd, v[i].pgoff);
        if (r < 0)
            fail(p, UMIG_STEP_MAP, r);
        if ((uint64_t)r != v[i].start)
            fail(p, UMIG_STEP_MAP, -17 /* EEXIST: placed elsewhere */);
    }
}

static void protect_vmas(struct umig_plan *p)
{
    static const struct {
        uint32_t bit;
        int advice;
    } adv[] = {
        {UMIG_MADV_DONTFORK, MADV_DONTFORK},   {UMIG_MADV_DONTDUMP, MADV_DONTDUMP},
        {UMIG_MADV_WIPEONFORK, MADV_WIPEONFORK}, {UMIG_MADV_HUGEPAGE, MADV_HUGEPAGE},
        {UMIG_MADV_NOHUGEPAGE, MADV_NOHUGEPAGE}, {UMIG_MADV_MERGEABLE, MADV_MERGEABLE},
    };
    struct umig_vma *v = (struct umig_vma *)p->vmas;
    for (uint32_t i = 0; i < p->nvmas; i++) {
        long len = v[i].end - v[i].start;
        for (unsigned k = 0; k < sizeof(adv) / sizeof(adv[0]); k++)
            if (v[i].madv & adv[k].bit)
                CHECK(UMIG_STEP_MADVISE, sys3(NR_madvise, v[i].start, len, adv[k].advice));
        if (v[i].prot != v[i].init_prot)
            CHECK(UMIG_STEP_PROTECT, sys3(NR_mprotect, v[i].start, len, v[i].prot));
    }
}

static void restore_creds(struct umig_plan *p)
{
    struct umig_creds *c = &p->creds;
    struct {
        uint32_t version;
        int pid;
    } hdr = {LINUX_CAPABILITY_VERSION_3, 0};
    struct {
        uint32_t effective, permitted, inheritable;
    } data[2];

    if (!c->set)
        return;
    for (int cap = 0; cap < 64; cap++)
        if (!(c->cap_bnd & (1UL << cap)))
            sys2(NR_prctl, PR_CAPBSET_DROP, cap); /* EINVAL past the last cap */
    /* the image's securebits while we may still set them (CAP_SETPCAP), with
     * KEEP_CAPS so the permitted set survives leaving uid 0 ... */
    CHECK(UMIG_STEP_CREDS, sys2(NR_prctl, PR_SET_SECUREBITS, c->securebits | SECBIT_KEEP_CAPS));
    CHECK(UMIG_STEP_CREDS, sys2(NR_setgroups, c->ngroups, c->groups));
    CHECK(UMIG_STEP_CREDS, sys3(NR_setresgid, c->gid, c->egid, c->sgid));
    sys1(NR_setfsgid, c->fsgid);
    CHECK(UMIG_STEP_CREDS, sys3(NR_setresuid, c->uid, c->euid, c->suid));
    sys1(NR_setfsuid, c->fsuid);
    for (int i = 0; i < 2; i++) {
        data[i].effective = c->cap_eff[i];
        data[i].permitted = c->cap_prm[i];
        data[i].inheritable = c->cap_inh[i];
    }
    CHECK(UMIG_STEP_CREDS, sys2(NR_capset, (long)&hdr, (long)data));
    for (int cap = 0; cap < 64; cap++)
        if (c->cap_amb & (1UL << cap))
            CHECK(UMIG_STEP_CREDS, sys5(NR_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0));
    /* ... and KEEP_CAPS back to the image's (needs no capability) */
    CHECK(UMIG_STEP_CREDS, sys2(NR_prctl, PR_SET_KEEPCAPS, !!(c->securebits & SECBIT_KEEP_CAPS)));
}

static void restore_task(struct umig_plan *p)
{
    if (p->drop_sigchld) {
        /* setting SIG_IGN discards a pending SIGCHLD (the zombies were
         * made with the default action, so they stay zombies) */
        struct umig_ksigaction ign;
        memset(&ign, 0, sizeof(ign));
        ign.handler = 1;
        CHECK(UMIG_STEP_SIGACTION, sys4(NR_rt_sigaction, 17, (long)&ign, 0, 8));
    }
    for (int i = 0; i < 64; i++)
        if ((p->act_set & (1UL << i)) && i + 1 != SIGTRAP)
            CHECK(UMIG_STEP_SIGACTION, sys4(NR_rt_sigaction, i + 1, (long)&p->act[i], 0, 8));
    for (int i = 0; i < 3; i++)
        if (p->itimer_set & (1U << i))
            CHECK(UMIG_STEP_ITIMER, sys3(NR_setitimer, i, (long)p->itimers[i], 0));
    for (uint32_t i = 0; i < p->nrlimits; i++)
        CHECK(UMIG_STEP_RLIMIT, sys4(NR_prlimit64, 0, p->rlimits[i].resource,
                                     (long)&p->rlimits[i].cur, 0));
    CHECK(UMIG_STEP_TASK, sys1(NR_personality, p->personality));
    sys1(NR_umask, p->umask);
    CHECK(UMIG_STEP_TASK, sys2(NR_prctl, PR_SET_NAME, (long)p->comm));
    if (p->robust_len)
        CHECK(UMIG_STEP_TASK, sys2(NR_set_robust_list, p->robust_list, p->robust_len));
    sys1(NR_set_tid_address, p->clear_child_tid);
    if (p->no_new_privs)
        CHECK(UMIG_STEP_TASK, sys5(NR_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
    if (p->rseq)
        CHECK(UMIG_STEP_RSEQ, sys4(NR_rseq, p->rseq, p->rseq_len, 0, p->rseq_sig));
}

static void queue_own(struct umig_plan *p, struct umig_pending *q, uint32_t n)
{
    long pid = sys0(NR_getpid), tid = sys0(NR_gettid);
    for (uint32_t i = 0; i < n; i++) {
        if (q[i].shared)
            CHECK(UMIG_STEP_SIGQUEUE, sys3(NR_rt_sigqueueinfo, pid, q[i].sig, (long)q[i].info));
        else
            CHECK(UMIG_STEP_SIGQUEUE, sys4(NR_rt_tgsigqueueinfo, pid, tid, q[i].sig, (long)q[i].info));
    }
}

static void __attribute__((noreturn)) sigreturn_to(uint64_t frame)
{
    __asm__ volatile("movq %0, %%rsp\n"
                     "movl $15, %%eax\n"         /* rt_sigreturn */
                     "syscall\n"
                     "ud2\n"
                     :
                     : "r"(frame + 8)
                     : "memory");
    __builtin_unreachable();
}

/* A thread's life in the restorer: its own registrations and credentials
 * (credentials are per thread), the READY stop, its own signals, and
 * rt_sigreturn into its saved registers. */
void __attribute__((used, noreturn)) thread_main(struct umig_thread *t, struct umig_plan *p)
{
    if (t->robust_len)
        CHECK(UMIG_STEP_THREAD, sys2(NR_set_robust_list, t->robust_list, t->robust_len));
    sys1(NR_set_tid_address, t->clear_child_tid);
    if (t->rseq)
        CHECK(UMIG_STEP_RSEQ, sys4(NR_rseq, t->rseq, t->rseq_len, 0, t->rseq_sig));
    CHECK(UMIG_STEP_THREAD, sys2(NR_prctl, PR_SET_NAME, (long)t->comm));
    restore_creds(p);
    stop(UMIG_STOP_READY, 0, 0);           /* the tracer follows it from here */
    set_mask(~0UL);
    queue_own(p, (struct umig_pending *)t->pending, t->npending);
    CHECK(UMIG_STEP_TLS, sys2(NR_arch_prctl, ARCH_SET_FS, t->fs_base));
    CHECK(UMIG_STEP_TLS, sys2(NR_arch_prctl, ARCH_SET_GS, t->gs_base));
    sigreturn_to(t->sigframe);
}

/* clone3 a thread that starts in thread_main(t, p) on its own stack: the
 * child keeps r8/r9 across the syscall and finds its arguments there. */
static long spawn_thread(struct umig_plan *p, struct umig_thread *t)
{
    int32_t tid = t->tid;
    struct clone_args a;
    memset(&a, 0, sizeof(a));
    a.flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM;
    a.stack = t->stack_lo;
    a.stack_size = t->stack_size;
    if (tid) {
        a.set_tid = (uint64_t)&tid;
        a.set_tid_size = 1;
    }
    register long r8 __asm__("r8") = (long)t;
    register long r9 __asm__("r9") = (long)p;
    long ret;
    __asm__ volatile("syscall\n\t"
                     "testq %%rax, %%rax\n\t"
                     "jnz 1f\n\t"
                     "movq %%r8, %%rdi\n\t"
                     "movq %%r9, %%rsi\n\t"
                     "call thread_main\n\t"
                     "ud2\n"
                     "1:\n"
                     : "=a"(ret)
                     : "a"(NR_clone3), "D"(&a), "S"(sizeof(a)), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

/* A zombie-to-be: end now, named and with the wait status the image gives. */
static void __attribute__((noreturn)) become_zombie(struct umig_child *c)
{
    uint32_t status = c->status;
    int sig = status & 0x7f;
    sys2(NR_prctl, PR_SET_NAME, (long)c->comm);
    if (sig) {
        struct umig_ksigaction dfl;
        memset(&dfl, 0, sizeof(dfl));
        sys4(NR_rt_sigaction, sig, (long)&dfl, 0, 8);
        uint64_t mask = ~(1UL << (sig - 1));
        sys4(NR_rt_sigprocmask, SIG_SETMASK, (long)&mask, 0, 8);
        sys3(NR_tgkill, sys0(NR_getpid), sys0(NR_gettid), sig);
    }
    for (;;)
        sys1(NR_exit_group, (status >> 8) & 0xff);
}

/* Join the process's session and group: a session leader makes its own;
 * a group whose leader is a sibling may not exist yet, so wait for it. */
static void enter_session(struct umig_plan *p)
{
    if (p->setsid) {
        CHECK(UMIG_STEP_SESSION, sys0(NR_setsid));
        return;
    }
    if (!p->setpgid)
        return;
    long r;
    for (long tries = 0; (r = sys2(NR_setpgid, 0, p->pgid)) == -1 /* EPERM */; tries++) {
        if (tries > 200000)
            fail(p, UMIG_STEP_SESSION, r);
        sys0(NR_sched_yield);
    }
    CHECK(UMIG_STEP_SESSION, r);
}

void __attribute__((used, noreturn)) restore_main(struct umig_plan *p);

/* Fork the children, each into its own restore (or its end); the parent
 * goes on.  Without CLONE_VM the child has a copy of everything, this
 * stack included, and carries on from the clone3 with rax = 0. */
static void fork_children(struct umig_plan *p)
{
    struct umig_child *c = (struct umig_child *)p->children;
    for (uint32_t i = 0; i < p->nchildren; i++) {
        int32_t pid = c[i].pid;
        struct clone_args a;
        memset(&a, 0, sizeof(a));
        a.exit_signal = c[i].exit_signal;
        if (pid) {
            a.set_tid = (uint64_t)&pid;
            a.set_tid_size = 1;
        }
        long r = sys2(NR_clone3, (long)&a, sizeof(a));
        if (r < 0)
            fail(p, UMIG_STEP_FORK, r);
        if (r == 0) {
            if (c[i].zombie)
                become_zombie(&c[i]);
            restore_main((struct umig_plan *)c[i].plan);
        }
    }
}

void __attribute__((used, noreturn)) restore_main(struct umig_plan *p)
{
    p->step = UMIG_STEP_START;
    /* every signal waits until rt_sigreturn installs the target's mask;
     * SIGTRAP stays open for the int3 stops */
    set_mask(~(1UL << (SIGTRAP - 1)));

    if (p->old_rseq)
        CHECK(UMIG_STEP_RSEQ_DROP, sys4(NR_rseq, p->old_rseq, p->old_rseq_len,
                                        RSEQ_FLAG_UNREGISTER, p->old_rseq_sig));
    enter_session(p);
    restore_fds(p);
    struct umig_epitem *ep = (struct umig_epitem *)p->epitems;
    for (uint32_t i = 0; i < p->nepitems; i++) {
        struct {
            uint32_t events;
            uint64_t data;
        } __attribute__((packed)) ev = {ep[i].events, ep[i].data};
        CHECK(UMIG_STEP_EPOLL, sys4(NR_epoll_ctl, ep[i].epfd, 1 /* EPOLL_CTL_ADD */, ep[i].tfd,
                                    (long)&ev));
    }
    if (p->cwd_fd >= 0)
        CHECK(UMIG_STEP_CWD, sys1(NR_fchdir, p->cwd_fd));

    p->step = UMIG_STEP_UNMAP;
    unmap_all(p);

    p->step = UMIG_STEP_MAP;
    map_vmas(p);
    struct umig_discard *d = (struct umig_discard *)p->discards;
    for (uint32_t i = 0; i < p->ndiscards; i++)
        CHECK(UMIG_STEP_MADVISE, sys3(NR_madvise, d[i].start, d[i].len, MADV_DONTNEED));
    if (p->vdso_addr)
        CHECK(UMIG_STEP_VDSO, sys2(NR_arch_prctl, ARCH_MAP_VDSO_64, p->vdso_addr));

    stop(UMIG_STOP_MAPPED, 0, 0);          /* the tracer writes the pages */
    if (p->nchildren) {
        fork_children(p);                  /* they inherit the memory as it is now */
        stop(UMIG_STOP_FORKED, 0, 0);
    }

    p->step = UMIG_STEP_PROTECT;
    protect_vmas(p);
    if (p->set_mm)
        CHECK(UMIG_STEP_MM, sys5(NR_prctl, PR_SET_MM, PR_SET_MM_MAP, (long)&p->mm,
                                 sizeof(p->mm), 0));
    CHECK(UMIG_STEP_CLOSE, sys3(NR_close_range, p->aux_lo, p->aux_hi, 0));
    struct umig_lock *lk = (struct umig_lock *)p->locks;
    for (uint32_t i = 0; i < p->nlocks; i++) {
        struct {
            short type, whence;
            long start, len;
            int pid;
        } fl = {(short)lk[i].type, 0 /* SEEK_SET */, (long)lk[i].start, (long)lk[i].len, 0};
        CHECK(UMIG_STEP_LOCK, sys3(NR_fcntl, lk[i].fd, 6 /* F_SETLK */, (long)&fl));
    }
    restore_task(p);

    /* the other threads, while we may still choose their tids */
    struct umig_thread *t = (struct umig_thread *)p->threads;
    for (uint32_t i = 0; i < p->nthreads; i++) {
        long r = spawn_thread(p, &t[i]);
        if (r < 0)
            fail(p, UMIG_STEP_THREAD, r);
    }
    restore_creds(p);
    /* after the credentials: changing them clears the parent-death signal */
    CHECK(UMIG_STEP_TASK, sys2(NR_prctl, PR_SET_PDEATHSIG, p->pdeathsig));

    p->step = UMIG_STEP_SIGRETURN;
    stop(UMIG_STOP_READY, 0, 0);           /* the tracer follows us from here */

    /* SIGTRAP's disposition only now: the int3 stops would reset an ignored one */
    if (p->act_set & (1UL << (SIGTRAP - 1)))
        CHECK(UMIG_STEP_SIGACTION, sys4(NR_rt_sigaction, SIGTRAP, (long)&p->act[SIGTRAP - 1], 0, 8));
    set_mask(~0UL);
    queue_own(p, (struct umig_pending *)p->pending, p->npending);
    CHECK(UMIG_STEP_TLS, sys2(NR_arch_prctl, ARCH_SET_FS, p->fs_base));
    CHECK(UMIG_STEP_TLS, sys2(NR_arch_prctl, ARCH_SET_GS, p->gs_base));
    sigreturn_to(p->sigframe);
}
