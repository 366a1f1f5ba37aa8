"""An ssh that loses the target's answer: runs the real ssh command given
in argv, passes stdin and stdout through, and passes stderr on until the
target's umig says "starting" (it lets the process go) - then the
connection "drops": this exits at once, so `umig migrate` never hears
"running"."""
import os
import subprocess
import sys

MARK = b"\x1eumig-resume "
p = subprocess.Popen(sys.argv[1:], stderr=subprocess.PIPE)
for line in p.stderr:
    if line.startswith(MARK + b"starting"):
        os._exit(255)                 # the connection broke just then
    sys.stderr.buffer.write(line)
    sys.stderr.buffer.flush()
sys.exit(p.wait())
