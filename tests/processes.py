"""Driving a `memrl` subprocess: act on it once something has happened, then let it finish."""

import os
import signal
import subprocess
import time
from typing import Callable


def act_when(process: subprocess.Popen, ready: Callable[[], bool], act: Callable[[], None],
             *, wait_s: float, what: str, finish_s: float = 300) -> str:
    """Poll `ready()` while the process runs (fail after wait_s: "never `what`"), call `act()`,
    wait for the process to end; its output. The process group is killed if it hangs."""
    try:
        deadline = time.monotonic() + wait_s
        while not ready():
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, f"never {what}"
            time.sleep(0.1)
        act()
        output, _ = process.communicate(timeout=finish_s)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return output
