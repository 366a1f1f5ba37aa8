/*
 * The restore plan: everything the freestanding restorer needs, decided in
 * Python before it runs.  This file is both C (included by restorer.c and
 * umig_native.c) and a cffi cdef (build.py drops the lines starting with
 * '#' that are not plain integer defines), so it holds only fixed-width
 * types, plain structs and integer #defines.
 *
 * All addresses are absolute addresses in the resuming process.  The plan
 * and every array it points to live inside the restorer region
 * [blob_start, blob_end), the one region that survives the unmap.
 *
 * Bump UMIG_PLAN_ABI on any change of layout or meaning.
 */

#define UMIG_PLAN_ABI 10
#define UMIG_PLAN_MAGIC 0x4e414c5047494d55

/* Fixed offsets inside restorer.bin (see the head of restorer.c). */
#define UMIG_BLOB_ENTRY_OFF 0
#define UMIG_BLOB_GADGET_OFF 64
#define UMIG_BLOB_ABI_OFF 80

/* Why the restorer stopped with int3: in rax at the stop. */
#define UMIG_STOP_MAPPED 1     /* address space mapped: fill pages now */
#define UMIG_STOP_READY 2      /* all set: next syscall is rt_sigreturn */
#define UMIG_STOP_FAIL 3       /* failed: rdi = step, rsi = -errno */
#define UMIG_STOP_FORKED 4     /* the children are forked (after MAPPED) */

/* Restorer steps, reported on failure (and as the exit code, 100 + step,
 * should the restorer ever run untraced). */
#define UMIG_STEP_START 1
#define UMIG_STEP_RSEQ_DROP 2
#define UMIG_STEP_FDS 3
#define UMIG_STEP_CWD 4
#define UMIG_STEP_UNMAP 5
#define UMIG_STEP_MAP 6
#define UMIG_STEP_VDSO 7
#define UMIG_STEP_PROTECT 8
#define UMIG_STEP_MADVISE 9
#define UMIG_STEP_MM 10
#define UMIG_STEP_SIGACTION 11
#define UMIG_STEP_ITIMER 12
#define UMIG_STEP_RLIMIT 13
#define UMIG_STEP_TASK 14
#define UMIG_STEP_RSEQ 15
#define UMIG_STEP_SIGQUEUE 16
#define UMIG_STEP_CREDS 17
#define UMIG_STEP_TLS 18
#define UMIG_STEP_CLOSE 19
#define UMIG_STEP_SIGRETURN 20
#define UMIG_STEP_THREAD 21
#define UMIG_STEP_FORK 22
#define UMIG_STEP_SESSION 23
#define UMIG_STEP_EPOLL 24
#define UMIG_STEP_LOCK 25

/* madvise bits applied after the pages are in. */
#define UMIG_MADV_DONTFORK 1
#define UMIG_MADV_DONTDUMP 2
#define UMIG_MADV_WIPEONFORK 4
#define UMIG_MADV_HUGEPAGE 8
#define UMIG_MADV_NOHUGEPAGE 16
#define UMIG_MADV_MERGEABLE 32

struct umig_vma {
    uint64_t start;
    uint64_t end;
    uint64_t pgoff;          /* byte offset into the file of fd */
    int32_t fd;              /* -1: anonymous */
    uint32_t map_flags;      /* MAP_PRIVATE/MAP_SHARED/MAP_ANONYMOUS/... */
    uint32_t prot;           /* final protection */
    uint32_t init_prot;      /* protection while pages are written */
    uint32_t madv;           /* UMIG_MADV_* */
    uint32_t inherit;        /* 1: the parent's, kept as forked (copy-on-write) */
};

/* A watch an epoll fd had: epoll_ctl(epfd, ADD, tfd, {events, data}) once
 * the fds have their numbers (epoll knows a watch by file and fd number). */
struct umig_epitem {
    int32_t epfd;
    int32_t tfd;
    uint32_t events;
    uint32_t pad;
    uint64_t data;
};

/* A POSIX record lock the process held: fcntl(fd, F_SETLK) by the process
 * itself (they belong to it), after the restore-only fds are closed (closing
 * any fd of a file drops the process's POSIX locks on it). */
struct umig_lock {
    int32_t fd;
    int32_t type;            /* F_RDLCK 0, F_WRLCK 1 */
    uint64_t start;
    uint64_t len;            /* 0: to the end of the file */
};

/* Pages a child drops from an inherited VMA: what only its parent had. */
struct umig_discard {
    uint64_t start;
    uint64_t len;
};

struct umig_fdmap {
    int32_t src;             /* fd as inherited from the resuming umig */
    int32_t dst;             /* fd number the process had */
    uint32_t cloexec;
    uint32_t pad;
};

/* The kernel's struct sigaction for rt_sigaction (x86_64). */
struct umig_ksigaction {
    uint64_t handler;
    uint64_t flags;
    uint64_t restorer;
    uint64_t mask;
};

struct umig_pending {
    int32_t shared;          /* 1: process-wide queue, 0: the thread's */
    int32_t sig;
    uint8_t info[128];       /* siginfo_t as PTRACE_PEEKSIGINFO gave it */
};

struct umig_rlim {
    uint32_t resource;
    uint32_t pad;
    uint64_t cur;
    uint64_t max;
};

/* A thread other than the leader: made by the leader with clone3 (set_tid
 * when tid != 0), it restores its own state on its own stack inside the
 * region, stops with UMIG_STOP_READY and ends in rt_sigreturn with its
 * own frame. */
