"""Helpers shared by the AWS fleet tests: rosters, keys, and fleets built through boto3."""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import boto3
from botocore.stub import Stubber

from labkit.aws.preflight import VCPU_QUOTA_CODE

REGION = "eu-west-1"
DEBIAN_AMD64 = "ami-0d3e1a5b7c9f0a001"
DEBIAN_ARM64 = "ami-0d3e1a5b7c9f0a002"
OTHER_AMI = "ami-0a1b2c3d4e5f60003"


def ssh_key(seed: int, key_type: str = "ssh-ed25519") -> str:
    """A well-formed OpenSSH public key line (no ssh-keygen per student: 120 would be slow)."""
    filler = seed.to_bytes(4, "big") * 8  # 32 bytes: an ed25519 point's size
    if key_type == "ssh-ed25519":
        fields = [key_type.encode(), filler]
    elif key_type == "ssh-rsa":
        fields = [key_type.encode(), b"\x01\x00\x01", b"\x00" + filler * 8]
    elif key_type.startswith("ecdsa-sha2-"):
        fields = [key_type.encode(), key_type.rsplit("-", 1)[1].encode(), b"\x04" + filler * 2]
    else:
        raise ValueError(key_type)
    blob = b"".join(struct.pack(">I", len(f)) + f for f in fields)
    return f"{key_type} {base64.b64encode(blob).decode()} student{seed}@example"


