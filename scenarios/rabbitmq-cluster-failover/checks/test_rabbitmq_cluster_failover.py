"""Checks of the rabbitmq-cluster-failover lab.

Facts come from the cluster itself (rabbitmqctl on the nodes, as root through sudo): which nodes run, what type each
queue is, where its members are and which are online. The failover check publishes the grader's orders (fresh
uuid4 ids) through the student's own app, as the workers' unprivileged user on the worker host (broker URL,
failover and confirms are producer-side settings), stops RabbitMQ on rabbit1 itself part-way through, and counts
the outcomes the pool stored in Redis for those ids while rabbit1 is still down. rabbit1 is started again whatever
happened, before the check ends.

That rabbit1 is down is a fact from outside the lab: the student is root on every node, so `systemctl stop` could be
made a no-op (or a second RabbitMQ kept outside systemd) and rabbitmqctl made to say anything; the kernel of rabbit1
refusing the grader's own TCP connection to its AMQP port they cannot fake (a lab host has no say over its network).
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from grading import timeline
from grading.common import (
    test_broker_ready,
    test_flower_supervised_and_protected,
    test_redis_requires_password,
    test_workers_supervised,
)
from grading.facts import broker_view, wait_until
from grading.remote import LabCommandError, json_from_output, run, student_producer_paced

__all__ = [
    "test_broker_ready", "test_flower_supervised_and_protected", "test_redis_requires_password",
    "test_workers_supervised",
]  # fmt: skip

ORDER = "labapp.tasks.place_order"
NODES = ("rabbit1", "rabbit2", "rabbit3")
# The failover ledger: LEDGER orders, one every INTERVAL s. The first LEDGER - AFTER_FAULT flow while rabbit1 stops
# (FAULT_AFTER s after the first one is done, waiting at most FIRST_ORDER_WITHIN s for it); the last AFTER_FAULT are
# published once rabbit1 is down for sure (on a busy machine the first batch may all be through before the stop bites:
# then only these prove failover, and they always do). Every order must have succeeded SETTLE_WITHIN s after the last
# publish, rabbit1 still down.
LEDGER, AFTER_FAULT, INTERVAL, FAULT_AFTER, SETTLE_WITHIN, FIRST_ORDER_WITHIN = 40, 5, 0.25, 1.0, 90.0, 20.0
# How long the cluster may take to show a node (or a queue member) back after a start.
REJOIN_WITHIN = 90.0


def _node(role: str) -> str:
    return f"rabbit@{role}"


def _pool_queues(lab) -> list[str]:
    return sorted({q for pool in lab.scenario.data.get("pools") or [] for q in pool.get("queues") or []})


def cluster_status(host) -> dict:
    res = run(host, "rabbitmqctl -q cluster_status --formatter json", timeout=60)
    return json_from_output(res, "rabbitmqctl cluster_status")


def running_nodes(host) -> set[str]:
    try:
        return set(cluster_status(host).get("running_nodes") or [])
    except LabCommandError:
        return set()


def lab_queues(host) -> dict[str, dict]:
    """The lab vhost's queues as the cluster sees them: name -> {type, members, online, consumers}."""
    res = run(
        host,
        "rabbitmqctl -q list_queues -p lab name type members online consumers --formatter json",
        timeout=60,
    )
    try:  # one JSON array, an object per line
        queues = json.loads(res.stdout or "")
    except ValueError:
        raise LabCommandError(
            f"rabbitmqctl list_queues (exit {res.rc}): {(res.stderr or res.stdout or '').strip()[-300:]}"
        ) from None
    return {q["name"]: q for q in queues}


def _all_online(queue: dict) -> bool:
    return set(queue.get("online") or []) == {_node(n) for n in NODES}


def amqp_refused(lab, role: str = "rabbit1") -> tuple[bool, str]:
    """Whether a node's AMQP port refuses a TCP connection from the grader itself (not from a lab host);
    (refused, what happened)."""
    address = lab.address(role)
    try:
        socket.create_connection((address, 5672), timeout=10).close()
    except ConnectionRefusedError:
        return True, f"{address}:5672 refused the grader's connection"
    except OSError as exc:
        return False, f"{address}:5672 did not refuse the grader's connection ({exc})"
    return False, f"{address}:5672 accepted the grader's connection"


def start_node(node_host) -> float:
    """Start RabbitMQ on a node again and wait for it to serve; the seconds it took."""
    t0 = time.monotonic()
    res = run(
        node_host,
        "systemctl start rabbitmq-server && rabbitmqctl -q await_startup --timeout 120",
        timeout=180,
    )
    if res.rc != 0:
        raise LabCommandError(
            f"rabbitmq-server on rabbit1 did not start again: {(res.stderr or res.stdout)[-300:]}"
        )
    timeline.mark("recovered", "rabbitmq-server on rabbit1 serves again")
    return time.monotonic() - t0


