"""Entry points the labkit CLI calls for target aws.

``labkit fleet up|down|reap|cost`` dispatch here when the roster says ``target: aws``;
each function returns a process exit code and prints what it did.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

import yaml

from labkit import inventory as inventory_files
from labkit import paths
from labkit.aws import (
    DEBIAN_SSH_USER,
    MANAGED_BY_KEY,
    MANAGED_BY_VALUE,
    cohort_filters,
    session_for,
    tag_dict,
    writer,
)
from labkit.aws.inventory import write_inventory
from labkit.aws.preflight import PreflightError, PreflightResult, check_or_raise
from labkit.aws.teardown import fleet_down, reap
from labkit.aws.tf import Runner, apply_args, cohort_paths, init_args, plan_args, run, state_output
from labkit.roster import Roster
from labkit.scenario import load_scenario

Out = Callable[[str], Any] | TextIO


def _roles(roster: Roster) -> list[str]:
    return load_scenario(roster.scenario).roles


def ensure_controller_key(roster: Roster) -> Path:
    """The cohort's controller key pair (Ansible's way in), created once."""
    return inventory_files.ensure_controller_key(roster.folder)


def tfvars(roster: Roster, result: PreflightResult, roles: list[str], controller_key: Path) -> dict[str, Any]:
    """Variables of terraform/envs/aws for this cohort."""
    assert roster.aws is not None
    files = cohort_paths(roster)
    ami_id = roster.aws.ami
    if ami_id is None and files.tfvars.is_file():
        # Keep the image the cohort was built with: a newer Debian release must not
        # give late joiners a different system than their classmates.
        ami_id = json.loads(files.tfvars.read_text()).get("ami_id")
    return {
        "region": roster.aws.region,
        "cohort": roster.cohort,
        "scenario": roster.scenario,
        "roles": roles,
        "students": {s.id: {"name": s.name, "ssh_public_key": s.ssh_public_key} for s in roster.students},
        "expires_at": roster.expires_at,
        "instance_type": roster.aws.instance_type,
        "architecture": result.architecture or "x86_64",
        "ami_id": ami_id or result.ami_id,
        "availability_zone": result.availability_zone,
        "allowed_ssh_cidrs": list(roster.aws.allowed_ssh_cidrs),
        "controller_cidrs": list(roster.aws.controller_cidrs),
        # The lab ports the grader and the load reach from the controller: the scenario's, not a fixed list.
        "controller_ports": load_scenario(roster.scenario).controller_ports(),
        # aws.load_generator: one host inside the VPC for Locust's workers (labkit load), or none.
        "load_generator_instance_type": roster.aws.load_generator,
        "controller_ssh_public_key": Path(f"{controller_key}.pub").read_text().strip(),
        "ssh_private_key_file": str(controller_key),
        "ssh_user": DEBIAN_SSH_USER,
    }


def up(
    roster: Roster,
    out: Out = print,
    *,
    session: Any = None,
    quotas_client: Any = None,
    runner: Runner | None = None,
    yes: bool = False,  # noqa: ARG001 - the local engine's plan prompt; on AWS, terraform plan is the plan
) -> int:
    """Preflight, then terraform init + apply, then lab_hosts.json and the aws_ec2 inventory."""
    say = writer(out)
    if roster.target != "aws" or roster.aws is None:
        say(f"{roster.path}: target is {roster.target!r}, not aws")
        return 2
    result = _preflight_and_tfvars(roster, say, session, quotas_client)
    if isinstance(result, int):
        return result
    say(
        f"preflight ok: {result.hosts} hosts of {roster.aws.instance_type} in {result.availability_zone}, "
        f"image {result.ami_id}"
    )
    files = cohort_paths(roster)
    rc = _terraform(roster, [init_args(roster), apply_args(roster)], runner, say,
                    "; `labkit fleet down` removes anything it created")  # fmt: skip
    if rc != 0:
        return rc
    hosts = state_output(files.state, "lab_hosts")
    inventory = write_inventory(roster)
    # The same hosts.yml / ssh_config as the local engine, so site.yml, load and grade
    # do not care where the hosts are; lab traffic uses their private addresses.
    try:
        generator = state_output(files.state, "load_generator")
    except KeyError:
        generator = None  # a state from before the option (its outputs are written by the next apply)
    inventory_files.write_cohort_files(
        roster, hosts, host_keys={}, pip_extra_args="", load_generator=generator
    )
    say(f"{len(hosts)} lab hosts: {files.lab_hosts}; inventory: {inventory} (and hosts.yml)")
    if generator:
        say(
            f"load generator {generator['name']} at {generator['address']} (labkit load runs Locust's workers there)"
        )
    return 0


def plan(
    roster: Roster,
    out: Out = print,
    *,
    session: Any = None,
    quotas_client: Any = None,
    runner: Runner | None = None,
) -> int:
    """What `fleet up` would change, creating nothing: preflight, the cohort's tfvars, terraform init + plan."""
    say = writer(out)
    if roster.target != "aws" or roster.aws is None:
        say(f"{roster.path}: target is {roster.target!r}, not aws")
        return 2
    result = _preflight_and_tfvars(roster, say, session, quotas_client)
    if isinstance(result, int):
        return result
    say(f"fleet plan {roster.cohort}: preflight ok; terraform plan (nothing is created or destroyed)")
    return _terraform(roster, [init_args(roster), plan_args(roster)], runner, say, "")


def _preflight_and_tfvars(roster: Roster, say: Callable[[str], Any], session: Any, quotas_client: Any):
    """Preflight (1 and its report when it refuses), then the cohort's tfvars: what up and plan both start with."""
    roles = _roles(roster)
    session = session or session_for(roster.aws.region)
    try:
        result = check_or_raise(roster, session, quotas_client=quotas_client, roles=roles)
    except PreflightError as exc:
        say(exc.render())
        return 1
    key = ensure_controller_key(roster)
    cohort_paths(roster).tfvars.write_text(json.dumps(tfvars(roster, result, roles, key), indent=2) + "\n")
    return result


def _terraform(
    roster: Roster, steps: list[list[str]], runner: Runner | None, say: Callable[[str], Any], hint: str
) -> int:
    for args in steps:
        rc = run(roster, args, runner=runner)
        if rc != 0:
            say(f"terraform {args[0]} failed ({rc}){hint}")
            return rc
    return 0


def down(roster: Roster, out: Out = print, *, session: Any = None, runner: Runner | None = None) -> int:
    """terraform destroy, then the tag sweep; 0 when nothing was left behind. Then, as on the local fleet, the
    cohort's generated files go too: host lists, inventories, pinned host keys, the lab passwords, the controller key."""
    _rc, report = fleet_down(roster, session, out=out, runner=runner)
    if not report.clean:
        return 1
    import shutil

    files = inventory_files.cohort_files(roster.folder)
    for path in (files["hosts"], files["lab_hosts"], files["ssh_config"], files["known_hosts"],
                 files["load_generator"], roster.folder / "aws_ec2.yml", files["tfvars"], files["tf_state"],
                 files["tf_state"].with_name(files["tf_state"].name + ".backup")):  # fmt: skip
        path.unlink(missing_ok=True)
    for folder in (files["credentials"], files["host_vars"], files["student_access"], files["ssh_key"].parent,
                   files["tf_data"], files["logs"]):  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def status(roster: Roster, out: Out = print, *, session: Any = None) -> int:
    """The cohort's hosts as EC2 sees them (from the kit's tags, not Terraform state)."""
    say = writer(out)
    if roster.aws is None:
        say(f"{roster.path}: not an AWS cohort")
        return 2
    session = session or session_for(roster.aws.region)
    ec2 = session.client("ec2", region_name=roster.aws.region)
    rows = []
    for page in ec2.get_paginator("describe_instances").paginate(Filters=cohort_filters(roster.cohort)):
        for reservation in page["Reservations"]:
            for inst in reservation["Instances"]:
                tags = tag_dict(inst.get("Tags"))
                if tags.get(MANAGED_BY_KEY) != MANAGED_BY_VALUE or inst["State"]["Name"] == "terminated":
                    continue
                rows.append(
                    (
                        tags.get("Name", inst["InstanceId"]),
                        inst["State"]["Name"],
                        inst.get("PublicIpAddress", "-"),
                        inst.get("PrivateIpAddress", "-"),
                        tags.get("expires_at", "none"),
                    )
                )
    if not rows:
        say(f"fleet status {roster.cohort}: no hosts in {roster.aws.region}")
        return 1
    for name, state, public, private, expires in sorted(rows):
        say(f"{name:40} {state:10} {public:16} {private:16} expires {expires}")
    running = sum(1 for r in rows if r[1] == "running")
    expected = len(roster.students) * len(_roles(roster)) + (1 if roster.aws.load_generator else 0)
    say(f"fleet status {roster.cohort}: {running}/{expected} hosts running")
    return 0 if running == expected else 1


def _roster_regions(folder: Path) -> set[str]:
    regions: set[str] = set()
    for cohort_file in folder.glob("*/cohort.yml"):
        try:
            data = yaml.safe_load(cohort_file.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and data.get("target") == "aws" and isinstance(data.get("aws"), dict):
            region = data["aws"].get("region")
            if isinstance(region, str):
                regions.add(region)
    return regions


def reap_main(
    yes: bool,
    *,
    regions: Iterable[str] | None = None,
    now: dt.datetime | None = None,
    out: Out = print,
    **reap_kwargs: Any,
) -> int:
    """Reap expired cohorts in the regions of the AWS rosters and the default region."""
    say = writer(out)
    if regions is None:
        found = _roster_regions(paths.REPO / "inventories")
        default = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if default:
            found.add(default)
        regions = sorted(found)
    regions = list(regions)
    if not regions:
        say("reap: no region: set AWS_REGION or add an AWS roster under inventories/")
        return 2
    confirm = None
    if not yes and sys.stdin.isatty():

        def confirm(cohort: str) -> bool:
            return (
                input(f"tear down every labkit resource of cohort {cohort!r}? [y/N] ").strip().lower() == "y"
            )

    now = now or dt.datetime.now(dt.UTC)
    ok = True
    for region in regions:
        entries = reap(session_for(region), now, yes, out, confirm=confirm, region=region, **reap_kwargs)
        ok = ok and all(e.report.clean for e in entries if e.report is not None)
    return 0 if ok else 1


def cost_main(roster: Roster, price: float, *, out: Out = print, now: dt.datetime | None = None) -> int:
    """Print what the cohort costs per student-hour at ``price`` (USD per instance-hour)."""
    say = writer(out)
    if not price or price <= 0:
        say(
            "labkit fleet cost: give --price-per-hour, positive (USD per instance-hour, e.g. 0.0208) for target aws"
        )
        return 2
    roles = _roles(roster)
    itype = roster.aws.instance_type if roster.aws else "(local)"
    students = len(roster.students)
    per_student = len(roles) * price
    generator = roster.aws.load_generator if roster.aws else None
    lines = [
        f"cohort {roster.cohort}: {students} students x {len(roles)} hosts ({', '.join(roles)}) "
        f"of {itype} at ${price:g} per instance-hour",
        f"  per student-hour: ${per_student:.4f}",
        f"  per cohort-hour:  ${per_student * students:.4f}",
        f"  per cohort-day:   ${per_student * students * 24:.2f}",
    ]
    if generator:
        lines.append(
            f"  plus the load generator ({generator}): not priced here (its own type's price per hour)"
            if generator != itype
            else f"  plus the load generator ({generator}): ${price:.4f} per hour"
        )
    if roster.expires_at:
        now = now or dt.datetime.now(dt.UTC)
        until = dt.datetime.fromisoformat(roster.expires_at.replace("Z", "+00:00"))
        hours = max((until - now).total_seconds() / 3600, 0.0)
        lines.append(
            f"  from now until expires_at {roster.expires_at} ({hours:.0f} h): "
            f"${per_student * students * hours:.2f}"
        )
    lines.append(
        "  not included: EBS root volumes (8 GiB gp3 per host), public IPv4 addresses (one per host), "
        "data transfer"
    )
    say("\n".join(lines))
    return 0
