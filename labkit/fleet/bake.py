"""Baked image layers: what the roles install, installed once, by the roles' own install tasks.

For each set of components a host role runs (``broker: rabbitmq, redis, flower``), a bake host
boots on the Debian base, ``playbooks/bake.yml`` runs each component role's ``tasks/install.yml``
there (Debian packages through the package service, virtualenvs from the wheelhouse), the host
powers off and its overlay upper layer, cleaned of the bake host's identity, becomes a cached
read-only layer: ``/var/cache/labkit/baked/<key>/layer``. A lab host's root is then
``upper : baked layer : base``, and its first converge is configuration only.

The key hashes every input: the base image, the wheelhouse, the component set, the bake
playbook and the files of each role that decide what its install.yml does (install.yml itself,
defaults, vars). Change one and the next ``fleet up`` bakes again; hosts made earlier keep the layer they
were made on (recorded in their state), and their converge runs the install tasks the newer
layer would have baked (``<role>_install`` in the inventory).

The same playbook bakes a cloud image: run ``playbooks/bake.yml`` against one EC2 instance of
the stock Debian 12 AMI with ``-e bake_components=[...]`` and snapshot it into an AMI
(docs/aws.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from labkit import paths
from labkit.fleet import images
from labkit.proc import run

Out = Callable[[str], None]
BAKE_VERSION = 1  # bump when the steps below change
BAKE_COHORT = "_bake"  # not a valid roster cohort name: never collides with a class
# Roles every lab host runs, and the supervised components that bring supervisord along.
COMMON = ("lab_base", "student_access")
SUPERVISED = ("celery_workers", "flower")
# Play order of site.yml: the order the bake installs in.
ORDER = (
    "lab_base", "student_access", "rabbitmq", "redis", "redis_exporter", "prometheus", "alertmanager", "haproxy",
    "supervisor", "flower", "celery_workers",
)  # fmt: skip
# What a bake leaves behind that belongs to one host, not to the image: removed before the layer is kept.
IDENTITY = (
    "etc/hostname",
    "etc/hosts",
    "etc/machine-id",
    "etc/apt/sources.list",
    "etc/apt/apt.conf.d/01labkit-proxy",
    "etc/ssh/sshd_config.d/10-labkit.conf",
    "root/.ssh",
    "var/lib/rabbitmq/mnesia",
    "var/lib/rabbitmq/.erlang.cookie",
    "var/lib/redis/dump.rdb",
    "var/lib/systemd/random-seed",
    "var/lib/dbus/machine-id",
    "var/log/journal",
)


def components(topology_components: list[str]) -> list[str]:
    """Every role a host of this topology role runs, in play order."""
    wanted = set(COMMON) | set(topology_components)
    if wanted & set(SUPERVISED):
        wanted.add("supervisor")
    return [r for r in ORDER if r in wanted] + sorted(wanted - set(ORDER))


def _role_inputs(role: str) -> dict[str, str]:
    """What can change the result of a role's install tasks: the tasks, the role's defaults and vars."""
    folder = paths.REPO / "roles" / role
    wanted = [folder / "tasks" / "install.yml"]
    for sub in ("defaults", "vars"):
        wanted += sorted((folder / sub).rglob("*")) if (folder / sub).is_dir() else []
    return {
        str(f.relative_to(paths.REPO)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in wanted
        if f.is_file()
    }


def bake_key(comps: list[str]) -> str:
    inputs = {
        "version": BAKE_VERSION,
        "base": images.base_image_dir().name,
        "wheelhouse": images.wheelhouse_dir().name,
        "components": comps,
        "playbook": hashlib.sha256((paths.PLAYBOOKS / "bake.yml").read_bytes()).hexdigest(),
        "roles": {r: _role_inputs(r) for r in comps},
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def layer_dir(key: str) -> Path:
    return paths.CACHE_DIR / "baked" / key


def is_baked(key: str) -> bool:
    return (layer_dir(key) / "complete").is_file()


def lowerdirs(key: str) -> list[str]:
    """Overlay lower layers (top first) of a host made on bake ``key``."""
    return [str(layer_dir(key) / "layer"), str(images.ensure_base_image())]


def ensure_baked(sets: list[list[str]], out: Out = print, timeout: float = 900) -> dict[str, str]:
    """Bake every component set not yet cached (in parallel, one bake host each); return set -> key."""
    keys = {",".join(c): bake_key(c) for c in sets}
    missing = {k: c for c, k in keys.items() if not is_baked(k)}
    if not missing:
        return keys
    with images.file_lock(paths.CACHE_DIR / "baked" / ".lock"):
        missing = {k: c.split(",") for c, k in keys.items() if not is_baked(k)}
        if missing:
            _bake(missing, out, timeout)
    return keys


def _bake(missing: dict[str, list[str]], out: Out, timeout: float) -> None:
    from labkit.ansible import run_playbook_inventory
    from labkit.fleet import local

    t0 = time.monotonic()
    net = local.allocate_network(BAKE_COHORT)
    spec_net = {"cohort": BAKE_COHORT, "bridge": net.bridge, "cidr": net.cidr, "gateway": net.gateway}
    base = images.ensure_base_image(out)
    wheelhouse = images.ensure_wheelhouse(out)
    hosts: dict[str, dict] = {}
    try:
        local.network_up(spec_net, out)
        for i, (key, comps) in enumerate(sorted(missing.items())):
            work = layer_dir(key).with_name(key + ".building")
            _remove_tree(work)
            work.mkdir(parents=True)
            keyfile = work / "id_ed25519"
            run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "labkit-bake", "-f", str(keyfile)],
                quiet=True,
            )
            name = f"labkit-bake-{key[:8]}"
            spec = {
                **spec_net,
                "name": name,
                "address": str(ipaddress.ip_network(net.cidr)[local.HOST_OFFSET + i]),
                "ssh_private_key_file": str(keyfile),
                "ssh_user": "root",  # the bake host is the kit's own: no student ever logs in
                "etc_hosts": {},
            }
            out(f"bake {key}: {', '.join(comps)} (first time for this set; packages via the package service)")
            local.boot_host(spec, work, [str(base)], wheelhouse, out)
            hosts[key] = {"spec": spec, "work": work, "components": comps}
        inv = {
            "all": {
                "hosts": {
                    h["spec"]["name"]: {
                        "ansible_host": h["spec"]["address"],
                        "ansible_user": "root",
                        "ansible_ssh_private_key_file": h["spec"]["ssh_private_key_file"],
                        "ansible_ssh_common_args": (
                            f"-o UserKnownHostsFile={h['work'] / 'known_hosts'} -o StrictHostKeyChecking=yes "
                            "-o IdentitiesOnly=yes"
                        ),
                        "bake_components": h["components"],
                    }
                    for h in hosts.values()
                },
                "vars": {"bake_pip_extra_args": f"--no-index --find-links {local.WHEELHOUSE_MOUNT}"},
            }
        }
        with tempfile.TemporaryDirectory(prefix="labkit-bake-") as tmp:
            inv_file = Path(tmp) / "hosts.yml"
            inv_file.write_text(yaml.safe_dump(inv))
            res = run_playbook_inventory(
                inv_file,
                "bake.yml",
                out=out,
                deadline=timeout,
                label="bake",
                log_dir=paths.CACHE_DIR / "baked" / "logs",
            )
        if res.rc != 0:
            raise RuntimeError(
                f"bake failed ({res.status}); see {res.log}. Nothing was cached; the next fleet up bakes again."
            )
        for key, h in hosts.items():
            local.stop_host(h["spec"], h["work"])
            upper = h["work"] / "upper"
            for rel in IDENTITY:
                p = upper / rel
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
            for key_file in (upper / "etc/ssh").glob("ssh_host_*"):
                key_file.unlink()
            for deb in (upper / "var/cache/apt/archives").glob("*.deb"):
                deb.unlink()
            final = layer_dir(key)
            _remove_tree(final)
            final.mkdir(parents=True)
            upper.rename(final / "layer")
            (final / "recipe.json").write_text(json.dumps({"components": h["components"]}, indent=2))
            (final / "complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            _remove_tree(h["work"])
            out(f"bake {key}: cached at {final} ({time.monotonic() - t0:.0f} s)")
    finally:
        for h in hosts.values():
            local.stop_host(h["spec"], h["work"])
            _remove_tree(h["work"])
        local.network_down(spec_net, lambda _m: None)


def _remove_tree(path: Path) -> None:
    """rm -rf that also works on a tree with an overlay still mounted below it (unmounts first)."""
    if not path.exists():
        return
    with open("/proc/self/mountinfo") as f:
        mounts = sorted(
            {ln.split()[4] for ln in f if ln.split()[4].startswith(str(path) + "/")}, reverse=True
        )
    for m in mounts:
        run(["umount", "-l", m], check=False, quiet=True)
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)
