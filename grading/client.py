"""The grader's own producer and result reader, run on the controller (no student code involved).

It publishes tasks by name to a named queue with the grader's own RabbitMQ user and fresh random task ids (uuid4,
like any producer's, so the lab's code cannot single out a probe), and reads their outcomes straight from the lab's Redis result backend. Timings are
taken with the controller's clock. A refused login is :class:`GraderLockedOut`, a silent service
:class:`LabUnreachable`: the report says so instead of "failed".
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from grading import timeline
from grading.facts import GraderLockedOut, LabUnreachable

GRADER_USER = "labkit-grader"
FINAL = {"SUCCESS", "FAILURE", "REVOKED"}


@dataclass
class Outcome:
    id: str
    state: str  # PENDING (nothing stored yet), STARTED, RETRY, SUCCESS, FAILURE, REVOKED
    result: Any = None
    at: float | None = None  # controller time the outcome was first seen


@dataclass
class GraderClient:
    broker_address: str
    redis_address: str
    grader_password: str = field(repr=False)  # never in a traceback or a report
    redis_password: str = field(repr=False)
    vhost: str = "lab"
    nonce: str = field(default_factory=lambda: secrets.token_hex(4))
    _app: Any = field(default=None, repr=False)
    _redis: Any = field(default=None, repr=False)
    _count: int = 0
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def for_lab(cls, lab) -> GraderClient:
        return cls(
            broker_address=lab.endpoint("rabbitmq"),
            redis_address=lab.endpoint("redis"),
            grader_password=lab.credential("grader"),
            redis_password=lab.credential("redis"),
        )

    # ------------------------------------------------------------------ connections

    @property
    def app(self):
        if self._app is None:
            from celery import Celery

            url = f"amqp://{GRADER_USER}:{quote(self.grader_password, safe='')}@{self.broker_address}:5672/{self.vhost}"
            app = Celery("labkit-grader", broker=url, set_as_current=False)
            app.conf.update(
                broker_connection_timeout=8,
                broker_connection_retry=False,
                broker_connection_max_retries=1,
                task_create_missing_queues=True,
                broker_heartbeat=0,
            )
            self._app = app
            self._check_login()
        return self._app

    def _check_login(self) -> None:
        try:
            with self._app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=8)
        except Exception as exc:  # kombu raises AccessRefused or OperationalError wrapping it
            text = f"{type(exc).__name__}: {exc}"
            if "ACCESS_REFUSED" in text or "AccessRefused" in text or "403" in text:
                raise GraderLockedOut(
                    f"RabbitMQ at {self.broker_address} refused the grader's user ({text[:160]})"
                ) from None
            raise LabUnreachable(
                f"RabbitMQ at {self.broker_address}:5672 did not answer ({text[:160]})"
            ) from None

    @property
    def redis(self):
        if self._redis is None:
            import redis

            client = redis.Redis(host=self.redis_address, port=6379, password=self.redis_password, protocol=2,
                                 socket_timeout=10, socket_connect_timeout=8)  # fmt: skip
            try:
                client.ping()
            except redis.exceptions.AuthenticationError as exc:
                raise GraderLockedOut(
                    f"Redis at {self.redis_address} refused the lab password ({exc})"
                ) from None
            except redis.exceptions.ResponseError as exc:
                if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                    raise GraderLockedOut(
                        f"Redis at {self.redis_address} refused the lab password ({exc})"
                    ) from None
                raise
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                raise LabUnreachable(f"Redis at {self.redis_address}:6379 did not answer ({exc})") from None
            self._redis = client
        return self._redis

    def redis_db(self, db: int):
        """Another database of the lab's Redis with the same login (the Redis broker's messages live in db 1)."""
        import redis

        return redis.Redis(host=self.redis_address, port=6379, password=self.redis_password, db=db, protocol=2,
                           socket_timeout=10, socket_connect_timeout=8)  # fmt: skip

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
        if self._app is not None:
            self._app.close()

    # ------------------------------------------------------------------ publishing and outcomes

    def queue_stats(self) -> dict[str, dict[str, int]]:
        """Depths and counters of the lab's queues (grading.facts.queue_stats) with the grader's own user."""
        from grading.facts import queue_stats

        return queue_stats(self.broker_address, GRADER_USER, self.grader_password, self.vhost)

    def new_id(self, label: str) -> str:
        """A fresh task id, indistinguishable from a producer's own (a uuid4), so the lab's code cannot tell a
        grader's probe from real work; ``labels`` keeps what each was for."""
        self._count += 1
        task_id = str(uuid.uuid4())
        self.labels[task_id] = f"{label}-{self._count}"
        return task_id

    def send(self, task: str, queue: str, args=(), kwargs=None, label: str = "probe", **options) -> str:
        """Publish ``task`` to ``queue`` with a fresh grader id; returns the id."""
        task_id = self.new_id(label)
        self.app.send_task(task, args=list(args), kwargs=kwargs or {}, queue=queue, task_id=task_id,
                           expires=600, **options)  # fmt: skip
        return task_id

    def outcomes(self, ids: list[str]) -> dict[str, Outcome]:
        keys = [f"celery-task-meta-{i}" for i in ids]
        out = {}
        now = time.monotonic()
        for task_id, raw in zip(ids, self.redis.mget(keys) if keys else [], strict=True):
            if raw is None:
                out[task_id] = Outcome(task_id, "PENDING")
            else:
                meta = json.loads(raw)
                out[task_id] = Outcome(task_id, meta.get("status", "?"), meta.get("result"), now)
        return out

    def wait(self, ids: list[str], timeout: float, interval: float = 0.05) -> dict[str, Outcome]:
        """Poll until every id is final (SUCCESS, FAILURE, REVOKED) or ``timeout``; first-seen times kept."""
        deadline = time.monotonic() + timeout
        seen: dict[str, Outcome] = {}
        while True:
            for task_id, o in self.outcomes(
                [i for i in ids if i not in seen or seen[i].state not in FINAL]
            ).items():
                if o.state in FINAL or task_id not in seen:
                    seen[task_id] = o
            if all(seen.get(i) and seen[i].state in FINAL for i in ids) or time.monotonic() >= deadline:
                return {i: seen.get(i) or Outcome(i, "PENDING") for i in ids}
            time.sleep(interval)

    def round_trip(
        self, task: str, queue: str, args=(), timeout: float = 10.0, label: str = "probe"
    ) -> float | None:
        """Seconds from publish to a stored SUCCESS, by the controller's clock (None if not in ``timeout``)."""
        start = time.monotonic()
        task_id = self.send(task, queue, args, label=label)
        outcome = self.wait([task_id], timeout, interval=0.005)[task_id]
        return outcome.at - start if outcome.state == "SUCCESS" and outcome.at else None

    def revoke(self, ids: list[str]) -> None:
        """Tell the workers to drop these ids (the grader's leftovers), so they never run later."""
        if ids:
            with contextlib.suppress(Exception):  # best effort: a lab without workers has nobody to tell
                self.app.control.revoke(ids)


class Ledger:
    """Publish N tasks with known ids, then count their outcomes by a deadline ("nothing lost" checks)."""

    def __init__(self, client: GraderClient, task: str, queue: str, label: str = "ledger"):
        self.client, self.task, self.queue, self.label = client, task, queue, label
        self.ids: list[str] = []

    def publish(self, n: int, args=(), kwargs=None) -> list[str]:
        new = [self.client.send(self.task, self.queue, args, kwargs, label=self.label) for _ in range(n)]
        self.ids += new
        timeline.mark("ledger", f"published {n} {self.task} to {self.queue}")
        return new

    def settle(self, timeout: float) -> dict[str, list[str]]:
        """{state: [ids]} once every task is final, or at ``timeout`` (PENDING/STARTED/RETRY then mean lost or late)."""
        by_state: dict[str, list[str]] = {}
        for task_id, o in self.client.wait(self.ids, timeout, interval=0.2).items():
            by_state.setdefault(o.state, []).append(task_id)
        counts = ", ".join(f"{len(ids)} {state}" for state, ids in sorted(by_state.items()))
        timeline.mark("ledger", f"settled {len(self.ids)}: {counts or 'none'}")
        return by_state
