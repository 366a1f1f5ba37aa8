"""umig demo: a real process is grabbed into an image, killed, resumed from
the image, and shown carrying on where it stopped.  Run by `./dev demo`."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COUNTER = """
import time
n = 0
while True:
    n += 1
    print(f"tick {n}", flush=True)
    time.sleep(0.5)
"""


def say(text: str) -> None:
    print(f"\n\033[1m# {text}\033[0m", flush=True)


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    shown = " ".join(shlex.quote(a) for a in argv).replace(f"{sys.executable} -m umig", "umig")
    print(f"$ {shown}", flush=True)
    r = subprocess.run(argv, text=True, capture_output=True, **kw)
    for stream in (r.stdout, r.stderr):
        if stream:
            print(stream.rstrip(), flush=True)
    if r.returncode != 0:
        sys.exit(f"demo: that failed (exit {r.returncode})")
    return r


def tail(log: Path, n: int = 3) -> str:
    return " | ".join(log.read_text().splitlines()[-n:])


def main() -> int:
    umig = [sys.executable, "-m", "umig"]
    work = Path(tempfile.mkdtemp(prefix="umig-demo-"))
    log, img = work / "counter.log", work / "counter.img"
    say("start a Python program that counts, writing to a log file")
    src = subprocess.Popen([sys.executable, "-c", COUNTER], stdout=log.open("w"),
                           stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    pid = src.pid
    resumed = None
    try:
        time.sleep(2.2)
        print(f"pid {pid}; its log so far: {tail(log)}")

        say("grab it: freeze it, write its image, kill it")
        run(umig + ["grab", "-v", "-o", str(img), str(pid)])
        src.wait()
        count = len(log.read_text().splitlines())
        print(f"the process is gone ({'no' if not os.path.exists(f'/proc/{pid}') else 'still a'}"
              f" /proc/{pid}); the log stopped at: {tail(log, 1)}")
        time.sleep(1.0)
        print(f"a second later, still: {tail(log, 1)}")

        say("what is in the image")
        r = subprocess.run(umig + ["info", "--json", str(img)], text=True, capture_output=True)
        if r.returncode == 0:
            import json
            info = json.loads(r.stdout)
            names = [rec["name"] for rec in info["records"]]
            print(f"{len(names)} records: " + ", ".join(
                f"{names.count(n)} {n}" for n in dict.fromkeys(names)))
        print(f"image size {img.stat().st_size / 1024:.0f} KiB "
              f"(`umig info {img}` shows it all)")

        say("resume it from the image")
        r = run(umig + ["resume", "--detach", str(img)])
        resumed = int(r.stdout.split()[-1])
        time.sleep(2.2)
        lines = log.read_text().splitlines()
        print(f"pid {resumed} ({'the same pid' if resumed == pid else 'a new pid'}); "
              f"the log went on: {' | '.join(lines[count - 1:count + 4])}")
        nums = [int(line.split()[1]) for line in lines]
        ok = nums == list(range(1, len(nums) + 1))
        say("the count continued with no gap and no repeat" if ok else
            "the count is broken: this is a bug, please report it")
        return 0 if ok else 1
    finally:
        for p in (pid, resumed):
            if p:
                try:
                    os.kill(p, 9)
                except ProcessLookupError:
                    pass
        if src.poll() is None:
            src.wait()
        if resumed:
            time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
