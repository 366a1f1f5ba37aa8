"""The heap-like victim of bench/migrate.py: a Python dict of about MIB MiB
(string keys, small lists of ints and strings: lz4 shrinks such a heap
about 4x), then "ready", then a count on stdout every 20 ms."""
import sys
import time

mib = int(sys.argv[1])
d = {f"key-{i:09d}": [i, str(i) * 2, i * 0.5] for i in range(mib * 1000000 // 190)}
print("ready", len(d), flush=True)
n = 0
while True:
    print(n, flush=True)
    n += 1
    time.sleep(0.02)
