"""Built-once artefacts shared by every local lab host: the Debian base root and the wheelhouse.

Both are cached under CACHE_DIR, keyed by a hash of their recipe, built under a file
lock (many hosts boot in parallel) into a temporary folder that is renamed into place
only when complete, so an interrupted build is never mistaken for a good one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from labkit import paths
from labkit.proc import run

SUITE = "bookworm"
# What a lab host needs to boot and be managed by Ansible; everything else the roles
# own install tasks put into the baked layer above it (labkit/fleet/bake.py).
BASE_PACKAGES = ("openssh-server", "python3", "python3-apt", "systemd", "systemd-sysv", "dbus", "iproute2")
RECIPE_VERSION = 4  # bump when the steps below change
LAB_REQUIREMENTS = Path(__file__).with_name("lab-requirements.txt")
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def controller_apt_sources() -> list[dict[str, list[str]]]:
    """The Debian mirrors this controller itself uses (deb822 .sources or sources.list)."""
    entries: list[dict[str, list[str]]] = []
    for f in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", f.read_text()):
            fields: dict[str, list[str]] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.split()
            if "deb" in fields.get("types", []) and fields.get("uris"):
                entries.append(
                    {
                        "uris": fields["uris"],
                        "suites": fields.get("suites", []),
                        "components": fields.get("components", ["main"]),
                    }
                )
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        for line in legacy.read_text().splitlines():
            parts = re.sub(r"\[[^]]*\]", "", line).split()
            if len(parts) >= 3 and parts[0] == "deb":
                entries.append(
                    {"uris": [parts[1]], "suites": [parts[2]], "components": parts[3:] or ["main"]}
                )
    debian = [e for e in entries if any(s.startswith(SUITE) for s in e["suites"])]
    if not debian:
        raise RuntimeError(
            "no Debian bookworm mirror found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list; "
            "the base image uses the controller's own mirror. Fix: configure apt on this machine first."
        )
    return debian


def mirrors() -> list[str]:
    """The controller's Debian mirror URIs, in a stable order (the package service serves exactly these)."""
    seen: list[str] = []
    for e in controller_apt_sources():
        for uri in e["uris"]:
            uri = uri.rstrip("/")
            if uri not in seen:
                seen.append(uri)
    return seen


def lab_sources_list(base_url: str | None = None) -> str:
    """sources.list of a lab host: the controller's own Debian sources, through the package service
    at ``base_url`` (mirror i is served under ``<base_url>/m<i>``), or direct when ``base_url`` is None."""
    index = {uri: i for i, uri in enumerate(mirrors())}
    lines = []
    for e in controller_apt_sources():
        for uri in e["uris"]:
            where = f"{base_url}/m{index[uri.rstrip('/')]}" if base_url else uri
            for suite in e["suites"]:
                lines.append(f"deb {where} {suite} {' '.join(e['components'])}")
    return "\n".join(lines) + "\n"


def main_mirror() -> str:
    for e in controller_apt_sources():
        if SUITE in e["suites"]:
            return e["uris"][0]
    return controller_apt_sources()[0]["uris"][0]


def base_recipe() -> dict:
    return {
        "suite": SUITE,
        "variant": "minbase",
        "packages": BASE_PACKAGES,
        "mirror": main_mirror(),
        "sources": lab_sources_list(),
        "version": RECIPE_VERSION,
    }


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def base_image_dir() -> Path:
    return paths.CACHE_DIR / "base" / _digest(base_recipe())


def ensure_base_image(out: Callable[[str], None] = print) -> Path:
    """Return the root of the cached Debian base, building it first if its recipe changed."""
    target = base_image_dir()
    rootfs = target / "rootfs"
    if (target / "complete").is_file():
        return rootfs
    with file_lock(paths.CACHE_DIR / "base" / ".lock"):
        if (target / "complete").is_file():
            return rootfs
        recipe = base_recipe()
        tmp = target.with_name(target.name + ".building")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        out(f"base image: debootstrap {SUITE} from {recipe['mirror']} (first time only, ~1-2 min)")
        t0 = time.monotonic()
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                f"--keyring={DEBIAN_KEYRING}",
                SUITE,
                str(tmp / "rootfs"),
                recipe["mirror"],
            ],
            quiet=True,
        )
        root = tmp / "rootfs"
        (root / "etc/apt/sources.list").write_text(recipe["sources"])
        # Every host gets its own identity at first boot: no shared host keys or machine-id.
        for key in (root / "etc/ssh").glob("ssh_host_*"):
            key.unlink()
        (root / "etc/machine-id").write_text("")
        with contextlib.suppress(FileNotFoundError):
            (root / "var/lib/dbus/machine-id").unlink()
        run(["chroot", str(root), "apt-get", "clean"], quiet=True)
        shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
        (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
        # No package index in the image: mark it as ancient so a first `apt update`
        # (cache_valid_time) always runs on a new host.
        with contextlib.suppress(FileNotFoundError):
            (root / "var/lib/apt/periodic/update-success-stamp").unlink()
        os.utime(root / "var/lib/apt/lists", (0, 0))
        (root / "opt/labkit/wheelhouse").mkdir(parents=True, exist_ok=True)
        (tmp / "recipe.json").write_text(json.dumps(recipe, indent=2))
        (tmp / "complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        out(f"base image: ready in {time.monotonic() - t0:.0f} s at {target}")
        # Older recipes' bases are dead weight once no overlay uses them; leave removal to `labkit cache prune`.
    return rootfs


def wheelhouse_dir() -> Path:
    return paths.CACHE_DIR / "wheelhouse" / _digest(LAB_REQUIREMENTS.read_text())


def ensure_wheelhouse(out: Callable[[str], None] = print) -> Path:
    """Download the lab hosts' pinned wheels once (Debian 12's CPython 3.11, x86_64)."""
    target = wheelhouse_dir()
    if (target / "complete").is_file():
        return target
    with file_lock(paths.CACHE_DIR / "wheelhouse" / ".lock"):
        if (target / "complete").is_file():
            return target
        tmp = target.with_name(target.name + ".building")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        out("wheelhouse: downloading the lab hosts' pinned wheels (first time only)")
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                "3.11",
                "--implementation",
                "cp",
                "--abi",
                "cp311",
                "--platform",
                "manylinux2014_x86_64",
                "--platform",
                "manylinux_2_17_x86_64",
                # Debian 12's glibc is 2.36: gevent and pyzmq (Locust's, for the load generator) ship 2_28 wheels only.
                "--platform",
                "manylinux_2_28_x86_64",
                "--platform",
                "any",
                "-d",
                str(tmp),
                "-r",
                str(LAB_REQUIREMENTS),
            ],
            quiet=True,
        )
        (tmp / "complete").write_text("")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        os.chmod(target, 0o755)
        out(f"wheelhouse: ready at {target}")
    return target
