"""Thin adapter around ansible-runner: every playbook run goes through here.

Each run has a deadline. Ansible's own ``task_timeout`` (ansible.cfg) ends any one task that
hangs; the deadline here ends the whole run if something else does, and both say which host
was stuck in which task. The screen gets one line per play and per failure; Ansible's whole
output goes to a log file (its path is printed).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from labkit import paths
from labkit.inventory import cohort_files
from labkit.proc import kill_until_gone

# A whole playbook run may take this long per host before the kit ends it (and at least DEADLINE_MIN).
DEADLINE_PER_HOST = 60.0
DEADLINE_MIN = 600.0


@dataclass
class PlaybookResult:
    rc: int
    status: str
    changed: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    ok: dict[str, int] = field(default_factory=dict)
    unreachable: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    rerun: str | None = None  # the limit of the second run after unreachable hosts (run_playbook)
    stuck: dict[str, str] = field(default_factory=dict)
    log: Path | None = None

    @property
    def total_changed(self) -> int:
        return sum(self.changed.values())


class _Watch:
    """Follows the runner's events: what each host is doing now, failures, retries; writes the log."""

    def __init__(self, log: Path, out: Callable[[str], None], label: str):
        self.log = open(log, "w")  # noqa: SIM115 - closed in close()
        self.out, self.label = out, label
        self.running: dict[str, tuple[str, float]] = {}
        self.retries = 0
        self.lock = threading.Lock()
        # This play's counts per host, printed as one line per host when the play ends.
        self.play = self.play_short = ""
        self.play_started = 0.0
        self.per_host: dict[str, dict[str, int]] = {}

    def _end_play(self) -> None:
        if not self.play or not self.per_host:
            return
        took = time.monotonic() - self.play_started
        for host, n in sorted(self.per_host.items()):
            state = "FAILED" if n.get("failed") else "unreachable" if n.get("unreachable") else "done"
            self.out(f"{self.label}: {host}: {self.play_short}: {state} (ok {n.get('ok', 0)}, changed "
                     f"{n.get('changed', 0)}) by {took:.0f} s")  # fmt: skip
        self.per_host = {}

    def _count(self, host: str, key: str) -> None:
        self.per_host.setdefault(host, {})
        self.per_host[host][key] = self.per_host[host].get(key, 0) + 1

    def __call__(self, event: dict) -> bool:
        kind, data = event.get("event", ""), event.get("event_data", {})
        with self.lock:
            if event.get("stdout"):
                self.log.write(event["stdout"] + "\n")
                self.log.flush()
            host, task = data.get("host"), (data.get("task") or "").strip()
            if kind == "runner_on_start" and host:
                self.running[host] = (task, time.monotonic())
            elif kind in ("runner_on_ok", "runner_on_skipped", "runner_item_on_ok") and host:
                if kind != "runner_item_on_ok":
                    self.running.pop(host, None)
                if kind == "runner_on_ok":
                    self._count(host, "ok")
                    if (data.get("res") or {}).get("changed"):
                        self._count(host, "changed")
            elif kind in ("runner_on_failed", "runner_on_unreachable") and host:
                self.running.pop(host, None)
                if kind == "runner_on_failed" and data.get("ignore_errors"):
                    return True
                self._count(host, "failed" if kind == "runner_on_failed" else "unreachable")
                res = data.get("res") or {}
                msg = str(res.get("msg") or res.get("stderr") or res.get("reason") or "")[:300]
                what = "unreachable" if kind == "runner_on_unreachable" else "FAILED"
                self.out(f"{self.label}: {host}: {what} in task '{task}': {msg}")
            elif kind == "runner_retry":
                self.retries += 1
                self.out(
                    f"{self.label}: retry: {host} '{task}' (attempt {data.get('res', {}).get('attempts', '?')})"
                )
            elif kind == "playbook_on_stats" and event.get("stdout"):
                self._end_play()
                # The recap, as Ansible prints it: one line per host (ok, changed, unreachable, failed).
                print(event["stdout"].strip("\n"), flush=True)
            elif kind == "playbook_on_play_start":
                self._end_play()
                self.play = (data.get("play") or "").strip()
                self.play_short = self.play.split(",")[0][:60]
                self.play_started = time.monotonic()
                self.out(f"{self.label}: play '{self.play}'")
        return True

    def stuck(self) -> dict[str, str]:
        now = time.monotonic()
        with self.lock:
            return {h: f"task '{t}' for {now - t0:.0f} s" for h, (t, t0) in sorted(self.running.items())}

    def close(self) -> None:
        self.log.close()


