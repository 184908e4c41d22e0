"""Checks of the monitoring-alerting lab.

What Prometheus scrapes, which rules it holds and which alerts fire come from Prometheus' and Alertmanager's own
APIs on the monitor host, read from the controller. The alerts are provoked by the grader itself: it stops the
light pool and queues a burst with its own ids, watches QueueBacklog and WorkerDown reach Alertmanager (and which
receiver they reach: it must have a notifier), starts the pool again and watches them resolve. The task counter is
read straight from the workers' /metrics before and after the grader ran N tasks of its own, whose successes it saw
in the result backend: the counter must rise by exactly N.
"""

from __future__ import annotations

import re
import time

import pytest
import yaml

from grading import timeline
from grading.common import (
    test_broker_ready,
    test_flower_supervised_and_protected,
    test_redis_requires_password,
    test_workers_supervised,
)
from grading.facts import host_processes, start_programs, stop_programs, wait_until
from grading.remote import LabCommandError, controller_http_get, controller_json, controller_text

__all__ = [
    "test_broker_ready", "test_flower_supervised_and_protected", "test_redis_requires_password",
    "test_workers_supervised",
]  # fmt: skip

PROMETHEUS_PORT, ALERTMANAGER_PORT, WORKER_METRICS_PORT = 9090, 9093, 9808
# What Prometheus must scrape: (host role, port) of each exporter.
TARGETS = {
    "RabbitMQ (Prometheus plugin)": ("broker", 15692),
    "Redis (redis exporter)": ("broker", 9121),
    "Flower": ("broker", 5555),
    "the workers": ("worker", WORKER_METRICS_PORT),
}
ALERTS = ("QueueBacklog", "WorkerDown", "TaskFailureRate")
# What each rule must be driven by (in its query): the alerts are told apart by their signal, not only by their name.
SIGNALS = {
    "QueueBacklog": (
        re.compile(r"rabbitmq_queue_messages"),
        "RabbitMQ's queue depth (rabbitmq_queue_messages...)",
    ),
    "WorkerDown": (re.compile(r"\bup\b"), "the workers' scrape health (up)"),
    "TaskFailureRate": (
        re.compile(r"labapp_tasks_total(?s:.*)FAILURE"),
        'labapp_tasks_total{state="FAILURE"}',
    ),
}
OUTAGE_ALERTS = ("QueueBacklog", "WorkerDown")
POOL, QUEUE, TASK = "celery-light", "light", "labapp.tasks.work"
COUNTED_TASK = "labapp.tasks.flaky"  # counted apart from the burst's tasks
BURST = 60  # tasks queued while the pool is stopped (the handout's backlog threshold is 20)
FIRE_WITHIN, RESOLVE_WITHIN, POLL = 150.0, 120.0, 3.0
COUNTED = 40  # tasks the grader runs to read the task counter
COUNTER = "labapp_tasks_total"


def _url(lab, component: str, port: int, path: str) -> str:
    return f"http://{lab.endpoint(component)}:{port}{path}"


def _prometheus(lab, path: str):
    return controller_json(_url(lab, "prometheus", PROMETHEUS_PORT, path))


def _alertmanager(lab, path: str):
    return controller_json(_url(lab, "alertmanager", ALERTMANAGER_PORT, path))


def _names(lab, role: str) -> set[str]:
    """What a student may call a host in a target: its role name, its hostname or its (lab) address."""
    entry = lab.hosts.get(role) or {}
    return {role, *(v for v in (entry.get("name"), entry.get("address"), entry.get("lab_address")) if v)}


def _notifying_receivers(lab) -> set[str]:
    """Receivers of Alertmanager's running configuration that send somewhere (any *_configs with an entry)."""
    original = (_alertmanager(lab, "/api/v2/status").get("config") or {}).get("original") or ""
    config = yaml.safe_load(original) or {}
    return {
        r["name"]
        for r in config.get("receivers") or []
        if any(k.endswith("_configs") and v for k, v in r.items())
    }


@pytest.mark.check("monitoring-up")
def test_prometheus_and_alertmanager_answer(lab):
    for what, component, port in (("Prometheus", "prometheus", PROMETHEUS_PORT),
                                  ("Alertmanager", "alertmanager", ALERTMANAGER_PORT)):  # fmt: skip
        url = _url(lab, component, port, "/-/ready")
        answer = controller_http_get(url)
        assert answer["status"] == 200, f"{what}: GET {url} gave {answer['status'] or answer.get('error')}"


