"""Facts a check reads about a lab that the student's code does not report about itself.

- The broker's own view (``rabbitmqctl`` on the broker host, over ssh with become): queues with their ready and
  unacknowledged messages, which connection consumes each queue (peer address and port), each channel's prefetch.
- The management API's message counters (read from the controller with the grader's own RabbitMQ user): per-queue
  publish, deliver and redeliver counts.
- The OS's view of a host: supervisord's programs and their process trees, which process owns which socket, a
  process's argv and environment.
- Faults the grader injects (chaos) and undoes, so a second grade finds the lab as the first did.

Every remote command is bounded by coreutils ``timeout``; a command that cannot run raises ``LabCommandError``
(the check fails and says why).
"""

from __future__ import annotations

import contextlib
import json
import shlex
import time
from dataclasses import dataclass, field
from typing import Any

from grading import timeline
from grading.remote import LabCommandError, json_from_output, run, supervisor_states, system_python


class GraderLockedOut(Exception):
    """The grader's own identity was refused (a changed password, a removed key or user): not the same as failing."""


class LabUnreachable(Exception):
    """A lab host or service did not answer at all (stopped, firewalled, down): not the same as failing."""


# --------------------------------------------------------------------------- the broker's view

_BROKER_FACTS = r"""
set -u
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
q() { rabbitmqctl -q "$@" --formatter json 2>"$tmp/err.$1" || echo "ERR"; }
q list_queues -p "$1" name messages_ready messages_unacknowledged consumers > "$tmp/queues" &
q list_consumers -p "$1" queue_name channel_pid consumer_tag prefetch_count > "$tmp/consumers" &
q list_channels pid connection vhost prefetch_count global_prefetch_count messages_unacknowledged consumer_count > "$tmp/channels" &
q list_connections pid peer_host peer_port user vhost > "$tmp/connections" &
wait
printf '{"queues": %s, "consumers": %s, "channels": %s, "connections": %s}\n' \
  "$(cat "$tmp/queues")" "$(cat "$tmp/consumers")" "$(cat "$tmp/channels")" "$(cat "$tmp/connections")"
"""


@dataclass
class Consumer:
    queue: str
    peer_host: str
    peer_port: int
    user: str
    prefetch: int  # the channel's prefetch (global or per consumer), 0 = unlimited
    channel_unacked: int
    channel: str


@dataclass
class BrokerView:
    queues: dict[str, dict[str, int]]
    consumers: list[Consumer] = field(default_factory=list)

    def held(self, queue: str) -> int:
        """Messages a queue holds, ready or delivered and not yet acknowledged."""
        q = self.queues.get(queue) or {}
        return int(q.get("messages_ready", 0)) + int(q.get("messages_unacknowledged", 0))

    def consumers_of(self, queue: str) -> list[Consumer]:
        return [c for c in self.consumers if c.queue == queue]


def _address(value: Any) -> str:
    """rabbitmqctl's JSON gives addresses as Erlang tuples: [10,250,1,11], or IPv4-mapped IPv6 in 16-bit words."""
    import ipaddress

    if isinstance(value, list) and len(value) == 4:
        return ".".join(str(int(v)) for v in value)
    if isinstance(value, list) and len(value) == 8:
        ip = ipaddress.IPv6Address(b"".join(int(v).to_bytes(2, "big") for v in value))
        return str(ip.ipv4_mapped or ip)
    return str(value)


def broker_view(host, vhost: str = "lab") -> BrokerView:
    """Queues and consumers of ``vhost`` as RabbitMQ itself sees them (one ssh round trip, ~1.5 s)."""
    res = run(host, f"bash -c {shlex.quote(_BROKER_FACTS)} facts {shlex.quote(vhost)}", timeout=60)
    if "ERR" in (res.stdout or "") and '"queues": ERR' in res.stdout:
        raise LabUnreachable(
            f"rabbitmqctl on the broker host could not reach the node: {res.stderr.strip()[-200:]}"
        )
    try:
        raw = json.loads(res.stdout or "")
    except ValueError:
        raise LabCommandError(
            f"rabbitmqctl gave no usable answer (exit {res.rc}): {res.stderr.strip()[-300:]}"
        ) from None
    queues = {q["name"]: q for q in raw["queues"]}
    channels = {c["pid"]: c for c in raw["channels"] if isinstance(c, dict)}
    conns = {c["pid"]: c for c in raw["connections"] if isinstance(c, dict)}
    consumers = []
    for c in raw["consumers"]:
        ch = channels.get(c.get("channel_pid")) or {}
        conn = conns.get(ch.get("connection")) or {}
        prefetch = int(ch.get("global_prefetch_count") or 0) or int(c.get("prefetch_count") or 0)
        consumers.append(
            Consumer(
                queue=c.get("queue_name", ""),
                peer_host=_address(conn.get("peer_host", "?")),
                peer_port=int(conn.get("peer_port") or 0),
                user=str(conn.get("user", "?")),
                prefetch=prefetch,
                channel_unacked=int(ch.get("messages_unacknowledged") or 0),
                channel=str(c.get("channel_pid")),
            )
        )
    return BrokerView(queues=queues, consumers=consumers)


