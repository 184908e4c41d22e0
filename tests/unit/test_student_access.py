"""The way students come in: roster access, the bastion's filter and DNAT, the access port, forwarding, their ssh_config."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from labkit import inventory, paths, student_access
from labkit.fleet import access, firewall
from labkit.roster import AccessSettings, RosterError, load_roster
from labkit.scenario import validate


def write_roster(folder, pubkey, **extra):
    data = {
        "cohort": "c1",
        "scenario": "queue-segregation",
        "target": "local",
        "students": [{"id": s, "ssh_public_key": pubkey} for s in ("s01", "s02")],
        **extra,
    }
    (folder / "cohort.yml").write_text(yaml.safe_dump(data))
    return folder


# ---------------------------------------------------------------- roster


def test_access_is_optional_and_read(tmp_path, pubkey):
    assert load_roster(write_roster(tmp_path, pubkey)).access == AccessSettings()
    r = load_roster(write_roster(tmp_path, pubkey, access={"address": "192.0.2.10", "port": 2201}))
    assert (r.access.address, r.access.port) == ("192.0.2.10", 2201)


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"address": "not-an-ip"}, "access.address"),
        ({"address": "127.0.0.1"}, "access.address"),
        ({"address": "2001:db8::1"}, "access.address"),
        ({"port": 22}, "access.port"),
        ({"port": "2201"}, "access.port"),
        ({"port": True}, "access.port"),
        ({"port": 70000}, "access.port"),
        ({"where": "x"}, "access: unknown field"),
        ("192.0.2.10:2201", "access: must be a mapping"),
    ],
)
def test_bad_access_is_refused_naming_the_field_and_the_fix(tmp_path, pubkey, value, field):
    with pytest.raises(RosterError) as exc:
        load_roster(write_roster(tmp_path, pubkey, access=value))
    assert any(p.startswith(field) and "Fix:" in p for p in exc.value.problems), exc.value.problems


# ---------------------------------------------------------------- scenario


def _scenario(**extra):
    base = yaml.safe_load((paths.SCENARIOS / "queue-segregation" / "scenario.yml").read_text())
    return {**base, **extra}


def test_student_ports_must_be_known_and_served_by_the_topology():
    folder = paths.SCENARIOS / "queue-segregation"
    assert validate(_scenario(), folder) == []
    assert any("unknown 'grafana'" in p for p in validate(_scenario(student_ports=["grafana"]), folder))
    no_flower = _scenario(topology={"broker": ["rabbitmq", "redis"], "worker": ["celery_workers"]})
    assert any("needs component 'flower'" in p for p in validate(no_flower, folder))


def test_a_scenario_cannot_name_a_host_role_bastion():
    folder = paths.SCENARIOS / "queue-segregation"
    data = _scenario(topology={"bastion": ["rabbitmq", "redis", "flower"], "worker": ["celery_workers"]})
    assert any(p.startswith("topology.bastion: the kit's own host role") for p in validate(data, folder))


# ---------------------------------------------------------------- filter and DNAT


PORTS = [
    firewall.Port("lkv1", "02:00:00:00:00:01", "10.250.7.10", "s01"),
    firewall.Port("lkv2", "02:00:00:00:00:02", "10.250.7.11", "s02"),
]
BASTION = firewall.Bastion(
    "lkvb", "02:00:00:00:00:03", "10.250.7.2", (("10.250.7.10", 22), ("10.250.7.10", 5555))
)


def test_the_bastion_may_open_only_the_listed_ports_and_the_hosts_only_answer():
    rules = firewall.ruleset("c1", "lkbx", PORTS, [3942], BASTION, None, "10.250.7.1")
    assert 'iifname "lkvb" ether type ip ip saddr != 10.250.7.2 drop' in rules  # pinned like every host
    assert (
        'iifname "lkvb" oifname { "lkv1", "lkv2" } ip daddr . tcp dport { 10.250.7.10 . 22, 10.250.7.10 . 5555 } accept'
        in rules
    )
    assert "tcp flags & (syn | ack) != syn accept" in rules  # a host cannot open a connection to the bastion
    assert 'iifname { "lkv1", "lkv2", "lkvb" } drop' in rules
    assert (
        'ip daddr 10.250.7.1 iifname != { "lkbx", "lo" } drop' in rules
    )  # the package service is not public
    assert "dnat" not in rules and "table ip " not in rules  # no way in without an entry


def test_the_way_in_is_one_dnat_to_the_bastion_and_its_replies():
    entry = firewall.Entry(interface="eth0", match_address="192.0.2.2", port=2201, local=True, guard=True)
    rules = firewall.ruleset("c1", "lkbx", PORTS, [3942], BASTION, entry, "10.250.7.1")
    assert 'iifname "eth0" ip daddr 192.0.2.2 tcp dport 2201 dnat to 10.250.7.2:22' in rules
    assert "ip daddr 192.0.2.2 tcp dport 2201 dnat to 10.250.7.2:22" in rules.split("chain output")[1]
    assert 'iifname "eth0" ct status & dnat != dnat drop' in rules  # the kit's forwarding routes nothing else
    assert 'oifname "lkbx" iifname != "lkbx" ip daddr 10.250.7.2 tcp dport 22 ct status dnat accept' in rules
    remote = firewall.Entry(interface="eth0", match_address="192.0.2.2", port=2201, local=False, guard=False)
    other = firewall.ruleset("c1", "lkbx", PORTS, [3942], BASTION, remote, "10.250.7.1")
    assert "chain output" not in other and "ct status & dnat != dnat drop" not in other


@pytest.mark.skipif(os.geteuid() != 0, reason="nft needs root")
def test_the_ruleset_is_valid_nftables():
    entry = firewall.Entry(interface="eth0", match_address="192.0.2.2", port=2201, local=True, guard=True)
    rules = firewall.ruleset("c1", "lkbx", PORTS, [3942], BASTION, entry, "10.250.7.1")
    ns = f"lk-unit-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        res = subprocess.run(["ip", "netns", "exec", ns, "nft", "-c", "-f", "-"], input=rules, text=True,
                             capture_output=True)  # fmt: skip
        assert res.returncode == 0, res.stderr
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


# ---------------------------------------------------------------- access port and forwarding


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A machine with eth0 192.0.2.2 (default route) and lab0 10.250.255.1, whose port 2201 is taken by a listener."""
    monkeypatch.setattr(paths, "STATE_DIR", tmp_path / "state")
    (tmp_path / "state").mkdir()
    monkeypatch.setattr(access, "_addresses", lambda: [("eth0", "192.0.2.2"), ("lab0", "10.250.255.1")])
    monkeypatch.setattr(access, "primary", lambda: ("eth0", "192.0.2.2"))
    monkeypatch.setattr(access, "_listening", lambda port: port == 2201)
    return tmp_path


