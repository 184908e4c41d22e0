"""The cohort's network filter: each student's lab is an island on the cohort's bridge.

nftables tables in the controller's own network namespace (no lab host can reach them: a host's
root has no privilege over its network namespace, see local.py), rebuilt as a whole in one
transaction whenever the cohort's hosts change:

- bridge family, on the cohort's hosts' ports only: a frame passes from one host's port to another
  only when both ports are the same student's; every frame from a host must carry the host's
  own MAC and IPv4 address (ARP included); no IPv6.
- inet family, traffic from the bridge to the controller itself: only the package service and
  replies to connections the controller opened (Ansible's ssh, load, grading). Nothing is routed
  from the bridge anywhere else.

- the cohort's bastion (access.py) is one more port: it may open TCP connections to the ports students use on the
  lab hosts (ssh, the handout's web UIs) and nothing else, and the hosts may only answer it (no SYN towards it).
  Which student reaches which host is the bastion's sshd's job (PermitOpen per student); the filter bounds the
  bastion itself. No lab host opens anything towards the bastion.
- ip family (nat), the way in: the access port on the classroom interface is DNATed to the bastion's port 22; the
  inet forward chain lets exactly those connections (and their replies) through, and, where the kit turned the
  interface's forwarding on, drops whatever else arrives there to be routed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from labkit.proc import run


@dataclass(frozen=True)
class Port:
    veth: str
    mac: str
    address: str
    student: str


@dataclass(frozen=True)
class Bastion:
    veth: str
    mac: str
    address: str
    targets: tuple[tuple[str, int], ...]  # (lab host address, port) the bastion may open connections to


@dataclass(frozen=True)
class Entry:
    """The way in: TCP ``port`` for ``match_address`` arriving on ``interface`` goes to the bastion's sshd."""

    interface: str
    match_address: str
    port: int
    local: bool  # the address is this machine's own: the controller itself may dial it too
    guard: bool  # the kit turned the interface's forwarding on: nothing else may be routed in from it


def table_name(cohort: str) -> str:
    return "labkit_" + hashlib.sha1(cohort.encode()).hexdigest()[:10]