def queue_depths(host, vhost: str = "lab") -> dict[str, dict[str, int]]:
    """{queue: {ready, unacked}} from one ``rabbitmqctl list_queues`` on the broker host: exact and current (the
    management API's figures can lag by seconds), about a second per call."""
    res = run(host, f"rabbitmqctl -q list_queues -p {shlex.quote(vhost)} name messages_ready messages_unacknowledged "
                    "--formatter json", timeout=60)  # fmt: skip
    try:
        rows = json.loads(res.stdout or "")
    except ValueError:
        raise LabCommandError(f"rabbitmqctl list_queues gave no usable answer (exit {res.rc}): "
                              f"{res.stderr.strip()[-300:]}") from None  # fmt: skip
    return {r["name"]: {"ready": int(r.get("messages_ready") or 0), "unacked": int(r.get("messages_unacknowledged") or 0)}
            for r in rows}  # fmt: skip


def queue_stats(address: str, user: str, password: str, vhost: str = "lab") -> dict[str, dict[str, int]]:
    """Per queue: messages ready and unacknowledged, and the cumulative publish, deliver_get, redeliver and ack
    counters, from the management API, read from the controller with the grader's own user (one HTTP call, no
    Erlang VM to boot on the lab host). The node samples them every second (rabbitmq_settings), but the figures
    can lag the broker by several seconds: use them for counts over a settled window, and :func:`queue_depths`
    for what a queue holds now."""
    import base64
    import urllib.error
    import urllib.parse
    import urllib.request

    url = (f"http://{address}:15672/api/queues/{urllib.parse.quote(vhost, safe='')}"
           "?columns=name,messages_ready,messages_unacknowledged,message_stats")  # fmt: skip
    req = urllib.request.Request(url)
    req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            rows = json.loads(r.read())
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise GraderLockedOut(
                f"the management API refused the grader's user {user!r} (HTTP {e.code})"
            ) from None
        raise LabCommandError(f"GET {url}: HTTP {e.code}") from None
    except OSError as e:
        raise LabUnreachable(f"the management API at {address}:15672 did not answer ({e})") from None
    out = {}
    for row in rows:
        stats = row.get("message_stats") or {}
        out[row["name"]] = {k: int(stats.get(k) or 0) for k in ("publish", "deliver_get", "redeliver", "ack")}
        out[row["name"]].update(
            ready=int(row.get("messages_ready") or 0), unacked=int(row.get("messages_unacknowledged") or 0)
        )
    return out


def held(stats: dict[str, dict[str, int]], queue: str) -> int:
    """Messages a queue holds (ready, or delivered and not yet acknowledged) in :func:`queue_depths` output."""
    q = stats.get(queue) or {}
    return q.get("ready", 0) + q.get("unacked", 0)


# --------------------------------------------------------------------------- the OS's view

