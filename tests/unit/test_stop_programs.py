"""The grader's "stop the pool" fault: a check that measures a stopped pool must never measure a running one.

A host here is a small stand-in for supervisord answering ``supervisorctl`` (stop, status, start) the way it does
(states, exit codes), so the cases a real lab produces only under load can be played exactly: a stop that does not
take, a stop that takes the second time, a program supervisord does not know."""

from __future__ import annotations

import shlex
from types import SimpleNamespace

import pytest

from grading import facts, timeline
from grading.remote import LabCommandError


class Supervisord:
    def __init__(self, states: dict[str, str], stubborn: int = 0):
        self.states = dict(states)
        # How many stops leave the program running (a stop that timed out under load).
        self.stubborn = stubborn
        self.commands: list[str] = []

    def run(self, command: str):
        argv = shlex.split(shlex.split(command)[-1])  # timeout N sh -c '<command>'
        assert argv[0] == "supervisorctl", argv
        self.commands.append(" ".join(argv[1:]))
        verb, names = argv[1], argv[2:]
        if verb == "stop":
            if self.stubborn:
                self.stubborn -= 1
                return SimpleNamespace(rc=1, stdout="", stderr="celery-amqp: ERROR (timed out)\n")
            for n in names:
                if n in self.states:
                    self.states[n] = "STOPPED"
            return SimpleNamespace(rc=0, stdout="".join(f"{n}: stopped\n" for n in names), stderr="")
        if verb == "start":
            for n in names:
                if n in self.states:
                    self.states[n] = "RUNNING"
            return SimpleNamespace(rc=0, stdout="", stderr="")
        if verb == "status":
            known = [n for n in names if n in self.states]
            out = "".join(f"{n:33s}{self.states[n]}   pid 1, uptime 0:01:00\n" for n in known)
            out += "".join(f"{n}: ERROR (no such process)\n" for n in names if n not in self.states)
            return SimpleNamespace(rc=0 if known else 4, stdout=out, stderr="")
        raise AssertionError(verb)


@pytest.fixture(autouse=True)
def marks(monkeypatch):
    seen = []
    monkeypatch.setattr(timeline, "mark", lambda kind, what: seen.append((kind, what)))
    return seen


def test_a_stop_that_takes_marks_the_fault(marks):
    host = Supervisord({"celery-amqp": "RUNNING", "celery-redis": "RUNNING"})
    facts.stop_programs(host, ["celery-amqp"])
    assert host.states == {"celery-amqp": "STOPPED", "celery-redis": "RUNNING"}
    assert marks == [("fault", "stopped celery-amqp")]


def test_a_stop_that_did_not_take_is_tried_again(marks):
    host = Supervisord({"celery-amqp": "RUNNING"}, stubborn=1)
    facts.stop_programs(host, ["celery-amqp"])
    assert host.states["celery-amqp"] == "STOPPED"
    assert [c for c in host.commands if c.startswith("stop")] == ["stop celery-amqp", "stop celery-amqp"]
    assert marks == [("fault", "stopped celery-amqp")]


def test_a_pool_that_will_not_stop_fails_the_check_and_is_left_running(marks):
    host = Supervisord({"celery-amqp": "RUNNING", "celery-redis": "STOPPED"}, stubborn=2)
    with pytest.raises(LabCommandError) as err:
        facts.stop_programs(host, ["celery-amqp", "celery-redis"])
    assert "could not stop celery-amqp (RUNNING)" in str(err.value) and "timed out" in str(err.value)
    assert host.commands[-1] == "start celery-amqp celery-redis"  # the lab as it was before the grader came
    assert marks == []  # no fault was injected: no timeline says so


def test_a_program_supervisord_does_not_know_is_not_running_under_it(marks):
    host = Supervisord({"celery-amqp": "RUNNING"})
    facts.stop_programs(host, ["celery-light"])
    assert host.states == {"celery-amqp": "RUNNING"}
    assert marks == [("fault", "stopped celery-light")]
