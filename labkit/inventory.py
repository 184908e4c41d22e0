"""Build the Ansible inventory, ssh_config and known_hosts of a cohort from ``lab_hosts``.

The inventory is generated (never hand-edited): groups per student, per host role
and per scenario, so playbooks and graders address the same hosts by the same names
whichever engine (local nspawn or AWS) made them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from labkit import paths
from labkit.roster import Roster
from labkit.state import atomic_write


class Unsafe(str):
    """Roster text in the inventory: written with YAML's ``!unsafe`` tag, so Ansible never renders it as a template."""


class _InventoryDumper(yaml.SafeDumper):
    pass


_InventoryDumper.add_representer(Unsafe, lambda dumper, data: dumper.represent_scalar("!unsafe", str(data)))


class _InventoryLoader(yaml.SafeLoader):
    pass


_InventoryLoader.add_constructor("!unsafe", lambda loader, node: Unsafe(loader.construct_scalar(node)))


def read_inventory(path: Path) -> dict:
    """A generated hosts.yml as data (its ``!unsafe`` roster text comes back as :class:`Unsafe`)."""
    return yaml.load(path.read_text(), Loader=_InventoryLoader) or {}  # noqa: S506 - a SafeLoader subclass


def group_name(kind: str, value: str) -> str:
    return f"{kind}_{value.replace('-', '_')}"


def cohort_files(folder: Path) -> dict[str, Path]:
    return {
        "hosts": folder / "hosts.yml",
        "lab_hosts": folder / "lab_hosts.json",
        "ssh_config": folder / "ssh_config",
        "known_hosts": folder / "known_hosts",
        "credentials": folder / "credentials",
        "ssh_key": folder / ".ssh" / "id_ed25519",
        "host_vars": folder / "host_vars",
        "tf_data": folder / ".terraform",
        "tf_state": folder / "terraform.tfstate",
        "tfvars": folder / "fleet.auto.tfvars.json",
        "logs": folder / "logs",
        "access": folder / "access.json",
        "load_generator": folder / "load_generator.json",
        "student_access": folder / "student-access",
    }


def ensure_controller_key(folder: Path) -> Path:
    """The cohort's controller key pair (admin's way into every lab host), created once."""
    key = cohort_files(folder)["ssh_key"]
    if not key.exists():
        key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"labkit@{folder.name}", "-f", str(key)],
            check=True,
            capture_output=True,
        )
    return key


def _memory_mib(scenario: str, role: str) -> int:
    from labkit.fleet.cgroups import parse_size
    from labkit.scenario import load_scenario

    wanted = (load_scenario(scenario, strict=False).data.get("resources") or {}).get(role) or {}
    return parse_size(wanted.get("memory", "768M")) // 2**20


def lab_address(h: dict[str, Any]) -> str:
    """The address lab traffic uses: on AWS the private one (security groups match it), else ``address``."""
    return h.get("lab_address") or h["address"]


def _cohort_host(h: dict[str, Any], role: str) -> dict[str, Any]:
    """Host variables of a cohort-wide host (bastion, load generator): the controller's way in, and its role."""
    return {
        "ansible_host": h["address"],
        "ansible_user": h["ssh_user"],
        "ansible_ssh_private_key_file": str(Path(h["ssh_private_key_file"]).resolve()),
        "lab_role": role,
        "lab_hostname": h["name"],
    }


def build_inventory(
    roster: Roster,
    lab_hosts: list[dict[str, Any]],
    pip_extra_args: str,
    host_key_checking: str = "yes",
    host_extra: dict[str, dict[str, Any]] | None = None,
    bastion: dict[str, Any] | None = None,
    load_generator: dict[str, Any] | None = None,
) -> dict:
    files = cohort_files(roster.folder)
    known = files["known_hosts"].resolve()
    hosts: dict[str, dict] = {}
    children: dict[str, dict] = {}
    by_student: dict[str, dict[str, dict]] = {}
    for h in lab_hosts:
        by_student.setdefault(h["student"], {})[h["role"]] = h
    from labkit.scenario import load_scenario

    scenario = load_scenario(roster.scenario, strict=False)
    for h in sorted(lab_hosts, key=lambda x: x["name"]):
        student = roster.student(h["student"])
        lab = by_student[h["student"]]
        endpoints = scenario.endpoints({r: lab_address(p) for r, p in lab.items()})
        hosts[h["name"]] = {
            "ansible_host": h["address"],
            "ansible_user": h["ssh_user"],
            "ansible_ssh_private_key_file": str(Path(h["ssh_private_key_file"]).resolve()),
            "lab_student": student.id,
            "lab_student_name": Unsafe(student.name),
            "lab_student_ssh_public_key": Unsafe(student.ssh_public_key),
            "lab_role": h["role"],
            "lab_address": lab_address(h),
            "lab_hostname": h["name"],
            "lab_broker_address": endpoints.get("rabbitmq", lab_address(h)),
            "lab_endpoints": endpoints,
            # The host's memory limit (the scenario's resources for its role): RabbitMQ's watermark follows it.
            "lab_memory_mib": _memory_mib(roster.scenario, h["role"]),
            "lab_peers": {r: lab_address(p) for r, p in sorted(lab.items())},
            **(host_extra or {}).get(h["name"], {}),
        }
        for group in (
            group_name("student", h["student"]),
            group_name("role", h["role"]),
            group_name("scenario", h["scenario"]),
        ):
            children.setdefault(group, {"hosts": {}})["hosts"][h["name"]] = None
    if bastion:
        # The cohort's bastion: its own group, outside the labs (site.yml's lab plays run on all:!bastion).
        children["bastion"] = {
            "hosts": {
                bastion["name"]: {
                    **_cohort_host(bastion, "bastion"),
                    # The kit's own image: no interpreter discovery (under Mitogen it raced and failed this play).
                    "ansible_python_interpreter": "/usr/bin/python3",
                    "bastion_admin_from": bastion["gateway"],
                    "bastion_access": f"{bastion['access']['address']}:{bastion['access']['port']}",
                    "bastion_students": [
                        {
                            "id": s.id,
                            "key": Unsafe(s.ssh_public_key),
                            "permit": bastion["students"].get(s.id, []),
                        }
                        for s in roster.students
                    ],
                    **(host_extra or {}).get(bastion["name"], {}),
                }
            }
        }
    if load_generator:
        # The cohort's load generator (AWS, aws.load_generator): Locust's workers near the brokers; no lab's group.
        children["load_generator"] = {
            "hosts": {
                load_generator["name"]: {
                    **_cohort_host(load_generator, "load_generator"),
                    **(host_extra or {}).get(load_generator["name"], {}),
                }
            }
        }
    return {
        "all": {
            "vars": {
                "labkit_cohort": roster.cohort,
                "labkit_scenario": roster.scenario,
                "labkit_target": roster.target,
                "labkit_repo": str(paths.REPO),
                "labkit_credentials_dir": str(files["credentials"].resolve()),
                "labkit_pip_extra_args": pip_extra_args,
                "ansible_ssh_common_args": (
                    f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking={host_key_checking} -o IdentitiesOnly=yes "
                    # Names in clear: student-access reads the pinned keys back by name (a hashing default in
                    # /etc/ssh/ssh_config would make them unreadable).
                    "-o HashKnownHosts=no"
                ),
            },
            "hosts": hosts,
            "children": dict(sorted(children.items())),
        }
    }


