"""A Locust user that drives a Celery lab: publish a task, wait for its result.

Every round trip fires one Locust request event (request_type ``celery``, name
``<task> [<queue>]``, response time in ms, the exception on failure or timeout), so
Locust's stats, CSV files and ``--exit-code-on-error`` work as for HTTP users.

Configuration comes from the environment, so ``labkit load`` and a plain ``locust``
command line behave the same:

- ``LABKIT_BROKER_URL``      e.g. amqp://s01:<pw>@10.250.1.10:5672/lab
- ``LABKIT_RESULT_BACKEND``  e.g. redis://:<pw>@10.250.1.10:6379/0
- ``LABKIT_REDIS_BROKER_URL`` Redis as a broker, for load tasks with ``broker: redis`` (e.g. .../1)
- ``LABKIT_SCENARIO``        scenario folder name (the task mix and timeout come from its ``load``)
- ``LABKIT_RESULT_TIMEOUT``  optional override of ``load.result_timeout`` (seconds)
"""

from __future__ import annotations

import contextlib
import csv
import gc
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery
from locust import User, between, constant, events
from locust import stats as locust_stats

from labkit.scenario import load_request_name, load_scenario

DEFAULT_RESULT_TIMEOUT = 10.0


@events.quitting.add_listener
def _collect_finished_greenlets(environment, **_kwargs) -> None:
    # Without this, Locust prints "greenlet is being finalized" errors at exit for the
    # greenlets Celery's result drainer leaves behind. (Doing it in test_stop hangs.)
    gc.collect()


# Distributed mode (labkit load --workers N): each process says what it did, so the kit can prove that the master
# had N workers connected and that every worker sent requests. Paths come from the environment; unset = no report.
_sent = {"requests": 0}


@events.request.add_listener
def _count_request(**_kwargs) -> None:
    _sent["requests"] += 1


@events.test_start.add_listener
def _report_workers_at_start(environment, **_kwargs) -> None:
    path = os.environ.get("LABKIT_LOAD_MASTER_REPORT")
    runner = environment.runner
    if path and runner is not None and type(runner).__name__ == "MasterRunner":
        with open(path, "w") as f:
            json.dump({"workers_connected": runner.worker_count}, f)


@events.quitting.add_listener
def _report_worker_requests(environment, **_kwargs) -> None:
    path = os.environ.get("LABKIT_LOAD_WORKER_REPORT")
    if path and type(environment.runner).__name__ == "WorkerRunner":
        with open(path, "w") as f:
            json.dump({"requests": _sent["requests"], "pid": os.getpid()}, f)


def _write_final_csv_rows(writer: locust_stats.StatsCSVFileWriter) -> None:
    for handle, write in (
        (writer.requests_csv_filehandle, writer.requests_csv),
        (writer.failures_csv_filehandle, writer.failures_csv),
        (writer.exceptions_csv_filehandle, writer.exceptions_csv),
    ):
        handle.seek(0)
        handle.truncate()
        write(csv.writer(handle))


def _close_csv_files_after_final_write(original):
    def close_files(self) -> None:
        try:
            _write_final_csv_rows(self)
        finally:
            original(self)

    close_files.labkit_final_write = True
    return close_files


# Locust rewrites its --csv files once a second and closes them at exit without a last
# write, so load_stats.csv would miss the final second of the run (and disagree with the
# printed summary). Write the final numbers once more just before the files close.
if not getattr(locust_stats.StatsCSVFileWriter.close_files, "labkit_final_write", False):
    locust_stats.StatsCSVFileWriter.close_files = _close_csv_files_after_final_write(
        locust_stats.StatsCSVFileWriter.close_files
    )


@dataclass(frozen=True)
class TaskSpec:
    """One entry of a scenario's load task mix."""

    name: str
    queue: str | None
    weight: int
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] | None = None
    broker: str = "rabbitmq"  # or "redis": the lab's Redis used as a broker

    @property
    def request_name(self) -> str:
        return load_request_name(self.name, self.queue, self.broker)


@dataclass(frozen=True)
class LoadProfile:
    tasks: tuple[TaskSpec, ...]
    result_timeout: float
    wait_time: tuple[float, float] | None