def _mitogen_env() -> dict[str, str]:
    """Mitogen's free strategy for the kit's own runs (one interpreter per host instead of one per task)."""
    if os.environ.get("LABKIT_MITOGEN", "1") == "0":
        return {}
    try:
        import ansible_mitogen
    except ImportError:
        return {}
    plugins = Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"
    return {"ANSIBLE_STRATEGY_PLUGINS": str(plugins), "ANSIBLE_STRATEGY": "mitogen_free"}


def _inventory_hosts(inventory: Path) -> dict[str, dict]:
    """Every host of a generated hosts.yml, with the variables it has in any group."""
    from labkit.inventory import read_inventory

    def walk(group: dict) -> dict[str, dict]:
        found = {h: v or {} for h, v in ((group or {}).get("hosts") or {}).items()}
        for child in ((group or {}).get("children") or {}).values():
            for h, v in walk(child).items():
                found[h] = {**found.get(h, {}), **v}
        return found

    return walk(read_inventory(inventory).get("all", {}))


def labs_limit(inventory: Path, students: list[str]) -> str:
    """An Ansible limit for some students' labs and the cohort's own hosts (bastion, load generator): what a late
    student's provisioning needs, and nothing of the other labs."""
    from labkit.inventory import group_name

    cohort_hosts = sorted(h for h, v in _inventory_hosts(inventory).items() if not v.get("lab_student"))
    return ",".join([*(group_name("student", s) for s in students), *cohort_hosts])


def _count_hosts(inventory: Path) -> int:
    try:
        return len(_inventory_hosts(inventory))
    except Exception:
        return 1


def run_leftovers(run_id: str) -> list[int]:
    """Processes of one playbook run still alive (by the LABKIT_RUN marker every process of the run inherits)."""
    marker = f"LABKIT_RUN={run_id}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
    return found


def _end_leftovers(run_id: str, out: Callable[[str], None], label: str) -> None:
    """A run that ended at its deadline leaves Mitogen's connection multiplexer (a fork of ansible-playbook in its own
    session) waiting forever; nothing of a finished run may outlive it."""
    left = kill_until_gone(lambda: run_leftovers(run_id), tries=20, interval=0.1)
    if left:
        out(f"{label}: processes of the run still alive after SIGKILL: {left}")