_PROCS = r"""
import json, os, re, subprocess, sys
broker_port = sys.argv[1]
status = subprocess.run(["supervisorctl", "status"], capture_output=True, text=True, timeout=20).stdout
programs = {}
for line in status.splitlines():
    m = re.match(r"^(\S+)\s+(\S+)(?:\s+pid (\d+))?", line)
    if m:
        programs[m.group(1)] = {"state": m.group(2), "pid": int(m.group(3)) if m.group(3) else None}
def ppid(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(next(l.split()[1] for l in f if l.startswith("PPid:")))
    except (OSError, StopIteration):
        return 0
def argv(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []
def environ(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return dict(a.decode(errors="replace").split("=", 1) for a in f.read().split(b"\0") if b"=" in a)
    except OSError:
        return {}
mains = {p["pid"]: name for name, p in programs.items() if p["pid"]}
def program_of(pid):
    seen = 0
    while pid > 1 and seen < 64:
        if pid in mains:
            return mains[pid]
        pid, seen = ppid(pid), seen + 1
    return None
children = {}
for d in os.listdir("/proc"):
    if d.isdigit():
        parent = ppid(int(d))
        if parent in mains:
            children.setdefault(mains[parent], []).append(int(d))
for name, p in programs.items():
    p["children"] = sorted(children.get(name, []))
    p["argv"] = argv(p["pid"]) if p["pid"] else []
    p["environ"] = {k: v for k, v in environ(p["pid"]).items() if k.startswith("LAB_")} if p["pid"] else {}
sockets = {}
ss = subprocess.run(["ss", "-Htnp", "state", "established", f"( dport = :{broker_port} )"],
                    capture_output=True, text=True, timeout=20).stdout
for line in ss.splitlines():
    fields = line.split()
    local = next((f for f in fields if re.match(r"^[0-9.]+:\d+$", f)), None)
    pid = re.search(r"pid=(\d+)", line)
    if local and pid:
        port = int(local.rsplit(":", 1)[1])
        sockets[port] = {"pid": int(pid.group(1)), "program": program_of(int(pid.group(1))),
                         "argv": argv(int(pid.group(1)))[:12]}
print(json.dumps({"programs": programs, "sockets": sockets}))
"""


@dataclass
class HostProcesses:
    programs: dict[str, dict[str, Any]]
    sockets: dict[int, dict[str, Any]]  # local port of a connection to the broker -> owner

    def program_for_port(self, port: int) -> str | None:
        return (self.sockets.get(port) or {}).get("program")

    def owner(self, port: int) -> str:
        s = self.sockets.get(port)
        if not s:
            return f"no process on this host (port {port})"
        return s["program"] or f"pid {s['pid']} outside supervisord ({' '.join(s['argv'])[:120]})"


def host_processes(host, broker_port: int = 5672) -> HostProcesses:
    """supervisord's programs (state, main pid, pool children, argv, LAB_* environment) and the owner of every
    connection to the broker, read from /proc and ss on ``host``."""
    out = system_python(host, _PROCS, str(broker_port), what="process facts")
    return HostProcesses(programs=out["programs"], sockets={int(k): v for k, v in out["sockets"].items()})


def consumers_by_program(view: BrokerView, procs: HostProcesses, peer: str) -> dict[str, set[str]]:
    """{owner: queues it consumes} for the connections coming from ``peer`` (one host's address)."""
    owners: dict[str, set[str]] = {}
    for c in view.consumers:
        if c.peer_host != peer:
            continue
        owners.setdefault(procs.owner(c.peer_port), set()).add(c.queue)
    return owners


# --------------------------------------------------------------------------- chaos (faults the grader injects)


def kill_pool_child(host, program: str, busy_within: float = 0.0) -> int:
    """SIGKILL one pool process of ``program`` (the one that used the most CPU time, i.e. the busy one); its pid."""
    procs = host_processes(host)
    children = procs.programs.get(program, {}).get("children") or []
    if not children:
        raise LabCommandError(f"{program} has no pool processes to kill (is it running with a prefork pool?)")
    pick = (
        "for p in " + " ".join(str(c) for c in children) + "; do "
        "echo \"$(awk '{print $14+$15}' /proc/$p/stat 2>/dev/null || echo -1) $p\"; done | sort -n | tail -1"
    )
    res = run(host, pick, timeout=15)
    try:
        pid = int(res.stdout.split()[-1])
    except (ValueError, IndexError):
        raise LabCommandError(f"could not pick a pool process of {program}: {res.stderr.strip()}") from None
    run(host, f"kill -KILL {pid}", timeout=10)
    timeline.mark("fault", f"SIGKILL to pool process {pid} of {program}")
    return pid


# supervisord's states of a program that still runs, or is about to.
STILL_UP = frozenset({"RUNNING", "STARTING", "BACKOFF", "STOPPING"})


def stop_programs(host, programs: list[str]) -> None:
    """Stop supervised ``programs`` (a fault the grader injects) and make sure supervisord has them stopped: a check
    that measures a stopped pool must never measure a running one.

    A program still up is stopped once more. When they cannot be stopped (or supervisord does not answer, or does
    not know one of them), the programs are started again, so the lab is as it was, and LabCommandError says why:
    the check fails naming the program, its state and supervisorctl's answer."""
    if not programs:
        return
    names = " ".join(shlex.quote(p) for p in programs)
    try:
        problem = _stop(host, programs, names)
    except BaseException:
        _start_quietly(host, names)
        raise
    if problem:
        _start_quietly(host, names)
        raise LabCommandError(problem)
    timeline.mark("fault", f"stopped {', '.join(programs)}")


