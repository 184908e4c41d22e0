"""Terraform for an AWS cohort: where its files live and how terraform is called.

The kit's runner (labkit.terraform.run_terraform) is imported lazily; when it is not
there, a plain ``terraform`` binary on PATH is used with the same arguments.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labkit import paths
from labkit.roster import Roster

ENV_DIR = paths.TERRAFORM / "envs" / "aws"

Runner = Callable[..., int]


@dataclasses.dataclass(frozen=True)
class CohortFiles:
    data_dir: Path  # TF_DATA_DIR: providers and backend settings of this cohort only
    state: Path
    tfvars: Path
    lab_hosts: Path
    controller_key: Path


def cohort_paths(roster: Roster) -> CohortFiles:
    folder = roster.folder
    return CohortFiles(
        data_dir=folder / ".terraform",
        state=folder / "terraform.tfstate",
        tfvars=folder / "fleet.auto.tfvars.json",
        lab_hosts=folder / "lab_hosts.json",
        controller_key=folder / ".ssh" / "id_ed25519",
    )


def _terraform_binary(env_dir: Path, args: list[str], data_dir: Path, env: dict | None = None) -> int:
    binary = shutil.which("terraform")
    if binary is None:
        raise RuntimeError("no terraform on PATH and labkit.terraform is not available")
    full_env = {**os.environ, "TF_DATA_DIR": str(data_dir), "TF_IN_AUTOMATION": "1", **(env or {})}
    return subprocess.run([binary, f"-chdir={env_dir}", *args], env=full_env, check=False).returncode


def default_runner() -> Runner:
    try:
        from labkit.terraform import run_terraform  # the kit's runner, when present
    except ImportError:
        return _terraform_binary
    return run_terraform


def run(roster: Roster, args: list[str], *, runner: Runner | None = None, env: dict | None = None) -> int:
    files = cohort_paths(roster)
    files.data_dir.mkdir(parents=True, exist_ok=True)
    result = (runner or default_runner())(ENV_DIR, list(args), files.data_dir, env)
    # labkit.terraform.run_terraform returns a CompletedProcess; plain runners an exit code.
    return int(getattr(result, "returncode", result))


def init_args(roster: Roster) -> list[str]:
    return ["init", "-input=false", "-reconfigure", f"-backend-config=path={cohort_paths(roster).state}"]


def apply_args(roster: Roster) -> list[str]:
    return ["apply", "-auto-approve", "-input=false", f"-var-file={cohort_paths(roster).tfvars}"]


def state_output(state_file: Path, name: str) -> Any:
    """An output's value read from a local state file (no provider or binary needed)."""
    state = json.loads(state_file.read_text())
    try:
        return state["outputs"][name]["value"]
    except KeyError as exc:
        raise KeyError(f"{state_file}: no output {name!r}; did terraform apply finish?") from exc