@pytest.mark.check("targets-up")
def test_prometheus_scrapes_every_exporter(lab):
    names = {role: _names(lab, role) for role, _port in TARGETS.values()}

    def scraped() -> dict[str, tuple[str, str]]:
        found = {}
        for t in _prometheus(lab, "/api/v1/targets?state=active")["data"]["activeTargets"]:
            host, _, port = (t.get("discoveredLabels", {}).get("__address__") or "").rpartition(":")
            for what, (role, want) in TARGETS.items():
                if host in names[role] and port == str(want):
                    found[what] = (t.get("health", "?"), t.get("lastError") or "")
        return found

    seen: list[dict] = []
    wait_until(
        lambda: seen.append(scraped()) or all(seen[-1].get(w, ("",))[0] == "up" for w in TARGETS), 30, 5
    )
    found = seen[-1]
    missing = [f"{w} ({TARGETS[w][0]}:{TARGETS[w][1]})" for w in TARGETS if w not in found]
    down = [f"{w}: {h} {err}".strip() for w, (h, err) in found.items() if h != "up"]
    assert not missing and not down, (
        f"Prometheus scrapes no target for {', '.join(missing)}. " if missing else ""
    ) + (f"Targets not up: {'; '.join(down)}" if down else "")


@pytest.mark.check("alert-rules")
def test_alerting_rules_loaded(lab):
    rules = _rules(lab)
    missing = [a for a in ALERTS if a not in rules]
    blind = [f"{a} (query {rules[a].get('query')!r} does not read {SIGNALS[a][1]})" for a in ALERTS
             if a in rules and not SIGNALS[a][0].search(rules[a].get("query") or "")]  # fmt: skip
    assert not blind, f"Rules that do not watch what their name says: {'; '.join(blind)}"
    broken = [
        f"{a}: {rules[a].get('lastError')}" for a in ALERTS if a in rules and rules[a].get("health") == "err"
    ]
    assert not missing and not broken, (
        (f"Prometheus has no alerting rule named {', '.join(missing)} (rules loaded: {sorted(rules) or 'none'}). "
         if missing else "")
        + (f"Rules failing to evaluate: {'; '.join(broken)}" if broken else "")
    )  # fmt: skip


def _rules(lab) -> dict[str, dict]:
    """Prometheus' loaded alerting rules by name (name, query, health, ...)."""
    groups = _prometheus(lab, "/api/v1/rules?type=alert")["data"]["groups"]
    return {r["name"]: r for g in groups for r in g.get("rules", [])}


def _firing(lab) -> set[str]:
    """Names of the alerts Prometheus' rules have firing now."""
    alerts = _prometheus(lab, "/api/v1/alerts")["data"]["alerts"]
    return {(a.get("labels") or {}).get("alertname") for a in alerts if a.get("state") == "firing"}


def _outage(lab, grader, worker) -> dict:
    """Stop the pool and queue a burst, watch the alerts reach Alertmanager, start the pool, watch them resolve.
    Done once per lab and grading run (both alert checks read it)."""
    if "outage" in lab.memo:
        return lab.memo["outage"]
    notifying = _notifying_receivers(lab)
    fired: dict[str, float] = {}
    receivers: dict[str, list[str]] = {}
    stop_programs(worker, [POOL])
    t0 = time.monotonic()
    try:
        ids = [grader.send(TASK, QUEUE, args=[0.05], label="backlog") for _ in range(BURST)]
        timeline.mark("ledger", f"queued {BURST} {TASK} to {QUEUE}")
        while time.monotonic() - t0 < FIRE_WITHIN and not all(a in fired for a in OUTAGE_ALERTS):
            # Firing in Prometheus' own rule evaluation, and delivered to Alertmanager (an alert posted to
            # Alertmanager's API by hand is not in the first list).
            try:
                evaluated = _firing(lab)
                # Inhibited counts (e.g. WorkerDown inhibiting QueueBacklog is a sound routing); silenced does not.
                in_alertmanager = _alertmanager(lab, "/api/v2/alerts?silenced=false")
            except LabCommandError:  # one slow answer is not the lab's fault: poll again
                in_alertmanager = []
            for alert in in_alertmanager:
                name = (alert.get("labels") or {}).get("alertname")
                if name in OUTAGE_ALERTS and name not in fired and name in evaluated:
                    fired[name] = time.monotonic() - t0
                    receivers[name] = [r.get("name", "?") for r in alert.get("receivers") or []]
                    timeline.mark("probe", f"{name} in Alertmanager (to {', '.join(receivers[name])})")
            time.sleep(POLL)
    finally:
        start_programs(worker, [POOL])
    t1 = time.monotonic()
    resolved: dict[str, float] = {}
    while fired and time.monotonic() - t1 < RESOLVE_WITHIN and set(resolved) != set(fired):
        try:
            active = _firing(lab)
        except LabCommandError:
            time.sleep(POLL)
            continue
        for name in fired:
            if name not in active and name not in resolved:
                resolved[name] = time.monotonic() - t1
                timeline.mark("recovered", f"{name} resolved")
        time.sleep(POLL)
    grader.wait(ids, 30, interval=1)  # the burst drains (or the next check starts with it gone)
    lab.memo["outage"] = {
        "rules": {name: r.get("query") or "" for name, r in _rules(lab).items()},
        "fired": fired,
        "receivers": receivers,
        "resolved": resolved,
        "notifying": notifying,
    }
    return lab.memo["outage"]


