"""`labkit fleet up|down` for target local: allocation -> Terraform -> inventory."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from labkit import inventory, paths, terraform
from labkit.fleet import access, bake, firewall, images, local
from labkit.roster import Roster, RosterError
from labkit.scenario import load_scenario
from labkit.state import PlanRefused, atomic_write

ENV_DIR = paths.TERRAFORM / "envs" / "local"
TF_PARALLELISM = 8
Out = Callable[[str], None]


def labkit_command() -> str:
    exe = Path(sys.executable).with_name("labkit")
    return str(exe) if exe.exists() else (shutil.which("labkit") or "labkit")


def tf_paths(folder: Path) -> tuple[Path, Path, Path]:
    files = inventory.cohort_files(folder)
    return files["tf_data"], files["tf_state"], files["tfvars"]


def desired_hosts(roster: Roster) -> list[tuple[str, str, str]]:
    scenario = load_scenario(roster.scenario)
    return [
        (f"{roster.cohort}-{s.id}-{role}", s.id, role) for s in roster.students for role in scenario.roles
    ]


def plan(roster: Roster) -> dict[str, list[str]]:
    """What ``fleet up`` would do to the cohort's hosts: {"add": [...], "remove": [...], "replace": [...], "keep": [...]}.

    A host is replaced when its student's lab changes shape under it (another scenario or role for the same name).
    """
    _, _, tfvars = tf_paths(roster.folder)
    previous = json.loads(tfvars.read_text()).get("hosts", {}) if tfvars.is_file() else {}
    wanted = {name: (student, role) for name, student, role in desired_hosts(roster)}
    out: dict[str, list[str]] = {"add": [], "remove": [], "replace": [], "keep": []}
    for name in sorted(set(previous) | set(wanted)):
        if name not in previous:
            out["add"].append(name)
        elif name not in wanted:
            out["remove"].append(name)
        elif (
            previous[name].get("scenario") != roster.scenario or previous[name].get("role") != wanted[name][1]
        ):
            out["replace"].append(name)
        else:
            out["keep"].append(name)
    return out


def print_plan(title: str, steps: dict[str, list[str]], out: Out = print) -> None:
    """The plan's counts, then one line per host it adds (+), removes (-) or replaces (~)."""
    out(
        f"{title}: {len(steps['add'])} to add, {len(steps['remove'])} to remove, "
        f"{len(steps['replace'])} to replace, {len(steps['keep'])} kept"
    )
    for kind in ("add", "remove", "replace"):
        for name in steps[kind]:
            out(f"  {'+' if kind == 'add' else '-' if kind == 'remove' else '~'} {name} ({kind})")


def confirm_plan(roster: Roster, steps: dict[str, list[str]], yes: bool, out: Out = print) -> None:
    """Print the plan; ask before removing or replacing hosts (students' work goes with them), unless ``yes``.

    Without a terminal the question is never asked: the plan is refused and the flag named.
    """
    if steps["add"] or steps["remove"] or steps["replace"]:
        print_plan(f"fleet up {roster.cohort}: plan", steps, out)
    destructive = steps["remove"] + steps["replace"]
    if not destructive or yes:
        return
    what = f"{len(destructive)} host(s) and everything the students made on them"
    if not sys.stdin.isatty():
        raise PlanRefused(
            f"fleet up {roster.cohort}: refused: this would destroy {what} ({', '.join(destructive)}). "
            "Fix: run again with --yes if that is what you want (or put the students back in the roster)."
        )
    answer = input(f"Destroy {what}? Type yes to go on: ").strip().lower()
    if answer != "yes":
        raise PlanRefused(f"fleet up {roster.cohort}: nothing done (the answer was not yes)")


def student_targets(roster: Roster, hosts: dict[str, dict], by_student: bool = False):
    """What the bastion lets each student open: ssh on each of their hosts, and the web UIs their handout uses.

    A list of (address, port) for the whole cohort (the filter's bound), or {student: [(address, port)]} (sshd's).
    """
    scenario = load_scenario(roster.scenario)
    labs: dict[str, dict[str, str]] = {}
    for h in hosts.values():
        labs.setdefault(h["student"], {})[h["role"]] = h["address"]
    out: dict[str, list[tuple[str, int]]] = {}
    for sid, lab in sorted(labs.items()):
        pairs = [(a, 22) for _, a in sorted(lab.items())]
        pairs += [(a, p) for _, a, p in scenario.student_ports(lab)]
        out[sid] = pairs
    if by_student:
        return out
    return sorted({p for pairs in out.values() for p in pairs})


