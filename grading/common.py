"""Checks every scenario with these components shares (import them into a scenario's checks/ module).

They check the kit's own infrastructure, so in a scenario they are preconditions (weight 0): they pass in the
starting state, and a student who breaks them sees why the other checks fail.
"""

from __future__ import annotations

import pytest

from grading.remote import controller_http_get, controller_redis_ping, run, supervisor_states, tcp_open


def _first_column(output: str) -> list[str]:
    """First field of each data line of rabbitmqctl -q output (tolerates header lines)."""
    values = []
    for line in output.splitlines():
        fields = line.split()
        if fields and fields[0] not in ("user", "name", "Listing", "Timeout:"):
            values.append(fields[0])
    return values


@pytest.mark.check("broker-ready")
def test_broker_ready(host, lab):
    users = run(host, "rabbitmqctl -q list_users", timeout=60)
    assert users.rc == 0, f"rabbitmqctl list_users failed (exit {users.rc}): {users.stderr.strip()[-300:]}"
    names = _first_column(users.stdout)
    vhosts = _first_column(run(host, "rabbitmqctl -q list_vhosts", timeout=60).stdout)
    assert lab.student in names, f"RabbitMQ user {lab.student!r} missing; users are {names}"
    assert "guest" not in names, f"the default guest user must be removed; users are {names}"
    assert "lab" in vhosts, f"vhost 'lab' missing; vhosts are {vhosts}"
    perms = _first_column(run(host, "rabbitmqctl -q list_permissions -p lab", timeout=60).stdout)
    assert lab.student in perms, (
        f"user {lab.student!r} has no permissions on vhost 'lab' (users with some: {perms})"
    )
    open_local, _ = tcp_open(host, "127.0.0.1", 15672)
    open_lab, error = tcp_open(host, lab.lab_endpoint("rabbitmq"), 15672)
    assert open_local or open_lab, f"management plugin: nothing listens on port 15672 ({error})"


@pytest.mark.check("redis-auth")
def test_redis_requires_password(lab):
    # Probed from the controller, like any client of the lab: the password never leaves this process.
    address = lab.endpoint("redis")
    seen = controller_redis_ping(address, 6379, None)
    assert not seen.startswith("Could not connect"), (
        f"Redis does not answer on {address}:6379 ({seen[-200:]})"
    )
    assert "NOAUTH" in seen or "Authentication required" in seen, (
        f"PING to {address}:6379 without a password must be refused (NOAUTH), got {seen[-200:]!r}"
    )
    answer = controller_redis_ping(address, 6379, lab.credential("redis"))
    assert answer == "PONG", f"with the lab's redis password, PING must answer PONG, got {answer[-200:]!r}"


@pytest.mark.check("flower-up")
def test_flower_supervised_and_protected(host, lab):
    state = supervisor_states(host, "flower")["flower"]
    assert state == "RUNNING", f"supervisorctl status flower: expected RUNNING, got {state}"
    base = f"http://{lab.endpoint('flower')}:5555"
    anonymous = controller_http_get(base + "/")
    assert anonymous["status"] == 401, (
        f"GET {base}/ without credentials: expected 401 (basic auth), "
        f"got {anonymous['status'] or anonymous.get('error')}"
    )
    metrics = controller_http_get(base + "/metrics")
    assert metrics["status"] == 200, (
        f"GET {base}/metrics: expected 200, got {metrics['status'] or metrics.get('error')}"
    )
    authed = controller_http_get(base + "/", auth=(lab.student, lab.credential("flower")))
    assert authed["status"] == 200, (
        f"GET {base}/ as {lab.student} with the lab's flower password: expected 200, got {authed['status']}"
    )


@pytest.mark.check("workers-supervised")
def test_workers_supervised(host, lab):
    programs = [f"celery-{p['name']}" for p in lab.scenario.data.get("pools") or []]
    states = supervisor_states(host, *programs)
    assert all(state == "RUNNING" for state in states.values()), (
        f"expected every worker pool RUNNING under supervisord, got {states}"
    )
