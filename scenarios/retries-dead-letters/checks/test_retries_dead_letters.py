"""Checks of the retries-dead-letters lab.

Every probe is published from the controller by the grader (its own RabbitMQ user, ids with a fresh nonce) to the
queue ``orders``, as the lab's producers do; verdicts come from the broker (per-queue publish counters of the
management API, messages held in ``orders.dead`` as rabbitmqctl sees them) and from the outcomes the workers stored
for the grader's ids in Redis. The crash check kills a pool process itself (SIGKILL, found through /proc) and the
prefork pool replaces it, so a second grade finds the lab as the first did.
"""

from __future__ import annotations

import time

import pytest

from grading.client import Ledger
from grading.common import (
    test_broker_ready,
    test_flower_supervised_and_protected,
    test_redis_requires_password,
    test_workers_supervised,
)
from grading.facts import held, kill_pool_child, queue_depths, wait_until

__all__ = [
    "test_broker_ready", "test_flower_supervised_and_protected", "test_redis_requires_password",
    "test_workers_supervised",
]  # fmt: skip

CHARGE, QUEUE, DEAD = "labapp.tasks.charge", "orders", "orders.dead"
WINDOW = 6.0  # seconds in which an always-failing task may be published at most MAX_EARLY_ATTEMPTS times
MAX_EARLY_ATTEMPTS = 8
GIVE_UP_WITHIN = 45.0


STATS_AGE = 2.0  # seconds between reads of the management API's counters (sampled every second, lagging)


def _counter(grader, name: str) -> int:
    return (grader.queue_stats().get(QUEUE) or {}).get(name, 0)


def _publishes(grader) -> int:
    return _counter(grader, "publish")


def _settled(grader, name: str) -> int:
    """A counter once it stopped moving (the management API's figures lag the broker by seconds)."""
    last = _counter(grader, name)
    for _ in range(10):
        time.sleep(STATS_AGE)
        now = _counter(grader, name)
        if now == last:
            return now
        last = now
    return last


@pytest.mark.check("retries-backoff")
def test_transient_failures_retried_with_backoff_and_bounded(grader):
    before = _settled(grader, "publish")
    doomed = grader.send(CHARGE, QUEUE, [{"amount": 1, "flaky": 1000}], label="doomed")
    flaky = grader.send(CHARGE, QUEUE, [{"amount": 1, "flaky": 2}], label="flaky")
    try:
        time.sleep(WINDOW)
        attempts = _publishes(grader) - before
        assert attempts <= MAX_EARLY_ATTEMPTS, (
            f"{attempts} messages reached queue {QUEUE!r} in {WINDOW:.0f} s for 2 charges that time out "
            f"(at most {MAX_EARLY_ATTEMPTS} expected): failed attempts are retried without waiting"
        )
        outcomes = grader.wait([flaky, doomed], GIVE_UP_WITHIN - WINDOW, interval=0.5)
        assert outcomes[flaky].state == "SUCCESS", (
            f"a charge whose gateway times out twice then answers ended {outcomes[flaky].state} "
            f"(expected SUCCESS after retries)"
        )
        assert outcomes[doomed].state == "FAILURE", (
            f"a charge whose gateway always times out is still {outcomes[doomed].state} after {GIVE_UP_WITHIN:.0f} s; "
            "retries must give up (FAILURE) after a bounded number of attempts"
        )
    finally:
        grader.revoke([doomed, flaky])


@pytest.mark.check("poison-dead-lettered")
def test_poison_message_dead_lettered_once(host, grader):
    before_depths = queue_depths(host)
    before, published = held(before_depths, DEAD), _publishes(grader)
    poison = grader.send(CHARGE, QUEUE, [{"amount": 1, "invalid": True, "id": grader.nonce}], label="poison")
    try:
        arrived = wait_until(lambda: held(queue_depths(host), DEAD) > before, 20, 0.5)
        time.sleep(2 * STATS_AGE)  # a looping message would show more publishes by now
        attempts = _publishes(grader) - published
        assert arrived, (
            f"queue {DEAD!r} got no message within 20 s of an invalid charge "
            f"({'it does not exist' if DEAD not in before_depths else f'holds {before}'}; "
            f"{attempts} publishes to {QUEUE!r} meanwhile)"
        )
        after = held(queue_depths(host), DEAD)
        assert after == before + 1, f"{DEAD!r} went from {before} to {after} messages for one invalid charge"
        assert attempts <= 2, (
            f"the invalid charge was published {attempts} times to {QUEUE!r}; it can never succeed"
        )
    finally:
        grader.revoke([poison])


CRASH_TASKS, CRASH_SECONDS, KILL_AFTER, CRASH_ATTEMPTS = 4, 4.0, 2.0, 3


@pytest.mark.check("crash-safe")
def test_killed_pool_process_loses_no_job(lab, host, grader):
    # A kill that hits an idle process proves nothing: the broker's redeliver counter (or a lost task) shows the
    # kill hit a running job; otherwise the experiment runs again.
    for _attempt in range(CRASH_ATTEMPTS):
        redelivered = _settled(grader, "redeliver")
        ledger = Ledger(grader, CHARGE, QUEUE, label="crash")
        ledger.publish(CRASH_TASKS, [{"amount": 1, "seconds": CRASH_SECONDS}])
        time.sleep(KILL_AFTER)  # both pool processes are charging
        killed = kill_pool_child(host, "celery-orders")
        settled = ledger.settle(CRASH_SECONDS * CRASH_TASKS + 30)
        lost = {state: ids for state, ids in settled.items() if state != "SUCCESS"}
        assert not lost, (
            f"after SIGKILL of pool process {killed} mid-task, of {CRASH_TASKS} charges "
            f"{len(settled.get('SUCCESS', []))} succeeded; the others ended "
            f"{', '.join(f'{s}: {len(i)}' for s, i in lost.items())}"
        )
        if wait_until(lambda base=redelivered: _counter(grader, "redeliver") > base, 10, 1):
            return
    pytest.fail(
        f"in {CRASH_ATTEMPTS} attempts the SIGKILL never hit a running charge (no redelivery, nothing lost)"
    )
