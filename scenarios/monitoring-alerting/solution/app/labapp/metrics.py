"""The workers' metrics for Prometheus: tasks finished, by task and state, on http://worker:9808/metrics.

Under the prefork pool, tasks run in child processes, and each child counts in its own copy of the counter; the
parent, which serves /metrics, never runs one. prometheus_client's multiprocess mode: every process writes its
values to files in PROMETHEUS_MULTIPROC_DIR, and the server in the parent adds them all up.
"""

from __future__ import annotations

import glob
import os
import tempfile

# Before prometheus_client is imported: it picks file-backed values when this is set.
MULTIPROC_DIR = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", os.path.join(tempfile.gettempdir(), "labapp-prometheus")
)
os.makedirs(MULTIPROC_DIR, exist_ok=True)

from celery.signals import task_postrun, worker_init, worker_process_shutdown  # noqa: E402
from prometheus_client import CollectorRegistry, Counter, multiprocess, start_http_server  # noqa: E402

PORT = 9808

TASKS = Counter(
    "labapp_tasks", "Tasks the lab's workers finished, by task and final state", ["task", "state"]
)


@worker_init.connect
def serve_metrics(**_):
    # A new worker starts from zero: the files of an earlier run's processes go.
    for stale in glob.glob(os.path.join(MULTIPROC_DIR, "*.db")):
        os.remove(stale)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(PORT, registry=registry)


@worker_process_shutdown.connect
def process_gone(pid=None, **_):
    multiprocess.mark_process_dead(os.getpid())


@task_postrun.connect
def count_task(sender=None, state=None, **_):
    TASKS.labels(task=getattr(sender, "name", "unknown"), state=state or "UNKNOWN").inc()