def _judge(outcome: dict, alert: str, provoked: str) -> None:
    fired, resolved = outcome["fired"], outcome["resolved"]
    query = outcome["rules"].get(alert, "")
    assert alert not in fired or SIGNALS[alert][0].search(query), (
        f"{alert} fired, but its rule ({query!r}) does not watch {SIGNALS[alert][1]}: it fires for another reason"
    )
    assert alert in fired, (
        f"{provoked}: {alert} was not firing in Prometheus and in Alertmanager within {FIRE_WITHIN:.0f} s"
    )
    good = [r for r in outcome["receivers"][alert] if r in outcome["notifying"]]
    assert good, (
        f"{alert} fired after {fired[alert]:.0f} s but reached only {', '.join(outcome['receivers'][alert]) or 'no'} "
        f"receiver(s), which notify nobody (receivers with a notifier: {sorted(outcome['notifying']) or 'none'})"
    )
    assert alert in resolved, (
        f"{alert} fired after {fired[alert]:.0f} s (to {', '.join(good)}) but was still firing "
        f"{RESOLVE_WITHIN:.0f} s after {POOL} was started again"
    )


@pytest.mark.check("backlog-alert")
def test_a_backlog_fires_and_resolves(lab, grader, host_for):
    outcome = _outage(lab, grader, host_for("worker"))
    _judge(outcome, "QueueBacklog", f"{POOL} stopped and {BURST} tasks queued to {QUEUE}")


@pytest.mark.check("worker-down-alert")
def test_a_stopped_worker_fires_and_resolves(lab, grader, host_for):
    outcome = _outage(lab, grader, host_for("worker"))
    _judge(outcome, "WorkerDown", f"{POOL} stopped")


_SAMPLE = re.compile(r"^" + COUNTER + r"(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)", re.M)
COUNTED_FAIL = 10  # of the COUNTED tasks, asked to fail: the counter must tell them apart


def _counted(lab) -> dict[str, float]:
    """The task counter for the counted task, by state, as the workers' /metrics shows it now."""
    text = controller_text(f"http://{lab.address('worker')}:{WORKER_METRICS_PORT}/metrics")
    by_state: dict[str, float] = {"SUCCESS": 0.0, "FAILURE": 0.0}
    for m in _SAMPLE.finditer(text):
        labels = m.group("labels") or ""
        state = re.search(r'state="([^"]*)"', labels)
        if f'task="{COUNTED_TASK}"' in labels and state:
            by_state[state.group(1)] = by_state.get(state.group(1), 0.0) + float(m.group("value"))
    return by_state


@pytest.mark.check("task-counter")
def test_task_counter_counts_every_task(lab, grader, host):
    pool = host_processes(host).programs.get(POOL) or {}
    assert len(pool.get("children") or []) >= 2, (
        f"{POOL} runs {len(pool.get('children') or [])} pool processes: the lab's prefork pool (concurrency 4) is "
        "what the counter must be true under"
    )
    try:
        before = _counted(lab)
    except LabCommandError as e:
        pytest.fail(f"the workers' metrics: {e}")
    fails = [True] * COUNTED_FAIL + [False] * (COUNTED - COUNTED_FAIL)
    ids = [grader.send(COUNTED_TASK, QUEUE, args=[f], label="count") for f in fails]
    outcomes = grader.wait(ids, 60, interval=0.5)
    states = [o.state for o in outcomes.values()]
    want = {"SUCCESS": COUNTED - COUNTED_FAIL, "FAILURE": COUNTED_FAIL}
    got = {k: states.count(k) for k in want}
    assert got == want, (
        f"the grader's {COUNTED} {COUNTED_TASK} tasks ended {got} within 60 s, expected {want}"
    )

    def rose() -> dict[str, float]:
        now = _counted(lab)
        return {k: now.get(k, 0.0) - before.get(k, 0.0) for k in want}

    seen: list[dict[str, float]] = []
    wait_until(lambda: seen.append(rose()) or all(seen[-1][k] >= want[k] for k in want), 10, 1)
    assert seen[-1] == {k: float(v) for k, v in want.items()}, (
        f"the grader ran {COUNTED} {COUNTED_TASK} tasks at concurrency 4 ({want['SUCCESS']} succeeded, "
        f"{want['FAILURE']} failed, as asked); {COUNTER} for that task rose by "
        + ", ".join(f"{seen[-1][k]:g} {k}" for k in want)
    )
