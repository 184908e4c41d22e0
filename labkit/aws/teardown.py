"""Teardown that leaves nothing behind, from the kit's tags alone.

``fleet_down`` runs ``terraform destroy`` and then ``sweep``: whatever the state file
forgot (a crashed apply, a lost state, a hand-made copy) is found by its
``managed_by=labkit`` + ``cohort`` tags and deleted in dependency order. ``reap``
finds cohorts whose ``expires_at`` tag has passed and sweeps them; it needs no
Terraform state, so a cron job on any machine with credentials can run it.

Every describe is paginated and every list sent to AWS is cut into batches of
BATCH_SIZE (AWS rejects filters of more than 200 values). Nothing without
``managed_by=labkit`` is ever modified.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

from botocore.exceptions import ClientError, WaiterError

from labkit.aws import BATCH_SIZE, MANAGED_BY_KEY, MANAGED_BY_VALUE, batches, cohort_filters, writer
from labkit.roster import Roster

# Deletion order: what holds a reference goes first.
KINDS = (
    "instances",
    "launch_templates",
    "network_interfaces",
    "volumes",
    "key_pairs",
    "security_groups",
    "subnets",
    "route_tables",
    "internet_gateways",
    "vpcs",
)
LIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
# Real EC2 releases an ENI or a group some seconds after its instance terminates.
DEFAULT_RETRY_DELAYS = (0.0, 5.0, 10.0, 20.0, 40.0)


@dataclasses.dataclass
class SweepReport:
    """What a sweep found, deleted and could not delete, per resource kind."""

    cohort: str
    region: str
    found: dict[str, list[str]] = dataclasses.field(default_factory=lambda: {k: [] for k in KINDS})
    deleted: dict[str, list[str]] = dataclasses.field(default_factory=lambda: {k: [] for k in KINDS})
    failed: dict[str, list[str]] = dataclasses.field(default_factory=lambda: {k: [] for k in KINDS})

    @property
    def total_found(self) -> int:
        return sum(len(v) for v in self.found.values())

    @property
    def clean(self) -> bool:
        """True when nothing the sweep found was left behind."""
        return not any(self.failed.values())

    def render(self) -> str:
        lines = [f"sweep of cohort {self.cohort!r} in {self.region}: found {self.total_found} resource(s)"]
        for kind in KINDS:
            found, deleted, failed = self.found[kind], self.deleted[kind], self.failed[kind]
            if found or failed:
                lines.append(f"  {kind}: found {len(found)}, deleted {len(deleted)}, failed {len(failed)}")
            lines += [f"    ! {f}" for f in failed]
        lines.append(
            "  nothing left behind" if self.clean else "  SOME RESOURCES WERE LEFT BEHIND (see '!' lines)"
        )
        return "\n".join(lines)


def _code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def _paginate(client: Any, operation: str, key: str, **kwargs: Any) -> list[dict]:
    items: list[dict] = []
    if client.can_paginate(operation):
        for page in client.get_paginator(operation).paginate(**kwargs):
            items += page.get(key, [])
    else:
        items += getattr(client, operation)(**kwargs).get(key, [])
    return items


class _Sweeper:
    def __init__(
        self, cohort: str, session: Any, region: str | None, batch_size: int, retry_delays, wait_delay
    ):
        self.region = region or session.region_name
        self.ec2 = session.client("ec2", region_name=self.region)
        self.filters = cohort_filters(cohort)
        self.batch_size = batch_size
        self.retry_delays = tuple(retry_delays)
        self.wait_delay = wait_delay
        self.report = SweepReport(cohort=cohort, region=self.region)

    # -- helpers ------------------------------------------------------------------
    def describe(self, operation: str, key: str, extra_filters: Iterable[dict] = ()) -> list[dict]:
        return _paginate(self.ec2, operation, key, Filters=[*self.filters, *extra_filters])

    def delete_each(self, kind: str, ids: list[str], action: Callable[[str], Any]) -> None:
        """Delete one resource at a time, retrying while AWS still sees dependents."""
        for rid in ids:
            for attempt, delay in enumerate(self.retry_delays):
                time.sleep(delay)
                try:
                    action(rid)
                except ClientError as exc:
                    code = _code(exc)
                    if code.endswith(".NotFound") or code.endswith("NotFoundException"):
                        self.report.deleted[kind].append(rid)  # gone already: that is the goal
                        break
                    retriable = code in (
                        "DependencyViolation",
                        "ResourceInUse",
                        "InvalidNetworkInterface.InUse",
                    )
                    if retriable and attempt + 1 < len(self.retry_delays):
                        continue
                    self.report.failed[kind].append(
                        f"{rid}: {code}: {exc.response['Error'].get('Message', '')}"
                    )
                    break
                else:
                    self.report.deleted[kind].append(rid)
                    break

    # -- kinds, in dependency order ----------------------------------------------
    def instances(self) -> None:
        reservations = self.describe(
            "describe_instances",
            "Reservations",
            [{"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES}],
        )
        ids = sorted(i["InstanceId"] for r in reservations for i in r["Instances"])
        self.report.found["instances"] = ids
        terminating: list[str] = []
        for chunk in batches(ids, self.batch_size):
            try:
                self.ec2.terminate_instances(InstanceIds=chunk)
                terminating += chunk
            except ClientError:
                # One protected or vanished instance fails the whole call: isolate it.
                for iid in chunk:
                    try:
                        self.ec2.terminate_instances(InstanceIds=[iid])
                        terminating.append(iid)
                    except ClientError as exc:
                        if _code(exc) == "InvalidInstanceID.NotFound":
                            self.report.deleted["instances"].append(iid)
                        else:
                            self.report.failed["instances"].append(f"{iid}: {_code(exc)}")
        waiter = self.ec2.get_waiter("instance_terminated")
        for chunk in batches(terminating, self.batch_size):
            try:
                waiter.wait(InstanceIds=chunk, WaiterConfig={"Delay": self.wait_delay, "MaxAttempts": 120})
                self.report.deleted["instances"] += chunk
            except WaiterError as exc:
                self.report.failed["instances"] += [f"{iid}: not terminated ({exc})" for iid in chunk]

    def launch_templates(self) -> None:
        templates = self.describe("describe_launch_templates", "LaunchTemplates")
        ids = sorted(t["LaunchTemplateId"] for t in templates)
        self.report.found["launch_templates"] = ids
        self.delete_each(
            "launch_templates", ids, lambda i: self.ec2.delete_launch_template(LaunchTemplateId=i)
        )

    def network_interfaces(self) -> None:
        enis = self.describe("describe_network_interfaces", "NetworkInterfaces")
        ids = sorted(e["NetworkInterfaceId"] for e in enis)
        self.report.found["network_interfaces"] = ids
        self.delete_each(
            "network_interfaces", ids, lambda i: self.ec2.delete_network_interface(NetworkInterfaceId=i)
        )

    def volumes(self) -> None:
        vols = self.describe("describe_volumes", "Volumes")
        ids = sorted(v["VolumeId"] for v in vols)
        self.report.found["volumes"] = ids
        self.delete_each("volumes", ids, lambda i: self.ec2.delete_volume(VolumeId=i))

    def key_pairs(self) -> None:
        pairs = self.ec2.describe_key_pairs(Filters=self.filters).get("KeyPairs", [])  # not paginated by AWS
        names = {p["KeyPairId"]: p["KeyName"] for p in pairs}
        ids = sorted(names)
        self.report.found["key_pairs"] = ids
        # By name: unique per region, and the one argument every EC2 implementation takes.
        self.delete_each("key_pairs", ids, lambda i: self.ec2.delete_key_pair(KeyName=names[i]))

    def security_groups(self) -> None:
        # The VPC's default group cannot be deleted; it goes with the VPC.
        groups = [
            g
            for g in self.describe("describe_security_groups", "SecurityGroups")
            if g["GroupName"] != "default"
        ]
        ids = sorted(g["GroupId"] for g in groups)
        self.report.found["security_groups"] = ids
        # A group referenced by another group's rule cannot be deleted: drop those rules
        # first (only on groups being swept, which are all managed_by=labkit).
        for group in groups:
            for direction, perms in (
                ("ingress", group.get("IpPermissions", [])),
                ("egress", group.get("IpPermissionsEgress", [])),
            ):
                refs = [p for p in perms if p.get("UserIdGroupPairs")]
                if not refs:
                    continue
                revoke = (
                    self.ec2.revoke_security_group_ingress
                    if direction == "ingress"
                    else self.ec2.revoke_security_group_egress
                )
                for perm in refs:
                    slim = {
                        k: v
                        for k, v in perm.items()
                        if k in ("IpProtocol", "FromPort", "ToPort", "UserIdGroupPairs")
                    }
                    slim["UserIdGroupPairs"] = [{"GroupId": p["GroupId"]} for p in perm["UserIdGroupPairs"]]
                    # On failure the delete below reports what still blocks it.
                    with contextlib.suppress(ClientError):
                        revoke(GroupId=group["GroupId"], IpPermissions=[slim])
        self.delete_each("security_groups", ids, lambda i: self.ec2.delete_security_group(GroupId=i))

    def subnets(self) -> None:
        ids = sorted(s["SubnetId"] for s in self.describe("describe_subnets", "Subnets"))
        self.report.found["subnets"] = ids
        self.delete_each("subnets", ids, lambda i: self.ec2.delete_subnet(SubnetId=i))

    def route_tables(self) -> None:
        tables = self.describe("describe_route_tables", "RouteTables")
        # A VPC's main route table is deleted with the VPC, never on its own.
        tables = [t for t in tables if not any(a.get("Main") for a in t.get("Associations", []))]
        ids = sorted(t["RouteTableId"] for t in tables)
        self.report.found["route_tables"] = ids
        for table in tables:
            for assoc in table.get("Associations", []):
                # Gone with its subnet already; the delete below reports anything real.
                with contextlib.suppress(ClientError):
                    self.ec2.disassociate_route_table(AssociationId=assoc["RouteTableAssociationId"])
        self.delete_each("route_tables", ids, lambda i: self.ec2.delete_route_table(RouteTableId=i))

    def internet_gateways(self) -> None:
        gateways = self.describe("describe_internet_gateways", "InternetGateways")
        ids = sorted(g["InternetGatewayId"] for g in gateways)
        self.report.found["internet_gateways"] = ids
        attached = {g["InternetGatewayId"]: [a["VpcId"] for a in g.get("Attachments", [])] for g in gateways}

        def detach_and_delete(igw: str) -> None:
            for vpc in attached.get(igw, []):
                try:
                    self.ec2.detach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
                except ClientError as exc:
                    if _code(exc) not in ("Gateway.NotAttached",):
                        raise
            attached[igw] = []
            self.ec2.delete_internet_gateway(InternetGatewayId=igw)

        self.delete_each("internet_gateways", ids, detach_and_delete)

    def vpcs(self) -> None:
        ids = sorted(v["VpcId"] for v in self.describe("describe_vpcs", "Vpcs"))
        self.report.found["vpcs"] = ids
        self.delete_each("vpcs", ids, lambda i: self.ec2.delete_vpc(VpcId=i))

    def verify(self) -> None:
        """Describe again: a delete that answered OK but left the resource is a failure."""
        live = [{"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES}]
        still = {
            "instances": [
                i["InstanceId"]
                for r in self.describe("describe_instances", "Reservations", live)
                for i in r["Instances"]
            ],
            "launch_templates": [
                t["LaunchTemplateId"] for t in self.describe("describe_launch_templates", "LaunchTemplates")
            ],
            "network_interfaces": [
                e["NetworkInterfaceId"]
                for e in self.describe("describe_network_interfaces", "NetworkInterfaces")
            ],
            "volumes": [v["VolumeId"] for v in self.describe("describe_volumes", "Volumes")],
            "key_pairs": [
                k["KeyPairId"] for k in self.ec2.describe_key_pairs(Filters=self.filters).get("KeyPairs", [])
            ],
            "security_groups": [
                g["GroupId"]
                for g in self.describe("describe_security_groups", "SecurityGroups")
                if g["GroupName"] != "default"
            ],
            "subnets": [s["SubnetId"] for s in self.describe("describe_subnets", "Subnets")],
            "route_tables": [
                t["RouteTableId"]
                for t in self.describe("describe_route_tables", "RouteTables")
                if not any(a.get("Main") for a in t.get("Associations", []))
            ],
            "internet_gateways": [
                g["InternetGatewayId"]
                for g in self.describe("describe_internet_gateways", "InternetGateways")
            ],
            "vpcs": [v["VpcId"] for v in self.describe("describe_vpcs", "Vpcs")],
        }
        for kind, ids in still.items():
            reported = {f.split(":", 1)[0] for f in self.report.failed[kind]}
            for rid in ids:
                if rid in self.report.deleted[kind]:
                    self.report.deleted[kind].remove(rid)
                if rid not in self.report.found[kind]:
                    self.report.found[kind].append(rid)  # appeared during the sweep
                if rid not in reported:
                    self.report.failed[kind].append(f"{rid}: still present after the sweep")


def sweep(
    cohort: str,
    session: Any,
    *,
    region: str | None = None,
    batch_size: int = BATCH_SIZE,
    retry_delays: Iterable[float] = DEFAULT_RETRY_DELAYS,
    wait_delay: int = 5,
) -> SweepReport:
    """Delete every resource tagged managed_by=labkit and cohort=``cohort``; report them.

    Only resources carrying both tags are listed, so nothing else in the account is
    touched. Order: instances (terminate and wait), launch templates, network
    interfaces, volumes, key pairs, security groups, subnets, route tables, internet
    gateways, VPCs; then every kind is described again, and anything still there is
    reported as failed.
    """
    if not cohort:
        raise ValueError("sweep needs a cohort name")
    sweeper = _Sweeper(cohort, session, region, batch_size, retry_delays, wait_delay)
    for kind in KINDS:
        getattr(sweeper, kind)()
    sweeper.verify()
    return sweeper.report


# -- reaper --------------------------------------------------------------------------


@dataclasses.dataclass
class CohortExpiry:
    cohort: str
    resources: int
    expires_at: dt.datetime | None  # the latest expiry any of its resources carries
    never: bool  # some resource says "none" or an unreadable time: never reap it

    def expired(self, now: dt.datetime) -> bool:
        return not self.never and self.expires_at is not None and self.expires_at <= now


@dataclasses.dataclass
class ReapEntry:
    cohort: str
    expires_at: str
    torn_down: bool
    report: SweepReport | None = None


def _parse_expiry(value: str) -> dt.datetime | None:
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None


def cohort_expiries(session: Any, region: str | None = None) -> dict[str, CohortExpiry]:
    """Kit-managed cohorts in the region and when they expire, read from tags alone."""
    ec2 = session.client("ec2", region_name=region or session.region_name)
    by_resource: dict[str, dict[str, str]] = {}
    tags = _paginate(
        ec2,
        "describe_tags",
        "Tags",
        Filters=[{"Name": "key", "Values": [MANAGED_BY_KEY, "cohort", "expires_at"]}],
    )
    for tag in tags:
        by_resource.setdefault(tag["ResourceId"], {})[tag["Key"]] = tag.get("Value", "")
    cohorts: dict[str, CohortExpiry] = {}
    for resource_tags in by_resource.values():
        if resource_tags.get(MANAGED_BY_KEY) != MANAGED_BY_VALUE or not resource_tags.get("cohort"):
            continue
        name = resource_tags["cohort"]
        entry = cohorts.setdefault(name, CohortExpiry(cohort=name, resources=0, expires_at=None, never=False))
        entry.resources += 1
        if "expires_at" not in resource_tags:
            continue
        when = _parse_expiry(resource_tags["expires_at"])
        if when is None:
            entry.never = True
        elif entry.expires_at is None or when > entry.expires_at:
            entry.expires_at = when
    return cohorts


def reap(
    session: Any,
    now: dt.datetime,
    yes: bool,
    out: Callable[[str], Any] | TextIO = sys.stdout,
    *,
    confirm: Callable[[str], bool] | None = None,
    region: str | None = None,
    **sweep_kwargs: Any,
) -> list[ReapEntry]:
    """List kit cohorts whose expires_at has passed and sweep them when confirmed.

    ``yes`` confirms every expired cohort (for cron); otherwise ``confirm(cohort)`` is
    asked for each, and without ``confirm`` nothing is deleted (a dry run). ``out`` is a
    text stream or a callable taking one line.
    """
    say = writer(out)
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    region = region or session.region_name
    entries: list[ReapEntry] = []
    cohorts = cohort_expiries(session, region)
    if not cohorts:
        say(f"reap {region}: no labkit cohorts")
        return entries
    for name in sorted(cohorts):
        info = cohorts[name]
        when = info.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ") if info.expires_at else "none"
        if not info.expired(now):
            reason = "never expires" if info.never or info.expires_at is None else f"expires {when}"
            say(f"reap {region}: keep {name} ({info.resources} tagged resources, {reason})")
            continue
        say(f"reap {region}: {name} expired at {when} ({info.resources} tagged resources)")
        if yes or (confirm is not None and confirm(name)):
            report = sweep(name, session, region=region, **sweep_kwargs)
            say(report.render())
            entries.append(ReapEntry(cohort=name, expires_at=when, torn_down=True, report=report))
        else:
            say(f"reap {region}: {name} left running (confirm, or re-run with --yes)")
            entries.append(ReapEntry(cohort=name, expires_at=when, torn_down=False))
    return entries


# -- terraform destroy + sweep -----------------------------------------------------------


def fleet_down(
    roster: Roster,
    session: Any = None,
    *,
    out: Callable[[str], Any] | TextIO = sys.stdout,
    runner: Callable[..., int] | None = None,
    **sweep_kwargs: Any,
) -> tuple[int | None, SweepReport]:
    """terraform destroy (when the cohort has state), then sweep by the cohort tag.

    Returns the destroy exit code (None when there was no state) and the sweep report.
    The sweep always runs: it is what guarantees nothing is left behind.
    """
    say = writer(out)
    from labkit.aws import session_for
    from labkit.aws.tf import ENV_DIR, cohort_paths, run

    if roster.aws is None:
        raise ValueError(f"{roster.path}: not an AWS cohort")
    files = cohort_paths(roster)
    rc: int | None = None
    if Path(files.state).is_file() and Path(files.tfvars).is_file():
        rc = run(
            roster,
            ["destroy", "-auto-approve", "-input=false", f"-var-file={files.tfvars}"],
            runner=runner,
        )
        if rc != 0:
            say(f"terraform destroy in {ENV_DIR} failed ({rc}); sweeping by tags anyway")
    else:
        say(f"no Terraform state for {roster.cohort}; sweeping by tags")
    session = session or session_for(roster.aws.region)
    report = sweep(roster.cohort, session, region=roster.aws.region, **sweep_kwargs)
    say(report.render())
    return rc, report
