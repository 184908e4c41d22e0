"""Tasks of the queue-segregation lab.

``crunch`` stands for a slow job (a report, a video transcode): it holds a worker
process for ``seconds``. ``notify`` stands for a quick one (an e-mail, a webhook).
Both return where they ran, so a grader can see which queue and pool served them.
"""

from __future__ import annotations

import time

from celery import Celery

app = Celery("labapp")
app.config_from_object("labapp.celeryconfig")


class TransientError(Exception):
    """A failure worth retrying (a flaky downstream service)."""


def _where(task) -> dict:
    info = task.request.delivery_info or {}
    return {
        "worker": task.request.hostname,
        "queue": info.get("routing_key"),
        "retries": task.request.retries,
    }


@app.task(
    bind=True,
    autoretry_for=(TransientError,),
    retry_backoff=True,  # 1 s, 2 s, 4 s ...
    retry_backoff_max=30,
    retry_jitter=False,
    max_retries=3,
)
def crunch(self, seconds: float = 0.05, fail_times: int = 0) -> dict:
    """A heavy job. ``fail_times`` makes the first N attempts fail transiently."""
    if self.request.retries < fail_times:
        raise TransientError(f"attempt {self.request.retries + 1} of a flaky job")
    time.sleep(float(seconds))
    return {"task": "crunch", **_where(self)}


@app.task(bind=True)
def notify(self, payload=None) -> dict:
    """A light job; in a chain it receives the heavy step's result."""
    return {"task": "notify", "previous": payload, **_where(self)}
