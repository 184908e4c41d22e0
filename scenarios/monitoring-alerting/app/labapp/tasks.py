"""Tasks of the monitoring-alerting lab.

``work`` is the lab's everyday task (it takes ``seconds``); ``flaky`` fails when asked to, so a failure rate can be
seen. Both go to the ``light`` queue. The workers' metrics live in ``labapp/metrics.py``.
"""

from __future__ import annotations

import time

from celery import Celery

from labapp import metrics  # noqa: F401  (connects the metrics to the worker's signals)

app = Celery("labapp")
app.config_from_object("labapp.celeryconfig")


@app.task
def work(seconds: float = 0.05) -> float:
    time.sleep(float(seconds))
    return seconds


@app.task
def flaky(fail: bool = False) -> str:
    if fail:
        raise RuntimeError("the flaky task failed, as asked")
    return "ok"