def write_roster(
    folder: Path,
    students: int = 3,
    *,
    cohort: str = "demo",
    aws_extra: dict | None = None,
    expires_at: str | None = "2026-12-24T00:00:00Z",
) -> Path:
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "cohort": cohort,
        "scenario": "queue-segregation",
        "target": "aws",
        "students": [
            {"id": f"s{i:03d}", "name": f"Student {i}", "ssh_public_key": ssh_key(i)} for i in range(students)
        ],
        "aws": {"region": REGION, "instance_type": "t3.small", "allowed_ssh_cidrs": ["203.0.113.0/24"]}
        | (aws_extra or {}),
    }
    if expires_at:
        data["expires_at"] = expires_at
    (folder / "cohort.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


def kit_tags(
    cohort: str, student: str, role: str, expires_at: str, scenario: str = "queue-segregation"
) -> list[dict]:
    tags = {
        "managed_by": "labkit",
        "cohort": cohort,
        "student": student,
        "role": role,
        "scenario": scenario,
        "expires_at": expires_at,
        "Name": f"{cohort}-{student}-{role}" if role != "*" else f"{cohort}-{student}",
    }
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def spec(resource_type: str, tags: list[dict]) -> dict:
    return {"ResourceType": resource_type, "Tags": tags}


def build_cohort(
    session: boto3.Session,
    cohort: str,
    students: list[str],
    roles: tuple[str, ...] = ("broker", "worker"),
    *,
    expires_at: str = "2026-12-24T00:00:00Z",
    launch_templates: bool = True,
    load_generator: bool = False,
) -> dict[str, list[str]]:
    """Create what terraform/modules/lab_fleet_aws creates, with its tags, through boto3 (with ``load_generator``
    its load-generator host: own group, ssh from the controller, each lab's group admits it on the load ports)."""
    ec2 = session.client("ec2")
    shared = kit_tags(cohort, "*", "*", expires_at)
    made: dict[str, list[str]] = {k: [] for k in ("vpcs", "subnets", "internet_gateways", "route_tables")}
    made |= {k: [] for k in ("security_groups", "key_pairs", "instances", "launch_templates")}
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16", TagSpecifications=[spec("vpc", shared)])["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(
        VpcId=vpc,
        CidrBlock="10.0.0.0/20",
        AvailabilityZone=f"{REGION}a",
        TagSpecifications=[spec("subnet", shared)],
    )["Subnet"]["SubnetId"]
    igw = ec2.create_internet_gateway(TagSpecifications=[spec("internet-gateway", shared)])[
        "InternetGateway"
    ]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    rtb = ec2.create_route_table(VpcId=vpc, TagSpecifications=[spec("route-table", shared)])["RouteTable"][
        "RouteTableId"
    ]
    ec2.create_route(RouteTableId=rtb, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)
    ec2.associate_route_table(RouteTableId=rtb, SubnetId=subnet)
    made["vpcs"].append(vpc)
    made["subnets"].append(subnet)
    made["internet_gateways"].append(igw)
    made["route_tables"].append(rtb)
    for sid in students:
        student_tags = kit_tags(cohort, sid, "*", expires_at)
        made["key_pairs"].append(
            ec2.import_key_pair(
                KeyName=f"{cohort}-{sid}",
                PublicKeyMaterial=ssh_key(len(made["key_pairs"])).encode(),
                TagSpecifications=[spec("key-pair", student_tags)],
            )["KeyPairId"]
        )
        sg = ec2.create_security_group(
            GroupName=f"{cohort}-{sid}-lab",
            Description=f"lab of {sid}",
            VpcId=vpc,
            TagSpecifications=[spec("security-group", student_tags)],
        )["GroupId"]
        ec2.authorize_security_group_ingress(
            GroupId=sg,
            IpPermissions=[
                {
                    "IpProtocol": "tcp",
                    "FromPort": 22,
                    "ToPort": 22,
                    "IpRanges": [{"CidrIp": "203.0.113.0/24"}],
                },
                {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": sg}]},
            ],
        )
        made["security_groups"].append(sg)
        for role in roles:
            tags = kit_tags(cohort, sid, role, expires_at)
            if launch_templates:
                made["launch_templates"].append(
                    ec2.create_launch_template(
                        LaunchTemplateName=f"{cohort}-{sid}-{role}",
                        LaunchTemplateData={"ImageId": "ami-0d3e1a5b7c9f0a001", "InstanceType": "t3.small"},
                        TagSpecifications=[spec("launch-template", tags)],
                    )["LaunchTemplate"]["LaunchTemplateId"]
                )
            made["instances"].append(_run_instance(ec2, subnet, sg, tags, key_name=f"{cohort}-{sid}"))
    if load_generator:
        tags = [t if t["Key"] != "Name" else {"Key": "Name", "Value": f"{cohort}-load-generator"}
                for t in kit_tags(cohort, "*", "load_generator", expires_at)]  # fmt: skip
        lg_sg = ec2.create_security_group(
            GroupName=f"{cohort}-load-generator", Description="load generator", VpcId=vpc,
            TagSpecifications=[spec("security-group", tags)],
        )["GroupId"]  # fmt: skip
        ec2.authorize_security_group_ingress(
            GroupId=lg_sg,
            IpPermissions=[
                {
                    "IpProtocol": "tcp",
                    "FromPort": 22,
                    "ToPort": 22,
                    "IpRanges": [{"CidrIp": "198.51.100.7/32"}],
                }
            ],
        )
        for sg in list(made["security_groups"]):
            ec2.authorize_security_group_ingress(
                GroupId=sg,
                IpPermissions=[
                    {
                        "IpProtocol": "tcp",
                        "FromPort": 5672,
                        "ToPort": 5672,
                        "UserIdGroupPairs": [{"GroupId": lg_sg}],
                    }
                ],
            )
            ec2.authorize_security_group_egress(
                GroupId=lg_sg,
                IpPermissions=[
                    {
                        "IpProtocol": "tcp",
                        "FromPort": 5672,
                        "ToPort": 5672,
                        "UserIdGroupPairs": [{"GroupId": sg}],
                    }
                ],
            )
        made["security_groups"].append(lg_sg)
        made["instances"].append(_run_instance(ec2, subnet, lg_sg, tags))
    return made


def _run_instance(ec2, subnet: str, sg: str, tags: list[dict], key_name: str | None = None) -> str:
    """One instance as the module's launch templates make it: in the lab subnet, its group, a public address."""
    return ec2.run_instances(
        ImageId="ami-0d3e1a5b7c9f0a001",
        InstanceType="t3.small",
        MinCount=1,
        MaxCount=1,
        **({"KeyName": key_name} if key_name else {}),
        NetworkInterfaces=[
            {"DeviceIndex": 0, "SubnetId": subnet, "Groups": [sg], "AssociatePublicIpAddress": True,
             "DeleteOnTermination": True}
        ],
        TagSpecifications=[spec("instance", tags), spec("volume", tags)],
    )["Instances"][0]["InstanceId"]  # fmt: skip


def build_foreign(session: boto3.Session, cohort: str) -> dict[str, str]:
    """Resources the kit must never touch: same cohort tag and old expiry, no managed_by=labkit."""
    ec2 = session.client("ec2")
    impostor = [
        {"Key": "cohort", "Value": cohort},
        {"Key": "managed_by", "Value": "someone-else"},
        {"Key": "expires_at", "Value": "2000-01-01T00:00:00Z"},
    ]
    untagged_like = [
        {"Key": "cohort", "Value": cohort},
        {"Key": "expires_at", "Value": "2000-01-01T00:00:00Z"},
    ]
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16", TagSpecifications=[spec("vpc", impostor)])["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(
        VpcId=vpc, CidrBlock="10.9.0.0/24", TagSpecifications=[spec("subnet", impostor)]
    )["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(
        GroupName="not-ours",
        Description="x",
        VpcId=vpc,
        TagSpecifications=[spec("security-group", untagged_like)],
    )["GroupId"]
    key = ec2.import_key_pair(
        KeyName="not-ours",
        PublicKeyMaterial=ssh_key(999).encode(),
        TagSpecifications=[spec("key-pair", impostor)],
    )["KeyPairId"]
    instance = ec2.run_instances(
        ImageId="ami-0d3e1a5b7c9f0a001",
        InstanceType="t3.micro",
        MinCount=1,
        MaxCount=1,
        SubnetId=subnet,
        SecurityGroupIds=[sg],
        TagSpecifications=[spec("instance", impostor)],
    )["Instances"][0]["InstanceId"]
    plain = ec2.run_instances(
        ImageId="ami-0d3e1a5b7c9f0a001", InstanceType="t3.micro", MinCount=1, MaxCount=1
    )["Instances"][0]["InstanceId"]
    return {"vpc": vpc, "subnet": subnet, "sg": sg, "key": key, "instance": instance, "plain_instance": plain}


def assert_foreign_intact(session: boto3.Session, foreign: dict[str, str]) -> None:
    ec2 = session.client("ec2")
    states = {
        i["InstanceId"]: i["State"]["Name"]
        for r in ec2.describe_instances(InstanceIds=[foreign["instance"], foreign["plain_instance"]])[
            "Reservations"
        ]
        for i in r["Instances"]
    }
    assert states == {foreign["instance"]: "running", foreign["plain_instance"]: "running"}
    assert ec2.describe_vpcs(VpcIds=[foreign["vpc"]])["Vpcs"]
    assert ec2.describe_subnets(SubnetIds=[foreign["subnet"]])["Subnets"]
    assert ec2.describe_security_groups(GroupIds=[foreign["sg"]])["SecurityGroups"]
    assert foreign["key"] in [k["KeyPairId"] for k in ec2.describe_key_pairs()["KeyPairs"]]


class CallRecorder:
    """Records every EC2 request's filter values and id-list sizes (botocore event hook)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, params: dict, model, **_: object) -> None:
        values = sum(len(f.get("Values", [])) for f in params.get("Filters", []) or [])
        lists = [len(v) for k, v in params.items() if isinstance(v, list) and k != "Filters"]
        self.calls.append((model.name, max([values, *lists])))

    def attach(self, session: boto3.Session) -> CallRecorder:
        session.events.register("provide-client-params.ec2.*", self)
        return self

    @property
    def largest(self) -> int:
        return max((n for _, n in self.calls), default=0)


def quota_client(value: float | None, *, calls: int = 1):
    """A service-quotas client answering GetServiceQuota(ec2, L-1216C47A) with ``value``.

    Only this client is a botocore Stubber: moto_server serves no EC2 quotas (its
    service-quotas backend knows VPC quotas only). ``None`` answers AccessDenied.
    """
    client = boto3.client("service-quotas", region_name=REGION)
    stubber = Stubber(client)
    for _ in range(calls):
        if value is None:
            stubber.add_client_error("get_service_quota", "AccessDeniedException", "not allowed", 400)
        else:
            stubber.add_response(
                "get_service_quota",
                {"Quota": {"ServiceCode": "ec2", "QuotaCode": VCPU_QUOTA_CODE, "Value": value}},
                {"ServiceCode": "ec2", "QuotaCode": VCPU_QUOTA_CODE},
            )
    stubber.activate()
    return client
