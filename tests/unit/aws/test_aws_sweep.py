"""Tag-driven sweep against moto_server: everything of a cohort goes, nothing else does."""

from __future__ import annotations

import time

import boto3
from aws_helpers import CallRecorder, assert_foreign_intact, build_cohort, build_foreign

from labkit.aws import cohort_filters
from labkit.aws.teardown import KINDS, sweep

AWS_FILTER_VALUE_LIMIT = 200
FAST = {"retry_delays": (0.0, 0.1), "wait_delay": 1}


def remaining(session: boto3.Session, cohort: str) -> dict[str, int]:
    """What a describe by the cohort's kit tags still returns, per kind."""
    ec2 = session.client("ec2")
    f = cohort_filters(cohort)
    live = [{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}]
    return {
        "instances": sum(
            len(r["Instances"]) for r in ec2.describe_instances(Filters=f + live)["Reservations"]
        ),
        "launch_templates": len(ec2.describe_launch_templates(Filters=f)["LaunchTemplates"]),
        "network_interfaces": len(ec2.describe_network_interfaces(Filters=f)["NetworkInterfaces"]),
        "volumes": len(ec2.describe_volumes(Filters=f)["Volumes"]),
        "key_pairs": len(ec2.describe_key_pairs(Filters=f)["KeyPairs"]),
        "security_groups": len(ec2.describe_security_groups(Filters=f)["SecurityGroups"]),
        "subnets": len(ec2.describe_subnets(Filters=f)["Subnets"]),
        "route_tables": len(ec2.describe_route_tables(Filters=f)["RouteTables"]),
        "internet_gateways": len(ec2.describe_internet_gateways(Filters=f)["InternetGateways"]),
        "vpcs": len(ec2.describe_vpcs(Filters=f)["Vpcs"]),
    }


def test_sweep_removes_a_small_cohort_in_dependency_order(session: boto3.Session) -> None:
    made = build_cohort(session, "small", ["s01", "s02"])
    other = build_cohort(session, "neighbour", ["s01"])

    report = sweep("small", session, **FAST)

    assert report.clean, report.render()
    for kind in ("instances", "security_groups", "key_pairs", "launch_templates", "vpcs", "subnets"):
        assert sorted(report.found[kind]) == sorted(made[kind]), kind
        assert sorted(report.deleted[kind]) == sorted(made[kind]), kind
    assert report.found["internet_gateways"] == made["internet_gateways"]
    assert report.found["route_tables"] == made["route_tables"]
    assert set(remaining(session, "small").values()) == {0}, str(remaining(session, "small"))
    # Another cohort in the same account is untouched.
    left = remaining(session, "neighbour")
    assert left["instances"] == len(other["instances"]) and left["vpcs"] == 1 and left["key_pairs"] == 1
    assert "nothing left behind" in report.render()


def test_sweep_of_120_students_batches_every_call_under_the_aws_limit(session: boto3.Session) -> None:
    students = [f"st{i:03d}" for i in range(120)]
    started = time.monotonic()
    made = build_cohort(session, "big", students, launch_templates=False)
    assert len(made["instances"]) == 240, "fixture built the whole cohort"
    build_seconds = time.monotonic() - started

    recorder = CallRecorder().attach(session)
    report = sweep("big", session, **FAST)

    assert report.clean, report.render()
    assert len(report.found["instances"]) == 240
    assert sorted(report.deleted["instances"]) == sorted(made["instances"])
    assert sorted(report.deleted["security_groups"]) == sorted(made["security_groups"])
    assert sorted(report.deleted["key_pairs"]) == sorted(made["key_pairs"])
    assert report.deleted["vpcs"] == made["vpcs"]
    assert set(remaining(session, "big").values()) == {0}
    # No request carried more than 200 filter values or ids; batches are of 50.
    assert recorder.calls, "the event hook saw the sweep's requests"
    assert recorder.largest <= 50 < AWS_FILTER_VALUE_LIMIT, sorted(recorder.calls, key=lambda c: -c[1])[:5]
    terminate_calls = [n for op, n in recorder.calls if op == "TerminateInstances"]
    assert terminate_calls == [50, 50, 50, 50, 40]
    assert build_seconds < 120


def test_sweep_never_touches_resources_without_managed_by_labkit(session: boto3.Session) -> None:
    build_cohort(session, "spring", ["s01"])
    foreign = build_foreign(session, "spring")

    report = sweep("spring", session, **FAST)

    assert report.clean, report.render()
    everything_found = {rid for kind in KINDS for rid in report.found[kind]}
    assert not everything_found & set(foreign.values())
    assert_foreign_intact(session, foreign)


def test_sweep_of_an_unknown_cohort_finds_nothing(session: boto3.Session) -> None:
    build_cohort(session, "present", ["s01"])
    report = sweep("absent", session, **FAST)
    assert report.total_found == 0 and report.clean
    assert remaining(session, "present")["instances"] == 2
