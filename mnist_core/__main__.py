import time

STARTED = time.perf_counter()  # before any import: `train --profile` reports the start-up too

import atexit  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402

if sys.argv[1:2] == ["train"]:  # the compiled layers build (once per machine) while torch imports
    from mnist_core import kernel_build  # noqa: E402

    kernel_build.start()

from mnist_core.cli import main  # noqa: E402


def leave(code: int) -> None:
    """Exit without Python's module teardown, which takes torch's and torch._dynamo's thousands
    of modules apart one by one (0.7-0.9 s on a 2-core machine) for nothing: by now every run is
    stored (SQLite commits are durable; its write-ahead log is replayed by the next opener) and
    every file closed. The exit handlers still run; with a thread still working, exit as usual."""
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        raise SystemExit(code)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


leave(main())
