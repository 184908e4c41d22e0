"""Local fleet engine: lab hosts as systemd-nspawn containers on one Linux machine.

Each host boots (``-b``) its own systemd on an overlayfs root over the shared Debian
base, in its own network namespace, wired by a veth pair to the cohort's bridge. The
bridge's gateway address runs the cohort's package service (pkgservice.py); there is no route out.
The root is ``upper : baked layer : base``: what the roles install is baked once (bake.py).

Terraform calls ``labkit fleet-local network-up|network-down|host-up|host-down`` from
``terraform_data`` provisioners (terraform/modules/lab_fleet_local); ``sweep`` removes
whatever of a cohort is left when state was lost or a run died half-way.

Names (all derived from stable ids, never positions):
  netns   lk.<cohort>.<student>-<role>   (cohort names have no dots: prefixes never collide)
  bridge  lkb<hash8(cohort)>             veth  lkv<hash10(host)> (interface names <= 15 chars)
  state   STATE_DIR/fleet/<cohort>/hosts/<host>/{upper,work,root,nspawn.pid,console.log}
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from labkit import paths
from labkit.fleet import bake, cgroups, firewall, images, pkgservice
from labkit.proc import CommandError, kill_until_gone, pid_alive, read_pid, run, stop_pid
from labkit.state import atomic_write

SUBNET_POOL = ipaddress.ip_network("10.250.0.0/16")
HOST_OFFSET = 10  # .1 is the gateway; hosts from .10 up
WHEELHOUSE_MOUNT = "/opt/labkit/wheelhouse"
ADMIN_USER = "admin"  # the controller's way in, on every target (AWS images have the same user)
# Each lab host runs in its own user namespace: root inside is uid USERNS_FIRST + 65536 * n outside, an
# unprivileged uid on the controller. Above systemd's own container range (0x00080000-0x6FFFFFFF).
USERNS_FIRST = 0x70000000
USERNS_SIZE = 65536
USERNS_MAX_INDEX = (0xFFFE0000 - USERNS_FIRST) // USERNS_SIZE
# What a host may use unless its scenario says otherwise (scenario.yml `resources:` per host role). 15 students
# x 2 hosts x 768 MiB fit a 24 GiB machine with room for the controller.
DEFAULT_RESOURCES = {"memory": "768M", "tasks": 1024, "cpu_weight": 100}
# The cohort's bastion (access.py): sshd and the connections students open through it.
BASTION_ROLE = "bastion"
BASTION_COMPONENTS = ["bastion"]
BASTION_RESOURCES = {"memory": "128M", "tasks": 512, "cpu_weight": 100}

Out = Callable[[str], None]


def _h(text: str, n: int) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:n]


def bridge_name(cohort: str) -> str:
    return f"lkb{_h(cohort, 8)}"


def netns_name(cohort: str, host: str) -> str:
    return f"lk.{cohort}.{host.removeprefix(cohort + '-')}"


def veth_name(host: str) -> str:
    return f"lkv{_h(host, 10)}"


def host_mac(cohort: str, host: str) -> str:
    """The host's MAC, fixed by the kit (locally administered), pinned by the cohort's bridge filter."""
    h = _h(f"{cohort}/{host}", 10)
    return "02:" + ":".join(h[i : i + 2] for i in range(0, 10, 2))


def cohort_state(cohort: str) -> Path:
    return paths.STATE_DIR / "fleet" / cohort


def host_state(cohort: str, host: str) -> Path:
    return cohort_state(cohort) / "hosts" / host


# ---------------------------------------------------------------- allocation (stable)


@dataclass(frozen=True)
class Network:
    cohort: str
    bridge: str
    cidr: str
    gateway: str

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.cidr).prefixlen


def _claim_slot(registry: str, key: str, slots: range, what: str) -> int:
    """The slot of ``key`` in a machine-wide JSON registry under STATE_DIR (taken once, then kept): the
    lowest free one of ``slots``. Under a file lock, written atomically."""
    path = paths.STATE_DIR / f"{registry}.json"
    with images.file_lock(paths.STATE_DIR / f".{registry}.lock"):
        taken = json.loads(path.read_text()) if path.is_file() else {}
        if key not in taken:
            used = set(taken.values())
            free = next((i for i in slots if i not in used), None)
            if free is None:
                raise RuntimeError(f"{what}; tear a cohort down first")
            taken[key] = free
            atomic_write(path, json.dumps(taken, indent=2, sort_keys=True))
        return taken[key]


def _release_slots(registry: str, prefix: str, nested: bool = False) -> None:
    """Free ``prefix``'s slot (and with ``nested`` every ``prefix/...`` key) in a registry."""
    path = paths.STATE_DIR / f"{registry}.json"
    with images.file_lock(paths.STATE_DIR / f".{registry}.lock"):
        if path.is_file():
            taken = json.loads(path.read_text())
            kept = {
                k: v for k, v in taken.items() if not (k == prefix or (nested and k.startswith(prefix + "/")))
            }
            if kept != taken:
                atomic_write(path, json.dumps(kept, indent=2, sort_keys=True))