def ssh_config(lab_hosts: list[dict[str, Any]], known_hosts: Path, host_key_checking: str = "yes") -> str:
    blocks = []
    for h in sorted(lab_hosts, key=lambda x: x["name"]):
        blocks.append(
            f"Host {h['name']} {h['address']}\n"
            f"  HostName {h['address']}\n"
            f"  User {h['ssh_user']}\n"
            f"  IdentityFile {Path(h['ssh_private_key_file']).resolve()}\n"
            "  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {known_hosts.resolve()}\n"
            f"  StrictHostKeyChecking {host_key_checking}\n"
            "  HashKnownHosts no\n"
            "  BatchMode yes\n"
            "  ConnectTimeout 10\n"
        )
    return "# Generated by labkit from lab_hosts; do not edit.\n" + "\n".join(blocks)


def write_cohort_files(
    roster: Roster,
    lab_hosts: list[dict[str, Any]],
    host_keys: dict[str, str],
    pip_extra_args: str,
    host_extra: dict[str, dict[str, Any]] | None = None,
    bastion: dict[str, Any] | None = None,
    load_generator: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write lab_hosts.json, hosts.yml, ssh_config and known_hosts (and access.json with a bastion); return paths."""
    files = cohort_files(roster.folder)
    files["credentials"].mkdir(mode=0o700, exist_ok=True)
    os.chmod(files["credentials"], 0o700)
    atomic_write(files["lab_hosts"], json.dumps(lab_hosts, indent=2) + "\n")
    # Local hosts' keys are read off their disks before boot: pin them. Cloud hosts' keys are
    # only known once they answer: trust on first use, then pinned in known_hosts.
    checking = "yes" if all(h["name"] in host_keys for h in lab_hosts) else "accept-new"
    inv = build_inventory(roster, lab_hosts, pip_extra_args, checking, host_extra, bastion, load_generator)
    atomic_write(
        files["hosts"],
        "# Generated by labkit from lab_hosts; do not edit.\n"
        + yaml.dump(inv, Dumper=_InventoryDumper, sort_keys=False, default_flow_style=False),
    )
    if bastion:
        atomic_write(
            files["access"],
            json.dumps(
                {k: bastion[k] for k in ("name", "address", "access", "host_key")}
                | {"host_keys": {n: k for n, k in sorted(host_keys.items()) if n != bastion["name"]}},
                indent=2,
            )
            + "\n",
        )
    else:
        files["access"].unlink(missing_ok=True)
    if load_generator:
        atomic_write(files["load_generator"], json.dumps(load_generator, indent=2) + "\n")
    else:
        files["load_generator"].unlink(missing_ok=True)
    admin_hosts = [*lab_hosts, *([{**bastion, "address": bastion["address"]}] if bastion else []),
                   *([load_generator] if load_generator else [])]  # fmt: skip
    by_name = {h["name"]: h for h in admin_hosts}
    if host_keys or not files["known_hosts"].is_file():
        atomic_write(
            files["known_hosts"],
            "".join(
                f"{name},{by_name[name]['address']} {key}\n"
                for name, key in sorted(host_keys.items())
                if name in by_name
            ),
        )
    atomic_write(files["ssh_config"], ssh_config(admin_hosts, files["known_hosts"], checking))
    return files


def load_lab_hosts(folder: Path) -> list[dict[str, Any]]:
    path = cohort_files(folder)["lab_hosts"]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no lab hosts yet. Fix: run `labkit fleet up {folder}` first.")
    return json.loads(path.read_text())
