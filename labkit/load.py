"""Drive every student's lab with the scenario's Locust load, in parallel.

One headless Locust process per lab (the same command an instructor could type):

    locust -f scenarios/<s>/locustfile.py --headless -u USERS -r SPAWN_RATE -t RUN_TIME \
        --csv reports/<cohort>/<student>/load --only-summary --exit-code-on-error 0

with LABKIT_BROKER_URL / LABKIT_RESULT_BACKEND / LABKIT_SCENARIO in its environment.
Results land in reports/<cohort>/<student>/load_*.csv, load.log and load_summary.json.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from labkit import paths
from labkit.inventory import load_lab_hosts
from labkit.roster import Roster
from labkit.scenario import load_scenario


class LoadError(Exception):
    pass


@dataclass(frozen=True)
class LabEndpoints:
    broker_url: str
    result_backend: str
    broker_address: str
    # Redis as a broker (database 1, as the lab's celeryconfig.py has it), for load tasks with `broker: redis`.
    redis_broker_url: str = ""


def read_credential(cohort_folder: Path, student: str, name: str) -> str:
    path = Path(cohort_folder) / "credentials" / student / name
    if not path.is_file():
        raise LoadError(f"{path} not found. Fix: provision the cohort first (labkit up).")
    return path.read_text().strip()


def lab_endpoints(roster: Roster, student: str, *, inside: bool = False) -> LabEndpoints:
    """Broker and result backend URLs of one student's lab, as seen from the controller (the hosts' ``address``),
    or with ``inside`` from within the lab's network (a load generator in the VPC: the private ``lab_address``)."""
    try:
        hosts = load_lab_hosts(roster.folder)
    except FileNotFoundError as exc:
        raise LoadError(str(exc)) from None
    from labkit.inventory import lab_address

    scenario = load_scenario(roster.scenario, strict=False)
    lab = {h["role"]: lab_address(h) if inside else h["address"] for h in hosts if h["student"] == student}
    endpoints = scenario.endpoints(lab)
    missing = [c for c in ("rabbitmq", "redis") if c not in endpoints]
    if missing:
        raise LoadError(
            f"{roster.folder / 'lab_hosts.json'}: student {student!r} has no host running {', '.join(missing)} "
            f"(scenario {scenario.name}: {scenario.data['topology']})"
        )
    address, redis_address = endpoints["rabbitmq"], endpoints["redis"]
    rabbit_pw = quote(read_credential(roster.folder, student, "rabbitmq"), safe="")
    redis_pw = quote(read_credential(roster.folder, student, "redis"), safe="")
    return LabEndpoints(
        broker_url=f"amqp://{quote(student, safe='')}:{rabbit_pw}@{address}:5672/lab",
        result_backend=f"redis://:{redis_pw}@{redis_address}:6379/0",
        broker_address=address,
        redis_broker_url=f"redis://:{redis_pw}@{redis_address}:6379/1",
    )


def parse_load_stats(path: Path) -> dict[str, Any]:
    """The "Aggregated" row of a Locust ``*_stats.csv`` as numbers."""
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    agg = next((r for r in rows if r.get("Name") == "Aggregated"), None)
    if agg is None:
        raise LoadError(f"{path}: no Aggregated row")

    def num(key: str) -> float:
        value = agg.get(key) or "0"
        try:
            return float(value)
        except ValueError:  # Locust writes "N/A" for empty percentiles
            return 0.0

    requests, failures = int(num("Request Count")), int(num("Failure Count"))
    return {
        "requests": requests,
        "failures": failures,
        "failure_ratio": round(failures / requests, 4) if requests else None,
        "median_ms": num("Median Response Time"),
        "average_ms": round(num("Average Response Time"), 1),
        "p95_ms": num("95%"),
        "max_ms": round(num("Max Response Time"), 1),
        "rps": round(num("Requests/s"), 2),
        # Per task (and broker): the lab's comparison table, e.g. the same task through RabbitMQ and through Redis.
        "by_name": {
            r["Name"]: {
                "requests": int(float(r["Request Count"] or 0)),
                "failures": int(float(r["Failure Count"] or 0)),
                "median_ms": float(r.get("Median Response Time") or 0),
                "p95_ms": float(r.get("95%") or 0),
                "rps": round(float(r.get("Requests/s") or 0), 2),
            }
            for r in rows
            if r.get("Name") != "Aggregated"
        },
    }