@pytest.mark.check("cluster-formed")
def test_three_nodes_run_as_one_cluster(host):
    want = {_node(n) for n in NODES}
    running = wait_until(lambda: running_nodes(host) >= want and running_nodes(host), 30, 2) or set()
    status = cluster_status(host)
    disc = set(status.get("disk_nodes") or [])
    assert want <= disc, f"the cluster's members are {sorted(disc)}; expected {sorted(want)}"
    assert want <= running, f"running nodes: {sorted(running)}; expected all of {sorted(want)}"


def _celery_internal(queue: str) -> bool:
    """Celery's own queues (events, remote control): transient by design, never quorum queues."""
    return queue.startswith("celeryev.") or queue.endswith(".pidbox") or queue.startswith("celery@")


def _consumed_from(host, peer: str) -> set[str]:
    """Task queues with a consumer connected from ``peer`` (the worker host), as the cluster sees them."""
    try:
        view = broker_view(host)
    except Exception:  # a node settling after a restart (unreachable, no answer): polled again
        return set()
    return {c.queue for c in view.consumers if c.peer_host == peer and not _celery_internal(c.queue)}


@pytest.mark.check("quorum-queues")
def test_orders_is_a_quorum_queue_on_every_node(host, lab):
    wanted = _pool_queues(lab)
    peer = lab.lab_address("worker")
    # Right after another check restarted rabbit1 its member (and the pool's consumer) may still be catching up.
    seen: list[tuple[dict, set[str]]] = []

    def settled() -> bool:
        try:
            queues = lab_queues(host)
        except LabCommandError:
            queues = {}
        seen.append((queues, _consumed_from(host, peer)))
        queues, consumed = seen[-1]
        served = set(wanted) | consumed
        return set(wanted) <= consumed and all(
            q in queues and queues[q].get("type") == "quorum" and _all_online(queues[q]) for q in served
        )

    wait_until(settled, 30, 2)
    queues, consumed = seen[-1]
    # The queues the pool really serves, not only the one the scenario names: orders must be one of them, and a task
    # routed elsewhere (a classic queue on one node) fails too.
    missing = [q for q in wanted if q not in consumed]
    assert not missing, (
        f"the worker host consumes {sorted(consumed) or 'no task queue'}; the pool must serve {missing} "
        "(scenario's routes)"
    )
    for name in sorted(set(wanted) | consumed):
        assert name in queues, f"queue {name!r} does not exist in vhost lab (queues: {sorted(queues)})"
        q = queues[name]
        assert q.get("type") == "quorum", (
            f"queue {name!r}, which the pool consumes, is a {q.get('type')} queue (it lives on one node only); "
            "expected a quorum queue"
        )
        members = set(q.get("members") or [])
        assert members == {_node(n) for n in NODES}, (
            f"quorum queue {name!r} has members {sorted(members)}; expected one on each of {list(NODES)}"
        )
        assert _all_online(q), (
            f"quorum queue {name!r}: online members {sorted(q.get('online') or [])} of {sorted(members)}"
        )


