"""Small helpers for running system commands with clear errors."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Sequence


class CommandError(RuntimeError):
    pass


def run(cmd: Sequence[str], check: bool = True, quiet: bool = False, **kw) -> subprocess.CompletedProcess:
    """Run ``cmd``; on failure raise CommandError with the command and its stderr."""
    kw.setdefault("text", True)
    if quiet:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
    proc = subprocess.run(list(cmd), check=False, **kw)
    if check and proc.returncode != 0:
        err = (proc.stderr or "").strip() if isinstance(proc.stderr, str) else ""
        raise CommandError(f"command failed ({proc.returncode}): {shlex.join(cmd)}\n{err}")
    return proc


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def read_pid(path: os.PathLike) -> int | None:
    try:
        return int(open(path).read().strip())
    except (OSError, ValueError):
        return None


def stop_pid(pid: int, timeout: float = 30.0, sig: int = signal.SIGTERM) -> bool:
    """Send ``sig``, wait up to ``timeout`` s, then SIGKILL. True if it had been running."""
    if not pid_alive(pid):
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            _reap(pid)
            return True
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        if not pid_alive(pid):
            break
        time.sleep(0.1)
    _reap(pid)
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def kill_until_gone(find: Callable[[], list[int]], tries: int, interval: float) -> list[int]:
    """SIGKILL every pid ``find`` returns, round after round, until it returns none (at most ``tries`` rounds, with
    ``interval`` seconds between); the pids still there at the end."""
    for _ in range(tries):
        left = find()
        if not left:
            return []
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(interval)
    return find()