def parse_history(path: Path, points: int = 120) -> list[list[float]]:
    """Locust's ``*_stats_history.csv`` (Aggregated rows, one a second) as [[seconds, req/s, failures/s, users]]."""
    rows = []
    with Path(path).open(newline="") as f:
        for r in csv.DictReader(f):
            if r.get("Name") != "Aggregated":
                continue
            try:
                rows.append([float(r["Timestamp"]), float(r["Requests/s"] or 0), float(r["Failures/s"] or 0),
                             float(r.get("User Count") or 0)])  # fmt: skip
            except (KeyError, ValueError):
                continue
    if not rows:
        return []
    t0 = rows[0][0]
    step = max(1, len(rows) // points)
    return [[round(t - t0, 1), round(rps, 2), round(fps, 2), users] for t, rps, fps, users in rows[::step]]


def load_verdict(summary: dict[str, Any], load: dict[str, Any]) -> bool:
    """Whether a run met the scenario's load profile (the same rule the load-held check uses)."""
    requests = summary.get("requests") or 0
    if requests < int(load.get("min_requests", 1)):
        return False
    return summary.get("failures", 0) / requests < float(load.get("max_failure_ratio", 0.01))


def locustfile_for(scenario: str) -> Path:
    """The scenario's own locustfile.py, else the kit's generic one (the task mix of the scenario's load section)."""
    own = paths.scenario_dir(scenario) / "locustfile.py"
    return own if own.is_file() else paths.REPO / "loadtests" / "locustfile.py"


def locust_command(
    scenario: str,
    csv_prefix: Path,
    users: int,
    spawn_rate: float,
    run_time: str,
    workers: int = 0,
    master_port: int | None = None,
) -> list[str]:
    """The headless Locust command for one lab; with ``workers`` the master of a distributed run."""
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(locustfile_for(scenario)),
        "--headless",
        "-u",
        str(users),
        "-r",
        str(spawn_rate),
        "-t",
        str(run_time),
        "--csv",
        str(csv_prefix),
        "--only-summary",
        "--exit-code-on-error",
        "0",
    ]
    if workers:
        cmd += [
            "--master",
            "--master-bind-host",
            "127.0.0.1",
            "--master-bind-port",
            str(master_port),
            "--expect-workers",
            str(workers),
            "--expect-workers-max-wait",
            "60",
        ]
    return cmd  # fmt: skip


def locust_worker_command(scenario: str, master_port: int) -> list[str]:
    """One worker of a distributed run (on the controller here; on a load-generator host in the VPC on AWS)."""
    return [
        sys.executable, "-m", "locust", "-f", str(locustfile_for(scenario)),
        "--worker", "--master-host", "127.0.0.1", "--master-port", str(master_port),
    ]  # fmt: skip


def load_generator(roster: Roster) -> dict[str, Any] | None:
    """The cohort's load-generator host (written by `labkit fleet up` for aws.load_generator), or None."""
    from labkit.inventory import cohort_files

    path = cohort_files(roster.folder)["load_generator"]
    return json.loads(path.read_text()) if path.is_file() else None


REMOTE_WORKER = "/usr/local/bin/labkit-load-worker"  # roles/load_generator
DEFAULT_GENERATOR_WORKERS = 2


def remote_workers_command(
    roster: Roster, generator: dict[str, Any], master_port: int, workers: int, deadline_s: int = 3600
) -> list[str]:
    """ssh to the load generator, forwarding its 127.0.0.1:<port> back to the master on the controller, and start
    ``workers`` Locust workers there (labkit-load-worker). The lab's URLs go on the connection's stdin."""
    from labkit.inventory import cohort_files

    return [
        "ssh", "-F", str(cohort_files(roster.folder)["ssh_config"]),
        "-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=15",
        "-R", f"127.0.0.1:{master_port}:127.0.0.1:{master_port}",
        generator["name"], REMOTE_WORKER, roster.scenario, str(master_port), str(workers), str(int(deadline_s)),
    ]  # fmt: skip


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _format_summary(s: dict[str, Any]) -> str:
    if s.get("error"):
        return f"FAILED: {s['error']}"
    ratio = s.get("failure_ratio") or 0.0
    dist = s.get("distributed")
    return (
        f"{s['requests']} requests, {s['failures']} failures ({ratio:.1%}), "
        f"median {s['median_ms']:.0f} ms, {s['rps']:.1f} req/s"
        + (f"; {dist['workers_connected']} of {dist['workers']} workers connected, requests per worker "
           f"{dist['requests_by_worker']}" if dist else "")
        + ("" if s.get("held") else "  [below the load profile]")
    )  # fmt: skip