def test_the_access_port_is_picked_once_and_kept(machine, pubkey):
    (machine / "c1").mkdir()
    r = load_roster(write_roster(machine / "c1", pubkey))
    first = access.resolve(r)
    assert (first.address, first.port, first.interface, first.local) == ("192.0.2.2", 2202, "eth0", True)
    assert access.resolve(r).port == 2202  # kept
    assert access.claimed_ports() == {"c1": 2202}


def test_a_port_another_cohort_holds_or_a_listener_uses_is_refused_before_anything(machine, pubkey):
    (machine / "other").mkdir()
    (machine / "state" / "access_ports.json").write_text(json.dumps({"other": 2250}))
    (machine / "c1").mkdir()
    r = load_roster(write_roster(machine / "c1", pubkey, access={"port": 2250}))
    with pytest.raises(RosterError) as exc:
        access.resolve(r)
    assert "access.port: 2250 is the access port of cohort 'other'" in exc.value.problems[0]
    r = load_roster(write_roster(machine / "c1", pubkey, access={"port": 2201}))
    with pytest.raises(RosterError) as exc:
        access.resolve(r)
    assert "already listens on port 2201" in exc.value.problems[0]
    assert access.claimed_ports() == {"other": 2250}


def test_the_roster_address_decides_the_interface(machine, pubkey):
    (machine / "c1").mkdir()
    lab = access.resolve(
        load_roster(write_roster(machine / "c1", pubkey, access={"address": "10.250.255.1"}))
    )
    assert (lab.interface, lab.match_address, lab.local) == ("lab0", "10.250.255.1", True)
    # An address of a router in front (1:1 NAT): students dial it, the DNAT matches this machine's primary address.
    nat = access.resolve(load_roster(write_roster(machine / "c1", pubkey, access={"address": "203.0.113.9"})))
    assert (nat.address, nat.interface, nat.match_address, nat.local) == (
        "203.0.113.9",
        "eth0",
        "192.0.2.2",
        False,
    )


