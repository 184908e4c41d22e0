"""The generated amazon.aws.aws_ec2 inventory, run by ansible-inventory against moto_server.

Hosts are only listed, never contacted: an emulated instance's address is not a host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import yaml
from aws_helpers import REGION, build_cohort, build_foreign, write_roster

from labkit.aws.inventory import write_inventory
from labkit.roster import load_roster

ANSIBLE_INVENTORY = Path(sys.executable).parent / "ansible-inventory"
REPO = Path(__file__).resolve().parents[3]


def unwrap(value):
    """ansible-inventory marks tag-derived strings as {"__ansible_unsafe": text}."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


@pytest.fixture
def roster_and_file(tmp_path: Path):
    roster = load_roster(write_roster(tmp_path / "inventories" / "demo", 2))
    return roster, write_inventory(roster)


def test_inventory_file_filters_on_the_kit_tags(roster_and_file) -> None:
    roster, path = roster_and_file
    assert path == roster.folder / "aws_ec2.yml"
    config = yaml.safe_load(path.read_text())
    assert config["plugin"] == "amazon.aws.aws_ec2"
    assert config["regions"] == [REGION]
    assert config["filters"]["tag:cohort"] == "demo" and config["filters"]["tag:managed_by"] == "labkit"
    assert config["hostnames"] == ["tag:Name"]


def test_inventory_file_is_yamllint_clean(roster_and_file) -> None:
    _, path = roster_and_file
    yamllint = Path(sys.executable).parent / "yamllint"
    result = subprocess.run(
        [str(yamllint), "-c", str(REPO / ".yamllint"), "-f", "parsable", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ansible_inventory_groups_and_hostvars_match_the_local_inventory(
    session: boto3.Session, tmp_path: Path, aws: str
) -> None:
    if not ANSIBLE_INVENTORY.exists():
        pytest.skip(f"{ANSIBLE_INVENTORY} not installed")
    roster = load_roster(write_roster(tmp_path / "inventories" / "demo", 2))
    path = write_inventory(roster)
    build_cohort(
        session, "demo", ["s-01", "s02"], load_generator=True
    )  # '-' in an id becomes '_' in its group
    build_cohort(session, "other", ["s01"])
    build_foreign(session, "demo")

    env = {
        **os.environ,
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "ANSIBLE_INVENTORY_CACHE": "false",
    }
    result = subprocess.run(
        [str(ANSIBLE_INVENTORY), "-i", str(path), "--list"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    inventory = unwrap(json.loads(result.stdout))
    hostvars = inventory["_meta"]["hostvars"]

    expected_hosts = {f"demo-{s}-{r}" for s in ("s-01", "s02") for r in ("broker", "worker")}
    assert set(hostvars) == expected_hosts | {"demo-load-generator"}, result.stderr[-3000:]

    def members(group: str) -> set[str]:
        return set(inventory.get(group, {}).get("hosts", []))

    assert members("student_s_01") == {"demo-s-01-broker", "demo-s-01-worker"}
    assert members("student_s02") == {"demo-s02-broker", "demo-s02-worker"}
    assert members("role_broker") == {"demo-s-01-broker", "demo-s02-broker"}
    assert members("role_worker") == {"demo-s-01-worker", "demo-s02-worker"}
    assert members("scenario_queue_segregation") == expected_hosts
    # The load generator is in its own groups (site.yml's lab plays run on all:!bastion:!load_generator), in no
    # student's or scenario's: an ad-hoc command on a lab group never reaches it.
    assert members("load_generator") == members("role_load_generator") == {"demo-load-generator"}
    assert [
        g for g in inventory if g.startswith(("student", "scenario")) and "demo-load-generator" in members(g)
    ] == []
    assert hostvars["demo-load-generator"]["lab_role"] == "load_generator"

    host = hostvars["demo-s-01-broker"]
    assert host["lab_student"] == "s-01" and host["lab_role"] == "broker"
    assert host["lab_scenario"] == "queue-segregation" and host["lab_cohort"] == "demo"
    assert host["lab_address"] == host["private_ip_address"]
    assert host["ansible_host"] == (host.get("public_ip_address") or host["private_ip_address"])
    assert host["ansible_user"] == "admin"
    assert host["ansible_ssh_private_key_file"] == str(roster.folder / ".ssh" / "id_ed25519")
    known_hosts = roster.folder / "known_hosts"
    assert (
        host["ansible_ssh_common_args"]
        == f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=accept-new -o HashKnownHosts=no"
        " -o IdentitiesOnly=yes"
    )


def test_example_roster_is_yamllint_clean() -> None:
    yamllint = Path(sys.executable).parent / "yamllint"
    example = REPO / "inventories" / "aws-example" / "cohort.yml"
    result = subprocess.run(
        [str(yamllint), "-c", str(REPO / ".yamllint"), "-f", "parsable", str(example)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout
