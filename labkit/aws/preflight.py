"""Preflight: refuse a cohort before anything is created, with every problem at once.

Other workshop provisioners failed halfway through an apply, after spending money, on
a vCPU quota, a missing image or a malformed key. Here each of those is checked
first, and the instructor gets one message listing all of them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from labkit.aws import (
    DEBIAN_ARCH,
    DEBIAN_OWNER,
    MANAGED_BY_KEY,
    MANAGED_BY_VALUE,
    batches,
    session_for,
    tag_dict,
)
from labkit.roster import Roster, RosterError, parse_ssh_public_key

# "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances", counted in vCPUs.
VCPU_QUOTA_SERVICE = "ec2"
VCPU_QUOTA_CODE = "L-1216C47A"
STANDARD_FAMILY_LETTERS = frozenset("acdhimrtz")
# EC2 ImportKeyPair accepts only these key types (no ECDSA, no FIDO sk- keys).
EC2_KEY_TYPES = ("ssh-ed25519", "ssh-rsa")
# DescribeInstanceTypes takes at most 100 names per call.
INSTANCE_TYPES_PER_CALL = 50


class PreflightError(RosterError):
    """The account cannot hold the cohort; ``problems`` lists every reason."""


@dataclasses.dataclass
class PreflightResult:
    """What preflight found: problems, and the choices Terraform should be given."""

    problems: list[str]
    ami_id: str | None = None
    availability_zone: str | None = None
    architecture: str | None = None
    vcpus_per_host: int | None = None
    hosts: int = 0
    generator_vcpus: int = 0  # the load generator's (aws.load_generator), 0 without one

    @property
    def ok(self) -> bool:
        return not self.problems


def _error_text(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', 'Error')}: {err.get('Message', '')}".strip()
    return str(exc)


def _instance_family_is_standard(instance_type: str) -> bool:
    return instance_type[:1].lower() in STANDARD_FAMILY_LETTERS


def _host_roles(roster: Roster) -> list[str]:
    from labkit.scenario import load_scenario

    return load_scenario(roster.scenario).roles


def run_preflight(
    roster: Roster,
    session: Any = None,
    *,
    quotas_client: Any = None,
    roles: list[str] | None = None,
) -> PreflightResult:
    """Check credentials, region, instance type, zone, image, vCPU quota and keys.

    ``quotas_client`` replaces the service-quotas client (the tests pass one wrapped in a
    botocore Stubber because moto does not serve EC2 quotas); ``roles`` replaces the
    scenario's host roles.
    """
    result = PreflightResult(problems=[])
    problems = result.problems

    if roster.target != "aws" or roster.aws is None:
        problems.append("target: the cohort is not an AWS cohort. Fix: set target: aws and an aws: block.")
        return result
    aws = roster.aws

    # Keys first: they need no account, and an instructor fixes them all in one pass.
    for student in roster.students:
        why = parse_ssh_public_key(student.ssh_public_key)
        key_type = student.ssh_public_key.split()[0] if student.ssh_public_key.split() else ""
        if why:
            problems.append(
                f"students (id {student.id!r}): ssh_public_key: malformed SSH public key: {why}. "
                "Fix: paste the single line of the student's .pub file."
            )
        elif key_type not in EC2_KEY_TYPES:
            problems.append(
                f"students (id {student.id!r}): ssh_public_key: EC2 key pairs accept only "
                f"{' or '.join(EC2_KEY_TYPES)} keys, not {key_type}. "
                "Fix: ask the student for an ed25519 key (ssh-keygen -t ed25519)."
            )

    if roles is None:
        roles = _host_roles(roster)
    result.hosts = len(roster.students) * len(roles)

    session = session or session_for(aws.region)
    ec2 = session.client("ec2", region_name=aws.region)

    # Credentials and region: without them no other check can run.
    try:
        session.client("sts", region_name=aws.region).get_caller_identity()
    except NoCredentialsError:
        problems.append(
            "AWS credentials: none found. Fix: export AWS_PROFILE (or AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY), or run `aws sso login`; the remaining AWS checks were skipped."
        )
        return result
    except (ClientError, BotoCoreError) as exc:
        problems.append(
            f"AWS credentials: sts get-caller-identity failed ({_error_text(exc)}). Fix: refresh or "
            "replace the credentials; the remaining AWS checks were skipped."
        )
        return result
    try:
        zones_available = sorted(
            z["ZoneName"]
            for z in ec2.describe_availability_zones(
                Filters=[
                    {"Name": "state", "Values": ["available"]},
                    {"Name": "zone-type", "Values": ["availability-zone"]},
                ]
            )["AvailabilityZones"]
        )
    except (ClientError, BotoCoreError) as exc:
        problems.append(
            f"aws.region: {aws.region!r} is not usable with these credentials ({_error_text(exc)}). "
            "Fix: pick an enabled region; the remaining AWS checks were skipped."
        )
        return result

    # Instance type: exists, its architecture and size.
    try:
        info = ec2.describe_instance_types(InstanceTypes=[aws.instance_type])["InstanceTypes"][0]
        result.vcpus_per_host = int(info["VCpuInfo"]["DefaultVCpus"])
        archs = info.get("ProcessorInfo", {}).get("SupportedArchitectures", [])
        result.architecture = next((a for a in ("x86_64", "arm64") if a in archs), None)
        if result.architecture is None:
            problems.append(
                f"aws.instance_type: {aws.instance_type} runs {', '.join(archs)}; Debian 12 lab images "
                "exist for x86_64 and arm64 only. Fix: pick e.g. t3.small or t4g.small."
            )
    except (ClientError, BotoCoreError, IndexError) as exc:
        problems.append(
            f"aws.instance_type: {aws.instance_type!r} is not an instance type in {aws.region} "
            f"({_error_text(exc)}). Fix: e.g. t3.small."
        )

    # The load generator: a type that exists, of the labs' architecture (it boots the cohort's one image).
    if aws.load_generator and result.architecture is not None:
        try:
            gen = ec2.describe_instance_types(InstanceTypes=[aws.load_generator])["InstanceTypes"][0]
            result.generator_vcpus = int(gen["VCpuInfo"]["DefaultVCpus"])
            if result.architecture not in gen.get("ProcessorInfo", {}).get("SupportedArchitectures", []):
                problems.append(
                    f"aws.load_generator.instance_type: {aws.load_generator} does not run {result.architecture}, "
                    f"the labs' architecture ({aws.instance_type}). Fix: pick a type of the same architecture."
                )
        except (ClientError, BotoCoreError, IndexError) as exc:
            problems.append(
                f"aws.load_generator.instance_type: {aws.load_generator!r} is not an instance type in "
                f"{aws.region} ({_error_text(exc)}). Fix: e.g. c6i.large, or true for the labs' type."
            )

    # Zone: the instance type must be offered there.
    if result.vcpus_per_host is not None:
        offered: set[str] = set()
        paginator = ec2.get_paginator("describe_instance_type_offerings")
        for page in paginator.paginate(
            LocationType="availability-zone",
            Filters=[{"Name": "instance-type", "Values": [aws.instance_type]}],
        ):
            offered.update(o["Location"] for o in page["InstanceTypeOfferings"])
        if aws.availability_zone:
            if aws.availability_zone not in zones_available:
                problems.append(
                    f"aws.availability_zone: {aws.availability_zone!r} is not an available zone of "
                    f"{aws.region}. Fix: use one of: {', '.join(zones_available)}."
                )
            elif aws.availability_zone not in offered:
                problems.append(
                    f"aws.availability_zone: {aws.instance_type} is not offered in {aws.availability_zone}. "
                    f"Fix: use one of: {', '.join(sorted(offered)) or '(none in this region)'}."
                )
            else:
                result.availability_zone = aws.availability_zone
        else:
            usable = [z for z in zones_available if z in offered]
            if usable:
                result.availability_zone = usable[0]
            else:
                problems.append(
                    f"aws.instance_type: {aws.instance_type} is not offered in any available zone of "
                    f"{aws.region}. Fix: pick another instance type or region."
                )

    # Image: the given AMI exists (and fits the architecture), or Debian 12 is found.
    if aws.ami:
        try:
            images = ec2.describe_images(ImageIds=[aws.ami])["Images"]
        except (ClientError, BotoCoreError) as exc:
            images = []
            detail = _error_text(exc)
        else:
            detail = "no such image"
        if not images:
            problems.append(
                f"aws.ami: {aws.ami} does not exist in {aws.region} or is not shared with this account "
                f"({detail}). Fix: copy the image to {aws.region}, or remove aws.ami to use Debian 12."
            )
        else:
            image = images[0]
            if result.architecture and image.get("Architecture") not in (None, result.architecture):
                problems.append(
                    f"aws.ami: {aws.ami} is {image.get('Architecture')} but {aws.instance_type} runs "
                    f"{result.architecture}. Fix: pick a matching image or instance type."
                )
            elif image.get("State", "available") != "available":
                problems.append(
                    f"aws.ami: {aws.ami} is {image.get('State')}, not available. Fix: use another image."
                )
            else:
                result.ami_id = aws.ami
    elif result.architecture:
        try:
            images = ec2.describe_images(
                Owners=[DEBIAN_OWNER],
                Filters=[
                    {"Name": "name", "Values": [f"debian-12-{DEBIAN_ARCH[result.architecture]}-*"]},
                    {"Name": "architecture", "Values": [result.architecture]},
                    {"Name": "state", "Values": ["available"]},
                ],
            )["Images"]
        except (ClientError, BotoCoreError) as exc:
            images = []
            problems.append(f"aws.ami: looking up the Debian 12 image failed ({_error_text(exc)}).")
        else:
            if not images:
                problems.append(
                    f"aws.ami: no Debian 12 {result.architecture} image from Debian (owner {DEBIAN_OWNER}) "
                    f"in {aws.region}. Fix: set aws.ami to a Debian 12 image id available in the region."
                )
        if images:
            result.ami_id = max(images, key=lambda i: i.get("CreationDate", ""))["ImageId"]

    # vCPU quota: what the cohort needs plus what already runs must fit.
    if result.vcpus_per_host is not None and _instance_family_is_standard(aws.instance_type):
        problems += _quota_problems(roster, session, ec2, result, quotas_client)

    return result


def _running_standard_vcpus(ec2: Any, cohort: str) -> int:
    """vCPUs of running Standard-family instances, minus the cohort's own (re-runs)."""
    counts: dict[str, int] = {}
    paginator = ec2.get_paginator("describe_instances")
    for page in paginator.paginate(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
    ):
        for reservation in page["Reservations"]:
            for inst in reservation["Instances"]:
                tags = tag_dict(inst.get("Tags"))
                if tags.get(MANAGED_BY_KEY) == MANAGED_BY_VALUE and tags.get("cohort") == cohort:
                    continue  # already part of this cohort: counted in its need
                itype = inst["InstanceType"]
                if _instance_family_is_standard(itype):
                    counts[itype] = counts.get(itype, 0) + 1
    vcpus: dict[str, int] = {}
    for chunk in batches(sorted(counts), INSTANCE_TYPES_PER_CALL):
        for info in ec2.describe_instance_types(InstanceTypes=chunk)["InstanceTypes"]:
            vcpus[info["InstanceType"]] = int(info["VCpuInfo"]["DefaultVCpus"])
    return sum(n * vcpus.get(t, 0) for t, n in counts.items())


