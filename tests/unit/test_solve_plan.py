"""`labkit solve`: one playbook run for several students, each with the solution or their own mutant."""

from __future__ import annotations

import argparse

import pytest

from labkit import cli
from labkit.roster import RosterError
from labkit.scenario import ScenarioError


class FakeRoster:
    def __init__(self, folder, ids):
        self.folder, self.scenario, self.ids = folder, "rabbitmq-cluster-failover", ids

    def student(self, sid):
        if sid not in self.ids:
            raise RosterError(self.folder / "cohort.yml", [f"no student {sid!r}"])
        return sid


@pytest.fixture
def calls(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(cli, "_roster", lambda folder: FakeRoster(tmp_path, {"s01", "s02", "s03", "s04"}))
    monkeypatch.setattr(cli, "_playbook", lambda *a, **kw: seen.append((a, kw)) or 0)
    return seen


def solve(*students, mutant=None):
    return cli.cmd_solve(argparse.Namespace(cohort="x", student=list(students), mutant=mutant))


def test_each_student_gets_their_own_mutant_in_one_run(calls):
    assert solve("s01", "s03=pinned-to-node1", "s04=classic-on-rabbit2") == 0
    [(args, kw)] = calls
    assert args[1] == "solve.yml" and args[2] == "student_s01,student_s03,student_s04"
    assert kw["extravars"] == {"labkit_mutants": {"s03": "pinned-to-node1", "s04": "classic-on-rabbit2"}}


def test_mutant_applies_to_the_students_without_their_own(calls):
    assert solve("s01", "s04=classic-on-rabbit2", mutant="pinned-to-node1") == 0
    assert calls[0][1]["extravars"] == {
        "labkit_mutants": {"s01": "pinned-to-node1", "s04": "classic-on-rabbit2"}
    }


def test_the_solution_alone_passes_no_mutants(calls):
    assert solve("s02") == 0
    assert calls[0][1]["extravars"] is None


def test_an_unknown_mutant_or_student_touches_no_host(calls):
    with pytest.raises(ScenarioError, match="no mutant 'typo'"):
        solve("s01", "s03=typo")
    with pytest.raises(RosterError):
        solve("s01", "s09=pinned-to-node1")
    assert calls == []
