"""inotify watches kept: watches a directory (IN_CREATE), then a scratch
file it removes again (its watch number is freed: a gap), then a file
(IN_MODIFY); prints "ready WD1 WD3".  On SIGUSR1 it waits for the test to
create DIR/new and write to FILE, reads the events and checks they come
with the same watch numbers and name: PASS or FAIL why."""
import ctypes
import os
import select
import struct
import sys
import time

import usr1

libc = ctypes.CDLL(None, use_errno=True)
IN_MODIFY, IN_CREATE = 0x2, 0x100
where, target = sys.argv[1], sys.argv[2]
fd = libc.inotify_init1(os.O_NONBLOCK)
wd_dir = libc.inotify_add_watch(fd, where.encode(), IN_CREATE)
scratch = os.path.join(where, "scratch")
open(scratch, "w").close()
wd_gap = libc.inotify_add_watch(fd, scratch.encode(), IN_MODIFY)
libc.inotify_rm_watch(fd, wd_gap)
os.unlink(scratch)
wd_file = libc.inotify_add_watch(fd, target.encode(), IN_MODIFY)
while select.select([fd], [], [], 0)[0]:      # the events of the scratch file
    os.read(fd, 4096)
wait = usr1.arm()
print("ready", wd_dir, wd_file, flush=True)
wait()
print("go", flush=True)
seen = set()
deadline = time.monotonic() + 10
while len(seen) < 2 and time.monotonic() < deadline:
    if not select.select([fd], [], [], 0.2)[0]:
        continue
    data = os.read(fd, 4096)
    off = 0
    while off < len(data):
        wd, mask, _cookie, n = struct.unpack_from("iIII", data, off)
        name = data[off + 16:off + 16 + n].rstrip(b"\0").decode()
        off += 16 + n
        seen.add((wd, mask, name))
want = {(wd_dir, IN_CREATE, "new"), (wd_file, IN_MODIFY, "")}
print("PASS" if seen == want else f"FAIL got {sorted(seen)}, want {sorted(want)}", flush=True)