def _quota_value(quotas: Any) -> float:
    try:
        return float(
            quotas.get_service_quota(ServiceCode=VCPU_QUOTA_SERVICE, QuotaCode=VCPU_QUOTA_CODE)["Quota"][
                "Value"
            ]
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchResourceException":
            raise
    # Accounts that never changed the quota may only have the default.
    return float(
        quotas.get_aws_default_service_quota(ServiceCode=VCPU_QUOTA_SERVICE, QuotaCode=VCPU_QUOTA_CODE)[
            "Quota"
        ]["Value"]
    )


def _quota_problems(
    roster: Roster, session: Any, ec2: Any, result: PreflightResult, quotas_client: Any
) -> list[str]:
    aws = roster.aws
    assert aws is not None and result.vcpus_per_host is not None
    quotas = quotas_client or session.client("service-quotas", region_name=aws.region)
    try:
        limit = _quota_value(quotas)
    except (ClientError, BotoCoreError) as exc:
        return [
            f"vCPU quota: could not read {VCPU_QUOTA_CODE} (Running On-Demand Standard instances) in "
            f"{aws.region} ({_error_text(exc)}). Fix: allow servicequotas:GetServiceQuota for these "
            "credentials so the cohort is checked before anything is paid for."
        ]
    try:
        running = _running_standard_vcpus(ec2, roster.cohort)
    except (ClientError, BotoCoreError) as exc:
        return [f"vCPU quota: could not count running instances ({_error_text(exc)})."]
    generator = (
        result.generator_vcpus
        if aws.load_generator and _instance_family_is_standard(aws.load_generator)
        else 0
    )
    need = result.hosts * result.vcpus_per_host + generator
    if need + running > limit:
        per_student = result.hosts // max(len(roster.students), 1)
        return [
            f"vCPU quota: the cohort needs {need} vCPUs ({len(roster.students)} students x {per_student} "
            f"hosts x {result.vcpus_per_host} vCPUs of {aws.instance_type}"
            + (f", plus {generator} of the load generator" if generator else "")
            + f") and {running} already run, "
            f"but the On-Demand Standard quota ({VCPU_QUOTA_CODE}) in {aws.region} is {limit:g}. "
            f"Fix: request at least {need + running:g} in Service Quotas, pick a smaller instance type, "
            "or split the cohort."
        ]
    return []


def preflight(roster: Roster, session: Any = None, **kwargs: Any) -> list[str]:
    """Every reason the cohort cannot be created in its AWS account; empty when it can."""
    return run_preflight(roster, session, **kwargs).problems


def check_or_raise(roster: Roster, session: Any = None, **kwargs: Any) -> PreflightResult:
    """Run preflight; raise one PreflightError listing every problem, before anything is created."""
    result = run_preflight(roster, session, **kwargs)
    if result.problems:
        raise PreflightError(roster.path, result.problems)
    return result
