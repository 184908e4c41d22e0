"""Safe operations without a fleet: the cohort lock, plans before destruction, capacity, atomic writes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from labkit.fleet import local_tf
from labkit.roster import Roster, RosterError, Student
from labkit.state import PlanRefused, atomic_write, cohort_lock, holder


def roster(tmp_path, n: int, scenario: str = "queue-segregation") -> Roster:
    return Roster(
        path=tmp_path / "cohort.yml", cohort="safe", scenario=scenario, target="local",
        students=tuple(Student(f"s{i:02d}", f"S{i}", "k") for i in range(1, n + 1)),
    )  # fmt: skip


def test_a_second_command_waits_for_the_first_and_is_told_who(tmp_path):
    holder_code = (
        "import sys, time; from pathlib import Path; from labkit.state import cohort_lock\n"
        f"with cohort_lock(Path({str(tmp_path)!r}), 'labkit provision demo', lambda m: None):\n"
        "    print('held', flush=True); time.sleep(3)\n"
    )
    first = subprocess.Popen([sys.executable, "-c", holder_code], stdout=subprocess.PIPE, text=True)
    assert first.stdout.readline().strip() == "held"
    assert holder(tmp_path)["command"] == "labkit provision demo"
    busy = pytest.raises(RuntimeError, match=r"cohort busy: `labkit provision demo` \(pid \d+")
    with busy, cohort_lock(tmp_path, "labkit grade demo", timeout=0):
        pass
    said: list[str] = []
    t0 = time.monotonic()
    with cohort_lock(tmp_path, "labkit grade demo", said.append):
        waited = time.monotonic() - t0
    first.wait(10)
    assert waited > 1 and said and "waiting for `labkit provision demo`" in said[0]
    # A holder that dies (however it dies) releases the lock.
    killed = subprocess.Popen([sys.executable, "-c", holder_code], stdout=subprocess.PIPE, text=True)
    assert killed.stdout.readline().strip() == "held"
    killed.kill()
    killed.wait()
    with cohort_lock(tmp_path, "labkit grade demo", timeout=2):
        pass


def test_plan_names_added_removed_and_replaced_hosts(tmp_path):
    r = roster(tmp_path, 2)
    (tmp_path / "fleet.auto.tfvars.json").write_text(json.dumps({"hosts": {
        "safe-s01-broker": {"role": "broker", "scenario": "queue-segregation"},
        "safe-s01-worker": {"role": "worker", "scenario": "retries-dead-letters"},
        "safe-s09-broker": {"role": "broker", "scenario": "queue-segregation"},
    }}))  # fmt: skip
    steps = local_tf.plan(r)
    assert steps == {
        "add": ["safe-s02-broker", "safe-s02-worker"], "remove": ["safe-s09-broker"],
        "replace": ["safe-s01-worker"], "keep": ["safe-s01-broker"],
    }  # fmt: skip
    said: list[str] = []
    with pytest.raises(PlanRefused, match=r"--yes"):  # no terminal: never a prompt that waits
        local_tf.confirm_plan(r, steps, yes=False, out=said.append)
    assert "  - safe-s09-broker (remove)" in said and "  ~ safe-s01-worker (replace)" in said
    local_tf.confirm_plan(r, steps, yes=True, out=said.append)  # --yes: goes on
    local_tf.confirm_plan(
        r, {**steps, "remove": [], "replace": []}, yes=False, out=said.append
    )  # adding only


def test_a_class_that_does_not_fit_is_refused_with_the_largest_that_would(tmp_path, monkeypatch):
    monkeypatch.setattr(local_tf, "memory_mib", lambda: 24105)
    monkeypatch.setattr(local_tf, "running_elsewhere_mib", lambda cohort: 0)
    local_tf.check_capacity(roster(tmp_path, 15))  # 15 labs x 2 hosts x 768 MiB fit 24 GiB
    with pytest.raises(RosterError) as exc:
        local_tf.check_capacity(roster(tmp_path, 16))
    assert "16 labs need 24576 MiB" in exc.value.render() and "Fix: at most 15 students" in exc.value.render()
    monkeypatch.setattr(local_tf, "running_elsewhere_mib", lambda cohort: 12288)  # another class runs here
    with pytest.raises(RosterError, match="at most 7 students"):
        local_tf.check_capacity(roster(tmp_path, 15))


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "lab_hosts.json"
    atomic_write(target, "old\n")
    atomic_write(target, "new\n", mode=0o600)
    assert target.read_text() == "new\n" and oct(target.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir()] == ["lab_hosts.json"]
