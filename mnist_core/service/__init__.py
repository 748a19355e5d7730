"""Running a shared dashboard: the run store, the queue, workers, the cluster, sweeps, access."""