def load_profile(scenario: str, environ: dict[str, str] | None = None) -> LoadProfile:
    """The task mix and result timeout of ``scenario``; LABKIT_RESULT_TIMEOUT overrides the timeout."""
    env = os.environ if environ is None else environ
    load = load_scenario(scenario, strict=False).load
    tasks = tuple(
        TaskSpec(
            name=t["name"],
            queue=t.get("queue"),
            weight=int(t.get("weight", 1)),
            args=tuple(t.get("args", ())),
            kwargs=t.get("kwargs"),
            broker=t.get("broker", "rabbitmq"),
        )
        for t in load["tasks"]
    )
    if not tasks:
        raise ValueError(f"scenario {scenario!r}: load.tasks is empty")
    timeout = float(env.get("LABKIT_RESULT_TIMEOUT") or load.get("result_timeout", DEFAULT_RESULT_TIMEOUT))
    wait = load.get("wait_time")
    return LoadProfile(tasks=tasks, result_timeout=timeout, wait_time=tuple(wait) if wait else None)


def _required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set; labkit load sets it (see loadtests/celery_user.py)")
    return value


_apps: dict[tuple[str, str], Celery] = {}


def celery_app(broker_url: str, result_backend: str) -> Celery:
    """One producer app per process and broker, shared by all simulated users."""
    key = (broker_url, result_backend)
    if key not in _apps:
        app = Celery("labkit-load", broker=broker_url, backend=result_backend, set_as_current=False)
        app.conf.update(
            task_serializer="json",
            result_serializer="json",
            accept_content=["json"],
            broker_connection_retry_on_startup=True,
            broker_connection_timeout=5,
            result_expires=600,
        )
        _apps[key] = app
    return _apps[key]


class CeleryUser(User):
    """Publishes Celery tasks by name and waits for each result through the result backend.

    Subclasses set ``tasks`` (e.g. ``tasks = profile_tasks(profile)``); the app and the
    timeout come from the environment when the first user starts.
    """

    abstract = True
    wait_time = constant(0)
    result_timeout: float = DEFAULT_RESULT_TIMEOUT

    def on_start(self) -> None:
        self.app = celery_app(_required_env("LABKIT_BROKER_URL"), _required_env("LABKIT_RESULT_BACKEND"))

    def app_for(self, spec: TaskSpec) -> Celery:
        """The producer of the broker a task goes through (RabbitMQ unless the profile says ``broker: redis``)."""
        if spec.broker == "redis":
            return celery_app(
                _required_env("LABKIT_REDIS_BROKER_URL"), _required_env("LABKIT_RESULT_BACKEND")
            )
        return self.app

    def call(self, spec: TaskSpec) -> Any:
        """Send one task and wait for its result; report it to Locust. Never raises."""
        start = time.perf_counter()
        result_value, exception, async_result = None, None, None
        try:
            async_result = self.app_for(spec).send_task(
                spec.name,
                args=list(spec.args),
                kwargs=spec.kwargs or {},
                queue=spec.queue,
                # The lab's workers declare its queues, with the lab's arguments (a quorum queue, a dead-letter
                # policy's target): a producer declaring them too, as a classic queue, would be refused.
                declare=[],
                # A task nobody picked up in time is stale: a worker that starts
                # consuming the queue later should discard it, not work through a backlog.
                expires=self.result_timeout,
            )
            result_value = async_result.get(timeout=self.result_timeout, propagate=True)
        except Exception as exc:  # every failure becomes a Locust failure
            exception = exc
            if async_result is not None:
                self._stop_waiting(async_result)
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        try:
            length = len(json.dumps(result_value))
        except (TypeError, ValueError):
            length = 0
        self.environment.events.request.fire(
            request_type="celery",
            name=spec.request_name,
            response_time=elapsed_ms,
            response_length=length,
            exception=exception,
            context={"queue": spec.queue, "task": spec.name},
        )
        return result_value

    @staticmethod
    def _stop_waiting(async_result) -> None:
        # Drop the result subscription of a task we gave up on, so they do not pile up.
        with contextlib.suppress(Exception):
            async_result.backend.remove_pending_result(async_result)


def _task_function(spec: TaskSpec) -> Callable[[CeleryUser], Any]:
    def run(user: CeleryUser) -> Any:
        return user.call(spec)

    run.__name__ = spec.request_name
    return run


def profile_tasks(profile: LoadProfile) -> dict[Callable[[CeleryUser], Any], int]:
    """Locust ``tasks`` dict (callable -> weight) for a profile's task mix."""
    return {_task_function(spec): spec.weight for spec in profile.tasks if spec.weight > 0}


def user_class_for(scenario: str, class_name: str = "ScenarioUser") -> type[CeleryUser]:
    """A concrete CeleryUser for ``scenario``'s load profile (used by scenario locustfiles)."""
    profile = load_profile(scenario)
    attrs: dict[str, Any] = {
        "abstract": False,
        "tasks": profile_tasks(profile),
        "result_timeout": profile.result_timeout,
        "profile": profile,
    }
    if profile.wait_time:
        low, high = profile.wait_time
        attrs["wait_time"] = between(float(low), float(high))
    return type(class_name, (CeleryUser,), attrs)
