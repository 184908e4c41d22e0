"""The grader's "stop the pool" fault: a check that measures a stopped pool must never measure a running one, and a
stop that goes wrong leaves the lab as it was and says why.

A host here is a small stand-in for supervisord answering ``supervisorctl`` the way supervisor 4.2 does (Debian 12):
``status`` prints ``NAME  STATE ...`` per known program and ``NAME: ERROR (no such process)`` per unknown one, and exits
0 when all run, 3 when one does not, 4 when one is unknown; a command killed by the host's ``timeout`` exits 124 with
no output. So the cases a real lab produces only under load can be played exactly."""

from __future__ import annotations

import shlex
from types import SimpleNamespace

import pytest

from grading import facts, timeline
from grading.remote import LabCommandError


class Supervisord:
    def __init__(self, states: dict[str, str], *, stop_hangs: int = 0, stopping_polls: int = 0, down=False):
        self.states = dict(states)
        self.stop_hangs = stop_hangs  # stops killed by `timeout` before supervisord stopped anything
        self.stopping_polls = stopping_polls  # status reads that still find a stopped program STOPPING
        self.down = down  # supervisord not running: its socket refuses supervisorctl
        self.commands: list[str] = []

    def run(self, command: str):
        argv = shlex.split(shlex.split(command)[-1])  # timeout N sh -c '<command>'
        assert argv[0] == "supervisorctl", argv
        self.commands.append(" ".join(argv[1:]))
        verb, names = argv[1], argv[2:]
        if self.down:
            return SimpleNamespace(rc=7, stdout="unix:///var/run/supervisor.sock no such file\n", stderr="")
        if verb == "stop":
            if self.stop_hangs:
                self.stop_hangs -= 1
                return SimpleNamespace(rc=124, stdout="", stderr="")
            for n in names:
                if n in self.states:
                    self.states[n] = "STOPPED"
            return SimpleNamespace(rc=0, stdout="".join(f"{n}: stopped\n" for n in names if n in self.states),
                                   stderr="")  # fmt: skip
        if verb == "start":
            for n in names:
                if n in self.states:
                    self.states[n] = "RUNNING"
            return SimpleNamespace(rc=0, stdout="", stderr="")
        if verb == "status":
            shown = dict(self.states)
            if self.stopping_polls:
                self.stopping_polls -= 1
                shown = {n: "STOPPING" if s == "STOPPED" else s for n, s in shown.items()}
            out = "".join(f"{n:33s}{shown[n]}   pid 1, uptime 0:01:00\n" for n in names if n in shown)
            out += "".join(f"{n}: ERROR (no such process)\n" for n in names if n not in shown)
            rc = (
                4
                if any(n not in shown for n in names)
                else 3
                if any(shown[n] != "RUNNING" for n in names)
                else 0
            )
            return SimpleNamespace(rc=rc, stdout=out, stderr="")
        raise AssertionError(verb)


@pytest.fixture(autouse=True)
def marks(monkeypatch):
    seen = []
    monkeypatch.setattr(timeline, "mark", lambda kind, what: seen.append((kind, what)))
    monkeypatch.setattr(facts.time, "sleep", lambda _s: None)
    return seen


def test_a_stop_that_takes_marks_the_fault(marks):
    host = Supervisord({"celery-amqp": "RUNNING", "celery-redis": "RUNNING"})
    facts.stop_programs(host, ["celery-amqp"])
    assert host.states == {"celery-amqp": "STOPPED", "celery-redis": "RUNNING"}
    assert marks == [("fault", "stopped celery-amqp")]


def test_a_stop_killed_before_it_took_is_tried_again(marks):
    host = Supervisord({"celery-amqp": "RUNNING"}, stop_hangs=1)
    facts.stop_programs(host, ["celery-amqp"])
    assert host.states["celery-amqp"] == "STOPPED"
    assert [c for c in host.commands if c.startswith("stop")] == ["stop celery-amqp"] * 2
    assert marks == [("fault", "stopped celery-amqp")]


def test_a_program_still_stopping_is_waited_for_not_stopped_again(marks):
    host = Supervisord({"celery-light": "RUNNING"}, stopping_polls=2)
    facts.stop_programs(host, ["celery-light"])
    assert host.commands == ["stop celery-light"] + ["status celery-light"] * 3
    assert marks == [("fault", "stopped celery-light")]


def test_a_pool_that_will_not_stop_fails_the_check_and_the_lab_is_as_it_was(marks):
    host = Supervisord({"celery-amqp": "RUNNING", "celery-redis": "RUNNING"}, stop_hangs=2)
    with pytest.raises(LabCommandError) as err:
        facts.stop_programs(host, ["celery-amqp", "celery-redis"])
    assert str(err.value) == (
        "the grader could not stop celery-amqp (RUNNING), celery-redis (RUNNING) with supervisorctl stop (twice); "
        "supervisorctl said 'no answer (exit 124)'"
    )
    assert host.states == {"celery-amqp": "RUNNING", "celery-redis": "RUNNING"}
    assert host.commands[-1] == "start celery-amqp celery-redis"
    assert marks == []  # no fault was injected: no timeline says so


def test_supervisord_not_answering_is_not_taken_for_stopped(marks):
    host = Supervisord({"celery-amqp": "RUNNING"}, down=True)
    with pytest.raises(
        LabCommandError, match="supervisorctl status gave no answer after supervisorctl stop celery-amqp"
    ):
        facts.stop_programs(host, ["celery-amqp"])
    assert host.commands[-1] == "start celery-amqp" and marks == []


def test_a_program_supervisord_does_not_know_is_not_taken_for_stopped(marks):
    # A pool renamed or run outside supervisord: the grader cannot stop it, so it must not measure as if it had.
    host = Supervisord({"celery-amqp": "RUNNING"})
    with pytest.raises(
        LabCommandError, match="supervisord has no program celery-light: the grader could not stop it"
    ):
        facts.stop_programs(host, ["celery-amqp", "celery-light"])
    assert host.states == {"celery-amqp": "RUNNING"} and marks == []


def test_a_connection_lost_mid_stop_still_starts_the_programs_again(marks, monkeypatch):
    host = Supervisord({"celery-amqp": "RUNNING"})
    real = host.run

    def flaky(command):
        if "status" in command:
            raise ConnectionError("ssh: connection reset")
        return real(command)

    host.run = flaky
    with pytest.raises(ConnectionError):
        facts.stop_programs(host, ["celery-amqp"])
    assert host.states == {"celery-amqp": "RUNNING"} and host.commands[-1] == "start celery-amqp"
