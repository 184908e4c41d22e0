"""Tasks of the retries-dead-letters lab (mutant requeue-loop: a poison message is requeued, not dead-lettered).

Transient failures are retried a bounded number of times with exponential backoff and jitter; a permanent failure
is rejected without requeue, so the broker dead-letters the message (policy on ``orders`` -> exchange
``orders.dlx`` -> queue ``orders.dead``). Ack-late and reject-on-worker-lost (the pool's settings) make a crash
mid-task redeliver the job.
"""

from __future__ import annotations

import time

from celery import Celery
from celery.exceptions import Reject
from celery.signals import worker_ready
from kombu import Exchange, Queue

app = Celery("labapp")
app.config_from_object("labapp.celeryconfig")

DEAD_LETTERS = Queue("orders.dead", Exchange("orders.dlx", type="fanout"), routing_key="orders", durable=True)


@worker_ready.connect
def declare_dead_letter_queue(sender, **_kwargs) -> None:
    """The exchange and queue the broker's dead-letter policy sends rejected orders to."""
    with sender.app.connection_for_write() as conn:
        DEAD_LETTERS.bind(conn).declare()


class GatewayTimeout(Exception):
    """The gateway did not answer in time: a transient failure."""


class InvalidOrder(Exception):
    """The order can never be charged (unknown card, negative amount): a permanent failure."""


def call_gateway(order: dict, attempt: int) -> dict:
    if order.get("invalid"):
        raise InvalidOrder(f"order {order.get('id', '?')} is invalid")
    if attempt < int(order.get("flaky", 0)):
        raise GatewayTimeout(f"gateway timeout on attempt {attempt + 1}")
    time.sleep(float(order.get("seconds", 0.05)))
    return {"charged": order.get("amount", 0), "attempts": attempt + 1}


@app.task(
    bind=True,
    autoretry_for=(GatewayTimeout,),
    retry_backoff=1,  # 1 s, 2 s, 4 s, 8 s ...
    retry_backoff_max=8,
    retry_jitter=True,  # a random delay up to that, so failed tasks do not retry in lockstep
    max_retries=4,
)
def charge(self, order: dict) -> dict:
    try:
        return call_gateway(order, self.request.retries)
    except InvalidOrder as exc:
        raise Reject(str(exc), requeue=True) from exc  # near miss: back to the queue, for ever
