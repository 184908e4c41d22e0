"""A real load run: redis-server as broker and backend, a real Celery worker, headless Locust."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labkit import paths
from labkit.load import LabEndpoints, parse_load_stats, run_load
from labkit.roster import Roster, Student

SCENARIO = "queue-segregation"
LOCUSTFILE = paths.scenario_dir(SCENARIO) / "locustfile.py"
VENV_BIN = Path(sys.executable).parent

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (apt)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open in {timeout}s")


def _stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def redis_url():
    port = _free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--daemonize", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port, proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory, redis_url):
    """The scenario's labapp with a generated celeryconfig that points at the test redis."""
    root = tmp_path_factory.mktemp("app")
    shutil.copytree(paths.scenario_dir(SCENARIO) / "app" / "labapp", root / "labapp")
    (root / "labapp" / "celeryconfig.py").write_text(
        f"broker_url = {redis_url!r}\n"
        f"result_backend = {redis_url!r}\n"
        "task_routes = {'labapp.tasks.crunch': {'queue': 'heavy'},\n"
        "               'labapp.tasks.notify': {'queue': 'light'}}\n"
        "broker_connection_retry_on_startup = True\n"
    )
    return root


@pytest.fixture
def worker(app_dir, tmp_path):
    log = tmp_path / "worker.log"
    env = {**os.environ, "PYTHONPATH": str(app_dir)}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(VENV_BIN / "celery"), "-A", "labapp.tasks", "worker", "-Q", "heavy,light", "-n", "test@%h",
             "-P", "threads", "-c", "4", "--without-gossip", "--without-mingle", "--without-heartbeat",
             "-l", "INFO"],
            cwd=app_dir, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while "ready." not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"celery worker did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield proc
    finally:
        _stop(proc)


def _locust(tmp_path: Path, env: dict[str, str], run_time: str) -> tuple[dict, str]:
    prefix = tmp_path / "load"
    proc = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "2", "-r", "2",
         "-t", run_time, "--csv", str(prefix), "--only-summary", "--exit-code-on-error", "0"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return parse_load_stats(Path(f"{prefix}_stats.csv")), proc.stderr


def test_load_round_trips_through_a_real_worker(redis_url, worker, tmp_path):
    roster = Roster(
        path=tmp_path / "cohort.yml", cohort="unit", scenario=SCENARIO, target="local",
        students=(Student(id="s01", name="Ada", ssh_public_key="ssh-ed25519 AAAA"),),
    )  # fmt: skip
    lines: list[str] = []
    summaries = run_load(
        roster,
        out=lines.append,
        users=2,
        spawn_rate=2,
        run_time="5s",
        reports_dir=tmp_path / "reports",
        endpoints=lambda _roster, _student: LabEndpoints(redis_url, redis_url, "127.0.0.1"),
    )
    summary = summaries["s01"]
    assert summary["requests"] > 0, summary
    assert summary["failures"] == 0, summary
    student_dir = tmp_path / "reports" / "unit" / "s01"
    with (student_dir / "load_stats.csv").open() as f:
        names = {row["Name"] for row in csv.DictReader(f)}
    assert {"labapp.tasks.crunch [heavy]", "labapp.tasks.notify [light]", "Aggregated"} <= names
    assert (student_dir / "load_summary.json").is_file()
    assert "greenlet is being finalized" not in (student_dir / "load.log").read_text()
    assert any("s01" in line and "started" in line for line in lines)
    assert any("s01" in line and "finished" in line and "requests" in line for line in lines)


def test_distributed_load_has_every_worker_connected_and_sending(redis_url, worker, tmp_path):
    """labkit load --workers N: a Locust master and N workers per lab; the master saw N workers connected, every
    worker sent requests, and the master's stats hold them all."""
    roster = Roster(
        path=tmp_path / "cohort.yml", cohort="unit", scenario=SCENARIO, target="local",
        students=(Student(id="s01", name="Ada", ssh_public_key="ssh-ed25519 AAAA"),),
    )  # fmt: skip
    lines: list[str] = []
    summary = run_load(
        roster, out=lines.append, users=4, spawn_rate=4, run_time="6s", reports_dir=tmp_path / "reports",
        endpoints=lambda _roster, _student: LabEndpoints(redis_url, redis_url, "127.0.0.1"), workers=2,
    )["s01"]  # fmt: skip
    dist = summary["distributed"]
    assert dist["workers_connected"] == 2, (
        summary,
        (tmp_path / "reports/unit/s01/load.log").read_text()[-2000:],
    )
    assert len(dist["requests_by_worker"]) == 2 and all(n and n > 0 for n in dist["requests_by_worker"]), dist
    assert summary["failures"] == 0 and summary["requests"] == sum(dist["requests_by_worker"]), summary
    assert any("2 of 2 workers connected" in line for line in lines), lines


