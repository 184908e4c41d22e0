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

A per-cohort bastion (a later issue) becomes one more port with its own rule here.
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


def table_name(cohort: str) -> str:
    return "labkit_" + hashlib.sha1(cohort.encode()).hexdigest()[:10]


def ruleset(cohort: str, bridge: str, ports: Iterable[Port], service_ports: Iterable[int]) -> str:
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
    every = ", ".join(f'"{p.veth}"' for p in ports) or '"lkv-none"'
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
        iifname {{ {every} }} drop
        oifname {{ {every} }} drop
    }}
}}
table inet {t}
delete table inet {t}
table inet {t} {{
    chain input {{
        type filter hook input priority 0; policy accept;
        iifname != "{bridge}" accept
        ct state established,related accept
        ip protocol icmp icmp type echo-request accept
        tcp dport {{ {allowed} }} accept
        drop
    }}
    chain forward {{
        type filter hook forward priority 0; policy accept;
        # With br_netfilter, frames bridged between two hosts also pass here (in and out = the bridge): the
        # bridge table above judges those. Routed traffic in or out of the bridge is refused.
        iifname "{bridge}" oifname != "{bridge}" drop
        oifname "{bridge}" iifname != "{bridge}" ct state != established,related drop
    }}
}}
"""


def apply(cohort: str, bridge: str, ports: Iterable[Port], service_ports: Iterable[int]) -> None:
    run(["nft", "-f", "-"], input=ruleset(cohort, bridge, ports, service_ports), quiet=True)


def remove(cohort: str) -> None:
    t = table_name(cohort)
    for family in ("bridge", "inet"):
        run(["nft", "delete", "table", family, t], check=False, quiet=True)


def present(cohort: str) -> list[str]:
    out = run(["nft", "list", "tables"], check=False, quiet=True).stdout or ""
    return [line.strip() for line in out.splitlines() if line.strip().endswith(table_name(cohort))]