def allocate_network(cohort: str) -> Network:
    """The cohort's /24, kept in a machine-wide registry so cohorts never overlap."""
    index = _claim_slot("subnets", cohort, range(1, 255), "all 254 local cohort subnets are in use")
    net = list(SUBNET_POOL.subnets(new_prefix=24))[index]
    return Network(cohort=cohort, bridge=bridge_name(cohort), cidr=str(net), gateway=str(net[1]))


def release_network(cohort: str) -> None:
    _release_slots("subnets", cohort)


def allocate_userns(key: str) -> int:
    """First uid of the host's user namespace range, kept in a machine-wide registry (never shared)."""
    index = _claim_slot(
        "userns", key, range(USERNS_MAX_INDEX), "no free user namespace range left on this machine"
    )
    return USERNS_FIRST + USERNS_SIZE * index


def release_userns(prefix: str) -> None:
    """Free the ranges of every host whose key is ``prefix`` or starts with ``prefix/`` (a cohort or a host)."""
    _release_slots("userns", prefix, nested=True)


def resources(scenario: str, role: str) -> cgroups.Limits:
    from labkit.scenario import load_scenario

    if role == BASTION_ROLE:
        wanted = BASTION_RESOURCES
    else:
        wanted = {**DEFAULT_RESOURCES, **(load_scenario(scenario).data.get("resources", {}).get(role) or {})}
    return cgroups.Limits(
        memory_bytes=cgroups.parse_size(wanted["memory"]),
        tasks=int(wanted["tasks"]),
        cpu_weight=int(wanted["cpu_weight"]),
    )


def tune_controller() -> None:
    """Kernel limits a class of hosts needs: each host's systemd takes inotify instances from root's quota
    (user namespaces charge their creator), and the default 128 runs out at about 20 hosts."""
    for knob, want in (("fs/inotify/max_user_instances", 8192), ("fs/inotify/max_user_watches", 1048576)):
        f = Path("/proc/sys") / knob
        with contextlib.suppress(OSError, ValueError):
            if int(f.read_text()) < want:
                f.write_text(str(want))


def allocate_addresses(network: Network, wanted: list[str], previous: dict[str, str]) -> dict[str, str]:
    """Address per host name: keep every previous one, give new hosts the lowest free."""
    net = ipaddress.ip_network(network.cidr)
    kept = {h: a for h, a in previous.items() if h in wanted and ipaddress.ip_address(a) in net}
    used = set(kept.values())
    pool = (str(ip) for ip in list(net.hosts())[HOST_OFFSET - 1 :] if str(ip) not in used)
    out = dict(kept)
    for host in wanted:
        if host not in out:
            try:
                out[host] = next(pool)
            except StopIteration:
                raise RuntimeError(
                    f"subnet {net} is full: too many lab hosts in cohort {network.cohort}"
                ) from None
    return out


# ---------------------------------------------------------------- network (per cohort)


