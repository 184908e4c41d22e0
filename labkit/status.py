"""`labkit status <cohort>`: the class at a glance.

One row per student: each host (running or not), each service a lab runs (probed from the controller: RabbitMQ,
Redis, Flower answer on their ports; worker pools are the consumers RabbitMQ sees from the worker host, read with
the grader's own user), the last grade and the last load. The same grid is written to
``reports/<cohort>/status.html``, a page that reloads itself; ``--watch N`` refreshes both every N seconds.
"""

from __future__ import annotations

import html
import json
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from labkit import paths
from labkit.inventory import lab_address, load_lab_hosts
from labkit.roster import Roster
from labkit.scenario import load_scenario
from labkit.state import atomic_write

PORTS = {"rabbitmq": 5672, "redis": 6379, "flower": 5555}


def _port_open(address: str, port: int, timeout: float = 1.5) -> bool:
    try:
        socket.create_connection((address, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _consumers_from(address: str, broker: str, password: str | None) -> int | None:
    """How many consumers RabbitMQ sees from ``address`` (None if the grader cannot ask)."""
    if not password:
        return None
    import base64
    import urllib.request

    req = urllib.request.Request(f"http://{broker}:15672/api/consumers/lab?columns=channel_details.peer_host")
    req.add_header(
        "Authorization", "Basic " + base64.b64encode(f"labkit-grader:{password}".encode()).decode()
    )
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            rows = json.loads(r.read())
    except OSError:
        return None
    return sum(1 for row in rows if (row.get("channel_details") or {}).get("peer_host") == address)


def _host_running(roster: Roster, name: str) -> bool:
    if roster.target == "local":
        from labkit.fleet import local

        return local.host_status(roster.cohort, name) == "running"
    return True  # on AWS: the ssh probe below says whether it answers


def collect(roster: Roster, reports_base: Path | None = None) -> dict[str, Any]:
    """The grid's data: per student, hosts (running, ssh) and services (up/down), last grade, last load."""
    scenario = load_scenario(roster.scenario)
    hosts = load_lab_hosts(roster.folder)
    base = Path(reports_base or paths.REPORTS) / roster.cohort
    grades = {}
    if (base / "grades.json").is_file():
        grades = json.loads((base / "grades.json").read_text()).get("students", {})

    def one(student: str) -> dict[str, Any]:
        mine = {h["role"]: h for h in hosts if h["student"] == student}
        # Probes go from the controller (the hosts' `address`); RabbitMQ names a worker by its lab address.
        endpoints = scenario.endpoints({role: h["address"] for role, h in mine.items()})
        peers = scenario.endpoints({role: lab_address(h) for role, h in mine.items()})
        row: dict[str, Any] = {"student": student, "hosts": {}, "services": {}}
        for role, h in sorted(mine.items()):
            running = _host_running(roster, h["name"])
            row["hosts"][role] = "up" if running and _port_open(h["address"], 22) else "down"
        for comp, port in PORTS.items():
            if comp in endpoints:
                row["services"][comp] = "up" if _port_open(endpoints[comp], port) else "down"
        if "celery_workers" in endpoints and "rabbitmq" in endpoints:
            cred = roster.folder / "credentials" / student / "grader"
            n = _consumers_from(peers["celery_workers"], endpoints["rabbitmq"],
                                cred.read_text().strip() if cred.is_file() else None)  # fmt: skip
            row["services"]["workers"] = "?" if n is None else (f"up ({n} consumers)" if n else "down")
        g = grades.get(student)
        row["grade"] = f"{g['score']}/{g['max']} ({g['percent']:.0f} %)" if g else "-"
        load = base / student / "load_summary.json"
        if load.is_file():
            s = json.loads(load.read_text())
            row["load"] = (
                f"FAILED: {s['error'][:40]}" if s.get("error")
                else f"{s.get('requests', 0)} req, {s.get('failures', 0)} fail, {'held' if s.get('held') else 'not held'}"
            )  # fmt: skip
        else:
            row["load"] = "-"
        return row

    with ThreadPoolExecutor(max_workers=8) as pool:
        rows = list(pool.map(one, [s.id for s in roster.students]))
    return {"cohort": roster.cohort, "scenario": roster.scenario, "at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "roles": scenario.roles, "rows": rows, "bastion": _bastion(roster)}  # fmt: skip


def _bastion(roster: Roster) -> str | None:
    """The students' way in (local fleet): is the bastion up, where do they dial it."""
    path = roster.folder / "access.json"
    if roster.target != "local" or not path.is_file():
        return None
    info = json.loads(path.read_text())
    where = f"{info['access']['address']} port {info['access']['port']}"
    up = _host_running(roster, info["name"]) and _port_open(info["address"], 22)
    return f"{'up' if up else 'down'}: students come in at {where}"


def _columns(data: dict[str, Any]) -> list[str]:
    services = []
    for row in data["rows"]:
        services += [s for s in row["services"] if s not in services]
    return [*data["roles"], *services]


def format_grid(data: dict[str, Any]) -> str:
    cols = _columns(data)
    table = [["student", *cols, "last grade", "last load"]]
    for row in data["rows"]:
        cells = [row["hosts"].get(c) or row["services"].get(c) or "-" for c in cols]
        table.append([row["student"], *cells, row["grade"], row["load"]])
    widths = [max(len(str(r[i])) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    up = sum(
        1
        for r in data["rows"]
        for v in [*r["hosts"].values(), *r["services"].values()]
        if str(v).startswith("up")
    )
    total = sum(len(r["hosts"]) + len(r["services"]) for r in data["rows"])
    bastion = f"bastion {data['bastion']}\n" if data.get("bastion") else ""
    return (
        f"{data['cohort']} ({data['scenario']}) at {data['at']}: {up}/{total} hosts and services up\n"
        + bastion
        + "\n".join(lines)
    )


def html_grid(data: dict[str, Any], refresh: int = 10) -> str:
    cols = _columns(data)
    esc = html.escape
    out = [
        f'<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="{refresh}">',
        f"<title>{esc(data['cohort'])}: status</title><style>body{{font-family:sans-serif;margin:1.5rem}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25rem .6rem}"
        ".up{background:#e6f4ea}.down{background:#fde7e9;font-weight:600}</style></head><body>",
        f"<h1>{esc(data['cohort'])} · {esc(data['scenario'])}</h1><p>as of {esc(data['at'])} "
        f"(this page reloads every {refresh} s; <code>labkit status --watch</code> keeps it fresh)</p>",
        (f"<p>bastion {esc(data['bastion'])}</p>" if data.get("bastion") else "")
        + "<table><tr><th>student</th>"
        + "".join(f"<th>{esc(c)}</th>" for c in cols)
        + "<th>last grade</th><th>last load</th></tr>",
    ]
    for row in data["rows"]:
        cells = []
        for c in cols:
            v = str(row["hosts"].get(c) or row["services"].get(c) or "-")
            cls = "up" if v.startswith("up") else "down" if v.startswith("down") else ""
            cells.append(f'<td class="{cls}">{esc(v)}</td>')
        out.append(f"<tr><td>{esc(row['student'])}</td>{''.join(cells)}<td>{esc(row['grade'])}</td>"
                   f"<td>{esc(row['load'])}</td></tr>")  # fmt: skip
    out.append("</table></body></html>")
    return "\n".join(out) + "\n"


def status_main(roster: Roster, out: Callable[[str], Any] = print, watch: float | None = None) -> int:
    page = paths.reports_dir(roster.cohort) / "status.html"
    while True:
        data = collect(roster)
        out(format_grid(data))
        page.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(page, html_grid(data, refresh=int(watch or 10)))
        out(f"status page: {page}")
        if not watch:
            hosts_up = all(str(v).startswith("up") for r in data["rows"] for v in r["hosts"].values())
            return 0 if hosts_up and not str(data.get("bastion") or "up").startswith("down") else 1
        time.sleep(watch)
