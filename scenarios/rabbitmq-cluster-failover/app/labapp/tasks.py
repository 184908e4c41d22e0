"""Tasks of the rabbitmq-cluster-failover lab.

The shop takes orders: ``place_order`` goes to the ``orders`` queue (celeryconfig.py's task_routes), served by the
``orders`` pool. Where the app finds RabbitMQ, and what kind of queue ``orders`` is, are in celeryconfig.py.
"""

from __future__ import annotations

import time

from celery import Celery

app = Celery("labapp")
app.config_from_object("labapp.celeryconfig")


@app.task
def place_order(order: dict) -> dict:
    """Stand-in for the order service. ``order`` keys: id, amount, seconds (how long taking the order takes)."""
    time.sleep(float(order.get("seconds", 0.05)))
    return {"placed": order.get("amount", 0), "order": order.get("id")}
