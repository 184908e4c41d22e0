"""Inventory and address allocation: generated from lab_hosts, keyed by stable ids."""

from __future__ import annotations

import pytest
import yaml

from labkit import inventory, paths
from labkit.fleet import local
from labkit.roster import load_roster


@pytest.fixture
def roster(tmp_path, pubkey):
    (tmp_path / "cohort.yml").write_text(
        yaml.safe_dump(
            {
                "cohort": "c1",
                "scenario": "queue-segregation",
                "target": "local",
                "students": [{"id": s, "name": s.upper(), "ssh_public_key": pubkey} for s in ("s01", "s-2")],
            }
        )
    )
    return load_roster(tmp_path)


def lab_hosts(key: str = "/k") -> list[dict]:
    return [
        {
            "name": f"c1-{s}-{r}",
            "address": a,
            "student": s,
            "role": r,
            "scenario": "queue-segregation",
            "ssh_user": "root",
            "ssh_private_key_file": key,
        }
        for (s, r, a) in [
            ("s01", "broker", "10.250.9.10"),
            ("s01", "worker", "10.250.9.11"),
            ("s-2", "broker", "10.250.9.12"),
            ("s-2", "worker", "10.250.9.13"),
        ]
    ]


def test_groups_per_student_role_and_scenario(roster):
    inv = inventory.build_inventory(roster, lab_hosts(), "--no-index")["all"]
    assert set(inv["children"]) == {
        "student_s01",
        "student_s_2",
        "role_broker",
        "role_worker",
        "scenario_queue_segregation",
    }
    assert set(inv["children"]["student_s_2"]["hosts"]) == {"c1-s-2-broker", "c1-s-2-worker"}
    worker = inv["hosts"]["c1-s-2-worker"]
    assert worker["lab_student"] == "s-2" and worker["lab_role"] == "worker"
    assert worker["lab_broker_address"] == "10.250.9.12"  # its own student's broker, nobody else's
    assert worker["lab_peers"] == {"broker": "10.250.9.12", "worker": "10.250.9.13"}
    assert inv["vars"]["labkit_scenario"] == "queue-segregation"
    assert "StrictHostKeyChecking=yes" in inv["vars"]["ansible_ssh_common_args"]


def test_cloud_hosts_use_private_lab_address(roster):
    hosts = lab_hosts()
    for h in hosts:
        h["lab_address"] = h["address"].replace("10.250.9", "172.31.0")
    inv = inventory.build_inventory(roster, hosts, "")["all"]
    w = inv["hosts"]["c1-s01-worker"]
    assert w["ansible_host"] == "10.250.9.11" and w["lab_address"] == "172.31.0.11"
    assert w["lab_broker_address"] == "172.31.0.10"


def test_written_files_and_host_key_pinning(roster):
    files = inventory.write_cohort_files(roster, lab_hosts(), {"c1-s01-broker": "ssh-ed25519 AAAAkey"}, "")
    assert files["credentials"].stat().st_mode & 0o777 == 0o700
    assert files["known_hosts"].read_text() == "c1-s01-broker,10.250.9.10 ssh-ed25519 AAAAkey\n"
    # Not every host key known (a cloud host): trust on first use, not "yes".
    assert "StrictHostKeyChecking accept-new" in files["ssh_config"].read_text()
    assert "Host c1-s-2-worker 10.250.9.13" in files["ssh_config"].read_text()
    parsed = inventory.read_inventory(files["hosts"])
    assert isinstance(parsed["all"]["hosts"]["c1-s01-worker"]["lab_student_name"], inventory.Unsafe)
    assert parsed["all"]["hosts"]["c1-s01-worker"]["ansible_host"] == "10.250.9.11"


def test_addresses_are_kept_when_the_cohort_changes():
    net = local.Network(cohort="c1", bridge="lkbx", cidr="10.250.9.0/24", gateway="10.250.9.1")
    first = local.allocate_addresses(net, ["a-broker", "a-worker", "b-broker", "b-worker"], {})
    assert first["a-broker"] == "10.250.9.10" and len(set(first.values())) == 4
    # Remove a, add c: b keeps its addresses, c takes free ones, nothing moves.
    second = local.allocate_addresses(net, ["b-broker", "b-worker", "c-broker", "c-worker"], first)
    assert second["b-broker"] == first["b-broker"] and second["b-worker"] == first["b-worker"]
    assert {second["c-broker"], second["c-worker"]}.isdisjoint({first["b-broker"], first["b-worker"]})


def test_network_registry_never_hands_out_a_subnet_twice(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "STATE_DIR", tmp_path)
    a, b = local.allocate_network("aa"), local.allocate_network("bb")
    assert a.cidr != b.cidr and local.allocate_network("aa") == a
    assert a.gateway.endswith(".1") and len(a.bridge) <= 15
    local.release_network("aa")
    assert local.allocate_network("cc").cidr == a.cidr  # freed /24 is reused
    assert local.allocate_network("bb") == b


def test_names_fit_kernel_limits():
    host = "a-twenty-one-chars-xx-" + "s" * 32 + "-worker"
    assert len(local.veth_name(host)) <= 15 and len(local.bridge_name("a-twenty-one-chars-xx")) <= 15
    # netns prefixes of two cohorts never overlap: cohort names cannot contain dots.
    assert not local.netns_name("demo-2", "demo-2-s01-broker").startswith("lk.demo.")
