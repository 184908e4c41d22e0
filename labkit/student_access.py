"""`labkit student-access`: one student's connection kit for their own laptop.

Two files a student keeps together in one folder on their laptop (``~/.ssh/labkit-<cohort>/`` unless told):

- ``ssh_config``: a ``Host`` alias per lab host of theirs (``<cohort>-<id>-<role>``), and ``<cohort>-<id>-ui``, which
  forwards the web UIs the handout uses (Flower, the RabbitMQ management UI) to ``127.0.0.1`` on the laptop. On the
  local fleet every alias goes through the cohort's bastion (``ProxyJump``), which lets each student open only their
  own hosts' ssh and those UIs. On AWS the hosts take ssh straight from the roster's ``allowed_ssh_cidrs``.
- ``known_hosts``: the pinned host keys (``StrictHostKeyChecking yes``): the kit read them off the hosts' disks
  (local) or pinned them at the controller's first contact (AWS); a student never trusts a key on first use.

Nothing in either file is secret (addresses, user name, public host keys); the private key stays on the laptop.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from labkit.inventory import cohort_files, lab_address, load_lab_hosts
from labkit.roster import Roster, RosterError
from labkit.scenario import load_scenario
from labkit.state import atomic_write

Out = Callable[[str], None]
KEY_FILES = {"ssh-ed25519": "id_ed25519", "ssh-rsa": "id_rsa", "sk-ssh-ed25519@openssh.com": "id_ed25519_sk"}


def default_folder(cohort: str) -> str:
    return f"~/.ssh/labkit-{cohort}"


def default_identity(public_key: str) -> str:
    kind = public_key.split()[0]
    name = KEY_FILES.get(kind) or ("id_ecdsa_sk" if kind.startswith("sk-") else "id_ecdsa")
    return f"~/.ssh/{name}"


def _pinned(folder: Path, names: list[str], addresses: dict[str, str]) -> dict[str, str]:
    """Host name -> "type key" from the cohort's known_hosts (lines "name,address type key")."""
    path = cohort_files(folder)["known_hosts"]
    keys: dict[str, str] = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        parts = line.split()
        if len(parts) >= 3:
            for token in parts[0].split(","):
                for name in names:
                    if token in (name, addresses.get(name)):
                        keys.setdefault(name, f"{parts[1]} {parts[2]}")
    return keys


