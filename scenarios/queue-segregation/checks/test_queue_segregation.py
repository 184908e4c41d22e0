"""Checks of the queue-segregation lab.

What each check believes (never what the student's app reports about itself):
- routing-*: where the broker holds messages the student's own app published (as the unprivileged celery user,
  with the grader's ids and a countdown, so they wait, unacknowledged, in the queue the routing chose);
- queues-segregated: RabbitMQ's consumers of each queue, and on the worker host which supervisord program owns
  each consumer's connection (ss and /proc);
- heavy-prefetch: the prefetch RabbitMQ applies to the heavy pool's channel against the pool's process count,
  and whether a running job stays unacknowledged (the grader publishes it from the controller, with the light pool
  stopped for the measurement and started again after);
- light-latency: round trips the grader times from the controller, idle and during a burst of heavy tasks, both
  published to the queues the routing check found.
"""

from __future__ import annotations

import time

import pytest

from grading.common import (
    test_broker_ready,
    test_flower_supervised_and_protected,
    test_redis_requires_password,
    test_workers_supervised,
)
from grading.facts import (
    broker_view,
    consumers_by_program,
    held,
    host_processes,
    queue_depths,
    start_programs,
    stop_programs,
    wait_until,
)
from grading.remote import student_producer

__all__ = [
    "test_broker_ready", "test_flower_supervised_and_protected", "test_redis_requires_password",
    "test_workers_supervised",
]  # fmt: skip

CRUNCH, NOTIFY = "labapp.tasks.crunch", "labapp.tasks.notify"
POOLS = {"heavy": "celery-heavy", "light": "celery-light"}
# Routing probes: different counts per task, so each task's queue is known from the per-queue totals alone.
PROBES = {CRUNCH: 3, NOTIFY: 5}
PROBE_COUNTDOWN = 10  # seconds the probes wait (unacknowledged, in their queue) before they run


def task_queues(view) -> set[str]:
    """Queues that carry tasks (not workers' remote-control or Flower's event queues)."""
    return {
        q for q in view.queues
        if not q.endswith(".pidbox") and not q.startswith(("celeryev.", "amq.")) and "reply.celery" not in q
    }  # fmt: skip


def routes(lab, host_for, grader) -> dict[str, str | None]:
    """{task: the one queue the student's routing sends it to, or None}; measured once per grading run."""
    if "routes" in lab.memo:
        return lab.memo["routes"]
    broker, worker = host_for("broker"), host_for("worker")
    tasks = task_queues(broker_view(broker))
    for countdown in (
        PROBE_COUNTDOWN,
        3 * PROBE_COUNTDOWN,
    ):  # a second try, longer, if the first was too slow
        before = queue_depths(broker)
        sends = [
            {"task": task, "args": [0.01] if task == CRUNCH else ["order-42"], "countdown": countdown,
             "ids": [grader.new_id("route") for _ in range(n)]}
            for task, n in PROBES.items()
        ]  # fmt: skip
        started = time.monotonic()
        student_producer(worker, "labapp.tasks", sends)

        def delta_now(before=before) -> dict[str, int]:
            after = queue_depths(broker)
            queues = sorted(set(after) & (tasks | (set(after) - set(before))))
            return {q: d for q in queues if (d := held(after, q) - held(before, q))}

        def all_seen() -> dict[str, int] | None:
            d = delta_now()
            return d if sum(d.values()) >= sum(PROBES.values()) else None

        # Until every probe shows in some queue, or the countdown nearly ran out (then some went nowhere).
        delta = wait_until(all_seen, countdown - 2 - (time.monotonic() - started), 0.5) or delta_now()
        if time.monotonic() - started < countdown - 1:
            break
        # Too slow (a loaded machine): this round's probes are still held in their queues and would leave them in the
        # middle of the next round's count. Let them run (or revoke them) before the longer round starts.
        slow = [i for s in sends for i in s["ids"]]
        late = grader.wait(slow, countdown + 15, interval=0.3)
        grader.revoke([i for i, o in late.items() if o.state not in ("SUCCESS", "FAILURE", "REVOKED")])
    found: dict[str, str | None] = {}
    for task, n in PROBES.items():
        whole = [q for q, d in delta.items() if d in (n, sum(PROBES.values()))]
        found[task] = whole[0] if len(whole) == 1 else None
    ids = [i for s in sends for i in s["ids"]]
    outcomes = grader.wait(ids, countdown + 15, interval=0.3)
    grader.revoke([i for i, o in outcomes.items() if o.state not in ("SUCCESS", "FAILURE", "REVOKED")])
    lab.memo["routes"] = found
    lab.memo["route_delta"] = delta
    return found


