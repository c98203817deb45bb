"""``python -m zkd.main ARGS`` that SIGKILLs itself when its loop asks for the (N+1)-th batch
(train or eval), for kill-and-resume tests of the real command:

    python tests/zkd_main_killed.py N ARGS...
"""

import os
import runpy
import signal
import sys

n = int(sys.argv[1])
sys.argv = ["zkd.main", *sys.argv[2:]]

from zkd import parallel  # noqa: E402

original_global_batch = parallel.global_batch
calls = {"n": 0}


def global_batch_then_die(*args, **kwargs):
    calls["n"] += 1
    if calls["n"] == n + 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return original_global_batch(*args, **kwargs)


parallel.global_batch = global_batch_then_die
runpy.run_module("zkd.main", run_name="__main__", alter_sys=True)
