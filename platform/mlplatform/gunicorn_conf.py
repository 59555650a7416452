"""gunicorn settings for mlsuite services (used when MLSUITE_SERVER=gunicorn)."""

from prometheus_client import multiprocess


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    # Drop a dead worker's live gauges so /metrics reports only running processes.
    multiprocess.mark_process_dead(worker.pid)
