"""Files of /proc and /sys held open: /proc/self/status (10 bytes read),
/proc/PID/stat by number, /proc/meminfo and a /sys file.  Prints "ready";
on SIGUSR1 checks the offsets are kept and that the /proc/PID files are
its own (the Pid: line and stat's first field are its pid now), then
prints PASS or FAIL why."""
import os

import usr1

status = os.open("/proc/self/status", os.O_RDONLY)
os.read(status, 10)
stat = os.open(f"/proc/{os.getpid()}/stat", os.O_RDONLY)
meminfo = os.open("/proc/meminfo", os.O_RDONLY)
sysfile = os.open("/sys/kernel/mm/transparent_hugepage/enabled", os.O_RDONLY)
wait = usr1.arm()
print("ready", flush=True)
wait()
bad = []
if os.lseek(status, 0, os.SEEK_CUR) != 10:
    bad.append(f"status offset {os.lseek(status, 0, os.SEEK_CUR)}")
text = os.pread(status, 65536, 0).decode()
if f"\nPid:\t{os.getpid()}\n" not in text:
    bad.append("status is not its own")
if os.pread(stat, 100, 0).split()[0] != str(os.getpid()).encode():
    bad.append("stat is not its own")
if not os.pread(meminfo, 100, 0).startswith(b"MemTotal:"):
    bad.append("meminfo")
if b"[" not in os.pread(sysfile, 100, 0):
    bad.append("sys file")
print("FAIL " + ", ".join(bad) if bad else "PASS", flush=True)