struct umig_thread {
    int32_t tid;             /* keep this tid; 0: any */
    uint32_t npending;
    uint64_t pending;        /* struct umig_pending[npending], this thread's */
    uint64_t stack_lo;       /* its restorer stack: [stack_lo, stack_lo + stack_size) */
    uint64_t stack_size;
    uint64_t sigframe;       /* rsp = sigframe + 8 at rt_sigreturn */
    uint64_t fs_base;
    uint64_t gs_base;
    uint64_t clear_child_tid;
    uint64_t robust_list;
    uint64_t robust_len;
    uint64_t rseq;
    uint32_t rseq_len;
    uint32_t rseq_sig;
    char comm[16];
};

/* A child process (grab --tree): forked by its parent's restorer with
 * clone3 (set_tid when pid != 0) once the parent's memory is filled, so
 * it inherits what they share copy-on-write; it runs the restorer with
 * its own plan, or, a zombie, exits at once with the wait status it had. */
struct umig_child {
    int32_t pid;             /* keep this pid; 0: any */
    int32_t exit_signal;     /* what its parent gets when it ends (SIGCHLD) */
    uint32_t zombie;         /* 1: exit at once with `status` */
    uint32_t status;         /* wait status of a zombie */
    uint64_t plan;           /* struct umig_plan of a live child */
    char comm[16];           /* a zombie's name */
};

/* = struct prctl_mm_map */
struct umig_mm_map {
    uint64_t start_code;
    uint64_t end_code;
    uint64_t start_data;
    uint64_t end_data;
    uint64_t start_brk;
    uint64_t brk;
    uint64_t start_stack;
    uint64_t arg_start;
    uint64_t arg_end;
    uint64_t env_start;
    uint64_t env_end;
    uint64_t auxv;
    uint32_t auxv_size;
    uint32_t exe_fd;
};

struct umig_creds {
    uint32_t set;            /* 0: keep the resuming user's credentials */
    uint32_t ngroups;
    uint32_t uid, euid, suid, fsuid;
    uint32_t gid, egid, sgid, fsgid;
    uint64_t groups;         /* address of uint32_t[ngroups] */
    uint32_t cap_eff[2];
    uint32_t cap_prm[2];
    uint32_t cap_inh[2];
    uint32_t pad;
    uint32_t securebits;
    uint64_t cap_bnd;
    uint64_t cap_amb;
};

struct umig_plan {
    uint64_t magic;
    uint32_t abi;
    uint32_t size;
    uint64_t stack_top;      /* offset 16: read by the entry code */
    uint64_t blob_start;
    uint64_t blob_end;
    uint64_t task_size;

    /* the resuming process's own rseq registration, dropped first */
    uint64_t old_rseq;
    uint32_t old_rseq_len;
    uint32_t old_rseq_sig;

    /* file descriptors */
    uint64_t fds;            /* struct umig_fdmap[nfds] */
    uint32_t nfds;
    int32_t cwd_fd;          /* fchdir here; -1: none */
    int32_t aux_lo;          /* [aux_lo, aux_hi]: fds for mapping and */
    int32_t aux_hi;          /* the restore only, closed before the jump */

    /* memory */
    uint64_t vmas;           /* struct umig_vma[nvmas], sorted */
    uint32_t nvmas;
    uint32_t set_mm;         /* 1: prctl(PR_SET_MM_MAP, &mm) */
    uint64_t vdso_addr;      /* arch_prctl(ARCH_MAP_VDSO_64) here; 0: none */
    struct umig_mm_map mm;

    /* signals */
    struct umig_ksigaction act[64];   /* act[i] is signal i + 1 */
    uint64_t act_set;        /* bit i: restore act[i] */
    uint64_t pending;        /* struct umig_pending[npending] */
    uint32_t npending;
    uint32_t nrlimits;
    struct umig_rlim rlimits[16];
    uint64_t itimers[3][4];  /* ITIMER_REAL/VIRTUAL/PROF: interval s, us, value s, us */
    uint32_t itimer_set;     /* bit i: setitimer(i) */

    /* task */
    uint32_t personality;
    uint32_t umask;
    int32_t pdeathsig;
    uint32_t no_new_privs;
    uint32_t setpgid;        /* 1: setpgid(0, pgid) */
    char comm[16];
    uint64_t clear_child_tid;
    uint64_t robust_list;
    uint64_t robust_len;
    uint64_t rseq;
    uint32_t rseq_len;
    uint32_t rseq_sig;
    uint64_t fs_base;
    uint64_t gs_base;
    struct umig_creds creds;

    /* the rt_sigframe built by Python: rsp = sigframe + 8 at rt_sigreturn */
    uint64_t sigframe;

    /* the other threads, made after the task state and before the creds */
    uint64_t threads;        /* struct umig_thread[nthreads] */
    uint32_t nthreads;

    /* the process tree: children first, then session and group */
    uint32_t nchildren;
    uint64_t children;       /* struct umig_child[nchildren] */
    uint32_t setsid;         /* 1: setsid() (a session leader that is not the root) */
    int32_t pgid;            /* with setpgid: join this group (0: its own) */
    uint32_t drop_sigchld;   /* 1: discard the SIGCHLD its zombie children sent */
    uint32_t ndiscards;
    uint64_t discards;       /* struct umig_discard[ndiscards] */
    uint64_t epitems;        /* struct umig_epitem[nepitems] */
    uint32_t nepitems;
    uint32_t nlocks;
    uint64_t locks;          /* struct umig_lock[nlocks] */

    /* progress, written by the restorer */
    uint32_t step;
    int32_t err;
};
