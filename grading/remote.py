"""Helpers checks use to run commands on a lab host (testinfra over ssh, as the admin with sudo) and to probe lab
services from the controller.

Facts are read on the host with become; behaviour is probed from the controller (see grading.client). The student's
app is run only to publish through its own routing, as the workers' unprivileged user. Every remote command is
bounded by coreutils ``timeout``, so a dead broker fails a check instead of hanging the grading run.
"""

from __future__ import annotations

import json
import os
import shlex
from typing import Any

# Where the roles deploy the lab app on worker hosts. Overridable so the checks can be
# exercised against a local worker (tests with --lab-connection local).
APP_DIR = os.environ.get("LABKIT_LAB_APP_DIR", "/srv/celery-lab/app")
VENV_PYTHON = os.environ.get("LABKIT_LAB_PYTHON", "/srv/celery-lab/venv/bin/python")
# The unprivileged user the workers run as: the student's app is only ever run as this user, never as root.
APP_USER = os.environ.get("LABKIT_LAB_APP_USER", "celery")
# How long `celery inspect` waits for worker replies (a broadcast has no reply count to stop at).
INSPECT_TIMEOUT = float(os.environ.get("LABKIT_INSPECT_TIMEOUT", "3"))


class LabCommandError(AssertionError):
    """A command on a lab host did not produce what the check needs to judge.

    An AssertionError, so the check counts as failed (not as a grader crash) and its
    message becomes the detail students see.
    """


def run(host, command: str, timeout: int = 60):
    """Run ``command`` through ``sh -c`` on ``host``, killed after ``timeout`` seconds."""
    return host.run(f"timeout {int(timeout)} sh -c {shlex.quote(command)}")


def _tail(text: str, limit: int = 300) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def json_from_output(result, what: str) -> Any:
    """Parse the last stdout line of ``result`` as JSON, or explain why not."""
    lines = [line for line in (result.stdout or "").splitlines() if line.strip()]
    if result.rc == 124:
        raise LabCommandError(f"{what}: timed out on the host")
    if not lines:
        raise LabCommandError(f"{what}: no output (exit {result.rc}); stderr: {_tail(result.stderr)}")
    try:
        return json.loads(lines[-1])
    except ValueError:
        raise LabCommandError(
            f"{what}: unexpected output (exit {result.rc}): {_tail(lines[-1])}; "
            f"stderr: {_tail(result.stderr)}"
        ) from None


def system_python(host, snippet: str, *args: str, timeout: int = 30, what: str = "probe") -> Any:
    argv = " ".join(shlex.quote(a) for a in args)
    return json_from_output(run(host, f"python3 -c {shlex.quote(snippet)} {argv}", timeout=timeout), what)


_TCP_PROBE = r"""
import json, socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
    print(json.dumps({"open": True}))
except OSError as exc:
    print(json.dumps({"open": False, "error": str(exc)}))
"""


def tcp_open(host, address: str, port: int) -> tuple[bool, str]:
    """Whether ``address:port`` accepts a TCP connection from ``host``; (open, error)."""
    out = system_python(host, _TCP_PROBE, address, str(port), what=f"tcp probe {address}:{port}")
    return bool(out["open"]), out.get("error", "")


_HTTP_PROBE = r"""
import base64, json, sys, urllib.error, urllib.request
req = urllib.request.Request(sys.argv[1])
if len(sys.argv) > 3:
    token = base64.b64encode(f"{sys.argv[2]}:{sys.argv[3]}".encode()).decode()
    req.add_header("Authorization", "Basic " + token)
try:
    with urllib.request.urlopen(req, timeout=10) as resp:
        print(json.dumps({"status": resp.status, "body": resp.read(400).decode("utf-8", "replace")}))
except urllib.error.HTTPError as exc:
    print(json.dumps({"status": exc.code, "body": ""}))
except OSError as exc:
    print(json.dumps({"status": None, "error": str(exc)}))
"""


def http_get(host, url: str, auth: tuple[str, str] | None = None) -> dict[str, Any]:
    """GET ``url`` from ``host``: {"status": int|None, "body": first bytes, "error": ...}."""
    args = [url, *(auth or ())]
    return system_python(host, _HTTP_PROBE, *args, what=f"GET {url}")


def controller_http_get(url: str, auth: tuple[str, str] | None = None, timeout: float = 10) -> dict[str, Any]:
    """GET ``url`` from the controller itself (a black-box probe; a password stays in this process,
    never on a command line): {"status": int|None, "body": first bytes, "error": ...}."""
    import base64
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return {"status": r.status, "body": r.read(200).decode(errors="replace")}
    except urllib.error.HTTPError as e:
        return {"status": e.code, "body": ""}
    except OSError as e:
        return {"status": None, "body": "", "error": str(e)}


def controller_json(url: str, timeout: float = 10) -> Any:
    """GET ``url`` from the controller and parse the JSON answer (a lab service's own API, e.g. Prometheus').
    Raises LabCommandError with what went wrong: no answer, an HTTP error, or not JSON."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = r.read()
    except urllib.error.HTTPError as e:
        raise LabCommandError(f"GET {url}: HTTP {e.code}") from None
    except OSError as e:
        raise LabCommandError(f"GET {url}: no answer ({e})") from None
    try:
        return json.loads(body)
    except ValueError:
        raise LabCommandError(f"GET {url}: not JSON ({_tail(body.decode(errors='replace'))})") from None


def controller_text(url: str, timeout: float = 10) -> str:
    """GET ``url`` from the controller: the whole body as text (e.g. a /metrics page). Raises LabCommandError."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        raise LabCommandError(f"GET {url}: HTTP {e.code}") from None
    except OSError as e:
        raise LabCommandError(f"GET {url}: no answer ({e})") from None