def run_playbook_inventory(
    inventory: Path,
    playbook: str,
    limit: str | None = None,
    extravars: dict | None = None,
    out: Callable[[str], None] = print,
    deadline: float | None = None,
    label: str = "",
    log_dir: Path | None = None,
) -> PlaybookResult:
    """Run ``playbooks/<playbook>`` on ``inventory`` with a deadline; the screen gets a summary, the log everything."""
    import ansible_runner

    label = label or Path(playbook).name
    venv_bin = str(Path(sys.executable).parent)
    # ansible-playbook and its helpers come from the kit's venv even when it is not activated.
    if venv_bin not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
    if deadline is None:
        deadline = max(DEADLINE_MIN, DEADLINE_PER_HOST * _count_hosts(inventory))
    log_dir = log_dir or inventory.parent / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{Path(playbook).stem}-{time.strftime('%Y%m%dT%H%M%S')}.log"
    watch = _Watch(log, out, label)
    run_id = uuid.uuid4().hex
    out(f"{label}: ansible-playbook {playbook} (deadline {deadline:.0f} s; full output in {log})")
    try:
        with tempfile.TemporaryDirectory(prefix="labkit-runner-") as pdd:
            r = ansible_runner.run(
                private_data_dir=pdd,
                project_dir=str(paths.REPO),
                playbook=str(paths.PLAYBOOKS / playbook),
                inventory=str(inventory.resolve()),
                cmdline=f"--limit {limit}" if limit else None,
                extravars=extravars or {},
                envvars={
                    "LABKIT_RUN": run_id,
                    "ANSIBLE_CONFIG": str(paths.REPO / "ansible.cfg"),
                    "ANSIBLE_NOCOLOR": "1",
                    **_mitogen_env(),
                },
                quiet=True,
                suppress_env_files=True,
                event_handler=watch,
                timeout=int(deadline),
            )
            stats = r.stats or {}
    finally:
        watch.close()
        _end_leftovers(run_id, out, label)
    res = PlaybookResult(
        rc=r.rc,
        status=r.status,
        changed=dict(stats.get("changed", {})),
        failed={**stats.get("failures", {}), **stats.get("dark", {})},
        ok=dict(stats.get("ok", {})),
        unreachable=dict(stats.get("dark", {})),
        retries=watch.retries,
        log=log,
    )
    if r.status == "timeout":
        res.stuck = watch.stuck()
        where = "; ".join(f"{h} in {t}" for h, t in res.stuck.items()) or "no task was running"
        out(f"{label}: DEADLINE of {deadline:.0f} s reached, run ended. Still running: {where}. Log: {log}")
        res.rc = res.rc or 124
    return res


def retry_scope(res: PlaybookResult, inventory: Path, limit: str | None) -> str | None:
    """What to run once more after a run whose only trouble was hosts that did not answer (Mitogen's connection
    timed out on a machine busy with other labs): the same limit, or the labs of those hosts' students. None when
    a task failed, the run hit its deadline, or nothing was unreachable: those are not retried."""
    if (
        res.rc == 0
        or res.status == "timeout"
        or not res.unreachable
        or set(res.failed) - set(res.unreachable)
    ):
        return None
    if limit:
        return limit
    from labkit.inventory import group_name

    known = _inventory_hosts(inventory)
    students = {known.get(h, {}).get("lab_student") for h in res.unreachable}
    if None in students:  # a cohort host (bastion, load generator) or one the inventory lacks: the whole run
        return "all"
    return ",".join(group_name("student", s) for s in sorted(students))


def run_playbook(
    folder: Path,
    playbook: str,
    limit: str | None = None,
    extravars: dict | None = None,
    out: Callable[[str], None] = print,
    deadline: float | None = None,
    label: str = "",
) -> PlaybookResult:
    """A cohort's playbook, after labkit's own roster check. Hosts that did not answer get one more run (their labs
    only; the playbooks are idempotent), so a busy moment does not fail a class's provisioning."""
    inv = cohort_files(folder)["hosts"]
    if not inv.is_file():
        raise FileNotFoundError(f"{inv}: no inventory. Fix: run `labkit fleet up {folder}` first.")
    from labkit.roster import load_roster

    load_roster(
        folder
    )  # refuses a bad roster before any host is touched (the playbook then skips its own check)
    extravars = {"labkit_roster_validated": True, **(extravars or {})}
    logs = cohort_files(folder)["logs"]
    res = run_playbook_inventory(inv, playbook, limit, extravars, out, deadline, label, log_dir=logs)
    again = retry_scope(res, inv, limit)
    if not again:
        return res
    label = label or Path(playbook).name
    out(f"{label}: did not answer: {', '.join(sorted(res.unreachable))}; running once more for {again}")
    second = run_playbook_inventory(inv, playbook, again, extravars, out, deadline, label, log_dir=logs)
    # Hosts outside the second run keep the first run's counts; the second run's verdict stands for its hosts.
    second.changed = {
        h: res.changed.get(h, 0) + second.changed.get(h, 0) for h in {*res.changed, *second.changed}
    }
    second.ok = {**res.ok, **second.ok}
    second.retries += res.retries
    second.rerun = again
    return second
