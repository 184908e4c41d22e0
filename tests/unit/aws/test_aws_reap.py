"""The reaper against moto_server: expired cohorts go on confirmation, from tags alone."""

from __future__ import annotations

import datetime as dt
import io

import boto3
import pytest
from aws_helpers import assert_foreign_intact, build_cohort, build_foreign

from labkit.aws.cli import reap_main
from labkit.aws.teardown import cohort_expiries, reap

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
PAST = "2026-05-31T00:00:00Z"
FUTURE = "2026-07-01T00:00:00Z"
FAST = {"retry_delays": (0.0, 0.1), "wait_delay": 1}


def live_instances(session: boto3.Session, cohort: str) -> int:
    reservations = session.client("ec2").describe_instances(
        Filters=[
            {"Name": "tag:cohort", "Values": [cohort]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )["Reservations"]
    return sum(len(r["Instances"]) for r in reservations)


@pytest.fixture
def fleet(session: boto3.Session) -> dict[str, str]:
    build_cohort(session, "expired", ["s01", "s02"], expires_at=PAST)
    build_cohort(session, "current", ["s01"], expires_at=FUTURE)
    build_cohort(session, "forever", ["s01"], expires_at="none")
    # Same cohort name and a long-past expires_at, but not managed_by=labkit.
    return build_foreign(session, "expired")


def test_expiries_are_read_from_tags(session: boto3.Session, fleet: dict[str, str]) -> None:
    cohorts = cohort_expiries(session)
    assert sorted(cohorts) == ["current", "expired", "forever"]
    assert cohorts["expired"].expired(NOW) and not cohorts["current"].expired(NOW)
    assert cohorts["forever"].never and not cohorts["forever"].expired(NOW)


def test_reap_yes_tears_down_only_expired_kit_cohorts(session: boto3.Session, fleet: dict[str, str]) -> None:
    out = io.StringIO()
    entries = reap(session, NOW, True, out, **FAST)

    assert [(e.cohort, e.torn_down) for e in entries] == [("expired", True)]
    report = entries[0].report
    assert report is not None and report.clean, report.render()
    assert len(report.deleted["instances"]) == 4 and len(report.deleted["vpcs"]) == 1
    assert live_instances(session, "current") == 2 and live_instances(session, "forever") == 2
    # The foreign instance carries cohort=expired too: it must survive.
    assert live_instances(session, "expired") == 1
    assert_foreign_intact(session, fleet)
    text = out.getvalue()
    assert "expired expired at 2026-05-31T00:00:00Z" in text
    assert "keep current" in text and "keep forever" in text and "never expires" in text


def test_reap_without_confirmation_deletes_nothing(session: boto3.Session, fleet: dict[str, str]) -> None:
    out = io.StringIO()
    entries = reap(session, NOW, False, out, **FAST)
    assert [(e.cohort, e.torn_down) for e in entries] == [("expired", False)]
    assert "re-run with --yes" in out.getvalue()
    asked: list[str] = []
    entries = reap(session, NOW, False, out, confirm=lambda c: asked.append(c) or False, **FAST)
    assert asked == ["expired"] and not entries[0].torn_down
    assert live_instances(session, "expired") == 5


def test_reap_confirmed_interactively(session: boto3.Session, fleet: dict[str, str]) -> None:
    entries = reap(session, NOW, False, io.StringIO(), confirm=lambda c: c == "expired", **FAST)
    assert entries[0].torn_down and live_instances(session, "expired") == 1


def test_reap_main_uses_the_regions_given(session: boto3.Session, fleet: dict[str, str]) -> None:
    out = io.StringIO()
    assert reap_main(True, regions=["eu-west-1"], now=NOW, out=out, **FAST) == 0
    assert "nothing left behind" in out.getvalue()
    assert live_instances(session, "expired") == 1 and live_instances(session, "current") == 2
