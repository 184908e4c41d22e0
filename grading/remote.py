"""Helpers checks use to look at a lab host through testinfra.

Everything runs ON the lab host (as root, through the admin's sudo over ssh), so a check sees what the student's own
host sees; nothing needs a route from the controller to lab services. Every remote
command is bounded by coreutils ``timeout``, so a dead broker fails a check instead of
hanging the grading run.
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


def app_python(host, snippet: str, *args: str, timeout: int = 60, what: str = "lab app") -> Any:
    """Run ``snippet`` with the lab venv's python in the app folder (so labapp and its
    celeryconfig are the student's own) and return the JSON it prints last."""
    argv = " ".join(shlex.quote(a) for a in args)
    command = f"cd {APP_DIR} && {VENV_PYTHON} -c {shlex.quote(snippet)} {argv}"
    return json_from_output(run(host, command, timeout=timeout), what)


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


def supervisor_states(host, *programs: str) -> dict[str, str]:
    """``supervisorctl status`` state per program (MISSING when supervisord does not know it)."""
    result = run(host, "supervisorctl status " + " ".join(shlex.quote(p) for p in programs), timeout=30)
    states = dict.fromkeys(programs, "MISSING")
    for line in (result.stdout or "").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in states:
            states[parts[0]] = parts[1]
    if all(v == "MISSING" for v in states.values()) and result.rc not in (0, 3):
        raise LabCommandError(
            f"supervisorctl status failed (exit {result.rc}): {_tail(result.stderr or result.stdout)}"
        )
    return states


_INSPECT = r"""
import json, sys
from labapp.tasks import app
inspector = app.control.inspect(timeout=float(sys.argv[1]))
print(json.dumps({m: getattr(inspector, m)() or {} for m in sys.argv[2:]}, default=str))
"""


def inspect_workers(host, *methods: str, timeout: float | None = None) -> dict[str, dict[str, Any]]:
    """``celery inspect <method>`` replies by method, then worker name, run with the lab's own app."""
    timeout = INSPECT_TIMEOUT if timeout is None else timeout
    return app_python(
        host,
        _INSPECT,
        str(timeout),
        *methods,
        timeout=int(timeout * len(methods)) + 40,
        what="celery inspect",
    )


_ROUND_TRIP = r"""
import json, sys
from celery import chain
from labapp import tasks

kind, wait = sys.argv[1], float(sys.argv[2])


def routed(name):
    try:
        queue = tasks.app.amqp.router.route({}, name, (), {})["queue"]
        return getattr(queue, "name", str(queue))
    except Exception as exc:
        return f"? ({type(exc).__name__}: {exc})"


out = {"routes": {n: routed(n) for n in ("labapp.tasks.crunch", "labapp.tasks.notify")}}
if kind == "heavy":
    result = tasks.crunch.apply_async((0.01,), expires=120)
elif kind == "light":
    result = tasks.notify.apply_async(("grader",), expires=120)
else:
    result = chain(tasks.crunch.s(0.01), tasks.notify.s()).apply_async()
try:
    out["result"] = result.get(timeout=wait)
    out["ok"] = True
except Exception as exc:
    out["ok"] = False
    out["error"] = f"{type(exc).__name__}: {exc}"
    # Nobody took it in time: revoke the whole chain so a worker fixed later drops it.
    pending = result
    while pending is not None:
        try:
            pending.revoke()
        except Exception:
            pass
        pending = pending.parent
print(json.dumps(out, default=str))
"""


def round_trip(host, kind: str, wait: float = 10.0) -> dict[str, Any]:
    """Publish ``kind`` (heavy: crunch, light: notify, chain: crunch -> notify) with the
    student's own app and routes on ``host``; wait up to ``wait`` s for the result.

    Returns {"ok", "result" or "error", "routes": {task name: queue task_routes picks}}.
    """
    return app_python(host, _ROUND_TRIP, kind, str(wait), timeout=int(wait) + 40, what=f"{kind} round trip")
