"""Where students come in: the cohort's bastion, its address and port on the controller, and the forwarding they need.

A local cohort has one bastion host (an nspawn host like the labs, on the cohort's bridge at ``.2``). Students' ssh
reaches it on one TCP port of the controller's classroom address, forwarded to the bastion's port 22 (nftables DNAT,
see firewall.py). The address is the roster's ``access.address`` or this machine's primary IPv4 address (the one of its
default route); the port is the roster's ``access.port`` or one the kit picks once per cohort and keeps
(``STATE_DIR/access_ports.json``).

Forwarding: the kernel routes a DNATed packet only when the interface it came in on, and the bridge the replies come in
on, have ``forwarding`` on. The kit turns it on for those two interfaces only (never the machine-wide switch), records
what each had before (``STATE_DIR/forwarding.json``) and restores it when the last cohort using it goes down; while the
kit holds an interface's forwarding on, the cohort's filter drops whatever arrives there that is not for a bastion.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

from labkit import paths
from labkit.fleet import images
from labkit.proc import run
from labkit.roster import Roster, RosterError
from labkit.state import atomic_write

PORTS = range(2201, 2300)  # where the kit picks a cohort's port when the roster names none
BASTION_OFFSET = 2  # the bastion's address in the cohort's /24 (.1 is the gateway; lab hosts from .10)


@dataclass(frozen=True)
class Access:
    address: str  # what students' ssh dials
    port: int
    interface: str  # where their packets arrive on this machine
    local: bool  # is ``address`` one of this machine's own (else a router in front forwards to ``match_address``)
    match_address: str  # the destination address the DNAT rule matches

    def as_dict(self) -> dict:
        return {"address": self.address, "port": self.port, "interface": self.interface}


def bastion_name(cohort: str) -> str:
    return f"{cohort}-bastion"


def bastion_address(cidr: str) -> str:
    return str(ipaddress.ip_network(cidr)[BASTION_OFFSET])


def _addresses() -> list[tuple[str, str]]:
    """(interface, IPv4 address) of this machine."""
    data = json.loads(run(["ip", "-j", "-4", "addr", "show"], quiet=True).stdout or "[]")
    return [
        (link["ifname"], a["local"]) for link in data for a in link.get("addr_info", []) if a.get("local")
    ]


def primary() -> tuple[str, str]:
    """(interface, address) of this machine's default route: its address on the classroom network."""
    routes = json.loads(run(["ip", "-j", "-4", "route", "show", "default"], quiet=True).stdout or "[]")
    for route in routes:
        dev = route.get("dev")
        for ifname, address in _addresses():
            if ifname == dev:
                return ifname, route.get("prefsrc") or address
    raise RuntimeError(
        "this machine has no default IPv4 route, so the kit cannot tell which address students use. "
        "Fix: set access: {address: ...} in the roster."
    )


def _listening(port: int) -> bool:
    """Does anything on this machine already listen on ``port`` (any address)?"""
    out = run(["ss", "-Hltn", f"sport = :{port}"], check=False, quiet=True).stdout or ""
    return bool(out.strip())


def _registry() -> Path:
    return paths.STATE_DIR / "access_ports.json"


def claimed_ports() -> dict[str, int]:
    path = _registry()
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def resolve(roster: Roster, claim: bool = True) -> Access:
    """The cohort's access point, from the roster or the kit's defaults; refused (nothing made) when its port is taken.

    With ``claim`` the port is recorded for the cohort (kept across runs); without, only checked.
    """
    wanted = roster.access
    if wanted.address:
        owned = {a: i for i, a in _addresses()}
        if wanted.address in owned:
            interface, match, is_local = owned[wanted.address], wanted.address, True
        else:  # a router or 1:1 NAT in front of this machine forwards to its primary address
            interface, match = primary()
            is_local = False
        address = wanted.address
    else:
        interface, address = primary()
        match, is_local = address, True
    with images.file_lock(paths.STATE_DIR / ".access_ports.lock"):
        taken = claimed_ports()
        port = wanted.port or taken.get(roster.cohort)
        others = {p: c for c, p in taken.items() if c != roster.cohort}
        problem = None
        if port is not None and port in others:
            problem = (
                f"access.port: {port} is the access port of cohort {others[port]!r} on this machine. "
                "Fix: pick another port, or leave access.port out and the kit picks a free one."
            )
        elif port is not None and taken.get(roster.cohort) != port and _listening(port):
            problem = (
                f"access.port: something on this machine already listens on port {port} "
                f"(see `ss -ltnp 'sport = :{port}'`). Fix: pick another port, or leave access.port out."
            )
        if problem:
            raise RosterError(roster.path, [problem])
        if port is None:
            port = next((p for p in PORTS if p not in others and not _listening(p)), None)
            if port is None:
                raise RosterError(
                    roster.path,
                    [f"access.port: no free port in {PORTS.start}-{PORTS.stop - 1}. Fix: set one."],
                )
        if claim and taken.get(roster.cohort) != port:
            taken[roster.cohort] = port
            atomic_write(_registry(), json.dumps(taken, indent=2, sort_keys=True))
    return Access(address=address, port=port, interface=interface, local=is_local, match_address=match)


def release(cohort: str) -> None:
    with images.file_lock(paths.STATE_DIR / ".access_ports.lock"):
        taken = claimed_ports()
        if taken.pop(cohort, None) is not None:
            atomic_write(_registry(), json.dumps(taken, indent=2, sort_keys=True))
    release_forwarding(cohort)


# ---------------------------------------------------------------- per-interface forwarding


def _forwarding_file() -> Path:
    return paths.STATE_DIR / "forwarding.json"


def _sysctl(interface: str) -> Path:
    return Path("/proc/sys/net/ipv4/conf") / interface / "forwarding"


def enable_forwarding(cohort: str, interfaces: list[str]) -> dict[str, bool]:
    """Turn forwarding on for ``interfaces`` on behalf of ``cohort``; return {interface: the kit turned it on}."""
    out = {}
    with images.file_lock(paths.STATE_DIR / ".forwarding.lock"):
        path = _forwarding_file()
        reg = json.loads(path.read_text()) if path.is_file() else {}
        for ifname in interfaces:
            knob = _sysctl(ifname)
            if not knob.exists():
                continue
            entry = reg.setdefault(ifname, {"was": knob.read_text().strip(), "cohorts": []})
            if cohort not in entry["cohorts"]:
                entry["cohorts"].append(cohort)
            if knob.read_text().strip() != "1":
                knob.write_text("1")
            out[ifname] = entry["was"] != "1"
        atomic_write(path, json.dumps(reg, indent=2, sort_keys=True))
    return out


def release_forwarding(cohort: str) -> None:
    """Give back ``cohort``'s hold on forwarding: an interface no cohort needs gets its old value again."""
    with images.file_lock(paths.STATE_DIR / ".forwarding.lock"):
        path = _forwarding_file()
        reg = json.loads(path.read_text()) if path.is_file() else {}
        for ifname in list(reg):
            entry = reg[ifname]
            if cohort in entry["cohorts"]:
                entry["cohorts"].remove(cohort)
            if not entry["cohorts"]:
                knob = _sysctl(ifname)
                if knob.exists():
                    knob.write_text(entry["was"])
                del reg[ifname]
        if reg or path.is_file():
            atomic_write(path, json.dumps(reg, indent=2, sort_keys=True))


def held_forwarding(cohort: str) -> list[str]:
    path = _forwarding_file()
    reg = json.loads(path.read_text()) if path.is_file() else {}
    return sorted(i for i, e in reg.items() if cohort in e.get("cohorts", []))
