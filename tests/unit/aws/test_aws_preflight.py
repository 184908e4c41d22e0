"""Preflight against moto_server: one refusal listing every problem, before anything exists.

moto_server has no EC2 quotas (its service-quotas backend serves only VPC quotas), so
the service-quotas client, and only that one, is a botocore Stubber; everything
else (STS, images, instance types, zone offerings, running instances) is moto.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import boto3
import pytest
from aws_helpers import DEBIAN_AMD64, DEBIAN_ARM64, REGION, quota_client, ssh_key, write_roster

from labkit.aws.preflight import PreflightError, check_or_raise, preflight, run_preflight
from labkit.roster import Roster, Student, load_roster

ROLES = ["broker", "worker"]  # queue-segregation's topology


def roster_with(tmp_path: Path, students: int = 3, **aws_extra: str) -> Roster:
    return load_roster(write_roster(tmp_path / "cohort", students, aws_extra=aws_extra))


def test_a_good_cohort_passes_and_resolves_image_and_zone(session: boto3.Session, tmp_path: Path) -> None:
    roster = roster_with(tmp_path)
    result = run_preflight(roster, session, quotas_client=quota_client(32), roles=ROLES)
    assert result.problems == []
    assert result.ami_id == DEBIAN_AMD64, "the newest Debian 12 amd64 image of owner 136693071363"
    assert result.availability_zone == f"{REGION}a"
    assert result.architecture == "x86_64" and result.vcpus_per_host == 2 and result.hosts == 6


def test_arm_instance_types_get_the_arm_image(session: boto3.Session, tmp_path: Path) -> None:
    roster = roster_with(tmp_path, instance_type="t4g.small")
    result = run_preflight(roster, session, quotas_client=quota_client(32), roles=ROLES)
    assert result.problems == [] and result.ami_id == DEBIAN_ARM64


def test_one_message_lists_quota_missing_image_and_bad_key(session: boto3.Session, tmp_path: Path) -> None:
    roster = roster_with(tmp_path, ami="ami-0000000000000dead")
    # The roster loader already rejects a malformed key; preflight checks again for rosters built in code.
    broken = Student(id="s001", name="Broken", ssh_public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK")
    roster = dataclasses.replace(roster, students=(roster.students[0], broken, roster.students[2]))

    with pytest.raises(PreflightError) as caught:
        check_or_raise(roster, session, quotas_client=quota_client(4), roles=ROLES)

    problems = caught.value.problems
    assert len(problems) == 3, problems
    message = str(caught.value)
    assert "3 problem(s); nothing was created" in message
    assert "students (id 's001'): ssh_public_key: malformed SSH public key" in message
    assert "aws.ami: ami-0000000000000dead does not exist in eu-west-1" in message
    assert "vCPU quota: the cohort needs 12 vCPUs (3 students x 2 hosts x 2 vCPUs of t3.small)" in message
    assert "quota (L-1216C47A) in eu-west-1 is 4" in message


def test_running_instances_count_against_the_quota_but_the_cohorts_own_do_not(
    session: boto3.Session, tmp_path: Path
) -> None:
    ec2 = session.client("ec2")
    # 4 x t3.small = 8 vCPUs already running elsewhere in the account.
    ec2.run_instances(ImageId=DEBIAN_AMD64, InstanceType="t3.small", MinCount=4, MaxCount=4)
    # 2 hosts of this very cohort (a re-run that grows the class) are part of its need.
    own = [{"Key": "managed_by", "Value": "labkit"}, {"Key": "cohort", "Value": "demo"}]
    ec2.run_instances(
        ImageId=DEBIAN_AMD64,
        InstanceType="t3.small",
        MinCount=2,
        MaxCount=2,
        TagSpecifications=[{"ResourceType": "instance", "Tags": own}],
    )
    roster = roster_with(tmp_path)  # needs 12 vCPUs

    assert preflight(roster, session, quotas_client=quota_client(20), roles=ROLES) == []
    problems = preflight(roster, session, quotas_client=quota_client(19), roles=ROLES)
    assert len(problems) == 1 and "and 8 already run" in problems[0] and "at least 20" in problems[0]


def test_the_load_generator_counts_against_the_quota_and_must_match_the_labs_architecture(
    session: boto3.Session, tmp_path: Path
) -> None:
    roster = load_roster(
        write_roster(tmp_path / "lg", 3, aws_extra={"load_generator": {"instance_type": "c6i.large"}})
    )
    result = run_preflight(roster, session, quotas_client=quota_client(32), roles=ROLES)
    assert result.problems == [] and result.generator_vcpus == 2
    problems = preflight(roster, session, quotas_client=quota_client(13), roles=ROLES)  # needs 12 + 2
    assert (
        len(problems) == 1
        and "needs 14 vCPUs" in problems[0]
        and "plus 2 of the load generator" in problems[0]
    )
    arm = load_roster(
        write_roster(tmp_path / "arm", 1, aws_extra={"load_generator": {"instance_type": "t4g.large"}})
    )
    problems = preflight(arm, session, quotas_client=quota_client(32), roles=ROLES)
    assert problems == [
        "aws.load_generator.instance_type: t4g.large does not run x86_64, the labs' architecture (t3.small). "
        "Fix: pick a type of the same architecture."
    ]
    bad = load_roster(
        write_roster(tmp_path / "bad", 1, aws_extra={"load_generator": {"instance_type": "c6i.huge"}})
    )
    problems = preflight(bad, session, quotas_client=quota_client(32), roles=ROLES)
    assert (
        len(problems) == 1
        and "aws.load_generator.instance_type: 'c6i.huge' is not an instance type" in problems[0]
    )


def test_unreadable_quota_is_a_problem_not_a_silent_pass(session: boto3.Session, tmp_path: Path) -> None:
    problems = preflight(roster_with(tmp_path), session, quotas_client=quota_client(None), roles=ROLES)
    assert len(problems) == 1 and "could not read L-1216C47A" in problems[0]


def test_unknown_instance_type_and_zone(session: boto3.Session, tmp_path: Path) -> None:
    roster = roster_with(tmp_path, instance_type="t3.gigantic")
    problems = preflight(roster, session, quotas_client=quota_client(64), roles=ROLES)
    assert any("aws.instance_type: 't3.gigantic' is not an instance type in eu-west-1" in p for p in problems)

    roster = roster_with(tmp_path, availability_zone="eu-west-1z")
    problems = preflight(roster, session, quotas_client=quota_client(64), roles=ROLES)
    assert problems == [
        "aws.availability_zone: 'eu-west-1z' is not an available zone of eu-west-1. "
        "Fix: use one of: eu-west-1a, eu-west-1b, eu-west-1c."
    ]


def test_ec2_rejects_ecdsa_keys_so_preflight_does(session: boto3.Session, tmp_path: Path) -> None:
    roster = roster_with(tmp_path)
    ecdsa = Student(id="s002", name="Curve", ssh_public_key=ssh_key(7, "ecdsa-sha2-nistp256"))
    roster = dataclasses.replace(roster, students=(*roster.students[:2], ecdsa))
    problems = preflight(roster, session, quotas_client=quota_client(64), roles=ROLES)
    assert problems == [
        "students (id 's002'): ssh_public_key: EC2 key pairs accept only ssh-ed25519 or ssh-rsa keys, "
        "not ecdsa-sha2-nistp256. Fix: ask the student for an ed25519 key (ssh-keygen -t ed25519)."
    ]


def test_missing_credentials_stop_early_with_one_clear_problem(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    problems = preflight(roster_with(tmp_path), boto3.Session(region_name=REGION), roles=ROLES)
    assert len(problems) == 1 and problems[0].startswith("AWS credentials: none found")


def test_the_example_aws_roster_passes_preflight(session: boto3.Session) -> None:
    roster = load_roster(Path(__file__).resolve().parents[3] / "inventories" / "aws-example")
    assert roster.target == "aws" and len(roster.students) == 3
    assert preflight(roster, session, quotas_client=quota_client(32)) == []
