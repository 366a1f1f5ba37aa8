"""For the Python victims: arm() installs a SIGUSR1 handler (before the
victim says "ready", so the signal cannot come first) and returns a
function that waits for the signal."""
import signal
import time


def arm():
    got = []
    signal.signal(signal.SIGUSR1, lambda *_: got.append(1))

    def wait() -> None:
        while not got:
            time.sleep(0.01)
    return wait