def test_forwarding_is_turned_on_per_interface_and_given_back_by_the_last_cohort(machine, monkeypatch):
    knobs = {i: machine / f"{i}.forwarding" for i in ("eth0", "lkb1", "lkb2")}
    for f in knobs.values():
        f.write_text("0\n")
    monkeypatch.setattr(access, "_sysctl", lambda i: knobs.get(i, machine / "missing"))
    assert access.enable_forwarding("a", ["eth0", "lkb1"]) == {"eth0": True, "lkb1": True}
    assert access.enable_forwarding("b", ["eth0", "lkb2"]) == {"eth0": True, "lkb2": True}
    assert {i: f.read_text().strip() for i, f in knobs.items()} == {"eth0": "1", "lkb1": "1", "lkb2": "1"}
    access.release_forwarding("a")
    assert knobs["eth0"].read_text() == "1" and knobs["lkb1"].read_text() == "0"  # b still comes in on eth0
    access.release_forwarding("b")
    assert knobs["eth0"].read_text() == "0" and not access.held_forwarding("b")


# ---------------------------------------------------------------- connection kit


def _cohort_files(folder, target="local"):
    hosts = [
        {"name": f"c1-{s}-{r}", "address": a, "lab_address": a, "student": s, "role": r,
         "scenario": "queue-segregation", "ssh_user": "admin", "ssh_private_key_file": "/k"}
        for s, r, a in [("s01", "broker", "10.250.7.10"), ("s01", "worker", "10.250.7.11"),
                        ("s02", "broker", "10.250.7.12"), ("s02", "worker", "10.250.7.13")]
    ]  # fmt: skip
    if target == "aws":
        for i, h in enumerate(hosts):
            h["address"], h["lab_address"] = f"198.51.100.{10 + i}", f"172.31.0.{10 + i}"
    (folder / "lab_hosts.json").write_text(json.dumps(hosts))
    keys = {h["name"]: f"ssh-ed25519 HOSTKEY{h['name'][-8:]}" for h in hosts}
    if target == "local":
        (folder / "access.json").write_text(json.dumps({
            "name": "c1-bastion", "address": "10.250.7.2", "host_key": "ssh-ed25519 BASTIONKEY",
            "access": {"address": "192.0.2.2", "port": 2202, "interface": "eth0"}, "host_keys": keys,
        }))  # fmt: skip
    else:
        (folder / "known_hosts").write_text(
            "".join(f"{h['name']},{h['address']} {keys[h['name']]}\n" for h in hosts if h["student"] == "s01")
        )


def test_a_local_kit_jumps_through_the_bastion_to_the_students_own_hosts_only(tmp_path, pubkey):
    r = load_roster(write_roster(tmp_path, pubkey))
    _cohort_files(tmp_path)
    kit = student_access.build(r, "s01")
    config = kit["ssh_config"]
    assert "Host c1-bastion\n  HostName 192.0.2.2\n  Port 2202\n  HostKeyAlias c1-bastion\n" in config
    assert "Host c1-s01-worker\n  HostName 10.250.7.11\n  ProxyJump c1-bastion\n" in config
    assert "s02" not in config and "10.250.7.12" not in config
    assert "LocalForward 127.0.0.1:5555 10.250.7.10:5555" in config  # Flower runs on the broker host
    assert "LocalForward 127.0.0.1:15672 10.250.7.10:15672" in config
    assert "Host c1-bastion c1-s01-*\n  User s01\n  IdentityFile ~/.ssh/id_ed25519\n" in config
    assert "UserKnownHostsFile ~/.ssh/labkit-c1/known_hosts\n  StrictHostKeyChecking yes" in config
    assert kit["known_hosts"].splitlines() == [
        "c1-bastion ssh-ed25519 BASTIONKEY",
        "c1-s01-broker ssh-ed25519 HOSTKEY1-broker",
        "c1-s01-worker ssh-ed25519 HOSTKEY1-worker",
    ]
    assert kit["commands"][1] == "ssh -F ~/.ssh/labkit-c1/ssh_config c1-s01-broker"
    where = student_access.write(r, kit)
    assert (where / "ssh_config").read_text() == config and where == tmp_path / "student-access" / "s01"