def _link_exists(name: str, netns: str | None = None) -> bool:
    cmd = ["ip"] + (["-n", netns] if netns else []) + ["link", "show", name]
    return run(cmd, check=False, quiet=True).returncode == 0


def network_up(spec: dict, out: Out = print) -> None:
    cohort, bridge, gw, cidr = spec["cohort"], spec["bridge"], spec["gateway"], spec["cidr"]
    prefix = ipaddress.ip_network(cidr).prefixlen
    if not _link_exists(bridge):
        run(["ip", "link", "add", bridge, "type", "bridge"], quiet=True)
    addrs = run(["ip", "-j", "addr", "show", "dev", bridge], quiet=True).stdout
    if gw not in addrs:
        run(["ip", "addr", "add", f"{gw}/{prefix}", "dev", bridge], quiet=True)
    run(["ip", "link", "set", bridge, "up"], quiet=True)
    tune_controller()
    pkgservice.start(cohort, gw, out)
    images.ensure_base_image(out)
    images.ensure_wheelhouse(out)
    out(f"network {cohort}: bridge {bridge} {gw}/{prefix}, package service {pkgservice.base_url(gw)}")


def isolate(
    cohort: str,
    bridge: str,
    hosts: dict[str, dict],
    bastion: dict | None = None,
    entry: firewall.Entry | None = None,
) -> None:
    """(Re)write the cohort's filter: every student's hosts an island, the controller closed but for packages, the
    bastion allowed to ``bastion["targets"]`` and reached from the classroom through ``entry``."""
    ports = [
        firewall.Port(veth=veth_name(n), mac=host_mac(cohort, n), address=h["address"], student=h["student"])
        for n, h in hosts.items()
    ]
    jump = None
    if bastion:
        jump = firewall.Bastion(
            veth=veth_name(bastion["name"]),
            mac=host_mac(cohort, bastion["name"]),
            address=bastion["address"],
            targets=tuple((a, int(p)) for a, p in bastion["targets"]),
        )
    firewall.apply(
        cohort, bridge, ports, [pkgservice.PORT], jump, entry if jump else None, cohort_gateway(cohort)
    )


def cohort_gateway(cohort: str) -> str | None:
    """The cohort's bridge gateway from the subnet registry, without claiming a subnet."""
    path = paths.STATE_DIR / "subnets.json"
    with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
        index = json.loads(path.read_text())[cohort]
        return str(list(SUBNET_POOL.subnets(new_prefix=24))[index][1])
    return None


def network_down(spec: dict, out: Out = print) -> None:
    cohort, bridge = spec["cohort"], spec["bridge"]
    pkgservice.stop(cohort, spec.get("gateway") or cohort_gateway(cohort))
    firewall.remove(cohort)
    shutil.rmtree(pkgservice.state_dir(cohort), ignore_errors=True)
    if _link_exists(bridge):
        run(["ip", "link", "del", bridge], quiet=True)
    shutil.rmtree(cohort_state(cohort), ignore_errors=True)
    release_network(cohort)
    release_userns(cohort)
    cgroups.remove(cohort)
    out(f"network {cohort}: bridge {bridge} and package service removed")


# ---------------------------------------------------------------- hosts