def _stop(host, programs: list[str], names: str) -> str:
    """Stop ``programs``, twice at most: "" once supervisord has every one stopped, else what went wrong."""
    said, states = "", None
    for timeout in (60, 30):
        res = run(host, f"supervisorctl stop {names}", timeout=timeout)
        said = (res.stdout or res.stderr or "").strip()[-300:] or f"no answer (exit {res.rc})"
        deadline = time.monotonic() + 15
        states = _supervised_states(host, programs)
        while states and "STOPPING" in states.values() and time.monotonic() < deadline:
            time.sleep(1)  # supervisord is still waiting for a process to exit
            states = _supervised_states(host, programs)
        if states is None:
            continue
        missing = sorted(p for p, state in states.items() if state == "MISSING")
        if missing:
            return f"supervisord has no program {', '.join(missing)}: the grader could not stop it"
        if not any(state in STILL_UP for state in states.values()):
            return ""
    if states is None:
        return f"supervisorctl status gave no answer after supervisorctl stop {names} (which said {said!r})"
    up = ", ".join(f"{p} ({state})" for p, state in sorted(states.items()) if state in STILL_UP)
    return f"the grader could not stop {up} with supervisorctl stop (twice); supervisorctl said {said!r}"


def _supervised_states(host, programs: list[str]) -> dict[str, str] | None:
    """supervisord's state of each program (MISSING: it has no such program), or None without an answer for each."""
    try:
        return supervisor_states(host, *programs, timeout=15)
    except LabCommandError:
        return None


def _start_quietly(host, names: str) -> None:
    """Best effort: start ``names`` again after a stop that went wrong (what went wrong is what the check says)."""
    with contextlib.suppress(Exception):  # the original failure is the one to report
        run(host, f"supervisorctl start {names}", timeout=60)


def start_programs(host, programs: list[str], wait_for_consumers: tuple[Any, str] | None = None) -> None:
    """Start ``programs`` again (undoing :func:`stop_programs`)."""
    if programs:
        run(host, "supervisorctl start " + " ".join(shlex.quote(p) for p in programs), timeout=90)
        timeline.mark("recovered", f"started {', '.join(programs)}")


def kill_program(host, program: str) -> list[int]:
    """SIGKILL a supervised program's main process and its pool processes at once (a crash of the whole worker: none
    of them finishes or acknowledges anything); supervisord starts it again. The pids killed."""
    procs = host_processes(host).programs.get(program) or {}
    pids = [p for p in [procs.get("pid"), *(procs.get("children") or [])] if p]
    if not pids:
        raise LabCommandError(f"{program} is not running: nothing to kill")
    run(host, "kill -KILL " + " ".join(str(p) for p in pids), timeout=10)
    timeline.mark("fault", f"SIGKILL to {program} (pids {', '.join(map(str, pids))})")
    return pids


SERVICE_READY = {
    "rabbitmq-server": "rabbitmqctl -q await_startup --timeout 60",
    "redis-server": "for i in $(seq 60); do REDISCLI_AUTH=$(sed -n 's/^requirepass //p' /etc/redis/redis.conf) "
    "redis-cli -h 127.0.0.1 ping 2>/dev/null | grep -q PONG && exit 0; sleep 1; done; exit 1",
}


def restart_service(host, unit: str, timeout: int = 120) -> float:
    """Restart a systemd service of the lab (the broker's restart of a durability check) and wait until it serves
    again; the seconds it was away."""
    t0 = time.monotonic()
    timeline.mark("fault", f"systemctl restart {unit}")
    res = run(
        host, f"systemctl restart {shlex.quote(unit)} && {SERVICE_READY.get(unit, 'true')}", timeout=timeout
    )
    if res.rc != 0:
        raise LabCommandError(
            f"{unit} did not come back after a restart: {(res.stderr or res.stdout).strip()[-300:]}"
        )
    timeline.mark("recovered", f"{unit} serves again")
    return time.monotonic() - t0


def wait_until(predicate, timeout: float, interval: float = 0.5):
    """Call ``predicate`` until it returns a truthy value or ``timeout`` passes; the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def json_line(result, what: str) -> Any:
    return json_from_output(result, what)