def test_load_records_failures_when_nothing_consumes(redis_url, tmp_path):
    env = {
        "LABKIT_BROKER_URL": redis_url,
        "LABKIT_RESULT_BACKEND": redis_url,
        "LABKIT_SCENARIO": SCENARIO,
        "LABKIT_RESULT_TIMEOUT": "0.5",
    }
    stats, stderr = _locust(tmp_path, env, "3s")
    assert stats["requests"] > 0, stats
    assert stats["failures"] == stats["requests"], stats
    assert "greenlet is being finalized" not in stderr
    failures = (tmp_path / "load_failures.csv").read_text()
    assert "TimeoutError" in failures or "timed out" in failures


def test_a_locust_that_never_exits_is_ended_after_its_run_and_its_stats_kept(tmp_path, monkeypatch):
    """Seen with 15 labs at once: locust wrote its stats, then hung at exit. The load step must end."""
    from labkit import load

    stuck = tmp_path / "stuck_locust.py"
    stuck.write_text(
        "import sys, time\nprefix = sys.argv[sys.argv.index('--csv') + 1]\n"
        "open(prefix + '_stats.csv', 'w').write('Type,Name,Request Count,Failure Count,Median Response Time,"
        "Average Response Time,Requests/s\\n,Aggregated,40,0,5,6,2.0\\n')\n"
        "time.sleep(600)\n"
    )
    monkeypatch.setattr(
        load, "locust_command", lambda _s, prefix, *_a: [sys.executable, str(stuck), "--csv", str(prefix)]
    )
    monkeypatch.setattr(load, "LOAD_GRACE_S", 2.0)
    roster = Roster(
        path=tmp_path / "cohort.yml", cohort="unit", scenario=SCENARIO, target="local",
        students=(Student(id="s01", name="Ada", ssh_public_key="ssh-ed25519 AAAA"),),
    )  # fmt: skip
    lines: list[str] = []
    t0 = time.monotonic()
    summaries = run_load(
        roster, out=lines.append, users=1, spawn_rate=1, run_time="1s", reports_dir=tmp_path / "reports",
        endpoints=lambda _roster, _student: LabEndpoints("redis://x", "redis://x", "127.0.0.1"),
    )  # fmt: skip
    assert time.monotonic() - t0 < 30
    assert summaries["s01"]["requests"] == 40 and summaries["s01"]["failures"] == 0
    assert any("s01" in ln and "still running" in ln and "ending it" in ln for ln in lines), lines


def test_every_scenario_has_a_locustfile_for_its_load_profile():
    # Not importing loadtests here: locust monkey-patches the whole test process with gevent.
    from labkit.load import locustfile_for
    from labkit.roster import known_scenarios
    from labkit.scenario import load_scenario

    for scenario in known_scenarios():
        assert locustfile_for(scenario).is_file(), scenario
        assert load_scenario(scenario).load_request_names(), scenario
    assert load_scenario("broker-durability").load_request_names() == {
        "labapp.tasks.pay [payments]",
        "labapp.tasks.pay_via_redis [payments_redis] via redis",
    }


def test_a_load_task_goes_through_the_broker_its_profile_names(redis_url, tmp_path, monkeypatch):
    """broker-durability's profile sends the same payment through RabbitMQ and through Redis as a broker. Here the
    Redis broker (database 1) has a real worker and the "RabbitMQ" one (database 2 of the same server) has none: the
    Redis payments round-trip, the others all time out, and the report keeps them apart (the comparison table)."""
    scenario = "broker-durability"
    monkeypatch.setenv("LABKIT_RESULT_TIMEOUT", "1")  # the unconsumed payments give up fast
    server = redis_url.rsplit("/", 1)[0]
    app_dir = tmp_path / "app"
    shutil.copytree(paths.scenario_dir(scenario) / "app" / "labapp", app_dir / "labapp")
    (app_dir / "labapp" / "celeryconfig.py").write_text(
        f"broker_url = {server + '/1'!r}\nresult_backend = {server + '/0'!r}\n"
        "broker_connection_retry_on_startup = True\n"
    )
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(VENV_BIN / "celery"), "-A", "labapp.tasks", "worker", "-Q", "payments_redis", "-n", "redis@%h",
             "-P", "threads", "-c", "4", "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO"],
            cwd=app_dir, env={**os.environ, "PYTHONPATH": str(app_dir)}, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while "ready." not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        roster = Roster(
            path=tmp_path / "cohort.yml", cohort="unit", scenario=scenario, target="local",
            students=(Student(id="s01", name="Ada", ssh_public_key="ssh-ed25519 AAAA"),),
        )  # fmt: skip
        summaries = run_load(
            roster, out=lambda _l: None, users=4, spawn_rate=4, run_time="6s", reports_dir=tmp_path / "reports",
            endpoints=lambda _r, _s: LabEndpoints(server + "/2", server + "/0", "127.0.0.1", server + "/1"),
        )  # fmt: skip
    finally:
        _stop(proc)
    by_name = summaries["s01"]["by_name"]
    via_redis = by_name["labapp.tasks.pay_via_redis [payments_redis] via redis"]
    via_rabbit = by_name["labapp.tasks.pay [payments]"]
    assert via_redis["requests"] > 0 and via_redis["failures"] == 0 and via_redis["rps"] > 0, by_name
    assert via_rabbit["requests"] > 0 and via_rabbit["failures"] == via_rabbit["requests"], by_name