def controller_redis_ping(address: str, port: int, password: str | None, timeout: float = 10) -> str:
    """PING the lab's Redis from the controller: "PONG", or the error's first words (e.g. NOAUTH ...)."""
    import redis

    client = redis.Redis(host=address, port=port, password=password, socket_timeout=timeout, protocol=2,
                         socket_connect_timeout=timeout)  # fmt: skip
    try:
        return "PONG" if client.ping() else "no PONG"
    except redis.exceptions.AuthenticationError as e:
        return f"NOAUTH {e}" if "NOAUTH" not in str(e) and "Authentication required" in str(e) else str(e)
    except redis.exceptions.ResponseError as e:
        return str(e)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
        return f"Could not connect: {e}"
    finally:
        client.close()


def supervisor_states(host, *programs: str, timeout: int = 30) -> dict[str, str]:
    """``supervisorctl status`` state per program (MISSING when supervisord has no such program). Raises
    LabCommandError when it gives no answer for one of them (supervisord down, a timeout)."""
    result = run(host, "supervisorctl status " + " ".join(shlex.quote(p) for p in programs), timeout=timeout)
    states: dict[str, str] = {}
    for line in (result.stdout or "").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in programs:
            states[parts[0]] = parts[1]
        elif parts and parts[0].rstrip(":") in programs and "no such process" in line:
            states[parts[0].rstrip(":")] = "MISSING"
    unanswered = [p for p in programs if p not in states]
    if unanswered:
        raise LabCommandError(
            f"supervisorctl status gave no answer for {', '.join(unanswered)} (exit {result.rc}): "
            f"{_tail(result.stderr or result.stdout)}"
        )
    return states


_PRODUCER = r"""
import importlib, json, sys
plan = json.loads(sys.argv[1])
module = importlib.import_module(plan["module"])
app = module.app
sent = 0
for send in plan["sends"]:
    task = app.tasks[send["task"]]
    for task_id in send["ids"]:
        task.apply_async(tuple(send.get("args", ())), task_id=task_id, countdown=send.get("countdown"),
                         expires=send.get("expires", 300))
        sent += 1
print(json.dumps({"sent": sent}))
"""


def student_producer(
    host, module: str, sends: list[dict[str, Any]], timeout: int = 60, broker: str = "rabbitmq"
) -> int:
    """Publish tasks through the student's own app and its routing (a producer-side setting), as the workers'
    unprivileged user on ``host``; the ids are the grader's. Returns how many were sent. ``broker`` picks the broker
    the lab's settings give for it (LAB_BROKER, as the pools' programs do).

    What the app prints is never evidence: a check reads where the messages went from the broker.
    """
    if broker not in ("rabbitmq", "redis"):
        raise ValueError(f"broker {broker!r}: rabbitmq or redis")
    out = _in_app(host, _PRODUCER, {"module": module, "sends": sends}, timeout, env=f"LAB_BROKER={broker}")
    return int(out.get("sent", 0))


def _in_app(host, snippet: str, plan: dict[str, Any], timeout: int, env: str = "") -> Any:
    """Run ``snippet`` (plan as JSON in argv[1]) with the student's app importable, as the workers' unprivileged
    user on ``host``; its last output line, parsed. The output is capped on the host: an app that prints without end
    cannot fill the controller's memory."""
    command = (
        f"cd {APP_DIR} && runuser -u {shlex.quote(APP_USER)} -- env PYTHONPATH={APP_DIR} {env} "
        f"{VENV_PYTHON} -c {shlex.quote(snippet)} {shlex.quote(json.dumps(plan))} | tail -c 65536"
    )
    return json_from_output(run(host, command, timeout=timeout), "publishing through the lab's app")


_PACED_PRODUCER = r"""
import importlib, json, sys, time
plan = json.loads(sys.argv[1])
app = importlib.import_module(plan["module"]).app
task = app.tasks[plan["task"]]
sent, failed = [], {}
# Settings that never reach the broker: nothing is published, whatever apply_async returns.
bypass = ("task_always_eager is on: the app runs tasks in the producer" if app.conf.task_always_eager else
          "" if app.connection_for_write().transport.driver_type == "amqp" else
          f"the app's broker is {app.connection_for_write().transport.driver_type}, not RabbitMQ")
if bypass:
    print(json.dumps({"sent": [], "failed": {i: bypass for i in plan["ids"]}, "seconds": 0}))
    sys.exit(0)
start = time.monotonic()
for i, task_id in enumerate(plan["ids"]):
    time.sleep(max(0.0, start + i * plan["interval"] - time.monotonic()))
    try:
        task.apply_async(tuple(plan.get("args", ())), task_id=task_id, expires=300)
        sent.append(task_id)
    except Exception as exc:
        failed[task_id] = f"{type(exc).__name__}: {exc}"[:200]
print(json.dumps({"sent": sent, "failed": failed, "seconds": round(time.monotonic() - start, 1)}))
"""


def student_producer_paced(
    host, module: str, task: str, ids: list[str], interval: float, args=(), timeout: int = 240
) -> dict[str, Any]:
    """Publish ``task`` once per id, one every ``interval`` seconds, through the student's own app (its broker URL,
    failover and confirm settings: all producer-side), as the workers' unprivileged user on ``host``. A publish that
    raises is recorded and the next one still goes: {"sent": [ids], "failed": {id: error}, "seconds": s}.

    What the app prints is never evidence of delivery: a check counts the outcomes the workers stored."""
    plan = {"module": module, "task": task, "ids": ids, "interval": interval, "args": list(args)}
    out = _in_app(host, _PACED_PRODUCER, plan, timeout)
    return {
        "sent": list(out.get("sent") or []),
        "failed": dict(out.get("failed") or {}),
        "seconds": out.get("seconds"),
    }
