"""No step hangs: a stuck task ends with Ansible's task_timeout, a stuck run with labkit's deadline,
and both say which host was stuck in which task."""

from __future__ import annotations

import configparser
import sys
import time
from pathlib import Path

import yaml

from labkit import ansible, paths

SLEEPY = Path(__file__).resolve().parents[1] / "fixtures" / "playbooks" / "sleepy.yml"


def _inventory(tmp_path: Path) -> Path:
    inv = tmp_path / "hosts.yml"
    inv.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "hosts": {
                        "stuck-host": {
                            "ansible_connection": "local",
                            "ansible_python_interpreter": sys.executable,
                        }
                    }
                }
            }
        )
    )
    return inv


def test_every_task_has_a_deadline_in_ansible_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(paths.REPO / "ansible.cfg")
    assert 0 < cfg.getint("defaults", "task_timeout") <= 600
    assert 0 < cfg.getint("defaults", "timeout") <= 60
    assert "ServerAliveInterval" in cfg.get("ssh_connection", "ssh_args")


def test_a_hung_task_fails_naming_host_and_task(tmp_path, monkeypatch):
    monkeypatch.setenv("ANSIBLE_TASK_TIMEOUT", "3")
    lines: list[str] = []
    t0 = time.monotonic()
    res = ansible.run_playbook_inventory(
        _inventory(tmp_path), str(SLEEPY), out=lines.append, deadline=90, log_dir=tmp_path / "logs"
    )
    assert time.monotonic() - t0 < 60
    assert res.rc != 0 and res.status == "failed"
    assert res.failed == {"stuck-host": 1}
    failure = [ln for ln in lines if "FAILED" in ln]
    assert failure and "stuck-host" in failure[0] and "Sleep far longer than any deadline" in failure[0]
    assert "timed out" in failure[0].lower()
    assert "Sleep far longer" in res.log.read_text()


def test_a_hung_run_ends_at_its_deadline_naming_host_and_task(tmp_path, monkeypatch):
    monkeypatch.setenv("ANSIBLE_TASK_TIMEOUT", "300")
    lines: list[str] = []
    t0 = time.monotonic()
    res = ansible.run_playbook_inventory(
        _inventory(tmp_path), str(SLEEPY), out=lines.append, deadline=8, log_dir=tmp_path / "logs"
    )
    assert time.monotonic() - t0 < 40
    assert res.status == "timeout" and res.rc != 0
    assert list(res.stuck) == ["stuck-host"]
    assert res.stuck["stuck-host"].startswith("task 'Sleep far longer than any deadline'")
    deadline = [ln for ln in lines if "DEADLINE" in ln]
    assert deadline and "stuck-host in task 'Sleep far longer than any deadline'" in deadline[0]
    # Nothing of the run outlives it (Mitogen's multiplexer, a fork of ansible-playbook, was left waiting forever).
    assert not _running_with(str(tmp_path / "hosts.yml"))


def _running_with(text: str) -> list[str]:
    """Command lines of processes that mention ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = proc.joinpath("cmdline").read_bytes() if proc.name.isdigit() else b""
        except OSError:
            continue
        if text.encode() in cmd:
            found.append(cmd.replace(b"\0", b" ").decode(errors="replace"))
    return found


def test_the_run_deadline_grows_with_the_class(tmp_path):
    inv = tmp_path / "hosts.yml"
    inv.write_text(
        yaml.safe_dump({"all": {"children": {"g": {"hosts": {f"h{i}": None for i in range(30)}}}}})
    )
    assert ansible._count_hosts(inv) == 30
    assert ansible.DEADLINE_PER_HOST * 30 > ansible.DEADLINE_MIN