def build(
    roster: Roster, student_id: str, laptop_dir: str | None = None, identity: str | None = None
) -> dict:
    """The student's ssh_config and known_hosts (text) and the commands they run; refused with a fix if not ready."""
    try:
        student = roster.student(student_id)
    except KeyError:
        raise RosterError(
            roster.path,
            [
                f"--student {student_id!r}: not in the roster. Fix: use one of: {', '.join(s.id for s in roster.students)}."
            ],
        ) from None
    folder = roster.folder
    mine = sorted((h for h in load_lab_hosts(folder) if h["student"] == student.id), key=lambda h: h["name"])
    if not mine:
        raise FileNotFoundError(f"{student.id} has no lab hosts yet. Fix: run `labkit up {folder}` first.")
    laptop_dir = (laptop_dir or default_folder(roster.cohort)).rstrip("/")
    identity = identity or default_identity(student.ssh_public_key)
    scenario = load_scenario(roster.scenario)
    uis = scenario.student_ports({h["role"]: lab_address(h) for h in mine})
    ui_alias = f"{roster.cohort}-{student.id}-ui"
    blocks: list[str] = []
    known: list[str] = []
    if roster.target == "local":
        info_path = cohort_files(folder)["access"]
        if not info_path.is_file():
            raise FileNotFoundError(
                f"{info_path}: the cohort has no bastion yet. Fix: run `labkit up {folder}`."
            )
        info = json.loads(info_path.read_text())
        jump = info["name"]
        entry = info["access"]
        blocks.append(
            f"Host {jump}\n  HostName {entry['address']}\n  Port {entry['port']}\n  HostKeyAlias {jump}\n"
        )
        known.append(f"{jump} {info['host_key']}")
        for h in mine:
            blocks.append(
                f"Host {h['name']}\n  HostName {h['address']}\n  ProxyJump {jump}\n  HostKeyAlias {h['name']}\n"
            )
            known.append(f"{h['name']} {info['host_keys'][h['name']]}")
        if uis:
            forwards = "".join(f"  LocalForward 127.0.0.1:{p} {a}:{p}\n" for _, a, p in uis)
            blocks.append(
                f"Host {ui_alias}\n  HostName {entry['address']}\n  Port {entry['port']}\n  HostKeyAlias {jump}\n"
                f"{forwards}  ExitOnForwardFailure yes\n"
            )
        pattern = f"{jump} {roster.cohort}-{student.id}-*"
        how = f"through the class bastion at {entry['address']} port {entry['port']}"
    else:
        pins = _pinned(folder, [h["name"] for h in mine], {h["name"]: h["address"] for h in mine})
        missing = [h["name"] for h in mine if h["name"] not in pins]
        if missing:
            raise FileNotFoundError(
                f"no pinned host key yet for {', '.join(missing)}. Fix: run `labkit up {folder}` (the controller "
                "pins each host's key at first contact), then run this again."
            )
        for h in mine:
            blocks.append(f"Host {h['name']}\n  HostName {h['address']}\n  HostKeyAlias {h['name']}\n")
            known.append(f"{h['name']} {pins[h['name']]}")
        if uis:
            first = mine[0]
            forwards = "".join(f"  LocalForward 127.0.0.1:{p} {a}:{p}\n" for _, a, p in uis)
            blocks.append(
                f"Host {ui_alias}\n  HostName {first['address']}\n  HostKeyAlias {first['name']}\n"
                f"{forwards}  ExitOnForwardFailure yes\n"
            )
        pattern = f"{roster.cohort}-{student.id}-*"
        how = "straight to your hosts (ssh is open to your classroom's network)"
    blocks.append(
        f"Host {pattern}\n  User {student.id}\n  IdentityFile {identity}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {laptop_dir}/known_hosts\n  StrictHostKeyChecking yes\n  UpdateHostKeys no\n"
        "  ServerAliveInterval 30\n  ConnectTimeout 15\n"
    )
    first = mine[0]["name"]
    config = (
        f"# Celery Lab Kit: your lab in cohort {roster.cohort} (student {student.id}), {how}.\n"
        f"# Keep this file and known_hosts together in {laptop_dir}/ on your laptop, then:\n"
        f"#   ssh -F {laptop_dir}/ssh_config {first}\n"
        f"# Your key: {identity} (change IdentityFile below if yours is elsewhere).\n\n" + "\n".join(blocks)
    )
    commands = [
        f"mkdir -p {laptop_dir} && cp ssh_config known_hosts {laptop_dir}/",
        f"ssh -F {laptop_dir}/ssh_config {first}",
    ]
    ui_lines = []
    if uis:
        ui_lines = [f"ssh -F {laptop_dir}/ssh_config -N {ui_alias}"] + [
            f"  then open http://127.0.0.1:{p}/  ({name})" for name, _, p in uis
        ]
    return {
        "student": student.id,
        "ssh_config": config,
        "known_hosts": "\n".join(known) + "\n",
        "hosts": [h["name"] for h in mine],
        "ui_alias": ui_alias if uis else None,
        "ui_ports": [(name, p) for name, _, p in uis],
        "commands": commands,
        "ui": ui_lines,
    }


def write(roster: Roster, kit: dict) -> Path:
    """Write the kit under inventories/<cohort>/student-access/<id>/ (nothing secret; the folder is git-ignored)."""
    where = cohort_files(roster.folder)["student_access"] / kit["student"]
    where.mkdir(parents=True, exist_ok=True)
    atomic_write(where / "ssh_config", kit["ssh_config"], mode=0o644)
    atomic_write(where / "known_hosts", kit["known_hosts"], mode=0o644)
    return where


def main(
    roster: Roster, student_ids: list[str], laptop_dir: str | None, identity: str | None, out: Out = print
) -> int:
    for sid in student_ids:
        kit = build(roster, sid, laptop_dir, identity)
        where = write(roster, kit)
        out(f"# {where}/ssh_config\n{kit['ssh_config']}")
        out(f"# {where}/known_hosts\n{kit['known_hosts']}")
        out(f"# {kit['student']}: send them both files; on their laptop, in the folder holding them:")
        out("\n".join(f"  {c}" for c in kit["commands"]))
        if kit["ui"]:
            out("# the web UIs on their laptop (leave it running):")
            out("\n".join(f"  {c}" for c in kit["ui"]))
    return 0
