"""The graders' producers run the student's own app (as the workers' user, the app's folder on the path) on a host:
here the controller itself through testinfra's local backend, with an app on Kombu's in-memory transport."""

from __future__ import annotations

import os
import sys

import pytest
import testinfra

from grading import remote

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runuser needs root")

APP = """
import os, sys
from celery import Celery
app = Celery("labapp", broker="memory://")
app.conf.task_default_queue = "orders"
print("noise " * int(os.environ.get("NOISE", "0")), file=sys.stdout)
print("LAB_BROKER=" + os.environ.get("LAB_BROKER", ""), file=sys.stderr)

@app.task
def place_order(order):
    return order
"""


@pytest.fixture
def host(tmp_path, monkeypatch):
    (tmp_path / "labapp").mkdir()
    (tmp_path / "labapp" / "__init__.py").write_text("")
    (tmp_path / "labapp" / "tasks.py").write_text(APP)
    monkeypatch.setattr(remote, "APP_DIR", str(tmp_path))
    monkeypatch.setattr(remote, "VENV_PYTHON", sys.executable)
    monkeypatch.setattr(remote, "APP_USER", "root")
    return testinfra.get_host("local://")


def test_the_producer_publishes_every_id_through_the_app(host):
    sends = [{"task": "labapp.tasks.place_order", "ids": ["a", "b", "c"], "args": [{"amount": 1}]}]
    assert remote.student_producer(host, "labapp.tasks", sends) == 3


def test_an_app_that_prints_without_end_is_capped_on_the_host(host, monkeypatch):
    monkeypatch.setenv("NOISE", "400000")  # 2.4 MB on stdout before the producer's own line
    seen = []
    real_run = remote.run
    monkeypatch.setattr(remote, "run", lambda *a, **k: seen.append(real_run(*a, **k)) or seen[-1])
    sends = [{"task": "labapp.tasks.place_order", "ids": ["a"], "args": [{"amount": 1}]}]
    assert remote.student_producer(host, "labapp.tasks", sends) == 1
    assert len(seen[0].stdout) <= 65536 and seen[0].stdout.rstrip().endswith('{"sent": 1}')


def test_the_paced_producer_refuses_an_app_that_does_not_publish_to_rabbitmq(host):
    ids = ["x", "y"]
    out = remote.student_producer_paced(host, "labapp.tasks", "labapp.tasks.place_order", ids, 0.01)
    assert out["sent"] == []
    assert out["failed"] == dict.fromkeys(ids, "the app's broker is memory, not RabbitMQ")


def test_a_broken_app_is_reported_with_its_error(host, tmp_path):
    (tmp_path / "labapp" / "tasks.py").write_text("raise RuntimeError('the student broke the app')\n")
    with pytest.raises(remote.LabCommandError, match="the student broke the app"):
        remote.student_producer(host, "labapp.tasks", [{"task": "t", "ids": ["a"]}])
