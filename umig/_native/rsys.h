/*
 * The restorer's own syscall wrappers (x86_64), only those it uses.
 * Freestanding: no libc.  Every wrapper returns the raw kernel result,
 * i.e. -errno on failure.
 */

#define NR_read 0
#define NR_write 1
#define NR_close 3
#define NR_mmap 9
#define NR_mprotect 10
#define NR_munmap 11
#define NR_rt_sigaction 13
#define NR_rt_sigprocmask 14
#define NR_rt_sigreturn 15
#define NR_madvise 28
#define NR_dup3 292
#define NR_setitimer 38
#define NR_getpid 39
#define NR_gettid 186
#define NR_exit_group 231
#define NR_fchdir 81
#define NR_umask 95
#define NR_setpgid 109
#define NR_setresuid 117
#define NR_setresgid 119
#define NR_setgroups 116
#define NR_setfsuid 122
#define NR_setfsgid 123
#define NR_capset 126
#define NR_personality 135
#define NR_prctl 157
#define NR_arch_prctl 158
#define NR_set_tid_address 218
#define NR_rt_tgsigqueueinfo 297
#define NR_rt_sigqueueinfo 129
#define NR_set_robust_list 273
#define NR_prlimit64 302
#define NR_rseq 334
#define NR_close_range 436
#define NR_clone3 435
#define NR_epoll_ctl 233
#define NR_fcntl 72
#define NR_setsid 112
#define NR_sched_yield 24
#define NR_kill 62
#define NR_tgkill 234

typedef unsigned long ulong;

static inline long sys0(long n)
{
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n) : "rcx", "r11", "memory");
    return r;
}

static inline long sys1(long n, long a)
{
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a) : "rcx", "r11", "memory");
    return r;
}

static inline long sys2(long n, long a, long b)
{
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b) : "rcx", "r11", "memory");
    return r;
}

static inline long sys3(long n, long a, long b, long c)
{
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return r;
}

static inline long sys4(long n, long a, long b, long c, long d)
{
    long r;
    register long r10 __asm__("r10") = d;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10)
                     : "rcx", "r11", "memory");
    return r;
}

static inline long sys5(long n, long a, long b, long c, long d, long e)
{
    long r;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8)
                     : "rcx", "r11", "memory");
    return r;
}

static inline long sys6(long n, long a, long b, long c, long d, long e, long f)
{
    long r;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return r;
}
