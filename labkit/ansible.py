"""Thin adapter around ansible-runner: every playbook run goes through here."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from labkit import paths
from labkit.inventory import cohort_files


@dataclass
class PlaybookResult:
    rc: int
    status: str
    changed: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    ok: dict[str, int] = field(default_factory=dict)

    @property
    def total_changed(self) -> int:
        return sum(self.changed.values())


def run_playbook(
    folder: Path,
    playbook: str,
    limit: str | None = None,
    extravars: dict | None = None,
    out: Callable[[str], None] = print,
    quiet: bool = False,
) -> PlaybookResult:
    import ansible_runner

    inv = cohort_files(folder)["hosts"]
    if not inv.is_file():
        raise FileNotFoundError(f"{inv}: no inventory. Fix: run `labkit fleet up {folder}` first.")
    cmdline = f"--limit {limit}" if limit else None
    venv_bin = str(Path(sys.executable).parent)
    # ansible-playbook and its helpers come from the kit's venv even when it is not activated.
    if venv_bin not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
    with tempfile.TemporaryDirectory(prefix="labkit-runner-") as pdd:
        r = ansible_runner.run(
            private_data_dir=pdd,
            project_dir=str(paths.REPO),
            playbook=str(paths.PLAYBOOKS / playbook),
            inventory=str(inv.resolve()),
            cmdline=cmdline,
            extravars=extravars or {},
            envvars={
                "ANSIBLE_CONFIG": str(paths.REPO / "ansible.cfg"),
                "ANSIBLE_NOCOLOR": "0" if sys.stdout.isatty() else "1",
            },
            quiet=quiet,
            suppress_env_files=True,
        )
        stats = r.stats or {}
    res = PlaybookResult(
        rc=r.rc,
        status=r.status,
        changed=dict(stats.get("changed", {})),
        failed={**stats.get("failures", {}), **stats.get("dark", {})},
        ok=dict(stats.get("ok", {})),
    )
    return res
