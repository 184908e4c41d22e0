"""Safe state: atomic file writes and the per-cohort lock.

A command that changes a cohort (its hosts, their configuration, its reports) holds the cohort's lock for its
whole run; a second one waits for it and says which command holds it. The lock is an ``flock`` on
``inventories/<cohort>/.labkit.lock``: the kernel releases it when its holder exits, however it exits, so a
crashed command never leaves a cohort locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path


class PlanRefused(RuntimeError):
    """A plan removes or replaces hosts (and the students' work on them) and the instructor did not say yes."""


def atomic_write(path: Path, text: str, mode: int | None = None) -> None:
    """Write ``text`` to ``path`` so a reader sees the old or the new file, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)


def lock_path(folder: Path) -> Path:
    return Path(folder) / ".labkit.lock"


def holder(folder: Path) -> dict | None:
    """Who holds (or last held) the cohort's lock: {"pid", "command", "since"}."""
    try:
        return json.loads(lock_path(folder).read_text() or "null")
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def cohort_lock(
    folder: Path, command: str, out: Callable[[str], None] = print, timeout: float | None = None
) -> Iterator[None]:
    """Hold ``folder``'s cohort lock while the block runs; wait (saying for whom) while another command holds it.

    ``timeout`` (seconds) turns the wait into a refusal (RuntimeError naming the holder) after that long.
    """
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = holder(folder) or {}
            what = f"`{other.get('command', '?')}` (pid {other.get('pid', '?')}, since {other.get('since', '?')})"
            if timeout is not None and timeout <= 0:
                raise RuntimeError(
                    f"{folder}: cohort busy: {what} holds its lock; try again when it ends"
                ) from None
            out(f"{folder}: waiting for {what} to finish (it holds the cohort's lock)")
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{folder}: cohort still busy after {timeout:.0f} s: {what}"
                        ) from None
                    time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.pwrite(
            fd,
            json.dumps({"pid": os.getpid(), "command": command, "since": time.strftime("%H:%M:%S")}).encode(),
            0,
        )
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock
