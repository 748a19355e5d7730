import time

STARTED = time.perf_counter()  # before any import: `train --profile` reports the start-up too

from mnist_core.cli import main  # noqa: E402

raise SystemExit(main())