def _is_mount(path: Path) -> bool:
    target = str(path.resolve()) if path.exists() else str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def _first_boot_files(root: Path, spec: dict) -> None:
    """Identity and access of a new host, written before its first boot (cloud-init's job on a VM)."""
    name, address = spec["name"], spec["address"]
    (root / "etc/hostname").write_text(name + "\n")
    peers = "\n".join(f"{a}\t{h}" for h, a in sorted(spec.get("etc_hosts", {}).items()) if h != name)
    (root / "etc/hosts").write_text(
        f"127.0.0.1\tlocalhost\n{address}\t{name}\n{peers}\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
    )
    (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    run(["ssh-keygen", "-q", "-A", "-f", str(root)], quiet=True)
    pub = Path(spec["ssh_private_key_file"] + ".pub").read_text()
    user = spec.get("ssh_user", ADMIN_USER)
    if user == "root":  # the bake host only: the kit's own, never a student's
        home = root / "root"
    else:
        # The login contract of every target: a non-root admin with passwordless sudo (as cloud images have).
        if f"\n{user}:" not in "\n" + (root / "etc/passwd").read_text():
            run(["useradd", "--root", str(root), "--create-home", "--user-group", "--shell", "/bin/bash",
                 "--comment", "labkit admin", user], quiet=True)  # fmt: skip
        sudoers = root / "etc/sudoers.d" / f"labkit-{user}"
        sudoers.parent.mkdir(parents=True, exist_ok=True)
        sudoers.write_text(f"{user} ALL=(ALL:ALL) NOPASSWD: ALL\n")
        os.chmod(sudoers, 0o440)
        home = root / "home" / user
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(pub)
    os.chmod(ssh_dir / "authorized_keys", 0o600)
    if user != "root":
        uid, gid = _passwd_ids(root, user)
        for path in (home, ssh_dir, ssh_dir / "authorized_keys"):
            os.chown(path, uid, gid)
    # Keys only, and no root login: the admin and the students come in with their keys.
    conf = root / "etc/ssh/sshd_config.d/10-labkit.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        "# Written by labkit: keys only.\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"PermitRootLogin {'prohibit-password' if user == 'root' else 'no'}\nPermitEmptyPasswords no\n"
    )
    # Debian packages come from the cohort's package service on the gateway (the host has no
    # route out); it puts deadlines on the mirror, and apt gets its own on the service.
    (root / "etc/apt/sources.list").write_text(images.lab_sources_list(pkgservice.base_url(spec["gateway"])))
    (root / "etc/apt/apt.conf.d/01labkit-proxy").write_text(
        'Acquire::http::Timeout "30";\nAcquire::Retries "3";\nAcquire::http::Proxy "DIRECT";\n'
    )


