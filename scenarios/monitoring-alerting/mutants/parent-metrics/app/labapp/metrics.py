"""The workers' metrics for Prometheus: tasks finished, by task and state, on http://worker:9808/metrics.

A worker starts the metrics server when it starts (``worker_init``); every finished task adds one to
``labapp_tasks_total{task, state}``.
"""

from __future__ import annotations

from celery.signals import task_postrun, worker_init
from prometheus_client import Counter, start_http_server

PORT = 9808

TASKS = Counter(
    "labapp_tasks", "Tasks the lab's workers finished, by task and final state", ["task", "state"]
)


@worker_init.connect
def serve_metrics(**_):
    start_http_server(PORT)


@task_postrun.connect
def count_task(sender=None, state=None, **_):
    TASKS.labels(task=getattr(sender, "name", "unknown"), state=state or "UNKNOWN").inc()
