"""Checks of the broker-durability lab.

Payments are published through the student's own app and settings (delivery mode, broker choice are producer-side
settings), as the workers' unprivileged user, with the grader's task ids (fresh uuid4s). The grader then injects the
fault itself: it stops the pool that would take them, restarts the broker (systemctl, on the broker host), starts
the pool again; or it SIGKILLs a whole worker pool mid-task. Verdicts come from the outcomes the workers stored for
the grader's ids in Redis (the result backend): a payment the broker lost never gets one.
"""

from __future__ import annotations

import time

import pytest

from grading import timeline
from grading.common import (
    test_broker_ready,
    test_flower_supervised_and_protected,
    test_redis_requires_password,
    test_workers_supervised,
)
from grading.facts import kill_program, restart_service, start_programs, stop_programs, wait_until
from grading.remote import student_producer

__all__ = [
    "test_broker_ready", "test_flower_supervised_and_protected", "test_redis_requires_password",
    "test_workers_supervised",
]  # fmt: skip

PAY, PAY_REDIS = "labapp.tasks.pay", "labapp.tasks.pay_via_redis"
WAITING = 8  # payments waiting in the broker while it restarts
SETTLE_WITHIN = 30.0
CRASH_SECONDS, KILL_AFTER, REDELIVERED_WITHIN = 6.0, 2.0, 50.0


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
        time.sleep(1)
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
    time.sleep(KILL_AFTER)  # an idle pool takes it at once: it is running now
    early = grader.outcomes([task_id])[task_id].state
    assert early != "SUCCESS", (
        f"the {CRASH_SECONDS:.0f} s payment finished in {KILL_AFTER:.0f} s: nothing to crash"
    )
    killed = kill_program(worker, "celery-redis")
    outcome = grader.wait([task_id], REDELIVERED_WITHIN, interval=0.5)[task_id]
    timeline.mark("ledger", f"the payment: {outcome.state}")
    assert outcome.state == "SUCCESS", (
        f"after SIGKILL of celery-redis (pids {', '.join(map(str, killed))}) mid-payment, the payment was "
        f"{outcome.state} {REDELIVERED_WITHIN:.0f} s later: the message the dead worker held did not come back in time"
    )
