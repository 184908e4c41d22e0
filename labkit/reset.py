"""`labkit reset <cohort> --student ID`: put one student's lab back to its starting state.

It first shows what it would overwrite: on each of the student's hosts, the student's files that differ from what
was placed (checksums recorded on the host by site.yml/solve.yml), files they added and ones they deleted, and a
recorded solution or mutant; then asks (``--yes`` for scripts; without a terminal it refuses and names the flag).
Then it drops the recorded solution and runs site.yml on the student's hosts with their files overwritten.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labkit.inventory import cohort_files, group_name, load_lab_hosts
from labkit.roster import Roster
from labkit.state import PlanRefused

RECORD = "/var/lib/labkit/starting-state.json"
_SURVEY = r"""
import hashlib, json, os, glob
RECORD = "@RECORD@"
try:
    record = json.load(open(RECORD))
except (OSError, ValueError):
    record = None
files = (record or {}).get("files", {})
now = sorted(set(glob.glob("/srv/celery-lab/app/**/*.py", recursive=True)) | set(glob.glob("/etc/supervisor/conf.d/celery-*.conf")))
def sha1(path):
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()
print(json.dumps({
    "record": bool(record), "placed_by": (record or {}).get("placed_by"),
    "changed": sorted(p for p in files if os.path.isfile(p) and sha1(p) != files[p]),
    "missing": sorted(p for p in files if not os.path.isfile(p)),
    "added": sorted(p for p in now if p not in files),
}))
""".replace("@RECORD@", RECORD)


def survey(folder: Path, host: str) -> dict[str, Any]:
    """What the student changed on ``host`` since its parts were placed (read over ssh, as the admin, with sudo)."""
    proc = subprocess.run(
        ["ssh", "-F", str(cohort_files(folder)["ssh_config"]), host, "sudo", "python3", "-c", _quote(_SURVEY)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip()[-200:] or f"ssh exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _printable(text: object) -> str:
    """Text from a student's host, safe to print on the instructor's terminal (no control or escape sequences)."""
    return "".join(c if c.isprintable() else "?" for c in str(text))


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def reset(roster: Roster, student: str, yes: bool, out: Callable[[str], Any] = print) -> int:
    from labkit.ansible import run_playbook

    roster.student(student)
    hosts = [h["name"] for h in load_lab_hosts(roster.folder) if h["student"] == student]
    if not hosts:
        out(f"reset {student}: no lab hosts; `labkit up {roster.folder}` makes them")
        return 1
    host_vars = cohort_files(roster.folder)["host_vars"]
    plan: list[str] = []
    for host in hosts:
        s = survey(roster.folder, host)
        if s.get("error"):
            plan.append(
                f"{host}: could not read what changed ({_printable(s['error'])}); every student file will be rewritten"
            )
            continue
        for kind in ("changed", "missing", "added"):
            verb = {"changed": "overwrite", "missing": "put back", "added": "remove (if a pool program)"}[
                kind
            ]
            plan += [f"{host}: {verb} {_printable(p)}" for p in s[kind]]
        recorded = host_vars / f"{host}.yml"
        if recorded.is_file():
            plan.append(
                f"{host}: drop the recorded {_printable(s.get('placed_by') or 'solution')} ({recorded})"
            )
    out(f"reset {student}: back to the starting state of {roster.scenario}:")
    for line in plan or ["nothing the student made differs from the starting state"]:
        out(f"  {line}")
    if plan and not yes:
        if not sys.stdin.isatty():
            raise PlanRefused(
                f"reset {student}: refused without --yes (this overwrites the student's work above)"
            )
        if input("Overwrite the student's work above? Type yes to go on: ").strip().lower() != "yes":
            raise PlanRefused(f"reset {student}: nothing done (the answer was not yes)")
    for host in hosts:
        (host_vars / f"{host}.yml").unlink(missing_ok=True)
    res = run_playbook(
        roster.folder, "site.yml", limit=group_name("student", student),
        extravars={"labkit_overwrite_student_work": True, "labkit_placed_by": "labkit reset"},
        out=out, label=f"reset {student} (site.yml)",
    )  # fmt: skip
    out(f"reset {student}: {res.status}")
    return res.rc