def _assert_routed(lab, host_for, grader, task: str, queue: str) -> None:
    found = routes(lab, host_for, grader)
    delta = lab.memo["route_delta"]
    short = task.rsplit(".", 1)[-1]
    assert found[task] == queue, (
        f"{PROBES[task]} {short} tasks published through the lab's app landed in "
        f"{'queue ' + repr(found[task]) if found[task] else 'no single queue'}; expected queue {queue!r} "
        f"(messages held per queue after publishing {PROBES[CRUNCH]} crunch and {PROBES[NOTIFY]} notify: {delta or 'none'})"
    )


@pytest.mark.check("routing-heavy")
def test_crunch_routed_to_heavy(lab, host_for, grader):
    _assert_routed(lab, host_for, grader, CRUNCH, "heavy")


@pytest.mark.check("routing-light")
def test_notify_routed_to_light(lab, host_for, grader):
    _assert_routed(lab, host_for, grader, NOTIFY, "light")


@pytest.mark.check("queues-segregated")
def test_each_queue_consumed_by_its_own_pool(lab, host, host_for):
    view = broker_view(host_for("broker"))
    procs = host_processes(host)
    owners = consumers_by_program(view, procs, lab.lab_address("worker"))
    tasks = task_queues(view)
    consumed = {owner: sorted(q & tasks) for owner, q in owners.items() if q & tasks}
    for queue, program in (("heavy", POOLS["heavy"]), ("light", POOLS["light"])):
        holders = sorted(o for o, qs in consumed.items() if queue in qs)
        assert holders == [program], (
            f"queue {queue!r} is consumed by {holders or 'nobody'}; expected {program} only "
            f"(task queues by consumer, as RabbitMQ sees them: {consumed or 'none'})"
        )
    for pool, program in POOLS.items():
        assert consumed.get(program) == [pool], (
            f"{program} consumes {consumed.get(program)}; expected exactly [{pool!r}] (all: {consumed})"
        )


