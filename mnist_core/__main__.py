import time

STARTED = time.perf_counter()  # before any import: `train --profile` reports the start-up too

import atexit  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402


def skip_teardown(code: list[int]) -> None:
    """The last exit handler: leave without Python's module teardown, which takes torch's and
    torch._dynamo's thousands of modules apart one by one (0.7-0.9 s on a 2-core machine) for
    nothing: by now every run is stored (SQLite commits are durable; its write-ahead log is
    replayed by the next opener), every file closed and every other exit handler run."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code[0])


# Exit handlers run last-registered first, so this one, registered before the command imports
# anything that registers its own, runs after all of them. Python runs them only after waiting
# for the command's non-daemon threads, as at any exit. Until the command returns, the code is
# 1: an exception that escapes it exits as a failure.
exit_code = [1]
atexit.register(skip_teardown, exit_code)

if sys.argv[1:2] == ["train"]:  # the compiled layers build (once per machine) while torch imports
    from mnist_core.speed import kernel_build  # noqa: E402

    kernel_build.start()

from mnist_core.cli import main  # noqa: E402

try:
    exit_code[0] = main()
except SystemExit as stop:  # argparse's errors and --help
    exit_code[0] = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    if isinstance(stop.code, str):
        print(stop.code, file=sys.stderr)
sys.exit(exit_code[0])