def ruleset(
    cohort: str,
    bridge: str,
    ports: Iterable[Port],
    service_ports: Iterable[int],
    bastion: Bastion | None = None,
    entry: Entry | None = None,
    gateway: str | None = None,
) -> str:
    t = table_name(cohort)
    ports = sorted(ports, key=lambda p: p.veth)
    by_student: dict[str, list[str]] = {}
    for p in ports:
        by_student.setdefault(p.student, []).append(p.veth)
    pin = "\n".join(
        f'        iifname "{p.veth}" ether saddr != {p.mac} drop\n'
        f'        iifname "{p.veth}" ether type ip ip saddr != {p.address} drop\n'
        f'        iifname "{p.veth}" ether type arp arp saddr ether != {p.mac} drop\n'
        f'        iifname "{p.veth}" ether type arp arp saddr ip != {p.address} drop'
        for p in ports
    )
    quoted = {s: ", ".join(f'"{v}"' for v in veths) for s, veths in by_student.items()}
    islands = "\n".join(
        f"        iifname {{ {q} }} oifname {{ {q} }} accept" for _, q in sorted(quoted.items())
    )
    allowed = ", ".join(str(p) for p in sorted(set(service_ports)))
    hosts = ", ".join(f'"{p.veth}"' for p in ports) or '"lkv-none"'
    every = (
        ", ".join([f'"{p.veth}"' for p in ports] + ([f'"{bastion.veth}"'] if bastion else [])) or '"lkv-none"'
    )
    # The cohort's gateway address (its package service) is for its hosts, not for the classroom or other cohorts.
    own = f'        ip daddr {gateway} iifname != {{ "{bridge}", "lo" }} drop\n' if gateway else ""
    jump = ""
    ways_in = ""
    nat = ""
    if bastion:
        b = bastion.veth
        pin += (
            f'\n        iifname "{b}" ether saddr != {bastion.mac} drop\n'
            f'        iifname "{b}" ether type ip ip saddr != {bastion.address} drop\n'
            f'        iifname "{b}" ether type arp arp saddr ether != {bastion.mac} drop\n'
            f'        iifname "{b}" ether type arp arp saddr ip != {bastion.address} drop'
        )
        jump = (
            f'        iifname "{b}" oifname {{ {hosts} }} ether type arp accept\n'
            f'        iifname {{ {hosts} }} oifname "{b}" ether type arp accept'
        )
        if bastion.targets:
            pairs = ", ".join(f"{a} . {p}" for a, p in sorted(set(bastion.targets)))
            jump += (
                f'\n        iifname "{b}" oifname {{ {hosts} }} ip daddr . tcp dport {{ {pairs} }} accept\n'
                f'        iifname {{ {hosts} }} oifname "{b}" ip saddr . tcp sport {{ {pairs} }} '
                "tcp flags & (syn | ack) != syn accept"
            )
        if entry:
            to = f"{bastion.address}:22"
            ways_in = (
                f'        iifname "{bridge}" oifname != "{bridge}" ip saddr {bastion.address} tcp sport 22 '
                "ct status dnat ct direction reply accept\n"
            )
            guard = (
                f'        iifname "{entry.interface}" ct status & dnat != dnat drop\n' if entry.guard else ""
            )
            ways_in_bridge = (
                f'        oifname "{bridge}" iifname != "{bridge}" ip daddr {bastion.address} tcp dport 22 '
                "ct status dnat accept\n"
            )
            ways_in = guard + ways_in + ways_in_bridge
            output = (
                f"""    chain output {{
        type nat hook output priority -100; policy accept;
        ip daddr {entry.match_address} tcp dport {entry.port} dnat to {to}
    }}
"""
                if entry.local
                else ""
            )
            nat = f"""table ip {t}
delete table ip {t}
table ip {t} {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "{entry.interface}" ip daddr {entry.match_address} tcp dport {entry.port} dnat to {to}
    }}
{output}}}
"""
    return f"""
table bridge {t}
delete table bridge {t}
table bridge {t} {{
    chain prerouting {{
        type filter hook prerouting priority -200; policy accept;
        iifname != {{ {every} }} accept
        ether type ip6 drop
{pin}
    }}
    chain forward {{
        type filter hook forward priority 0; policy accept;
{islands}
{jump}
        iifname {{ {every} }} drop
        oifname {{ {every} }} drop
    }}
}}
table inet {t}
delete table inet {t}
table inet {t} {{
    chain input {{
        type filter hook input priority 0; policy accept;
{own}        iifname != "{bridge}" accept
        ct state established,related accept
        ip protocol icmp icmp type echo-request accept
        tcp dport {{ {allowed} }} accept
        drop
    }}
    chain forward {{
        type filter hook forward priority 0; policy accept;
        # With br_netfilter, frames bridged between two hosts also pass here (in and out = the bridge): the
        # bridge table above judges those. Routed traffic in or out of the bridge is refused, but for the way in
        # to the bastion (DNATed from the access port) and its replies.
{ways_in}        iifname "{bridge}" oifname != "{bridge}" drop
        oifname "{bridge}" iifname != "{bridge}" ct state != established,related drop
    }}
}}
{nat}"""


def apply(
    cohort: str,
    bridge: str,
    ports: Iterable[Port],
    service_ports: Iterable[int],
    bastion: Bastion | None = None,
    entry: Entry | None = None,
    gateway: str | None = None,
) -> None:
    if not entry:  # no way in (any more): a table from an earlier ruleset must not keep forwarding
        run(["nft", "delete", "table", "ip", table_name(cohort)], check=False, quiet=True)
    run(
        ["nft", "-f", "-"],
        input=ruleset(cohort, bridge, ports, service_ports, bastion, entry, gateway),
        quiet=True,
    )


def remove(cohort: str) -> None:
    t = table_name(cohort)
    for family in ("bridge", "inet", "ip"):
        run(["nft", "delete", "table", family, t], check=False, quiet=True)


def present(cohort: str) -> list[str]:
    out = run(["nft", "list", "tables"], check=False, quiet=True).stdout or ""
    return [line.strip() for line in out.splitlines() if line.strip().endswith(table_name(cohort))]