def write_tfvars(roster: Roster) -> dict:
    folder = roster.folder
    data_dir, state, tfvars = tf_paths(folder)
    previous = json.loads(tfvars.read_text()) if tfvars.is_file() else {}
    network = local.allocate_network(roster.cohort)
    wanted = desired_hosts(roster)
    addresses = local.allocate_addresses(
        network, [h for h, _, _ in wanted], {k: v["address"] for k, v in previous.get("hosts", {}).items()}
    )
    hosts = {}
    for name, student, role in wanted:
        peers = {n: addresses[n] for n, s, _ in wanted if s == student}
        hosts[name] = {
            "address": addresses[name],
            "student": student,
            "role": role,
            "scenario": roster.scenario,
            "etc_hosts": peers,
        }
    variables = {
        "cohort": roster.cohort,
        "network": {"bridge": network.bridge, "cidr": network.cidr, "gateway": network.gateway},
        "hosts": hosts,
        "labkit_command": labkit_command(),
        "ssh_private_key_file": str(inventory.ensure_controller_key(folder).resolve()),
        "bastion": {"address": access.bastion_address(network.cidr), "scenario": roster.scenario},
    }
    atomic_write(tfvars, json.dumps(variables, indent=2, sort_keys=True) + "\n")
    return variables


def _show_progress(line: str) -> None:
    """From Terraform's output keep what an instructor wants to watch: each host's progress and the outcome."""
    if "(local-exec): [labkit" in line:
        print(line.split("(local-exec): ", 1)[1], flush=True)
    elif line.startswith(("Apply complete", "Destroy complete", "No changes", "Error", "│ Error")):
        print(f"  terraform: {line}", flush=True)


def _tf(folder: Path, args: list[str], out: Out = print) -> int:
    data_dir, state, tfvars = tf_paths(folder)
    terraform.init(ENV_DIR, data_dir, state.resolve())
    log = data_dir / f"{args[0]}.log"
    code = terraform.stream_terraform(
        ENV_DIR,
        [*args, "-input=false", "-no-color", f"-var-file={tfvars.resolve()}"],
        data_dir,
        log,
        _show_progress,
    )
    if code != 0:
        tail = log.read_text().splitlines()[-15:]
        out(f"terraform {args[0]} failed (exit {code}); last lines of {log}:\n  " + "\n  ".join(tail))
    return code


def component_sets(roster: Roster) -> dict[str, list[str]]:
    """Host role -> every component role its hosts run (what their image bakes)."""
    topology = load_scenario(roster.scenario).data["topology"]
    return {role: bake.components(comps) for role, comps in topology.items()}


def baked_vars(roster: Roster, host: str, sets: dict[str, list[str]], keys: dict[str, str]) -> dict:
    """``<role>_install: false`` for the components baked into this host's image, if that bake is current."""
    record = local.host_state(roster.cohort, host) / "initialized"
    made_on = json.loads(record.read_text()).get("bake_key") if record.is_file() else None
    role = json.loads(record.read_text()).get("role") if record.is_file() else None
    comps = sets.get(role or "", [])
    if not made_on or made_on != keys.get(",".join(comps)):
        return {}
    return {f"{c}_install": False for c in comps}


RESERVE_MIB = (
    512  # memory kept for the controller (limits are caps: 15 labs used about 10 GB of their 22.5 GiB)
)


def memory_mib() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("MemTotal:"))


def running_elsewhere_mib(cohort: str) -> int:
    """Memory limits of the lab hosts other cohorts run on this machine."""
    total = 0
    fleet = paths.STATE_DIR / "fleet"
    for record in fleet.glob("*/hosts/*/initialized") if fleet.is_dir() else []:
        other = record.parent.parent.parent.name
        if other == cohort or local.host_status(other, record.parent.name) != "running":
            continue
        spec = json.loads(record.read_text())
        with contextlib.suppress(Exception):
            total += local.resources(spec["scenario"], spec["role"]).memory_bytes // 2**20
    return total


