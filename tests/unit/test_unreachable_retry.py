"""A host that does not answer (Mitogen's first connection timing out on a busy machine) gets one more run, for its
student's lab only; a failed task or a run at its deadline is not retried."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import yaml

from labkit import ansible

TOUCH = Path(__file__).resolve().parents[1] / "fixtures" / "playbooks" / "touch.yml"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connections are refused


def _cohort(tmp_path: Path) -> Path:
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    hosts = {
        "c-s01-broker": {**local, "lab_student": "s01"},
        "c-s02-broker": {
            "ansible_connection": "ssh",
            "ansible_host": "127.0.0.1",
            "ansible_port": _closed_port(),
            "ansible_user": "nobody",
            "lab_student": "s02",
        },
        "c-s02-worker": {**local, "lab_student": "s02"},
    }
    children = {
        "student_s01": {"hosts": {"c-s01-broker": None}},
        "student_s02": {"hosts": {"c-s02-broker": None, "c-s02-worker": None}},
    }
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": hosts, "children": children}}))
    return tmp_path


def test_an_unreachable_host_gets_one_more_run_for_its_students_lab_only(tmp_path, monkeypatch):
    monkeypatch.setattr("labkit.roster.load_roster", lambda folder: None)
    lines: list[str] = []
    res = ansible.run_playbook(_cohort(tmp_path), str(TOUCH), out=lines.append, deadline=120)
    assert res.rc != 0 and res.rerun == "student_s02"
    assert res.unreachable == {"c-s02-broker": 1} and set(res.failed) == {"c-s02-broker"}
    # s01's lab ran once, s02's worker twice (its lab ran again), the broker never answered.
    assert res.changed == {"c-s01-broker": 1, "c-s02-worker": 2}
    said = [ln for ln in lines if "did not answer" in ln]
    assert said == [f"{TOUCH.name}: did not answer: c-s02-broker; running once more for student_s02"]
    assert len(list((tmp_path / "logs").iterdir())) == 2


@pytest.mark.parametrize(
    ("result", "limit", "scope"),
    [
        (
            ansible.PlaybookResult(rc=4, status="failed", failed={"h": 1}, unreachable={"h": 1}),
            None,
            "student_s02",
        ),
        (ansible.PlaybookResult(rc=4, status="failed", failed={"h": 1}, unreachable={"h": 1}), "h", "h"),
        (ansible.PlaybookResult(rc=4, status="failed", failed={"b": 1}, unreachable={"b": 1}), None, "all"),
        # A task failed somewhere: a broken lab, not a busy moment.
        (
            ansible.PlaybookResult(rc=2, status="failed", failed={"h": 1, "g": 1}, unreachable={"h": 1}),
            None,
            None,
        ),
        (ansible.PlaybookResult(rc=124, status="timeout", failed={"h": 1}, unreachable={"h": 1}), None, None),
        (ansible.PlaybookResult(rc=0, status="successful"), None, None),
    ],
)
def test_what_is_run_again(tmp_path, result, limit, scope):
    inv = tmp_path / "hosts.yml"
    inv.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "children": {
                        "student_s02": {"hosts": {"h": {"lab_student": "s02"}, "g": {"lab_student": "s02"}}},
                        "bastion": {"hosts": {"b": {"bastion_access": "x"}}},
                    }
                }
            }
        )
    )
    assert ansible.retry_scope(result, inv, limit) == scope
