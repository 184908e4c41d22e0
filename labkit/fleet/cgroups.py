"""One control group per lab host: memory, task and CPU limits, a closed device policy, and the
cgroup that systemd-nspawn hands to the host's own systemd (required with a private user namespace).

The controller may run cgroup v1 with a named ``systemd`` hierarchy and a cgroup2 at
``/sys/fs/cgroup/unified`` (these machines: no systemd as PID 1), or cgroup2 only (a stock
Debian 12 with systemd). Each host's group is made under the caller's own group in every
hierarchy; ``enter`` (run in the nspawn child before exec) moves the child into all of them,
so the host and everything in it is counted against its limits.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
GROUP = "labkit"
# What systemd inside a host needs: null, zero, full, random, urandom, tty, console, ptmx, ptys. Nothing else:
# no disk, no raw memory, no device a student could open to reach the controller.
DEVICES_ALLOWED = (
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
)


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    tasks: int
    cpu_weight: int  # 1-10000, 100 = an equal share (cgroup v2 scale)


def parse_size(text: str | int) -> int:
    if isinstance(text, int):
        return text
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    t = str(text).strip().lower().removesuffix("ib").removesuffix("b")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def _own_paths() -> dict[str, str]:
    """hierarchy name -> this process's group path in it."""
    out: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else ["unified"]:
            out[c] = path
    return out


def hierarchies() -> dict[str, Path]:
    """Mount point of each hierarchy we use: systemd (named v1), unified (v2), pids, memory, cpu, devices."""
    mounts: dict[str, Path] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if not rfields:
            continue
        point, fstype, opts = Path(fields[4]), rfields[0], rfields[-1].split(",")
        if fstype == "cgroup2":
            mounts["unified"] = point
        elif fstype == "cgroup":
            for o in opts:
                if o in ("pids", "memory", "cpu", "devices"):
                    mounts[o] = point
                elif o == "name=systemd":
                    mounts["name=systemd"] = point
    return mounts


def host_groups(name: str) -> dict[str, Path]:
    own = _own_paths()
    out = {}
    for key, mount in hierarchies().items():
        base = own.get(key, "/")
        out[key] = mount / base.lstrip("/") / GROUP / name
    return out


def create(name: str, limits: Limits) -> dict[str, Path]:
    """Make the host's groups (idempotent) and set its limits; return them for :func:`enter`."""
    groups = host_groups(name)
    v2_only = set(groups) == {"unified"}
    for key, path in groups.items():
        if key == "unified" and v2_only:
            # cgroup2 only: the controllers must be enabled on the way down.
            for parent in reversed([path.parent, *path.parent.parents]):
                if parent == ROOT or not str(parent).startswith(str(ROOT)):
                    continue
                parent.mkdir(exist_ok=True)
            for parent in [p for p in (path.parent, path.parent.parent) if p != ROOT.parent]:
                with contextlib.suppress(OSError):
                    (parent / "cgroup.subtree_control").write_text("+memory +pids +cpu")
        path.mkdir(parents=True, exist_ok=True)
    _write(groups.get("memory"), "memory.limit_in_bytes", str(limits.memory_bytes))
    _write(groups.get("memory"), "memory.memsw.limit_in_bytes", str(limits.memory_bytes), optional=True)
    _write(groups.get("pids"), "pids.max", str(limits.tasks))
    _write(groups.get("cpu"), "cpu.shares", str(max(2, limits.cpu_weight * 1024 // 100)))
    if v2_only:
        _write(groups["unified"], "memory.max", str(limits.memory_bytes))
        _write(groups["unified"], "memory.swap.max", "0", optional=True)
        _write(groups["unified"], "pids.max", str(limits.tasks))
        _write(groups["unified"], "cpu.weight", str(limits.cpu_weight))
    if "devices" in groups:
        _write(groups["devices"], "devices.deny", "a")
        for rule in DEVICES_ALLOWED:
            _write(groups["devices"], "devices.allow", rule)
    return groups


def _write(group: Path | None, knob: str, value: str, optional: bool = False) -> None:
    if group is None:
        return
    try:
        (group / knob).write_text(value)
    except OSError:
        if not optional:
            raise


def enter(groups: dict[str, Path]) -> None:
    """Move the calling process into every group (use as the nspawn child's preexec_fn)."""
    pid = str(os.getpid())
    for path in groups.values():
        (path / "cgroup.procs").write_text(pid)


def pids(name: str) -> list[int]:
    """Every process in the host's (or, with a cohort name, every host's) groups, at any depth: the processes of
    its containers even when their systemd-nspawn is gone (killed, crashed) and they were re-parented."""
    found: set[int] = set()
    for path in host_groups(name).values():
        if path.exists():
            for procs in path.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    found.update(int(x) for x in procs.read_text().split())
    return sorted(found)


def remove(name: str) -> list[str]:
    """Remove the host's groups, deepest first; return those that could not be removed (still busy)."""
    left = []
    for path in host_groups(name).values():
        if not path.exists():
            continue
        for d in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        try:
            path.rmdir()
        except OSError:
            left.append(str(path))
    return left


def systemd_manages_cgroups() -> bool:
    """True on a controller booted with systemd (a stock Debian 12): there, systemd-run makes the host's group."""
    return Path("/run/systemd/system").is_dir()


def systemd_scope(unit: str, limits: Limits) -> list[str]:
    """Command prefix that runs nspawn in a transient scope with the host's limits, delegated to the host's
    systemd, and the same closed device list (not exercised on the kit's own machines, which have no systemd)."""
    allow = {"c 1:3": "/dev/null", "c 1:5": "/dev/zero", "c 1:7": "/dev/full", "c 1:8": "/dev/random",
             "c 1:9": "/dev/urandom", "c 5:0": "/dev/tty", "c 5:1": "/dev/console", "c 5:2": "/dev/ptmx"}  # fmt: skip
    devices = [f"--property=DeviceAllow={path} rwm" for path in allow.values()] + [
        "--property=DeviceAllow=char-pts rwm"
    ]
    return [
        "systemd-run", "--scope", "--quiet", "--collect", f"--unit={unit}",
        "--property=Delegate=yes", f"--property=MemoryMax={limits.memory_bytes}", "--property=MemorySwapMax=0",
        f"--property=TasksMax={limits.tasks}", f"--property=CPUWeight={limits.cpu_weight}",
        "--property=DevicePolicy=closed", *devices, "--",
    ]  # fmt: skip


def usage(name: str) -> dict[str, int]:
    """Current memory (bytes) and task count of a host, for status and tests."""
    groups = host_groups(name)
    out = {}
    for key, knob in (("memory", "memory.usage_in_bytes"), ("pids", "pids.current")):
        with contextlib.suppress(OSError, KeyError, ValueError):
            out[key] = int((groups[key] / knob).read_text())
    return out
