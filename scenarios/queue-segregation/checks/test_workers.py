"""Worker host: the two pools, what they consume and how they prefetch (asked of the live workers)."""

from __future__ import annotations

import pytest

from grading.remote import inspect_workers, run, supervisor_states

POOLS = {"heavy": "celery-heavy", "light": "celery-light"}


def _by_pool(replies: dict) -> dict[str, tuple[str, object]]:
    """{"heavy": (worker name, reply), ...} for workers named heavy@... / light@..."""
    found = {}
    for worker, reply in sorted(replies.items()):
        pool = worker.split("@", 1)[0]
        if pool in POOLS:
            found.setdefault(pool, (worker, reply))
    return found


@pytest.mark.check("workers-supervised")
def test_both_pools_supervised(host):
    states = supervisor_states(host, *POOLS.values())
    assert all(state == "RUNNING" for state in states.values()), (
        f"expected both pools RUNNING under supervisord, got {states}"
    )


@pytest.mark.check("queues-segregated")
def test_each_pool_consumes_its_own_queue(host):
    replies = inspect_workers(host, "active_queues")["active_queues"]
    seen = {worker: sorted(q["name"] for q in queues) for worker, queues in replies.items()}
    assert replies, (
        "no worker answered celery inspect active_queues; are celery-heavy and celery-light running?"
    )
    pools = _by_pool(replies)
    for pool in POOLS:
        assert pool in pools, f"no {pool}@ worker answered; workers that did: {sorted(seen)}"
    for pool in POOLS:
        worker = pools[pool][0]
        assert seen[worker] == [pool], f"{worker} must consume exactly [{pool!r}], it consumes {seen[worker]}"
    for worker, queues in seen.items():
        for pool in POOLS:
            if pool in queues:
                assert worker.startswith(f"{pool}@"), (
                    f"{worker} also consumes {pool!r}; all queues by worker: {seen}"
                )


@pytest.mark.check("heavy-prefetch")
def test_heavy_pool_prefetches_one_and_acks_late(host):
    replies = inspect_workers(host, "stats", "conf")
    pools = _by_pool(replies["stats"])
    assert "heavy" in pools, (
        f"no heavy@ worker answered celery inspect stats; workers that did: {sorted(replies['stats'])}"
    )
    worker, stats = pools["heavy"]
    concurrency = (stats.get("pool") or {}).get("max-concurrency")
    prefetch = stats.get("prefetch_count")
    assert concurrency and prefetch == concurrency, (
        f"{worker}: prefetch_count is {prefetch} with concurrency {concurrency}; expected {concurrency} "
        "(prefetch multiplier 1)"
    )
    acks_late_conf = (replies["conf"].get(worker) or {}).get("task_acks_late")
    env_value = None
    pid = stats.get("pid")
    if pid:
        environ = run(host, f"tr '\\0' '\\n' < /proc/{int(pid)}/environ", timeout=10).stdout
        env_value = next(
            (line.split("=", 1)[1] for line in environ.splitlines() if line.startswith("LAB_ACKS_LATE=")),
            None,
        )
    env_says_late = str(env_value).strip().lower() in ("1", "true", "yes", "on")
    assert acks_late_conf is True or env_says_late, (
        f"{worker} does not ack late: its conf has task_acks_late={acks_late_conf!r} and its process "
        f"environment LAB_ACKS_LATE={env_value!r}; expected task_acks_late True (LAB_ACKS_LATE=true)"
    )
