"""Round trips from the worker host with the student's own app and task_routes (a producer-side setting)."""

from __future__ import annotations

import pytest

from grading.remote import round_trip


def _ran_on(outcome: dict, task: str) -> tuple[str, str]:
    assert outcome["ok"], (
        f"{task} got no result in time ({outcome.get('error')}); task_routes sends it to "
        f"{outcome['routes'].get(task)!r} and no worker served it"
    )
    result = outcome["result"]
    return result.get("queue"), result.get("worker") or ""


def _assert_served_by(host, pool: str, task: str) -> None:
    outcome = round_trip(host, pool, wait=10)
    queue, worker = _ran_on(outcome, task)
    assert queue == pool and worker.startswith(f"{pool}@"), (
        f"{task.rsplit('.', 1)[-1]} ran from queue {queue!r} on {worker!r}; expected queue {pool!r} on a "
        f"{pool}@ worker (task_routes sends it to {outcome['routes'].get(task)!r})"
    )


@pytest.mark.check("routing-heavy")
def test_crunch_runs_on_heavy(host):
    _assert_served_by(host, "heavy", "labapp.tasks.crunch")


@pytest.mark.check("routing-light")
def test_notify_runs_on_light(host):
    _assert_served_by(host, "light", "labapp.tasks.notify")


@pytest.mark.check("chain-heavy-light")
def test_chain_runs_each_step_on_its_pool(host):
    outcome = round_trip(host, "chain", wait=15)
    queue, worker = _ran_on(outcome, "the chain crunch -> notify")
    previous = outcome["result"].get("previous") or {}
    first = f"{previous.get('worker')!r} (queue {previous.get('queue')!r})"
    second = f"{worker!r} (queue {queue!r})"
    # Queues too, not only worker names: in the starting state both pools share queue
    # "celery", and the two steps can land on heavy@ then light@ by chance.
    on_heavy = previous.get("queue") == "heavy" and str(previous.get("worker", "")).startswith("heavy@")
    on_light = queue == "light" and worker.startswith("light@")
    assert on_heavy and on_light, (
        f"chain(crunch, notify): crunch ran on {first}, notify on {second}; "
        "expected crunch from queue 'heavy' on heavy@, then notify from queue 'light' on light@"
    )
