"""Checks of the broker-durability lab.

Payments are published through the student's own app and settings (delivery mode, broker choice are producer-side
settings), as the workers' unprivileged user, with the grader's task ids (fresh uuid4s). The grader then injects the
fault itself: it stops the pool that would take them, restarts the broker (systemctl, on the broker host), starts
the pool again; or it SIGKILLs a whole worker pool mid-task. Verdicts come from the outcomes the workers stored for
the grader's ids in Redis (the result backend): a payment the broker lost never gets one.

Before the fault, the grader sees with its own eyes that the messages are where the lesson says: waiting in
RabbitMQ's ``payments`` queue (rabbitmqctl on the broker host), or in Redis's ``payments_redis`` list and, once a
worker took one, in the Redis transport's ``unacked`` hash (database 1, the kit's Redis-broker database). A lab
whose "Redis" producer and pool quietly use RabbitMQ would otherwise pass the Redis checks on RabbitMQ's merits.
"""

from __future__ import annotations

import json
import time

import pytest

from grading import timeline
from grading.common import (
    test_broker_ready,
    test_flower_supervised_and_protected,
    test_redis_requires_password,
    test_workers_supervised,
)
from grading.facts import (
    held,
    kill_program,
    queue_depths,
    restart_service,
    start_programs,
    stop_programs,
    wait_until,
)
from grading.remote import student_producer

__all__ = [
    "test_broker_ready", "test_flower_supervised_and_protected", "test_redis_requires_password",
    "test_workers_supervised",
]  # fmt: skip

PAY, PAY_REDIS = "labapp.tasks.pay", "labapp.tasks.pay_via_redis"
WAITING = 8  # payments waiting in the broker while it restarts
SETTLE_WITHIN = 30.0
CRASH_SECONDS, KILL_AFTER, REDELIVERED_WITHIN = 10.0, 2.0, 50.0
QUEUES = {"rabbitmq": "payments", "redis": "payments_redis"}
REDIS_BROKER_DB = 1  # playbooks/vars/lab_wiring.yml: celery_workers_redis_broker_url


def _message_id(raw) -> str | None:
    """The task id of one message as the Redis transport stores it (JSON; headers.id in Celery's protocol 2)."""
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    if isinstance(message, list) and message:  # the unacked hash holds [message, exchange, routing key]
        message = message[0]
    if not isinstance(message, dict):
        return None
    return (message.get("headers") or {}).get("id") or (message.get("properties") or {}).get("correlation_id")


def _in_redis_queue(grader, queue: str) -> set[str]:
    """Task ids of the messages waiting in a Redis-broker queue (the list, and its priority lists)."""
    db = grader.redis_db(REDIS_BROKER_DB)
    try:
        found = set()
        for key in db.scan_iter(match=f"{queue}*", count=200):
            if db.type(key) == b"list":
                found |= {i for i in map(_message_id, db.lrange(key, 0, -1)) if i}
        return found
    finally:
        db.close()


def _unacked_in_redis(db) -> set[str]:
    """Task ids the Redis transport (``db``: the Redis broker's database) holds as delivered to a worker and not yet
    acknowledged."""
    return {i for i in map(_message_id, db.hvals("unacked")) if i}


def _waiting(grader, broker_host, broker: str, ids: list[str]) -> int:
    """How many of the grader's messages the broker itself holds now."""
    if broker == "redis":
        return len(set(ids) & _in_redis_queue(grader, QUEUES[broker]))
    return held(queue_depths(broker_host), QUEUES[broker])


def _results_reachable(grader) -> bool:
    """The grader's Redis connection, re-established after Redis restarted."""
    try:
        return bool(grader.redis.ping())
    except Exception:
        return False


def _survives_restart(grader, host_for, task: str, broker: str, pool: str, unit: str) -> None:
    worker, broker_host = host_for("worker"), host_for("broker")
    ids = [grader.new_id(f"{broker}-restart") for _ in range(WAITING)]
    stop_programs(worker, [pool])
    try:
        sent = student_producer(
            worker, "labapp.tasks", [{"task": task, "ids": ids, "args": [{"amount": 1}]}], broker=broker
        )
        assert sent == WAITING, f"the lab's app published {sent} of {WAITING} payments through {broker}"
        seen: list[int] = []
        wait_until(
            lambda: seen.append(_waiting(grader, broker_host, broker, ids)) or seen[-1] >= WAITING, 15, 1
        )
        there = seen[-1]
        assert there >= WAITING, (
            f"the lab's app published {WAITING} payments through its {broker} settings, but {broker} holds "
            f"{there} of them in {QUEUES[broker]}: they went to another broker"
        )
        away = restart_service(broker_host, unit)
    finally:
        start_programs(worker, [pool])
    wait_until(lambda: _results_reachable(grader), 30, 1)
    outcomes = grader.wait(ids, SETTLE_WITHIN, interval=0.5)
    done = [i for i, o in outcomes.items() if o.state == "SUCCESS"]
    timeline.mark("ledger", f"paid {len(done)} of {WAITING}")
    assert len(done) == WAITING, (
        f"{WAITING} payments were waiting in {broker} ({pool} stopped) when {unit} restarted ({away:.0f} s away); "
        f"{len(done)} were paid within {SETTLE_WITHIN:.0f} s after {pool} started again, the others were lost"
    )


@pytest.mark.check("rabbitmq-restart")
def test_payments_waiting_in_rabbitmq_survive_a_restart(grader, host_for):
    _survives_restart(grader, host_for, PAY, "rabbitmq", "celery-amqp", "rabbitmq-server")


@pytest.mark.check("redis-restart")
def test_payments_waiting_in_redis_survive_a_restart(grader, host_for):
    _survives_restart(grader, host_for, PAY_REDIS, "redis", "celery-redis", "redis-server")


@pytest.mark.check("redis-redelivery")
def test_a_payment_of_a_crashed_redis_worker_runs_again(grader, host_for):
    worker = host_for("worker")
    task_id = grader.new_id("crash")
    sent = student_producer(
        worker, "labapp.tasks", [{"task": PAY_REDIS, "ids": [task_id], "args": [{"amount": 1, "seconds": CRASH_SECONDS}]}],
        broker="redis",
    )  # fmt: skip
    assert sent == 1, "the lab's app did not publish the payment through Redis"
    published = time.monotonic()
    db = grader.redis_db(REDIS_BROKER_DB)
    try:  # an idle pool takes it at once; the transport then holds it as unacknowledged
        taken = wait_until(lambda: task_id in _unacked_in_redis(db), 5, 0.2)
    finally:
        db.close()
    assert taken, (
        "the payment published through Redis is not among the messages the Redis transport holds unacknowledged "
        "for a worker (database 1, hash unacked): the producer or the pool does not use Redis as its broker"
    )
    time.sleep(max(0.0, KILL_AFTER - (time.monotonic() - published)))
    early = grader.outcomes([task_id])[task_id].state
    assert early != "SUCCESS", (
        f"the {CRASH_SECONDS:.0f} s payment finished in {time.monotonic() - published:.0f} s: nothing to crash"
    )
    killed = kill_program(worker, "celery-redis")
    outcome = grader.wait([task_id], REDELIVERED_WITHIN, interval=0.5)[task_id]
    timeline.mark("ledger", f"the payment: {outcome.state}")
    assert outcome.state == "SUCCESS", (
        f"after SIGKILL of celery-redis (pids {', '.join(map(str, killed))}) mid-payment, the payment was "
        f"{outcome.state} {REDELIVERED_WITHIN:.0f} s later: the message the dead worker held did not come back in time"
    )
