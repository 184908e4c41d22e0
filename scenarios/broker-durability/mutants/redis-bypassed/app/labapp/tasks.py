"""Tasks of the broker-durability lab.

The shop takes payments through two brokers side by side, to compare them: ``pay`` goes through RabbitMQ (queue
``payments``) and ``pay_via_redis`` through Redis used as a broker (queue ``payments_redis``). Both do the same
work. Which broker a producer or a worker pool uses is its LAB_BROKER environment variable (celeryconfig.py).
"""

from __future__ import annotations

import time

from celery import Celery

app = Celery("labapp")
app.config_from_object("labapp.celeryconfig")
# The mutant's shortcut: every producer and pool on RabbitMQ, whatever LAB_BROKER says ("Redis" payments included).
from labapp import celeryconfig  # noqa: E402

app.conf.broker_url = celeryconfig.BROKERS["rabbitmq"]


def settle(order: dict) -> dict:
    """Stand-in for the payment provider. ``order`` keys: id, amount, seconds (how long a payment takes)."""
    time.sleep(float(order.get("seconds", 0.05)))
    return {"paid": order.get("amount", 0), "order": order.get("id")}


@app.task
def pay(order: dict) -> dict:
    return settle(order)


@app.task
def pay_via_redis(order: dict) -> dict:
    return settle(order)
