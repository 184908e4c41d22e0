"""The load generator's pieces that run without hosts: labkit-load-worker (roles/load_generator) with a stand-in for
Locust that records what it was given, the reports it sends back, and how `labkit load` picks the generator."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest

from labkit import cli, load

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "roles" / "load_generator" / "templates" / "labkit-load-worker.j2"
URLS = {
    "LABKIT_BROKER_URL": "amqp://s01:s3cret@10.0.0.10:5672/lab",
    "LABKIT_RESULT_BACKEND": "redis://:r3dis@10.0.0.10:6379/0",
    "LABKIT_REDIS_BROKER_URL": "redis://:r3dis@10.0.0.10:6379/1",
}
# Stands in for the venv's python: records its argv and environment, and reports requests like a Locust worker.
FAKE_LOCUST = """#!/bin/sh
n=$(basename "$LABKIT_LOAD_WORKER_REPORT" .json)
record="$(dirname "$0")/../../record"
if [ "$n" = worker2 ] && [ -e "$record/../hang" ]; then exec sleep 60; fi
printf '%s\\n' "$@" > "$record/$n.argv"
env > "$record/$n.env"
printf '{"requests": 7}' > "$LABKIT_LOAD_WORKER_REPORT"
"""


@pytest.fixture
def worker(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "opt"
    (root / "venv" / "bin").mkdir(parents=True)
    python = root / "venv" / "bin" / "python"
    python.write_text(FAKE_LOCUST)
    python.chmod(0o755)
    (root / "kit" / "scenarios" / "queue-segregation").mkdir(parents=True)
    (root / "kit" / "scenarios" / "queue-segregation" / "scenario.yml").write_text("name: x\n")
    (root / "kit" / "scenarios" / "queue-segregation" / "locustfile.py").write_text("")
    script = tmp_path / "labkit-load-worker"
    script.write_text(
        jinja2.Template(TEMPLATE.read_text()).render(load_generator_root=str(root), ansible_managed="x")
    )
    record = root / "record"  # the stand-in writes there (the worker passes it no variable of ours)
    record.mkdir()
    return script, record


def run_worker(script: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "LABKIT_BROKER_URL": "amqp://from-the-parent"}
    return subprocess.run([sys.executable, str(script), *args], input=stdin, env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def test_workers_get_the_lab_urls_from_stdin_only_and_report_on_stdout(worker) -> None:
    script, record = worker
    stdin = "".join(f"{k}={v}\n" for k, v in URLS.items()) + "LD_PRELOAD=/tmp/evil.so\nPATH=/tmp\n"
    res = run_worker(script, "queue-segregation", "41234", "2", "60", stdin=stdin)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert rows == [
        {"worker": 1, "requests": 7, "exit_code": 0},
        {"worker": 2, "requests": 7, "exit_code": 0},
    ]
    for i in (1, 2):
        argv = (record / f"worker{i}.argv").read_text().split("\n")
        assert argv[:2] == ["-m", "locust"] and "--worker" in argv
        assert (
            argv[argv.index("--master-host") + 1] == "127.0.0.1"
            and argv[argv.index("--master-port") + 1] == "41234"
        )
        assert not any("s3cret" in a or "r3dis" in a for a in argv), "no password on a command line"
        env = dict(
            line.split("=", 1) for line in (record / f"worker{i}.env").read_text().splitlines() if "=" in line
        )
        assert {k: env[k] for k in URLS} == URLS and env["LABKIT_SCENARIO"] == "queue-segregation"
        # Only the lab's URLs are taken from stdin; nothing else of the caller's (LD_PRELOAD, PATH) or parent's.
        assert "LD_PRELOAD" not in env and env["PATH"] == os.environ["PATH"]


@pytest.mark.parametrize(
    "args",
    [
        ("../../etc", "41234", "2", "60"),  # not a scenario name
        ("no-such-scenario", "41234", "2", "60"),
        ("queue-segregation", "0", "2", "60"),
        ("queue-segregation", "41234", "0", "60"),
        ("queue-segregation", "41234", "2", "0"),
        ("queue-segregation", "41234", "2"),
    ],
)
def test_bad_arguments_start_nothing(worker, args) -> None:
    script, record = worker
    res = run_worker(script, *args)
    assert res.returncode == 2 and res.stdout == "", res
    assert list(record.iterdir()) == [], "no worker started"


def test_a_worker_that_never_ends_is_ended_at_the_deadline_and_the_others_still_report(worker) -> None:
    script, record = worker
    (record.parent / "hang").touch()
    res = run_worker(script, "queue-segregation", "41234", "2", "2", stdin="LABKIT_BROKER_URL=amqp://x\n")
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert rows[0] == {"worker": 1, "requests": 7, "exit_code": 0}
    assert rows[1]["worker"] == 2 and rows[1]["requests"] is None and rows[1]["exit_code"] is None
    assert res.returncode == 1


def test_remote_reports_become_the_workers_report_files(tmp_path: Path) -> None:
    text = 'Locust noise\n{"worker": 1, "requests": 12, "exit_code": 0}\n{"worker": 2, "requests": null}\n{"worker": 99}\n'
    load._save_remote_reports(text + '{"worker": 70, "requests": 5}\nnot json\n', tmp_path)
    assert json.loads((tmp_path / "load_worker1.json").read_text()) == {"requests": 12}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["load_worker1.json"], (
        "no report for a silent worker"
    )
    assert load._distributed_report(tmp_path, 2)["requests_by_worker"] == [12, None]


def test_load_uses_the_cohorts_load_generator_with_two_workers_unless_told_otherwise(
    tmp_path, monkeypatch
) -> None:
    calls = []
    generator = {"name": "demo-load-generator", "address": "198.51.100.20"}
    monkeypatch.setattr(cli, "_roster", lambda folder: argparse.Namespace(folder=tmp_path))
    monkeypatch.setattr(load, "load_generator", lambda roster: generator)
    monkeypatch.setattr(load, "run_load", lambda roster, **kw: calls.append(kw) or {
        "s01": {"distributed": {"workers_connected": kw["workers"], "requests_by_worker": [3] * kw["workers"]}}})  # fmt: skip
    assert cli.cmd_load(argparse.Namespace(cohort="x", student=None, workers=0, on_controller=False)) == 0
    assert calls[-1]["generator"] == generator and calls[-1]["workers"] == load.DEFAULT_GENERATOR_WORKERS == 2
    assert cli.cmd_load(argparse.Namespace(cohort="x", student=None, workers=3, on_controller=False)) == 0
    assert calls[-1]["workers"] == 3
    assert cli.cmd_load(argparse.Namespace(cohort="x", student=None, workers=0, on_controller=True)) == 0
    assert calls[-1]["generator"] is None and calls[-1]["workers"] == 0
