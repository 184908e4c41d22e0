"""Roster (inventories/<cohort>/cohort.yml) loading and validation.

Everything is checked before anything is created. Every problem names the file,
the student and the field, and says what would fix it; all problems are reported
at once so an instructor fixes the roster in one pass.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from labkit import paths

COHORT_RE = re.compile(r"^[a-z][a-z0-9-]{0,20}$")
# POSIX-portable user name as useradd accepts it; also a valid DNS label part.
STUDENT_ID_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
TARGETS = ("local", "aws")
# Free text (a student's name) reaches Ansible, Terraform, reports and /etc/passwd's comment field: it may not carry
# control characters, template syntax (Jinja, Terraform's ${ } and %{ }) or a ':' (the passwd field separator).
NAME_MAX = 100
TEMPLATE_MARKERS = ("{{", "}}", "{%", "%}", "{#", "#}", "${", "%{")
AWS_FIELDS = frozenset(
    {
        "region",
        "instance_type",
        "allowed_ssh_cidrs",
        "ami",
        "availability_zone",
        "controller_cidrs",
        "load_generator",
    }
)
AMI_RE = re.compile(r"^ami-[0-9a-f]{8,17}$")
AZ_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d[a-z]$")
SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
# Length-prefixed fields in each key type's wire format (RFC 4253, 5656, 8709; PROTOCOL.u2f).
SSH_KEY_FIELDS = {
    "ssh-ed25519": 2,
    "ssh-rsa": 3,
    "ecdsa-sha2-nistp256": 3,
    "ecdsa-sha2-nistp384": 3,
    "ecdsa-sha2-nistp521": 3,
    "sk-ssh-ed25519@openssh.com": 3,
    "sk-ecdsa-sha2-nistp256@openssh.com": 4,
}
# Accounts the lab hosts already have or the roles create: a student may not shadow them.
RESERVED_IDS = frozenset(
    [
        "root",
        "daemon",
        "bin",
        "sys",
        "sync",
        "games",
        "man",
        "lp",
        "mail",
        "news",
        "uucp",
        "proxy",
        "www-data",
        "backup",
        "list",
        "irc",
        "gnats",
        "nobody",
        "systemd-network",
        "systemd-resolve",
        "systemd-timesync",
        "messagebus",
        "sshd",
        "_apt",
        "rabbitmq",
        "redis",
        "celery",
        "flower",
        "supervisor",
        "admin",
        "labkit",
    ]
)


class RosterError(Exception):
    """The roster is invalid; ``problems`` lists every problem found."""

    def __init__(self, path: Path, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"{self.path}: {len(self.problems)} problem(s); nothing was created:"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


@dataclass(frozen=True)
class Student:
    id: str
    name: str
    ssh_public_key: str


@dataclass(frozen=True)
class AwsSettings:
    region: str
    instance_type: str
    allowed_ssh_cidrs: tuple[str, ...]
    ami: str | None = None
    availability_zone: str | None = None
    controller_cidrs: tuple[str, ...] = ()
    # The cohort's load-generator host inside the VPC (Locust workers near the brokers): its instance type, or None.
    load_generator: str | None = None


@dataclass(frozen=True)
class AccessSettings:
    """Where students' ssh reaches the cohort's bastion (None: the kit's default, chosen once and kept)."""

    address: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class Roster:
    path: Path
    cohort: str
    scenario: str
    target: str
    students: tuple[Student, ...]
    expires_at: str | None = None
    aws: AwsSettings | None = None
    access: AccessSettings = AccessSettings()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.path.parent

    def student(self, student_id: str) -> Student:
        for s in self.students:
            if s.id == student_id:
                return s
        raise KeyError(student_id)


def parse_ssh_public_key(text: str) -> str | None:
    """Return None when ``text`` is one well-formed OpenSSH public key line, else why not."""
    parts = text.strip().split()
    if "\n" in text.strip():
        return "holds more than one line; give exactly one key"
    if len(parts) < 2:
        return "expected '<type> <base64> [comment]'"
    key_type, blob = parts[0], parts[1]
    if key_type not in SSH_KEY_TYPES:
        return f"unknown key type {key_type!r} (allowed: {', '.join(SSH_KEY_TYPES)})"
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return "the key body is not valid base64 (was it cut or wrapped?)"
    fields = _ssh_fields(raw)
    if fields is None or not fields or fields[0].decode("ascii", "replace") != key_type:
        return f"the key body does not encode a {key_type} key (was the key truncated or its type edited?)"
    if len(fields) != SSH_KEY_FIELDS[key_type] or (key_type == "ssh-ed25519" and len(fields[1]) != 32):
        return f"the key body is not a complete {key_type} key (was it truncated?)"
    return None


def _ssh_fields(raw: bytes) -> list[bytes] | None:
    """Split an SSH wire-format blob into its length-prefixed fields; None if they don't tile it."""
    fields, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            return None
        (n,) = struct.unpack(">I", raw[i : i + 4])
        if i + 4 + n > len(raw):
            return None
        fields.append(raw[i + 4 : i + 4 + n])
        i += 4 + n
    return fields


def name_problem(name: str) -> str | None:
    """None when ``name`` is plain text the kit may put anywhere, else why not."""
    if len(name) > NAME_MAX:
        return f"longer than {NAME_MAX} characters"
    bad = sorted(
        {f"U+{ord(c):04X}" for c in name if ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029"}
    )
    if bad:
        return f"holds control characters ({', '.join(bad)})"
    marks = [m for m in TEMPLATE_MARKERS if m in name]
    if marks:
        return f"holds template syntax ({' '.join(marks)}), which the kit refuses in roster text"
    if ":" in name or "\\" in name:
        return "holds ':' or '\\' (field separators of account files)"
    return None


def _fmt_student(index: int, sid: Any) -> str:
    return f"students[{index}] (id {sid!r})" if sid is not None else f"students[{index}]"


def known_scenarios() -> list[str]:
    return sorted(p.parent.name for p in paths.SCENARIOS.glob("*/scenario.yml"))


def load_roster(folder_or_file: str | Path) -> Roster:
    """Load and validate a roster; raise RosterError listing every problem."""
    path = Path(folder_or_file)
    if path.is_dir() or not path.suffix:
        path = path / "cohort.yml"
    problems: list[str] = []
    if not path.is_file():
        raise RosterError(path, ["file not found. Fix: create it (see inventories/demo/cohort.yml)."])
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RosterError(path, [f"not valid YAML: {exc}"]) from exc
    if not isinstance(data, dict):
        raise RosterError(path, ["top level must be a mapping with cohort, scenario, target, students."])

    cohort = data.get("cohort")
    if not isinstance(cohort, str) or not COHORT_RE.match(cohort):
        problems.append(
            f"cohort: {cohort!r} is not a valid cohort name. Fix: 1-21 characters, lower-case letters, "
            "digits and '-', starting with a letter (e.g. 'spring26')."
        )

    scenario = data.get("scenario")
    scenarios = known_scenarios()
    if scenario not in scenarios:
        problems.append(
            f"scenario: unknown scenario {scenario!r}. Fix: use one of: {', '.join(scenarios) or '(none)'}."
        )
    else:
        from labkit.scenario import ScenarioError, load_scenario

        try:
            load_scenario(scenario)
        except ScenarioError as exc:
            problems.append(f"scenario: {scenario!r} is not usable: {exc}")

    target = data.get("target", "local")
    if target not in TARGETS:
        problems.append(f"target: unknown target {target!r}. Fix: use one of: {', '.join(TARGETS)}.")

    expires_at = data.get("expires_at")
    if expires_at is not None:
        if isinstance(expires_at, dt.datetime):
            if expires_at.tzinfo is None:
                expires_at = expires_at.replace(tzinfo=dt.UTC)
            expires_at = expires_at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        else:
            try:
                parsed = dt.datetime.fromisoformat(str(expires_at).replace("Z", "+00:00"))
                if parsed.tzinfo is None:
                    raise ValueError("no time zone")
                expires_at = parsed.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            except ValueError:
                problems.append(
                    f"expires_at: {expires_at!r} is not an ISO 8601 UTC time. "
                    "Fix: write it like 2026-12-24T00:00:00Z."
                )
                expires_at = None

    students: list[Student] = []
    raw_students = data.get("students")
    if not isinstance(raw_students, list) or not raw_students:
        problems.append(
            "students: missing or empty. Fix: list at least one student with id and ssh_public_key."
        )
        raw_students = []
    seen: dict[str, int] = {}
    # Ids become Ansible group names (student_<id with - as _>) and host names: two ids may not map to one.
    seen_groups: dict[str, int] = {}
    for i, entry in enumerate(raw_students):
        if not isinstance(entry, dict):
            problems.append(f"students[{i}]: must be a mapping with id, name and ssh_public_key.")
            continue
        sid = entry.get("id")
        where = _fmt_student(i, sid)
        sid_ok = isinstance(sid, str) and bool(STUDENT_ID_RE.match(sid))
        if not sid_ok:
            problems.append(
                f"{where}: id: not a valid Linux user name. Fix: 1-32 characters, lower-case letters, digits, "
                "'_' and '-', starting with a letter or '_' (e.g. 's01')."
            )
        elif sid in RESERVED_IDS:
            problems.append(
                f"{where}: id: {sid!r} is a system or service account on lab hosts. Fix: pick another id."
            )
        elif sid in seen:
            problems.append(
                f"{where}: id: duplicate of students[{seen[sid]}]. Fix: give every student a unique id; "
                "ids key their machines, so never reuse or renumber them."
            )
        elif sid.replace("-", "_") in seen_groups:
            other = seen_groups[sid.replace("-", "_")]
            problems.append(
                f"{where}: id: {sid!r} and students[{other}] ({raw_students[other].get('id')!r}) name the same "
                "Ansible group once '-' becomes '_'. Fix: make ids differ by more than '-' and '_'."
            )
        if sid_ok:
            seen.setdefault(sid, i)
            seen_groups.setdefault(sid.replace("-", "_"), i)

        key, key_problem = _student_key(path.parent, entry)
        if key_problem:
            problems.append(f"{where}: {key_problem}")
        name = entry.get("name") or (sid if isinstance(sid, str) else "")
        if not isinstance(name, str):
            problems.append(f'{where}: name: must be text. Fix: quote it, e.g. name: "Ada Lovelace".')
            name = ""
        why = name_problem(name)
        if why:
            problems.append(f"{where}: name: {why}. Fix: write the student's name as plain text.")
        if sid_ok and key and not key_problem and not why:
            students.append(Student(id=sid, name=str(name), ssh_public_key=key))

    aws = None
    if target == "aws":
        aws, aws_problems = _aws_settings(data.get("aws"))
        problems += aws_problems

    access, access_problems = _access_settings(data.get("access"))
    problems += access_problems

    if problems:
        raise RosterError(path, problems)
    known = {"cohort", "scenario", "target", "expires_at", "students", "aws", "access"}
    return Roster(
        path=path.resolve(),
        cohort=cohort,
        scenario=scenario,
        target=target,
        students=tuple(students),
        expires_at=expires_at,
        aws=aws,
        access=access,
        extra={k: v for k, v in data.items() if k not in known},
    )


def _student_key(folder: Path, entry: dict[str, Any]) -> tuple[str | None, str | None]:
    inline, key_file = entry.get("ssh_public_key"), entry.get("ssh_public_key_file")
    if inline and key_file:
        return None, "ssh_public_key and ssh_public_key_file are both set. Fix: keep one."
    if key_file:
        kf = Path(key_file)
        kf = kf if kf.is_absolute() else folder / kf
        if not kf.is_file():
            return None, (
                f"ssh_public_key_file: {kf} does not exist. Fix: put the student's .pub file there "
                "or paste the key as ssh_public_key."
            )
        inline, field_name = kf.read_text(), "ssh_public_key_file"
    elif inline:
        field_name = "ssh_public_key"
    else:
        return (
            None,
            "ssh_public_key: missing. Fix: paste the student's public key (one line of their .pub file).",
        )
    why = parse_ssh_public_key(str(inline))
    if why:
        return (
            None,
            f"{field_name}: malformed SSH public key: {why}. Fix: paste the single line of the .pub file.",
        )
    # Only the key's type and body: its comment is free text the student wrote, and nothing needs it.
    return " ".join(str(inline).strip().split()[:2]), None


def _aws_settings(raw: Any) -> tuple[AwsSettings | None, list[str]]:
    problems: list[str] = []
    if not isinstance(raw, dict):
        return None, ["aws: missing. Fix: target aws needs aws: {region, instance_type, allowed_ssh_cidrs}."]
    region = raw.get("region")
    if not isinstance(region, str) or not re.match(r"^[a-z]{2}(-[a-z]+)+-\d$", region):
        problems.append(f"aws.region: {region!r} is not an AWS region name. Fix: e.g. eu-west-1.")
    itype = raw.get("instance_type")
    if not isinstance(itype, str) or not re.match(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$", itype):
        problems.append(f"aws.instance_type: {itype!r} is not an instance type. Fix: e.g. t3.small.")
    cidrs = raw.get("allowed_ssh_cidrs")
    if not isinstance(cidrs, list) or not cidrs:
        problems.append(
            "aws.allowed_ssh_cidrs: missing. Fix: list the networks students ssh from, e.g. [203.0.113.0/24]."
        )
        cidrs = []
    for c in cidrs:
        try:
            ipaddress.ip_network(str(c), strict=True)
        except ValueError:
            problems.append(f"aws.allowed_ssh_cidrs: {c!r} is not a CIDR block. Fix: e.g. 203.0.113.0/24.")
    ami, az = raw.get("ami"), raw.get("availability_zone")
    if ami is not None and not (isinstance(ami, str) and AMI_RE.match(ami)):
        problems.append(
            f"aws.ami: {ami!r} is not an AMI id. Fix: e.g. ami-0123456789abcdef0, or leave it out."
        )
    if az is not None and not (isinstance(az, str) and AZ_RE.match(az)):
        problems.append(
            f"aws.availability_zone: {az!r} is not a zone name. Fix: e.g. eu-west-1b, or leave it out."
        )
    controller = raw.get("controller_cidrs") or []
    if not isinstance(controller, list):
        problems.append(
            "aws.controller_cidrs: must be a list. Fix: e.g. [198.51.100.7/32], the controller's address."
        )
        controller = []
    for c in controller:
        try:
            net = ipaddress.ip_network(str(c), strict=True)
            if net.version != 4 or net.prefixlen == 0:
                raise ValueError
        except ValueError:
            problems.append(
                f"aws.controller_cidrs: {c!r} is not an IPv4 CIDR block of the controller. Fix: e.g. 198.51.100.7/32."
            )
    load_generator = _load_generator_type(raw.get("load_generator", False), itype, problems)
    unknown = sorted(set(raw) - AWS_FIELDS)
    if unknown:
        problems.append(f"aws: unknown field(s) {', '.join(map(repr, unknown))}. Fix: remove them.")
    if problems:
        return None, problems
    return (
        AwsSettings(
            region=region,
            instance_type=itype,
            allowed_ssh_cidrs=tuple(str(c) for c in cidrs),
            ami=raw.get("ami"),
            availability_zone=raw.get("availability_zone"),
            controller_cidrs=tuple(str(c) for c in controller),
            load_generator=load_generator,
        ),
        [],
    )


def _load_generator_type(raw: Any, instance_type: Any, problems: list[str]) -> str | None:
    """``aws.load_generator``: false (none), true (one host of the labs' instance type) or {instance_type: ...}."""
    fix = "Fix: true, false, or {instance_type: c6i.large}."
    if raw is False or raw is None:
        return None
    if raw is True:
        return instance_type if isinstance(instance_type, str) else None
    if isinstance(raw, dict) and set(raw) <= {"instance_type"}:
        itype = raw.get("instance_type", instance_type)
        if isinstance(itype, str) and re.match(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$", itype):
            return itype
        problems.append(f"aws.load_generator.instance_type: {itype!r} is not an instance type. {fix}")
        return None
    problems.append(f"aws.load_generator: {raw!r} is not a load-generator setting. {fix}")
    return None


def _access_settings(raw: Any) -> tuple[AccessSettings, list[str]]:
    """``access: {address, port}``: the IPv4 address and TCP port students' ssh uses to reach the bastion."""
    if raw is None:
        return AccessSettings(), []
    if not isinstance(raw, dict):
        return AccessSettings(), [
            "access: must be a mapping. Fix: e.g. access: {address: 192.0.2.10, port: 2201}, or leave it out."
        ]
    problems: list[str] = []
    address, port = raw.get("address"), raw.get("port")
    if address is not None:
        try:
            ip = ipaddress.ip_address(str(address))
            if ip.version != 4 or ip.is_unspecified or ip.is_loopback or ip.is_multicast:
                raise ValueError
            address = str(ip)
        except ValueError:
            problems.append(
                f"access.address: {address!r} is not an IPv4 address students can reach. Fix: the classroom "
                "address of this machine (e.g. 192.0.2.10), or leave it out for this machine's primary address."
            )
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 1024 <= port <= 65535
    ):
        problems.append(
            f"access.port: {port!r} is not a TCP port from 1024 to 65535. Fix: e.g. 2201, or leave it out "
            "(the kit then picks one once and keeps it)."
        )
    unknown = sorted(set(raw) - {"address", "port"})
    if unknown:
        problems.append(f"access: unknown field(s) {', '.join(map(repr, unknown))}. Fix: remove them.")
    if problems:
        return AccessSettings(), problems
    return AccessSettings(address=address, port=port), []