def _passwd_ids(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        f = line.split(":")
        if f[0] == user:
            return int(f[2]), int(f[3])
    raise RuntimeError(f"{user} not in {root / 'etc/passwd'}")


def host_up(spec: dict, out: Out = print) -> None:
    """Create (or restart after a reboot of the controller) one lab host; idempotent.

    A new host is made on the current baked layer of its component set; a host that exists
    keeps the layers it was made on (recorded in its state), like a VM keeps its disk.
    """
    state = host_state(spec["cohort"], spec["name"])
    record = state / "initialized"
    if record.is_file():
        made = json.loads(record.read_text())
        lower = made.get("lowerdirs") or [str(images.ensure_base_image(out))]
        spec = {**spec, "userns_base": made.get("userns_base")}
    else:
        from labkit.scenario import load_scenario

        if spec["role"] == BASTION_ROLE:
            comps = list(BASTION_COMPONENTS)
        else:
            comps = bake.components(load_scenario(spec["scenario"]).data["topology"][spec["role"]])
        key = bake.ensure_baked([comps], out)[",".join(comps)]
        lower = bake.lowerdirs(key)
        userns = allocate_userns(f"{spec['cohort']}/{spec['name']}")
        spec = {**spec, "bake_key": key, "components": comps, "userns_base": userns}
    limits = resources(spec["scenario"], spec["role"])
    boot_host(spec, state, lower, images.ensure_wheelhouse(out), out, limits=limits)


def boot_host(
    spec: dict,
    state: Path,
    lowerdirs: list[str],
    wheelhouse: Path,
    out: Out = print,
    limits: cgroups.Limits | None = None,
) -> None:
    """Mount the host's root (overlay of ``lowerdirs``), give it its identity on first boot, boot it, wait for ssh.

    A lab host (``spec["userns_base"]`` set) is contained: its own user namespace (files shifted on first
    boot; with ``metacopy`` only their metadata is copied up), its own cgroup with ``limits`` and a closed
    device list, a ``nodev`` root under a 0700 state folder. (Not ``nosuid``: the student's and the admin's
    sudo inside need it; a setuid file inside is owned by the host's unprivileged outside uid anyway.)
    """
    cohort, name, address = spec["cohort"], spec["name"], spec["address"]
    upper, work, root = state / "upper", state / "work", state / "root"
    for d in (upper, work, root):
        d.mkdir(parents=True, exist_ok=True)
    # Nobody but root reaches a host's files from the controller: its state folder and the cohort's are 0700.
    for d in (state, state.parent, state.parent.parent):
        if d == state or str(d).startswith(str(paths.STATE_DIR / "fleet") + "/"):
            os.chmod(d, 0o700)
    pid = read_pid(state / "nspawn.pid")
    if pid and _is_nspawn(pid, root):
        out(f"{name}: already running (pid {pid})")
        return
    userns = spec.get("userns_base")
    if not _is_mount(root):
        opts = f"lowerdir={':'.join(lowerdirs)},upperdir={upper},workdir={work}"
        if userns is not None:
            opts += ",nodev,metacopy=on,redirect_dir=on"
        run(["mount", "-t", "overlay", "overlay", "-o", opts, str(root)], quiet=True)
    if not (state / "initialized").is_file():
        _first_boot_files(root, spec)
        (state / "initialized").write_text(json.dumps({**spec, "lowerdirs": lowerdirs}, indent=2))
    _wire_netns(spec, out)
    extra: list[str] = []
    groups: dict[str, Path] = {}
    scope: list[str] = []
    if userns is not None:
        extra = [f"--private-users={userns}:{USERNS_SIZE}", "--private-users-ownership=chown"]
        host_limits = limits or resources(spec["scenario"], spec["role"])
        if cgroups.systemd_manages_cgroups():
            # A controller booted with systemd owns the cgroup tree: ask it for a delegated scope with the limits.
            scope = cgroups.systemd_scope(f"labkit-{cohort}-{name}", host_limits)
        else:
            groups = cgroups.create(f"{cohort}/{name}", host_limits)
    with open(state / "console.log", "ab") as log:
        proc = subprocess.Popen(
            [
                *scope,
                # nspawn starts inside the host's network namespace, which belongs to the controller's user
                # namespace: root in the host has no network privilege there (no address, route, firewall or
                # MAC change, no raw socket), so it cannot spoof or sniff a classmate.
                "nsenter",
                f"--net=/run/netns/{netns_name(cohort, name)}",
                "--",
                "systemd-nspawn",
                "--quiet",
                "-b",
                "-D",
                str(root),
                "-M",
                name,
                "--register=no",
                "--keep-unit",
                "--link-journal=no",
                "--console=passive",
                f"--bind-ro={wheelhouse}:{WHEELHOUSE_MOUNT}",
                *extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=(lambda: cgroups.enter(groups)) if groups else None,  # noqa: PLW1509 - no threads here
        )
    (state / "nspawn.pid").write_text(str(proc.pid))
    t0 = time.monotonic()
    _wait_for_ssh(spec, state, proc)
    out(f"{name}: up at {address} (ssh answered in {time.monotonic() - t0:.1f} s)")


def _is_nspawn(pid: int, root: Path) -> bool:
    """Is ``pid`` still the systemd-nspawn of this root (not a recycled pid)?"""
    if not pid_alive(pid):
        return False
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmd) and cmd[0].endswith(b"systemd-nspawn") and str(root).encode() in cmd


def stop_host(spec: dict, state: Path) -> None:
    """Power a host off (SIGTERM to nspawn = clean shutdown) and unwire it; its files stay."""
    pid = read_pid(state / "nspawn.pid")
    if pid and _is_nspawn(pid, state / "root"):
        stop_pid(pid, timeout=30)
    _unwire(spec["cohort"], spec["name"], state)


def _wire_netns(spec: dict, out: Out = print) -> None:
    ns = netns_name(spec["cohort"], spec["name"])
    veth = veth_name(spec["name"])
    if not Path(f"/run/netns/{ns}").exists():
        for attempt in range(20):  # a just-deleted name takes ~2 s before it can be reused
            proc = run(["ip", "netns", "add", ns], check=False, quiet=True)
            if proc.returncode == 0:
                break
            if attempt == 19:
                raise CommandError(f"ip netns add {ns}: {proc.stderr.strip()}")
            out(f"retry: ip netns add {ns} ({proc.stderr.strip()})")
            time.sleep(0.5)
    if not _link_exists("host0", ns):
        if _link_exists(veth):
            run(["ip", "link", "del", veth], quiet=True)
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "host0", "address",
             host_mac(spec["cohort"], spec["name"]), "netns", ns], quiet=True)  # fmt: skip
    run(["ip", "link", "set", veth, "master", spec["bridge"], "up"], quiet=True)
    # The host's services bind ports < 1024 (sshd) and ping works without any privilege in this namespace.
    run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_unprivileged_port_start=0",
         "net.ipv4.ping_group_range=0 2147483647", "net.ipv6.conf.all.disable_ipv6=1"], quiet=True)  # fmt: skip
    prefix = ipaddress.ip_network(spec["cidr"]).prefixlen
    addrs = run(["ip", "-n", ns, "-j", "addr", "show", "dev", "host0"], quiet=True).stdout
    if f'"{spec["address"]}"' not in addrs:
        run(["ip", "-n", ns, "addr", "add", f"{spec['address']}/{prefix}", "dev", "host0"], quiet=True)
    run(["ip", "-n", ns, "link", "set", "host0", "up"], quiet=True)
    run(["ip", "-n", ns, "link", "set", "lo", "up"], quiet=True)
    if spec.get("role") == BASTION_ROLE:
        # Students' connections come DNATed with their laptop's address: the replies go back through the gateway
        # (the cohort's filter routes nothing else from the bridge).
        run(
            ["ip", "-n", ns, "route", "replace", "default", "via", spec["gateway"], "dev", "host0"],
            quiet=True,
        )