@pytest.mark.check("failover-ledger")
def test_orders_survive_the_loss_of_rabbit1(grader, host_for, lab):
    worker, node1, node2 = host_for("worker"), host_for("rabbit1"), host_for("rabbit2")
    want = {_node(n) for n in NODES}
    running = (
        wait_until(lambda: running_nodes(node2) >= want and running_nodes(node2), REJOIN_WITHIN, 2) or set()
    )
    assert want <= running, (
        f"before the fault, the cluster runs {sorted(running)}; expected all of {sorted(want)}"
    )
    ids = [grader.new_id("failover") for _ in range(LEDGER)]
    during, after = ids[: LEDGER - AFTER_FAULT], ids[LEDGER - AFTER_FAULT :]
    published: dict = {}

    def publish() -> None:
        try:
            published.update(
                student_producer_paced(worker, "labapp.tasks", ORDER, during, INTERVAL, args=[{"amount": 1}])
            )
        except Exception as exc:  # reported below, after rabbit1 is back
            published["error"] = str(exc)

    producer = threading.Thread(target=publish, name="failover-producer", daemon=True)
    timeline.mark("ledger", f"publishing {len(during)} orders through the lab's app, one every {INTERVAL} s")
    producer.start()
    # The fault comes once the orders flow (the first one done), whatever ssh and the app's start-up cost. A lab where
    # none gets through stops rabbit1 all the same.
    wait_until(lambda: not producer.is_alive() or _done(grader, during[:1]), FIRST_ORDER_WITHIN, 0.2)
    time.sleep(FAULT_AFTER)
    before = _done(grader, ids)
    try:
        res = run(node1, "systemctl stop rabbitmq-server", timeout=120)
        assert res.rc == 0, f"could not stop rabbitmq-server on rabbit1: {(res.stderr or res.stdout)[-300:]}"
        # Down for sure, as seen from outside the lab (a stopped server's port refuses at once).
        probes: list[tuple[bool, str]] = []
        wait_until(lambda: probes.append(amqp_refused(lab)) or probes[-1][0], 10, 0.5)
        refused, after_stop = probes[-1]
        timeline.mark(
            "fault",
            f"systemctl stop rabbitmq-server on rabbit1 ({before} orders done when it began, the publisher "
            f"{'still publishing' if producer.is_alive() else 'done'} when it ended); {after_stop}",
        )
        # rabbit1 is down for sure: these orders can only get through another node.
        try:
            late = student_producer_paced(
                worker, "labapp.tasks", ORDER, after, INTERVAL, args=[{"amount": 1}]
            )
        except Exception as exc:
            late = {"error": str(exc)}
        timeline.mark(
            "ledger", f"{len(late.get('sent') or [])} of {len(after)} more orders published, rabbit1 down"
        )
        producer.join(timeout=len(during) * INTERVAL + 150)
        if producer.is_alive():
            published.setdefault("error", "the first batch's publisher did not finish")
        published.setdefault("failed", {}).update(late.get("failed") or {})
        if "error" in late:
            published.setdefault("error", late["error"])
        # Orders the app could not publish will never run: no need to wait for the others then (the check fails).
        settle = 0 if published.get("failed") or "error" in published else SETTLE_WITHIN
        by_state: dict[str, list[str]] = {}
        for task_id, outcome in grader.wait(ids, settle, interval=0.5).items():
            by_state.setdefault(outcome.state, []).append(task_id)
        # Still down, as the grader and the cluster see it: whatever succeeded, succeeded without rabbit1.
        still_refused, at_count = amqp_refused(lab)
        still_down = still_refused and _node("rabbit1") not in running_nodes(node2)
    finally:
        start_node(node1)  # whatever happened above, even a stop that timed out but went on
    done = len(by_state.get("SUCCESS", []))
    timeline.mark(
        "ledger", f"{done} of {LEDGER} orders succeeded with rabbit1 down ({before} before the fault)"
    )
    assert refused, (
        f"rabbit1 still served AMQP after `systemctl stop rabbitmq-server` ({after_stop}): the orders did not meet a "
        "node loss, so they prove nothing about failover. Let systemd stop RabbitMQ on rabbit1 for real."
    )
    assert "error" not in published, f"publishing through the lab's app failed: {published['error']}"
    failed = published.get("failed") or {}
    assert not failed, (
        f"the lab's app could not publish {len(failed)} of {LEDGER} orders once rabbit1 was down "
        f"(first error: {next(iter(failed.values()))})"
    )
    assert still_down, (
        f"rabbit1 was back before the orders were counted ({at_count}): the count would not prove failover"
    )
    counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(by_state.items()))
    assert done == LEDGER, (
        f"{LEDGER} orders published, rabbit1 stopped after {before} of them were done: {done} succeeded within "
        f"{SETTLE_WITHIN:.0f} s with rabbit1 down ({counts}); the others were lost or waited for rabbit1"
    )


def _done(grader, ids: list[str]) -> int:
    """How many of ``ids`` have a final outcome in the result backend (Redis, on the worker host)."""
    try:
        return sum(1 for o in grader.outcomes(ids).values() if o.state != "PENDING")
    except Exception:  # Redis restarting or slow: not done yet
        return 0


@pytest.mark.check("node-rejoins")
def test_rabbit1_rejoins_after_a_restart(host, host_for):
    res = run(
        host, "systemctl restart rabbitmq-server && rabbitmqctl -q await_startup --timeout 120", timeout=180
    )
    assert res.rc == 0, f"rabbitmq-server on rabbit1 did not come back: {(res.stderr or res.stdout)[-300:]}"
    node2 = host_for("rabbit2")
    want = {_node(n) for n in NODES}
    running = (
        wait_until(lambda: running_nodes(node2) >= want and running_nodes(node2), REJOIN_WITHIN, 2) or set()
    )
    assert want <= running, (
        f"after a restart of rabbit1, rabbit2 sees {sorted(running)} running; expected {sorted(want)}"
    )
    quorum: list[dict] = []
    wait_until(
        lambda: (
            quorum.append({n: q for n, q in lab_queues(node2).items() if q.get("type") == "quorum"})
            or all(_all_online(q) for q in quorum[-1].values())
        ),
        REJOIN_WITHIN,
        2,
    )
    lagging = {n: sorted(q.get("online") or []) for n, q in quorum[-1].items() if not _all_online(q)}
    assert not lagging, f"quorum queues without all their members online after rabbit1 rejoined: {lagging}"