def test_an_aws_kit_goes_straight_to_pinned_hosts_and_waits_for_their_keys(tmp_path, pubkey):
    r = load_roster(write_roster(tmp_path, pubkey))
    r = type(r)(**{**r.__dict__, "target": "aws"})
    _cohort_files(tmp_path, "aws")
    config = student_access.build(r, "s01", laptop_dir="/home/ada/lab", identity="~/.ssh/id_rsa")[
        "ssh_config"
    ]
    assert "Host c1-s01-broker\n  HostName 198.51.100.10\n  HostKeyAlias c1-s01-broker\n" in config
    assert "ProxyJump" not in config and "LocalForward 127.0.0.1:5555 172.31.0.10:5555" in config
    assert "UserKnownHostsFile /home/ada/lab/known_hosts" in config and "IdentityFile ~/.ssh/id_rsa" in config
    with pytest.raises(FileNotFoundError, match="no pinned host key yet for c1-s02-broker, c1-s02-worker"):
        student_access.build(r, "s02")


def test_an_unknown_student_or_a_cohort_without_hosts_is_refused_with_the_fix(tmp_path, pubkey):
    r = load_roster(write_roster(tmp_path, pubkey))
    with pytest.raises(FileNotFoundError, match="labkit fleet up"):
        student_access.build(r, "s01")
    _cohort_files(tmp_path)
    with pytest.raises(RosterError) as exc:
        student_access.build(r, "s09")
    assert "Fix: use one of: s01, s02" in exc.value.problems[0]


def _bastion() -> dict:
    """The bastion record labkit's local fleet passes to the inventory writer, for the two-student cohort above."""
    return {"name": "c1-bastion", "address": "10.250.7.2", "ssh_user": "admin", "ssh_private_key_file": "/k",
            "gateway": "10.250.7.1", "access": {"address": "192.0.2.2", "port": 2202},
            "host_key": "ssh-ed25519 BASTIONKEY",
            "students": {"s01": ["10.250.7.10:22"], "s02": ["10.250.7.12:22"]}}  # fmt: skip


def test_the_inventory_keeps_the_bastion_out_of_the_labs(tmp_path, pubkey):
    r = load_roster(write_roster(tmp_path, pubkey))
    _cohort_files(tmp_path)
    hosts = json.loads((tmp_path / "lab_hosts.json").read_text())
    inv = inventory.build_inventory(r, hosts, "", bastion=_bastion())["all"]
    assert "c1-bastion" not in inv["hosts"]  # lab tools that read all.hosts never see it
    b = inv["children"]["bastion"]["hosts"]["c1-bastion"]
    assert b["bastion_admin_from"] == "10.250.7.1" and b["bastion_access"] == "192.0.2.2:2202"
    assert [s["permit"] for s in b["bastion_students"]] == [["10.250.7.10:22"], ["10.250.7.12:22"]]
    assert all(isinstance(s["key"], inventory.Unsafe) for s in b["bastion_students"])


def test_a_late_students_provisioning_reaches_their_lab_and_the_bastion_only(tmp_path, pubkey):
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    from labkit.ansible import labs_limit

    r = load_roster(write_roster(tmp_path, pubkey))
    _cohort_files(tmp_path)
    hosts = json.loads((tmp_path / "lab_hosts.json").read_text())
    files = inventory.write_cohort_files(r, hosts, {}, "", bastion=_bastion())
    limit = labs_limit(files["hosts"], ["s02"])
    # What Ansible itself selects with that --limit.
    inv = InventoryManager(DataLoader(), sources=[str(files["hosts"])])
    inv.subset(limit)
    assert sorted(h.name for h in inv.get_hosts()) == ["c1-bastion", "c1-s02-broker", "c1-s02-worker"]