# A first boot shifts the host's files into its user namespace: with many hosts booting at once on 2 cores that took
# longer than 90 s once (28 hosts of 3 cohorts); the deadline stays bounded.
SSH_DEADLINE = 180.0


def _wait_for_ssh(spec: dict, state: Path, proc: subprocess.Popen, timeout: float = SSH_DEADLINE) -> None:
    known = state / "known_hosts"
    if not known.is_file():
        # Read once, at first boot, from the key the kit just made. Later the host's disk is the student's: a
        # re-read would follow whatever they put there (a symlink resolves on the controller) and re-pin it.
        hostkey = (state / "root/etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
        known.write_text(f"{spec['address']} {hostkey[0]} {hostkey[1]}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{spec['name']}: systemd-nspawn exited ({proc.returncode}); see {state / 'console.log'}"
            )
        res = run(
            [
                "ssh",
                "-i",
                spec["ssh_private_key_file"],
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=2",
                "-o",
                f"UserKnownHostsFile={known}",
                "-o",
                "StrictHostKeyChecking=yes",
                f"{spec.get('ssh_user', ADMIN_USER)}@{spec['address']}",
                "true",
            ],
            check=False,
            quiet=True,
        )
        if res.returncode == 0:
            return
        time.sleep(0.5)
    raise RuntimeError(
        f"{spec['name']}: no ssh on {spec['address']} after {timeout:.0f} s; see {state / 'console.log'}"
    )


def host_down(spec: dict, out: Out = print) -> None:
    """Power the host off (SIGTERM to nspawn = clean shutdown), unmount, drop its netns and files."""
    cohort, name = spec["cohort"], spec["name"]
    state = host_state(cohort, name)
    pid = read_pid(state / "nspawn.pid")
    if pid and _is_nspawn(pid, state / "root"):
        stop_pid(pid, timeout=30)
    _remove_host_leftovers(cohort, name, state)
    out(f"{name}: removed")


def _remove_host_leftovers(cohort: str, name: str, state: Path) -> None:
    _unwire(cohort, name, state)
    cgroups.remove(f"{cohort}/{name}")
    shutil.rmtree(state, ignore_errors=True)
    release_userns(f"{cohort}/{name}")


def _unwire(cohort: str, name: str, state: Path) -> None:
    root = state / "root"
    for _ in range(10):
        if not _is_mount(root):
            break
        if run(["umount", str(root)], check=False, quiet=True).returncode != 0:
            time.sleep(0.5)
    else:
        run(["umount", "-l", str(root)], check=False, quiet=True)
    ns = netns_name(cohort, name)
    if Path(f"/run/netns/{ns}").exists():
        run(["ip", "netns", "del", ns], check=False, quiet=True)
    if _link_exists(veth_name(name)):
        run(["ip", "link", "del", veth_name(name)], check=False, quiet=True)


# ---------------------------------------------------------------- inspection and sweep


def cohort_leftovers(cohort: str) -> dict[str, list[str]]:
    """Everything of a cohort that exists on this machine (empty lists = nothing left)."""
    prefix = f"lk.{cohort}."
    netns = (
        sorted(p.name for p in Path("/run/netns").glob(prefix + "*")) if Path("/run/netns").is_dir() else []
    )
    state = cohort_state(cohort)
    with open("/proc/self/mountinfo") as f:
        mounts = sorted({ln.split()[4] for ln in f if ln.split()[4].startswith(str(state) + "/")})
    pids = []
    for pidfile in state.glob("hosts/*/nspawn.pid"):
        pid = read_pid(pidfile)
        # Only a pid that is still this host's nspawn: a recycled pid belongs to someone else.
        if pid and _is_nspawn(pid, pidfile.parent / "root"):
            pids.append(str(pid))
    for proc_dir in Path("/proc").iterdir():
        if proc_dir.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (proc_dir / "cmdline").read_bytes().split(b"\0")
                if cmd and cmd[0].endswith(b"systemd-nspawn") and str(state).encode() in b" ".join(cmd):
                    pids.append(proc_dir.name)
    pkg = pkgservice.running_pid(cohort)
    return {
        "netns": netns,
        "bridges": [bridge_name(cohort)] if _link_exists(bridge_name(cohort)) else [],
        "mounts": mounts,
        "nspawn_pids": sorted(set(pids)),
        # Processes of the cohort's hosts by their cgroups: found even if their nspawn died and they were re-parented.
        "host_pids": [str(p) for p in cgroups.pids(cohort)],
        "package_service_pids": sorted(
            {str(p) for p in ([pkg] if pkg else []) + pkgservice.leftover_pids(cohort)}
        ),
        "firewall_tables": firewall.present(cohort),
        "state_dirs": [str(d) for d in sorted(state.glob("hosts/*"))]
        + ([str(state)] if state.exists() else [])
        + ([str(pkgservice.state_dir(cohort))] if pkgservice.state_dir(cohort).exists() else []),
    }


def sweep(cohort: str, out: Out = print) -> dict[str, list[str]]:
    """Remove whatever of ``cohort`` is still on this machine; report what was found."""
    found = cohort_leftovers(cohort)
    for pid in found["nspawn_pids"]:
        stop_pid(int(pid), timeout=30)
    # Whatever still runs in the hosts' cgroups (a container whose nspawn died) is killed outright.
    kill_until_gone(lambda: cgroups.pids(cohort), tries=50, interval=0.2)
    state = cohort_state(cohort)
    for host_dir in sorted(state.glob("hosts/*")):
        _remove_host_leftovers(cohort, host_dir.name, host_dir)
    for ns in found["netns"]:
        run(["ip", "netns", "del", ns], check=False, quiet=True)
    for mnt in reversed(found["mounts"]):
        run(["umount", "-l", mnt], check=False, quiet=True)
    network_down({"cohort": cohort, "bridge": bridge_name(cohort)}, out=lambda _m: None)
    if any(found.values()):
        out("sweep: removed " + ", ".join(f"{len(v)} {k}" for k, v in found.items() if v))
    return found


def host_status(cohort: str, name: str) -> str:
    state = host_state(cohort, name)
    pid = read_pid(state / "nspawn.pid")
    return "running" if pid and _is_nspawn(pid, state / "root") else "stopped"
