"""Scenario definitions (scenarios/<name>/scenario.yml), checked against one schema.

A scenario folder holds ``scenario.yml`` (topology, starting state, load, rubric, mutants), ``checks/`` (the
pytest checks that grade it), ``app/`` (the Celery app), ``solution/`` (the reference fix: ``vars.yml`` keyed by
host role, and an optional ``app/`` overlay) and ``mutants/<name>/`` (near-miss solutions, same layout).
Every message names the file, the field and the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from labkit import paths

REQUIRED = ("name", "title", "module", "topology", "rubric")
KNOWN_KEYS = {
    "name", "title", "module", "topology", "resources", "app_package", "pools", "task_routes", "load",
    "rubric", "starting_state_fails", "mutants", "grading", "student_ports", "app_settings", "redis_persistence",
}  # fmt: skip
# Components a topology may use: each is an Ansible role of the same name.
COMPONENTS = (
    "rabbitmq", "redis", "redis_exporter", "prometheus", "alertmanager", "haproxy", "flower", "celery_workers",
)  # fmt: skip
# RabbitMQ on several host roles is one cluster (the first role in topology order is its seed, and the lab's broker
# address); a cluster has at least this many nodes (a quorum queue needs a majority of its members to survive one).
MIN_CLUSTER_NODES = 3
# Web UIs a handout may send students to (scenario.yml `student_ports`): name -> (component serving it, TCP port).
# A student reaches these, and ssh, on their own lab hosts through the cohort's bastion; nothing else.
STUDENT_PORTS = {
    "flower": ("flower", 5555),
    "rabbitmq-management": ("rabbitmq", 15672),
    "prometheus": ("prometheus", 9090),
    "alertmanager": ("alertmanager", 9093),
}
# TCP ports the controller reaches on a lab host for what it runs (grading probes, load, the management API); ssh
# (22) always. On AWS these are the only lab ports the security groups open to the controller (controller_ports).
COMPONENT_PORTS = {
    "rabbitmq": (5672, 15672, 15692),
    "redis": (6379,),
    "redis_exporter": (9121,),
    "flower": (5555,),
    "prometheus": (9090,),
    "alertmanager": (9093,),
}
RUBRIC_KEYS = {"id", "role", "weight", "title", "hint"}
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
CHECK_MARK_RE = re.compile(r"""@pytest\.mark\.check\(\s*["']([^"']+)["']""")
# Variables the kit wires itself (playbooks/vars/lab_wiring.yml): a solution cannot set them (play vars win).
WIRING_PREFIXES = ("labkit_", "lab_", "student_access_")


def load_request_name(task: str, queue: str | None, broker: str = "rabbitmq") -> str:
    """How the load names a task of its mix: ``<task> [<queue>]``, plus `` via redis`` through the Redis broker."""
    via = "" if broker == "rabbitmq" else f" via {broker}"
    return f"{task} [{queue or 'default'}]{via}"


class ScenarioError(Exception):
    pass


@dataclass(frozen=True)
class Scenario:
    name: str
    folder: Path
    data: dict[str, Any]

    @property
    def file(self) -> Path:
        return self.folder / "scenario.yml"

    @property
    def roles(self) -> list[str]:
        """Host roles of a lab, in topology order (any names the scenario chooses)."""
        return list(self.data["topology"])

    @property
    def rubric(self) -> list[dict[str, Any]]:
        return self.data["rubric"]

    @property
    def rabbitmq_roles(self) -> list[str]:
        """Host roles running RabbitMQ, in topology order: one, or the nodes of a cluster (the first is its seed)."""
        return [r for r, comps in self.data["topology"].items() if "rabbitmq" in (comps or [])]

    @property
    def load(self) -> dict[str, Any]:
        return self.data.get("load") or {}

    @property
    def starting_state_fails(self) -> list[str]:
        return list(self.data.get("starting_state_fails", []))

    @property
    def mutants(self) -> list[dict[str, Any]]:
        return list(self.data.get("mutants") or [])

    def mutant(self, name: str) -> dict[str, Any]:
        for m in self.mutants:
            if m["name"] == name:
                return m
        known = ", ".join(m["name"] for m in self.mutants) or "(none)"
        raise ScenarioError(f"{self.file}: no mutant {name!r}. Fix: use one of: {known}.")

    def rubric_entry(self, check_id: str) -> dict[str, Any]:
        for entry in self.rubric:
            if entry["id"] == check_id:
                return entry
        raise KeyError(f"check {check_id!r} is not in the rubric of {self.file}")

    def load_request_names(self) -> set[str]:
        """The Locust request names of the load profile's task mix (one row each in the load report)."""
        return {
            load_request_name(t["name"], t.get("queue"), t.get("broker", "rabbitmq"))
            for t in self.load.get("tasks") or []
        }

    def controller_ports(self) -> list[int]:
        """Ports the controller reaches on this scenario's lab hosts: ssh, each component's (COMPONENT_PORTS) and the
        ports the checks read besides (``grading: {ports: [...]}`` in scenario.yml, e.g. the workers' /metrics)."""
        ports = {22}
        for components in self.data["topology"].values():
            for c in components:
                ports.update(COMPONENT_PORTS.get(c, ()))
        ports.update(int(p) for p in (self.data.get("grading") or {}).get("ports") or [])
        return sorted(ports)

    def role_of(self, component: str) -> str | None:
        """The host role that runs ``component`` (rabbitmq, redis, flower, celery_workers), or None."""
        for role, components in self.data["topology"].items():
            if component in components:
                return role
        return None

    def endpoints(self, lab: dict[str, str]) -> dict[str, str]:
        """Where each service of one lab is: {component: address}, from {host role: address}.

        The one place the kit resolves endpoints: the inventory (Ansible), the load and the graders use it.
        """
        return {c: lab[r] for c in COMPONENTS if (r := self.role_of(c)) and r in lab}

    def student_ports(self, lab: dict[str, str]) -> list[tuple[str, str, int]]:
        """The web UIs the handout uses, as (name, address, port) of one lab, from {host role: address}."""
        ends = self.endpoints(lab)
        out = []
        for name in self.data.get("student_ports") or []:
            component, port = STUDENT_PORTS[name]
            if component in ends:
                out.append((name, ends[component], port))
        return out


def _fail(path: Path, problems: list[str]) -> None:
    if problems:
        raise ScenarioError(f"{path}: " + "\n  ".join(["invalid scenario:", *problems]))


def _ids(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def validate(data: Any, folder: Path) -> list[str]:
    """Problems with a scenario definition, each naming the field and the fix (empty when valid)."""
    if not isinstance(data, dict):
        return ["top level must be a mapping (name, title, module, topology, rubric, ...)."]
    problems = [f"{k}: missing. Fix: add it (see scenarios/queue-segregation/scenario.yml)." for k in REQUIRED
                if k not in data]  # fmt: skip
    problems += [f"{k}: unknown key. Fix: remove it or use one of {sorted(KNOWN_KEYS)}." for k in data
                 if k not in KNOWN_KEYS]  # fmt: skip
    if problems:
        return problems
    if data["name"] != folder.name:
        problems.append(f"name: {data['name']!r} must equal the folder name {folder.name!r}.")
    topology = data["topology"]
    if not isinstance(topology, dict) or not topology:
        return [*problems, "topology: must map host roles to lists of components."]
    for role, comps in topology.items():
        if not NAME_RE.match(str(role)):
            problems.append(f"topology.{role}: host role names are lower-case letters, digits and '-'.")
        elif role == "bastion":
            problems.append(
                "topology.bastion: the kit's own host role (the cohort's bastion). Fix: rename it."
            )
        bad = [c for c in comps if c not in COMPONENTS] if isinstance(comps, list) else [comps]
        if bad:
            problems.append(
                f"topology.{role}: unknown components {bad}. Fix: use some of {list(COMPONENTS)}."
            )
    for comp in ("rabbitmq", "redis"):
        holders = [r for r, c in topology.items() if isinstance(c, list) and comp in c]
        if comp == "rabbitmq" and len(holders) > 1:
            if len(holders) < MIN_CLUSTER_NODES:
                problems.append(
                    f"topology: rabbitmq runs on {holders}: a cluster needs at least {MIN_CLUSTER_NODES} nodes "
                    "(a quorum queue keeps serving only while a majority of its members runs). Fix: add a node or "
                    "keep RabbitMQ on one host role."
                )
        elif len(holders) > 1:
            problems.append(
                f"topology: {comp} runs on {holders}; a lab has one. Fix: keep it on one host role."
            )
    ports = data.get("student_ports") or []
    if not isinstance(ports, list):
        problems.append(f"student_ports: must be a list. Fix: some of {sorted(STUDENT_PORTS)}.")
        ports = []
    for name in ports:
        if name not in STUDENT_PORTS:
            problems.append(f"student_ports: unknown {name!r}. Fix: use some of {sorted(STUDENT_PORTS)}.")
        elif not any(STUDENT_PORTS[name][0] in (c or []) for c in topology.values() if isinstance(c, list)):
            problems.append(
                f"student_ports: {name!r} needs component {STUDENT_PORTS[name][0]!r}, which the topology lacks. "
                "Fix: remove it or add the component."
            )
    for role in data.get("resources") or {}:
        if role not in topology:
            problems.append(f"resources.{role}: not a host role of the topology {list(topology)}.")
    if any("celery_workers" in (c or []) for c in topology.values() if isinstance(c, list)):
        if not isinstance(data.get("pools"), list) or not data["pools"]:
            problems.append("pools: a topology with celery_workers needs the starting worker pools.")
        if not (folder / "app" / str(data.get("app_package", "labapp")) / "tasks.py").is_file():
            problems.append(
                f"app_package: {folder}/app/{data.get('app_package', 'labapp')}/tasks.py not found."
            )
    grading = data.get("grading") or {}
    if (
        not isinstance(grading, dict)
        or set(grading) - {"ports"}
        or not all(isinstance(p, int) and 0 < p < 65536 for p in grading.get("ports") or [])
    ):
        problems.append(
            "grading: only `ports` (TCP ports the checks read on lab hosts besides the components' own), "
            "a list of port numbers. Fix: e.g. grading: {ports: [9808]}."
        )
    components = {c for comps in topology.values() if isinstance(comps, list) for c in comps}
    for i, task in enumerate((data.get("load") or {}).get("tasks") or []):
        broker = task.get("broker", "rabbitmq") if isinstance(task, dict) else None
        if broker not in ("rabbitmq", "redis") or broker not in components:
            problems.append(
                f"load.tasks[{i}].broker: {broker!r} must be rabbitmq or redis, a component of the topology "
                f"({sorted(components)}). Fix: drop it (RabbitMQ) or name a broker the lab runs."
            )

    rubric = data["rubric"]
    if not isinstance(rubric, list) or not rubric:
        return [*problems, "rubric: must be a non-empty list of checks."]
    ids: list[str] = []
    for i, entry in enumerate(rubric):
        where = f"rubric[{i}]"
        if not isinstance(entry, dict) or "id" not in entry:
            problems.append(f"{where}: needs id, role, weight, title and hint.")
            continue
        cid = str(entry["id"])
        where = f"rubric[{i}] ({cid})"
        ids.append(cid)
        missing = sorted(RUBRIC_KEYS - set(entry))
        if missing:
            problems.append(f"{where}: missing {missing}.")
        if entry.get("role") not in topology:
            problems.append(
                f"{where}: role {entry.get('role')!r} is not a host role of the topology {list(topology)}."
            )
        weight = entry.get("weight")
        if not isinstance(weight, int | float) or weight < 0:
            problems.append(f"{where}: weight must be a number >= 0.")
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        problems.append(f"rubric: ids must be unique; repeated: {dupes}.")

    fails = _ids(data.get("starting_state_fails"))
    unknown = sorted(set(fails) - set(ids))
    if unknown:
        problems.append(f"starting_state_fails: {unknown} are not rubric ids.")
    if not fails:
        problems.append(
            "starting_state_fails: list the checks a student must fix (the untouched lab fails them)."
        )
    for entry in rubric:
        if not isinstance(entry, dict) or "id" not in entry:
            continue
        counts = float(entry.get("weight") or 0) > 0
        if counts and entry["id"] not in fails:
            problems.append(
                f"rubric ({entry['id']}): passes in the starting state, so it is a precondition: weight must be 0 "
                "(points are for student work only)."
            )
        if not counts and entry["id"] in fails:
            problems.append(f"rubric ({entry['id']}): a check the student must fix needs a weight > 0.")

    names = []
    for i, mutant in enumerate(data.get("mutants") or []):
        where = f"mutants[{i}]"
        if not isinstance(mutant, dict) or not {"name", "description", "must_fail"} <= set(mutant):
            problems.append(f"{where}: needs name, description and must_fail.")
            continue
        name = str(mutant["name"])
        names.append(name)
        where = f"mutants[{i}] ({name})"
        must = _ids(mutant["must_fail"])
        if not NAME_RE.match(name):
            problems.append(f"{where}: names are lower-case letters, digits and '-'.")
        if not must:
            problems.append(f"{where}: must_fail must list the checks this near-miss fails.")
        if sorted(set(must) - set(ids)):
            problems.append(f"{where}: must_fail {sorted(set(must) - set(ids))} are not rubric ids.")
        if sorted(must) == sorted(fails):
            problems.append(f"{where}: must_fail equals starting_state_fails; a mutant must be a near miss.")
        mfolder = folder / "mutants" / name
        if not ((mfolder / "vars.yml").is_file() or (mfolder / "app").is_dir()):
            problems.append(f"{where}: {mfolder}/vars.yml or {mfolder}/app/ must exist.")
    if len(names) != len(set(names)):
        problems.append("mutants: names must be unique.")
    for label, sub in [
        ("solution", folder / "solution"),
        *((f"mutants/{n}", folder / "mutants" / n) for n in names),
    ]:
        problems += _solution_problems(label, sub, topology)
    return problems


def _solution_problems(label: str, folder: Path, topology: dict[str, Any]) -> list[str]:
    # A solution or mutant may also act, as a student would by hand (tasks/<host role>.yml, run by solve.yml: the
    # solution's before the roles apply its settings, a mutant's after them).
    problems = [
        f"{label}: {tasks} must be tasks/<host role>.yml for a host role of the topology {list(topology)}."
        for tasks in (sorted((folder / "tasks").glob("*")) if (folder / "tasks").is_dir() else [])
        if tasks.suffix != ".yml" or tasks.stem not in topology
    ]
    path = folder / "vars.yml"
    if not path.is_file():
        return problems + (
            [] if label != "solution" or (folder / "app").is_dir() else [f"{label}: {path} not found."]
        )
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        return [*problems, f"{path}: must map host roles to variables."]
    for role, values in data.items():
        if role not in topology:
            problems.append(f"{path}: {role!r} is not a host role of the topology {list(topology)}.")
        elif not isinstance(values, dict):
            problems.append(f"{path}: {role}: must be a mapping of role variables.")
        else:
            wired = sorted(k for k in values if str(k).startswith(WIRING_PREFIXES))
            if wired:
                problems.append(
                    f"{path}: {role}: {wired} are wired by the kit (lab_wiring.yml) and cannot be set here."
                )
    return problems


COMMON_CHECK_RE = re.compile(r"""@pytest\.mark\.check\(\s*["']([^"']+)["']\)\s*\ndef (\w+)""")
IMPORT_COMMON_RE = re.compile(r"from grading\.common import (\([^)]*\)|[^\n]+)")


def implemented_checks(folder: Path) -> dict[str, list[str]]:
    """Rubric ids marked in ``checks/*.py`` (or imported there from grading/common.py) -> files holding them.

    A static read: nothing is imported."""
    common = {
        name: cid for cid, name in COMMON_CHECK_RE.findall((paths.REPO / "grading" / "common.py").read_text())
    }
    found: dict[str, list[str]] = {}
    for path in sorted((folder / "checks").glob("*.py")):
        text = path.read_text()
        ids = CHECK_MARK_RE.findall(text)
        for names in IMPORT_COMMON_RE.findall(text):
            ids += [common[n.strip()] for n in names.strip("()").split(",") if n.strip() in common]
        for cid in ids:
            found.setdefault(cid, []).append(path.name)
    return found


def check_implementations(scenario: Scenario) -> list[str]:
    """Rubric ids without a check, and marked ids that are not in the rubric."""
    found = implemented_checks(scenario.folder)
    ids = [e["id"] for e in scenario.rubric]
    problems = [f"rubric ({i}): no check in {scenario.folder / 'checks'} is marked @pytest.mark.check({i!r})."
                for i in ids if i not in found]  # fmt: skip
    problems += [f"checks/{', '.join(files)}: marks {cid!r}, which is not a rubric id." for cid, files in found.items()
                 if cid not in ids]  # fmt: skip
    return problems


def load_scenario(name: str, scenarios_dir: Path | None = None, *, strict: bool = True) -> Scenario:
    """Load and validate ``scenarios/<name>/scenario.yml`` (``strict`` also checks every rubric id has a check)."""
    base = Path(scenarios_dir) if scenarios_dir else paths.SCENARIOS
    folder = base / name
    path = folder / "scenario.yml"
    if not path.is_file():
        raise ScenarioError(f"{path}: no such scenario")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from None
    _fail(path, validate(data, folder))
    scenario = Scenario(name=name, folder=folder, data=data)
    if strict and (folder / "checks").is_dir():
        _fail(path, check_implementations(scenario))
    return scenario
