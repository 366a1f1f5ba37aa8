"""How resume continues a thread that was stopped inside a syscall
(restore/plan.py restart_regs): restart it, or fail it with EINTR when a
signal with a handler will run first, as the kernel's handle_signal does.
The kernel side (which codes a stopped call shows) is pinned in
test_kernel_facts.py."""

from __future__ import annotations

from umig.restore.plan import handled_pending, restart_regs
from umig.tracing import REG_NAMES

NR_rt_sigtimedwait, NR_read = 128, 0
ERESTARTSYS, ERESTARTNOHAND, EINTR = 512, 514, 4
SA_RESTART = 0x10000000


def regs(orig: int, err: int) -> dict:
    r = dict.fromkeys(REG_NAMES, 0)
    r.update(orig_rax=orig, rax=(1 << 64) - err, rip=0x401002)
    return r


def actions(**handlers) -> list[dict]:
    out = [{"handler": 0, "flags": 0, "restorer": 0, "mask": 0} for _ in range(64)]
    for sig, (handler, flags) in handlers.items():
        out[int(sig[3:]) - 1] = {"handler": handler, "flags": flags, "restorer": 0, "mask": 0}
    return out


def test_restart_without_a_pending_handler():
    """GIVEN a call stopped with -ERESTARTNOHAND and no signal pending THEN
    it runs again: rax = the call, rip back on the syscall."""
    r = restart_regs(regs(NR_rt_sigtimedwait, ERESTARTNOHAND))
    assert (r["rax"], r["rip"]) == (NR_rt_sigtimedwait, 0x401000)


def test_eintr_when_a_handled_signal_is_pending():
    """GIVEN SIGUSR1 pending with a handler, not blocked THEN a -ERESTARTNOHAND
    call fails with EINTR (rip stays after the syscall), and so does an
    -ERESTARTSYS one whose handler lacks SA_RESTART; with SA_RESTART it
    restarts."""
    th = {"sigmask": 0}
    h = handled_pending(th, [10], actions(sig10=(0x401234, 0)))
    r = restart_regs(regs(NR_rt_sigtimedwait, ERESTARTNOHAND), h)
    assert (r["rax"], r["rip"]) == ((1 << 64) - EINTR, 0x401002)
    r = restart_regs(regs(NR_read, ERESTARTSYS), h)
    assert r["rax"] == (1 << 64) - EINTR
    h = handled_pending(th, [10], actions(sig10=(0x401234, SA_RESTART)))
    r = restart_regs(regs(NR_read, ERESTARTSYS), h)
    assert (r["rax"], r["rip"]) == (NR_read, 0x401000)


def test_blocked_or_ignored_signals_do_not_interrupt():
    """GIVEN the pending signal blocked by the thread, or ignored, or
    default THEN no handler runs first: the call restarts."""
    acts = actions(sig10=(0x401234, 0), sig12=(1, 0))
    assert handled_pending({"sigmask": 1 << 9}, [10], acts) is None
    assert handled_pending({"sigmask": 0}, [12], acts) is None
    assert handled_pending({"sigmask": 0}, [14], acts) is None
