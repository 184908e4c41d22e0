"""Tasks of the retries-dead-letters lab.

``charge`` takes an order and calls a payment gateway. The gateway sometimes times out (worth retrying), and some
orders are invalid (retrying can never help: a poison message). Producers publish charges to the queue ``orders``.
"""

from __future__ import annotations

import time

from celery import Celery

app = Celery("labapp")
app.config_from_object("labapp.celeryconfig")


class GatewayTimeout(Exception):
    """The gateway did not answer in time: a transient failure."""


class InvalidOrder(Exception):
    """The order can never be charged (unknown card, negative amount): a permanent failure."""


def call_gateway(order: dict, attempt: int) -> dict:
    """Stand-in for the payment gateway. ``order`` keys: amount, flaky (timeouts before it answers), invalid,
    seconds (how long a charge takes)."""
    if order.get("invalid"):
        raise InvalidOrder(f"order {order.get('id', '?')} is invalid")
    if attempt < int(order.get("flaky", 0)):
        raise GatewayTimeout(f"gateway timeout on attempt {attempt + 1}")
    time.sleep(float(order.get("seconds", 0.05)))
    return {"charged": order.get("amount", 0), "attempts": attempt + 1}


# Retry on any error, at once, for ever.
@app.task(bind=True, autoretry_for=(Exception,), default_retry_delay=0, max_retries=None)
def charge(self, order: dict) -> dict:
    return call_gateway(order, self.request.retries)