def run_load(
    roster: Roster,
    students: list[str] | None = None,
    out: Callable[[str], Any] = print,
    *,
    users: int | None = None,
    spawn_rate: float | None = None,
    run_time: str | None = None,
    reports_dir: Path | None = None,
    endpoints: Callable[..., LabEndpoints] = lab_endpoints,
    workers: int = 0,
    generator: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the scenario's load against each student's lab in parallel; return summaries by student.

    ``workers`` > 0 runs each lab's Locust distributed: a master and that many worker processes; the summary says
    how many workers the master had connected and how many requests each worker sent. With ``generator`` (the
    cohort's load-generator host) the workers run there, over ssh, against the labs' private addresses; the
    master stays here and reaches them through the connection's remote forward.

    ``users``/``spawn_rate``/``run_time`` default to the scenario's ``load`` section.
    Each summary is also written to reports/<cohort>/<student>/load_summary.json.
    """
    scenario = load_scenario(roster.scenario)
    load = scenario.load
    users = users or int(load["users"])
    spawn_rate = spawn_rate or float(load["spawn_rate"])
    run_time = run_time or str(load["run_time"])
    wanted = students or [s.id for s in roster.students]
    unknown = sorted(set(wanted) - {s.id for s in roster.students})
    if unknown:
        raise LoadError(f"{roster.path}: no such student(s): {', '.join(unknown)}")
    base = Path(reports_dir or paths.REPORTS) / roster.cohort
    profile = {
        "users": users,
        "spawn_rate": spawn_rate,
        "run_time": run_time,
        "min_requests": load.get("min_requests"),
        "max_failure_ratio": load.get("max_failure_ratio"),
    }

    running: dict[str, tuple[subprocess.Popen, Path, float, Any]] = {}
    helpers: dict[str, list[subprocess.Popen]] = {}
    summaries: dict[str, dict[str, Any]] = {}
    for sid in wanted:
        student_dir = base / sid
        student_dir.mkdir(parents=True, exist_ok=True)
        for stale in student_dir.glob("load_*.csv"):
            stale.unlink()
        try:
            ep = endpoints(roster, sid, inside=True) if generator else endpoints(roster, sid)
        except LoadError as exc:
            summaries[sid] = _finish(student_dir, sid, {"error": str(exc)}, load, profile)
            out(f"load {sid}: {_format_summary(summaries[sid])}")
            continue
        env = {
            **os.environ,
            "LABKIT_BROKER_URL": ep.broker_url,
            "LABKIT_RESULT_BACKEND": ep.result_backend,
            "LABKIT_REDIS_BROKER_URL": ep.redis_broker_url,
            "LABKIT_SCENARIO": roster.scenario,
        }
        log = (student_dir / "load.log").open("w")
        port = _free_port() if workers else None
        for stale in student_dir.glob("load_worker*.json"):
            stale.unlink()
        (student_dir / "load_master.json").unlink(missing_ok=True)
        cmd = locust_command(
            roster.scenario, student_dir / "load", users, spawn_rate, run_time, workers, port
        )
        proc = subprocess.Popen(cmd, cwd=paths.REPO, env={**env, "LABKIT_LOAD_MASTER_REPORT": str(
            student_dir / "load_master.json")}, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        if generator and workers:
            # The workers end on their own past the run's deadline (the controller's kill ends only ssh).
            remote_deadline = duration_seconds(run_time) + LOAD_GRACE_S + 30
            remote = subprocess.Popen(
                remote_workers_command(roster, generator, port, workers, int(remote_deadline)), cwd=paths.REPO,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
            )  # fmt: skip
            assert remote.stdin is not None
            names = [
                "LABKIT_BROKER_URL",
                "LABKIT_RESULT_BACKEND",
                "LABKIT_REDIS_BROKER_URL",
                "LABKIT_RESULT_TIMEOUT",
            ]
            remote.stdin.write("".join(f"{k}={env[k]}\n" for k in names if env.get(k)))
            remote.stdin.close()
            helpers[sid] = [remote]
        else:
            helpers[sid] = [
                subprocess.Popen(
                    locust_worker_command(roster.scenario, port), cwd=paths.REPO,
                    env={**env, "LABKIT_LOAD_WORKER_REPORT": str(student_dir / f"load_worker{i}.json")},
                    stdout=log, stderr=subprocess.STDOUT,
                )
                for i in range(1, workers + 1)
            ]  # fmt: skip
        running[sid] = (proc, student_dir, time.monotonic(), log)
        out(
            f"load {sid}: started ({users} users, spawn {spawn_rate}/s, {run_time}) "
            f"against {ep.broker_address}"
            + (f", {workers} workers on {generator['name']}" if generator else "")
        )

    # Locust sometimes never exits after its run (a greenlet stuck in the result backend's pubsub at
    # shutdown, seen with 15 labs at once): past run time + grace it is ended, and its stats still count.
    deadline_s = duration_seconds(run_time) + LOAD_GRACE_S
    while running:
        for sid, (proc, student_dir, started, log) in list(running.items()):
            if proc.poll() is None:
                if time.monotonic() - started < deadline_s:
                    continue
                out(
                    f"load {sid}: locust still running {deadline_s:.0f} s after start; ending it (pid {proc.pid})"
                )
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            for worker in helpers.pop(sid, []):
                try:
                    worker.wait(timeout=15)  # a worker quits when its master does
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait(timeout=10)
                if worker.stdout is not None:  # the load generator's workers report on the ssh connection
                    _save_remote_reports(worker.stdout.read(), student_dir)
            log.close()
            del running[sid]
            stats_csv = student_dir / "load_stats.csv"
            if stats_csv.is_file():
                summary = parse_load_stats(stats_csv)
                history = student_dir / "load_stats_history.csv"
                if history.is_file():
                    summary["history"] = parse_history(history)
            else:
                summary = {
                    "error": f"locust exited {proc.returncode} without stats; see {student_dir / 'load.log'}"
                }
            summary.update(exit_code=proc.returncode, duration_s=round(time.monotonic() - started, 1))
            if workers:
                summary["distributed"] = _distributed_report(student_dir, workers)
            summaries[sid] = _finish(student_dir, sid, summary, load, profile)
            out(f"load {sid}: finished: {_format_summary(summaries[sid])}")
        time.sleep(0.2)
    if generator and workers:
        _record_generator_load(roster, generator, summaries, base, out)
    return {sid: summaries[sid] for sid in wanted}


def _record_generator_load(
    roster: Roster,
    generator: dict[str, Any],
    summaries: dict[str, dict[str, Any]],
    base: Path,
    out: Callable[[str], Any],
) -> None:
    """The load generator's CPU after the run, in each summary: a saturated generator measures itself, not the labs."""
    from labkit.inventory import cohort_files

    res = subprocess.run(
        ["ssh", "-F", str(cohort_files(roster.folder)["ssh_config"]), generator["name"], "nproc; cat /proc/loadavg"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    try:
        cpus_text, loadavg = res.stdout.split("\n")[:2]
        info: dict[str, Any] = {
            "name": generator["name"],
            "cpus": int(cpus_text),
            "loadavg_1m": float(loadavg.split()[0]),
        }
    except (ValueError, IndexError):
        info = {"name": generator["name"], "error": f"could not read its load ({res.stderr.strip()[-200:]})"}
    info["saturated"] = bool(info.get("cpus")) and info["loadavg_1m"] > info["cpus"]
    out(
        f"load generator {generator['name']}: "
        + (info["error"] if "error" in info else f"load average {info['loadavg_1m']:.2f} on {info['cpus']} CPUs")
        + ("; saturated: these figures measure the generator, not the labs (a larger "
           "aws.load_generator.instance_type, or fewer labs at once with --student)" if info["saturated"] else "")
    )  # fmt: skip
    for sid, summary in summaries.items():
        if "distributed" in summary:
            summary["generator"] = info
            (base / sid / "load_summary.json").write_text(json.dumps(summary, indent=2) + "\n")


LOAD_GRACE_S = 60.0


def _save_remote_reports(text: str, student_dir: Path) -> None:
    """labkit-load-worker's JSON lines ({"worker": i, "requests": n}) as the local workers' report files."""
    for line in text.splitlines():
        try:
            row = json.loads(line)
            i, sent = int(row["worker"]), row["requests"]
        except (ValueError, KeyError, TypeError):
            continue
        if sent is not None and 1 <= i <= 64:
            (student_dir / f"load_worker{i}.json").write_text(json.dumps({"requests": int(sent)}))


def _distributed_report(student_dir: Path, workers: int) -> dict[str, Any]:
    master = student_dir / "load_master.json"
    sent = []
    for i in range(1, workers + 1):
        path = student_dir / f"load_worker{i}.json"
        sent.append(json.loads(path.read_text())["requests"] if path.is_file() else None)
    return {
        "workers": workers,
        "workers_connected": json.loads(master.read_text())["workers_connected"]
        if master.is_file()
        else None,
        "requests_by_worker": sent,
    }


def duration_seconds(text: str) -> float:
    """Locust's -t syntax (20s, 1m30s, 2h) in seconds."""
    import re

    total, found = 0.0, False
    for value, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([hms]?)", str(text)):
        total += float(value) * {"h": 3600, "m": 60, "s": 1, "": 1}[unit]
        found = True
    if not found:
        raise LoadError(f"run_time {text!r} is not a duration like 20s or 1m30s")
    return total


def _finish(
    student_dir: Path, sid: str, summary: dict[str, Any], load: dict[str, Any], profile: dict[str, Any]
) -> dict[str, Any]:
    summary = {
        "student": sid,
        **summary,
        "held": False if summary.get("error") else load_verdict(summary, load),
        "profile": profile,
        "finished_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    (student_dir / "load_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