@pytest.mark.check("heavy-prefetch")
def test_heavy_pool_prefetches_one_and_acks_late(lab, host, host_for, grader):
    broker = host_for("broker")
    procs = host_processes(host)
    heavy = procs.programs.get(POOLS["heavy"]) or {}
    assert heavy.get("state") == "RUNNING", f"{POOLS['heavy']} is {heavy.get('state', 'not a program')}"
    size = len(heavy.get("children") or [])
    view = broker_view(broker)
    mine = [c for c in view.consumers if c.peer_host == lab.lab_address("worker")
            and procs.program_for_port(c.peer_port) == POOLS["heavy"] and c.queue in task_queues(view)]  # fmt: skip
    assert mine, (
        f"{POOLS['heavy']} consumes no task queue (consumers: {[(c.queue, c.peer_port) for c in view.consumers]})"
    )
    prefetch = sorted({c.prefetch for c in mine})
    assert prefetch == [size], (
        f"RabbitMQ gives {POOLS['heavy']}'s channel a prefetch of {prefetch} for {size} pool process(es); "
        f"expected {size} (one message per process)"
    )
    # Ack late, as the running worker applies it: with the heavy pool alone on its queue, a running job must stay
    # unacknowledged until it ends.
    queue = "heavy" if any(c.queue == "heavy" for c in mine) else mine[0].queue
    others = sorted({procs.program_for_port(c.peer_port) for c in view.consumers if c.queue == queue}
                    - {POOLS["heavy"], None})  # fmt: skip
    stop_programs(host, others)
    try:
        # Late acks keep the running job unacknowledged for its whole run: seen in samples at least 2 s apart. An
        # early ack leaves it unacknowledged for milliseconds, which two samples cannot both catch.
        task_id = grader.send(CRUNCH, queue, [ACK_PROBE_SECONDS], label="acklate")
        started, seen = time.monotonic(), []
        while time.monotonic() - started < ACK_PROBE_SECONDS - 1.0:
            q = queue_depths(broker).get(queue, {})
            if q.get("unacked") == 1 and q.get("ready") == 0:
                seen.append(time.monotonic() - started)
            time.sleep(0.3)
        outcome = grader.wait([task_id], ACK_PROBE_SECONDS + 20)[task_id]
        assert outcome.state == "SUCCESS", (
            f"the grader's crunch on queue {queue!r} did not run ({outcome.state})"
        )
        span = seen[-1] - seen[0] if seen else 0.0
        assert span >= 2.0, (
            f"during a {ACK_PROBE_SECONDS:.0f} s crunch on {POOLS['heavy']}, queue {queue!r} showed it unacknowledged "
            f"{'for ' + format(span, '.1f') + ' s' if seen else 'never'} (rabbitmqctl list_queues, sampled through the run); "
            "a job acknowledged only after it ran stays unacknowledged while it runs"
        )
    finally:
        start_programs(host, others)

        def back() -> bool:
            now, owners = broker_view(broker), host_processes(host)
            return all(any(owners.program_for_port(c.peer_port) == o for c in now.consumers) for o in others)

        if others:
            wait_until(back, 30, 1)


ACK_PROBE_SECONDS = 12.0  # long enough for several rabbitmqctl samples (1-4 s each on a loaded machine)
BURST = 8
BURST_SECONDS = 2.0
LATENCY_PROBES = 5
LATENCY_MARGIN = 0.75  # seconds a light task may slow down during the burst


@pytest.mark.check("light-latency")
def test_light_tasks_not_starved_by_heavy_burst(lab, host_for, grader):
    found = routes(lab, host_for, grader)
    heavy_q, light_q = found[CRUNCH], found[NOTIFY]
    assert heavy_q and light_q, (
        f"cannot measure: the app's routing gives no single queue for crunch/notify ({found})"
    )

    def probe() -> float:
        seconds = grader.round_trip(NOTIFY, light_q, ["order-42"], timeout=10, label="latency")
        assert seconds is not None, f"a notify published to {light_q!r} got no result within 10 s"
        return seconds

    # A starved lab is slow on every attempt (a property of its queues and pools); a lab that is only unlucky (a
    # busy machine) gets a second attempt.
    for _attempt in range(2):
        idle = max(probe() for _ in range(LATENCY_PROBES))
        burst = [grader.send(CRUNCH, heavy_q, [BURST_SECONDS], label="burst") for _ in range(BURST)]
        try:
            time.sleep(0.3)
            busy = max(probe() for _ in range(LATENCY_PROBES))
        finally:
            grader.revoke(burst)
            grader.wait(burst, BURST_SECONDS * 2 + 10, interval=0.3)
        if busy <= idle + LATENCY_MARGIN:
            break
    assert busy <= idle + LATENCY_MARGIN, (
        f"notify took up to {busy * 1000:.0f} ms while {BURST} crunch tasks ran (queue {heavy_q!r}), "
        f"{idle * 1000:.0f} ms on the idle lab; allowed: idle + {LATENCY_MARGIN * 1000:.0f} ms"
    )