def check_capacity(roster: Roster, steps: dict[str, list[str]] | None = None) -> None:
    """Refuse a cohort whose hosts' memory limits (the scenario's ``resources``) do not fit this machine, before
    anything is made; say the largest class that would."""
    scenario = load_scenario(roster.scenario)
    per_student = sum(local.resources(roster.scenario, role).memory_bytes // 2**20 for role in scenario.roles)
    budget = memory_mib() - RESERVE_MIB - running_elsewhere_mib(roster.cohort)
    need = per_student * len(roster.students)
    if need > budget:
        largest = max(budget // per_student, 0)
        raise RosterError(
            roster.path,
            [
                f"students: {len(roster.students)} labs need {need} MiB (the memory limits of "
                f"{len(scenario.roles)} hosts × {per_student // len(scenario.roles)} MiB each in scenario "
                f"{roster.scenario}), and this machine has {budget} MiB for labs "
                f"({memory_mib()} MiB, {RESERVE_MIB} kept for the controller, the rest used by other cohorts). "
                f"Fix: at most {largest} students here, or run the class on AWS (target: aws)."
            ],
        )


def claim_cohort(roster: Roster) -> None:
    """One folder per cohort name on this machine: hosts, bridge and state are keyed by the name."""
    owner = local.cohort_state(roster.cohort) / "owner"
    if owner.is_file():
        other = Path(owner.read_text().strip())
        if other != roster.path and other.is_file():
            raise RosterError(
                roster.path,
                [
                    f"cohort: {roster.cohort!r} is already the cohort of {other}, whose lab hosts run on this "
                    "machine. Fix: give this roster another cohort name, or tear that one down first "
                    f"(labkit fleet down {other.parent})."
                ],
            )
    owner.parent.mkdir(parents=True, exist_ok=True)
    owner.write_text(str(roster.path) + "\n")


def up(roster: Roster, out: Out = print, *, yes: bool = False) -> int:
    """Make or update the cohort's hosts: the plan first (asking before anything is removed or replaced), what
    fits this machine, then Terraform; hosts that are down (a controller reboot) come back on their kept disks."""
    folder = roster.folder
    t0 = time.monotonic()
    steps = plan(roster)
    check_capacity(roster, steps)  # refused before anything is made
    access.resolve(roster, claim=False)  # the access port is free (refused before anything is made)
    confirm_plan(roster, steps, yes, out)
    claim_cohort(roster)
    entry = access.resolve(roster)
    # Built-once artefacts first, with their own progress lines: the base, the wheelhouse, the baked layers.
    images.ensure_base_image(out)
    images.ensure_wheelhouse(out)
    sets = {**component_sets(roster), local.BASTION_ROLE: list(local.BASTION_COMPONENTS)}
    keys = bake.ensure_baked(list(sets.values()), out)
    variables = write_tfvars(roster)
    out(
        f"fleet up {roster.cohort}: {len(variables['hosts'])} lab hosts on {variables['network']['cidr']} "
        f"(terraform: {' '.join(terraform.engine())})"
    )
    # Hosts boot mostly waiting (first-boot ownership shift, systemd, sshd): 8 at a time beat 4 on 2 cores.
    code = _tf(folder, ["apply", "-auto-approve", f"-parallelism={TF_PARALLELISM}"], out)
    if code != 0:
        out(
            f"fleet up {roster.cohort}: terraform apply failed (exit {code}); re-run to finish, "
            f"or `labkit fleet down {folder}` to remove what was made"
        )
        return code
    data_dir, _, _ = tf_paths(folder)
    outputs = terraform.outputs(ENV_DIR, data_dir)
    lab_hosts = outputs["lab_hosts"]
    bastion = outputs.get("bastion")
    # Terraform creates a host once; after a controller reboot its container, network namespace, the cohort's
    # bridge and package service are gone while state says they exist. Bring the network back first, then boot
    # any such host again on its kept overlay (like a VM reboot).
    down_hosts = [
        h
        for h in [*lab_hosts, *([bastion] if bastion else [])]
        if local.host_status(roster.cohort, h["name"]) != "running"
    ]
    if down_hosts:
        out(
            f"fleet up {roster.cohort}: {len(down_hosts)} host(s) not running; starting them on their kept disks"
        )
        local.network_up({**variables["network"], "cohort": roster.cohort}, out)
    bastion_host = (
        {"address": bastion["address"], "student": "", "role": local.BASTION_ROLE, "scenario": roster.scenario,
         "etc_hosts": {}} if bastion else None
    )  # fmt: skip
    for h in down_hosts:
        spec = {
            **(variables["hosts"].get(h["name"]) or bastion_host),
            **variables["network"],
            "name": h["name"],
            "cohort": roster.cohort,
            "ssh_private_key_file": variables["ssh_private_key_file"],
        }
        local.host_up(spec, out)
    jump, gate = None, None
    if bastion:
        jump = {**bastion, "targets": student_targets(roster, variables["hosts"])}
        bridge = variables["network"]["bridge"]
        # Forwarding on where students' packets come in and where the bastion's replies do: those two only.
        turned_on = access.enable_forwarding(roster.cohort, [entry.interface, bridge])
        gate = firewall.Entry(
            interface=entry.interface,
            match_address=entry.match_address,
            port=entry.port,
            local=entry.local,
            guard=turned_on.get(entry.interface, False),
        )
    local.isolate(
        roster.cohort, variables["network"]["bridge"], variables["hosts"], jump, gate if jump else None
    )
    if down_hosts:
        wait_for_services(
            roster, [h["name"] for h in down_hosts if h["name"] in variables["hosts"]], variables, out
        )
    host_keys = {}
    for h in [*lab_hosts, *([bastion] if bastion else [])]:
        known = local.host_state(roster.cohort, h["name"]) / "known_hosts"
        host_keys[h["name"]] = " ".join(known.read_text().split()[1:3])
    bastion_info = None
    if bastion:
        bastion_info = {
            **bastion,
            "ssh_private_key_file": variables["ssh_private_key_file"],
            "gateway": variables["network"]["gateway"],
            "access": entry.as_dict(),
            "host_key": host_keys[bastion["name"]],
            "students": {
                sid: [f"{a}:{p}" for a, p in targets]
                for sid, targets in student_targets(roster, variables["hosts"], by_student=True).items()
            },
        }
    inventory.write_cohort_files(
        roster,
        lab_hosts,
        host_keys,
        f"--no-index --find-links {local.WHEELHOUSE_MOUNT}",
        {
            h["name"]: baked_vars(roster, h["name"], sets, keys)
            for h in [*lab_hosts, *([bastion] if bastion else [])]
        },
        bastion=bastion_info,
    )
    out(
        f"fleet up {roster.cohort}: {len(lab_hosts)} hosts ready in {time.monotonic() - t0:.0f} s; "
        f"inventory {inventory.cohort_files(folder)['hosts']}"
    )
    if bastion:
        out(
            f"fleet up {roster.cohort}: students come in through the bastion at {entry.address} port {entry.port} "
            f"(their ssh_config: labkit student-access {folder} --student ID)"
        )
    return 0


def down(roster: Roster, out: Out = print) -> int:
    folder = roster.folder
    data_dir, state, tfvars = tf_paths(folder)
    code = 0
    if state.is_file() and tfvars.is_file():
        out(f"fleet down {roster.cohort}: terraform destroy")
        code = _tf(folder, ["destroy", "-auto-approve", f"-parallelism={TF_PARALLELISM}"], out)
    found = local.sweep(roster.cohort, out)
    access.release(roster.cohort)
    left = local.cohort_leftovers(roster.cohort)
    if any(left.values()):
        out(f"fleet down {roster.cohort}: could not remove: {left}")
        return 1
    files = inventory.cohort_files(folder)
    for path in (
        files["hosts"],
        files["lab_hosts"],
        files["ssh_config"],
        files["known_hosts"],
        files["access"],
        files["load_generator"],
        tfvars,
        state,
        state.with_name(state.name + ".backup"),
    ):
        path.unlink(missing_ok=True)
    for d in (
        files["credentials"],
        files["host_vars"],
        files["student_access"],
        files["ssh_key"].parent,
        data_dir,
        files["logs"],
    ):
        shutil.rmtree(d, ignore_errors=True)
    swept = sum(len(v) for v in found.values())
    out(
        f"fleet down {roster.cohort}: nothing left (terraform exit {code}; sweep found {swept} leftover item(s))"
    )
    return 0


def status(roster: Roster, out: Out = print) -> int:
    try:
        lab_hosts = inventory.load_lab_hosts(roster.folder)
    except FileNotFoundError as exc:
        out(str(exc))
        return 1
    for h in lab_hosts:
        out(f"{h['name']:<40} {h['address']:<15} {local.host_status(roster.cohort, h['name'])}")
    info = inventory.cohort_files(roster.folder)["access"]
    if info.is_file():
        b = json.loads(info.read_text())
        out(
            f"{b['name']:<40} {b['address']:<15} {local.host_status(roster.cohort, b['name'])} "
            f"(students dial {b['access']['address']} port {b['access']['port']})"
        )
    return 0


def spec_from_env() -> dict:
    raw = os.environ.get("LABKIT_SPEC")
    if not raw:
        raise SystemExit("LABKIT_SPEC is not set: this command is called by Terraform's provisioners")
    return json.loads(raw)


SERVICE_PORTS = {"rabbitmq": (5672, 15672), "redis": (6379,), "flower": (5555,)}
SERVICES_DEADLINE = 180.0


def wait_for_services(roster: Roster, names: list[str], variables: dict, out: Out = print) -> bool:
    """After hosts came back (a reboot), wait until their services answer from the controller (RabbitMQ takes
    10-30 s to boot): a grade or a lesson right after `fleet up` then finds the lab as it was."""
    import socket

    topology = load_scenario(roster.scenario).data["topology"]
    wanted = [
        (name, comp, variables["hosts"][name]["address"], port)
        for name in names
        for comp in topology.get(variables["hosts"][name]["role"], [])
        for port in SERVICE_PORTS.get(comp, ())
    ]

    def answers(address: str, port: int) -> bool:
        try:
            socket.create_connection((address, port), timeout=1).close()
            return True
        except OSError:
            return False

    t0 = time.monotonic()
    missing = wanted
    while missing and time.monotonic() - t0 < SERVICES_DEADLINE:
        missing = [w for w in missing if not answers(w[2], w[3])]
        if missing:
            time.sleep(1)
    # Worker pools reconnect on their own schedule: wait until the broker sees them consume again.
    from labkit.status import _consumers_from

    scenario = load_scenario(roster.scenario)
    by_student: dict[str, dict[str, str]] = {}
    for h in variables["hosts"].values():
        by_student.setdefault(h["student"], {})[h["role"]] = h["address"]
    pools = []
    for name in names:
        h = variables["hosts"][name]
        ends = scenario.endpoints(by_student[h["student"]])
        cred = roster.folder / "credentials" / h["student"] / "grader"
        if "celery_workers" in topology.get(h["role"], []) and "rabbitmq" in ends and cred.is_file():
            pools.append((name, h["address"], ends["rabbitmq"], cred.read_text().strip()))
    while pools and not missing and time.monotonic() - t0 < SERVICES_DEADLINE:
        pools = [p for p in pools if not _consumers_from(p[1], p[2], p[3])]
        if pools:
            time.sleep(1)
    missing += [(name, "celery_workers", addr, "consumers") for name, addr, _, _ in pools]
    if missing:
        out(f"fleet up {roster.cohort}: still not answering after {SERVICES_DEADLINE:.0f} s: "
            + ", ".join(f"{n} {c}:{p}" for n, c, _, p in missing))  # fmt: skip
        return False
    if wanted:
        out(
            f"fleet up {roster.cohort}: the restarted hosts' services answer and their pools consume "
            f"({time.monotonic() - t0:.0f} s)"
        )
    return True


def cost_main(roster: Roster, price: float | None = None, out: Out = print) -> int:
    """The local fleet has no bill: what it costs is this machine's memory (and the instructor's time)."""
    scenario = load_scenario(roster.scenario)
    per_student = sum(local.resources(roster.scenario, role).memory_bytes // 2**20 for role in scenario.roles)
    budget = memory_mib() - RESERVE_MIB - running_elsewhere_mib(roster.cohort)
    out(
        f"cohort {roster.cohort}: local fleet, no cloud cost{' (--price-per-hour applies to target aws)' if price else ''}; "
        f"{len(roster.students)} students x {len(scenario.roles)} hosts need {per_student * len(roster.students)} MiB "
        f"of the {budget} MiB this machine has for labs (at most {max(budget // per_student, 0)} students)"
    )
    return 0


def plan_main(roster: Roster, out: Out = print) -> int:
    """Print what `fleet up` would do (hosts to add, remove, replace), changing nothing."""
    print_plan(f"fleet plan {roster.cohort}", plan(roster), out)
    return 0
