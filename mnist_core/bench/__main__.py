from mnist_core.bench.main import main

raise SystemExit(main())
