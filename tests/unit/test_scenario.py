"""The scenario schema: every real scenario passes it, each kind of mistake is named with its field and fix."""

from __future__ import annotations

import shutil

import pytest
import yaml

from grading.facts import _address
from labkit import paths
from labkit.roster import known_scenarios
from labkit.scenario import ScenarioError, implemented_checks, load_scenario


@pytest.mark.parametrize("name", known_scenarios())
def test_real_scenarios_are_valid_and_graded_by_mutants(name):
    s = load_scenario(name)
    assert len(s.mutants) >= 2
    ids = {e["id"] for e in s.rubric}
    assert set(implemented_checks(s.folder)) == ids
    for m in s.mutants:
        assert m["must_fail"] and sorted(m["must_fail"]) != sorted(s.starting_state_fails)
    # The untouched lab scores 0: every check it passes has weight 0.
    assert all((e["weight"] > 0) == (e["id"] in s.starting_state_fails) for e in s.rubric)


@pytest.fixture
def broken(tmp_path):
    """A copy of queue-segregation to break, and a loader that returns the error text."""
    shutil.copytree(paths.scenario_dir("queue-segregation"), tmp_path / "queue-segregation")
    path = tmp_path / "queue-segregation" / "scenario.yml"

    def edit(change) -> str:
        data = yaml.safe_load(path.read_text())
        change(data)
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(ScenarioError) as exc:
            load_scenario("queue-segregation", tmp_path)
        return str(exc.value)

    return edit


def test_unknown_component_and_role(broken):
    def change(d):
        d["topology"]["worker"] = ["celery_workers", "kafka"]
        d["rubric"][0]["role"] = "monitor"

    text = broken(change)
    assert "topology.worker: unknown components ['kafka']" in text
    assert "rubric[0] (broker-ready): role 'monitor' is not a host role" in text


def test_mutant_must_fail_must_be_rubric_ids_and_a_near_miss(broken):
    def change(d):
        d["mutants"][0]["must_fail"] = ["made-up"]
        d["mutants"][1]["must_fail"] = list(d["starting_state_fails"])

    text = broken(change)
    assert "mutants[0] (shared-queues): must_fail ['made-up'] are not rubric ids" in text
    assert "mutants[1] (early-ack): must_fail equals starting_state_fails" in text


def test_a_mutants_hand_tasks_name_a_host_role(broken, tmp_path):
    tasks = tmp_path / "queue-segregation" / "mutants" / "early-ack" / "tasks"
    tasks.mkdir()
    (tasks / "monitor.yml").write_text("---\n[]\n")

    text = broken(lambda d: None)
    assert "mutants/early-ack: " in text and "tasks/<host role>.yml for a host role" in text


def test_the_solutions_hand_tasks_name_a_host_role_too(broken, tmp_path):
    tasks = tmp_path / "queue-segregation" / "solution" / "tasks"
    tasks.mkdir()
    (tasks / "monitor.yml").write_text("---\n[]\n")

    text = broken(lambda d: None)
    assert "solution: " in text and "solution/tasks/monitor.yml must be tasks/<host role>.yml" in text


def test_rabbitmq_on_several_roles_is_a_cluster_of_three_or_more(broken):
    text = broken(lambda d: d["topology"].update(worker=["rabbitmq", "celery_workers"]))
    assert "a cluster needs at least 3 nodes" in text and "Fix: add a node" in text


def test_a_cluster_s_first_node_is_the_labs_broker():
    spec = load_scenario("rabbitmq-cluster-failover")
    assert spec.rabbitmq_roles == ["rabbit1", "rabbit2", "rabbit3"]
    lab = {"rabbit1": "10.0.0.1", "rabbit2": "10.0.0.2", "rabbit3": "10.0.0.3", "worker": "10.0.0.4"}
    assert spec.endpoints(lab)["rabbitmq"] == "10.0.0.1" and spec.endpoints(lab)["haproxy"] == "10.0.0.4"


def test_load_tasks_go_through_a_broker_the_lab_runs(broken):
    def change(d):
        d["load"]["tasks"][0]["broker"] = "kafka"
        d["load"]["tasks"][1]["broker"] = "redis"  # queue-segregation has redis: allowed

    text = broken(change)
    assert "load.tasks[0].broker: 'kafka' must be rabbitmq or redis" in text
    assert "load.tasks[1]" not in text


def test_unimplemented_checks(broken):
    def change(d):
        d["rubric"].append({"id": "new-check", "role": "worker", "weight": 1, "title": "t", "hint": "h"})
        d["starting_state_fails"].append("new-check")

    assert "rubric (new-check): no check in" in broken(change)


def test_no_free_points(broken):
    def change(d):
        d["rubric"][0]["weight"] = 1

    assert (
        "rubric (broker-ready): passes in the starting state, so it is a precondition: weight must be 0"
        in broken(change)
    )


def test_solution_cannot_set_wired_variables_or_unknown_roles(broken, tmp_path):
    (tmp_path / "queue-segregation" / "solution" / "vars.yml").write_text(
        yaml.safe_dump({"worker": {"lab_broker_address": "10.0.0.1"}, "monitor": {}})
    )
    text = broken(lambda d: None)
    assert "['lab_broker_address'] are wired by the kit" in text
    assert "'monitor' is not a host role of the topology" in text


def test_endpoints_come_from_the_topology():
    s = load_scenario("retries-dead-letters")
    assert s.endpoints({"broker": "10.250.1.10", "worker": "10.250.1.11"}) == {
        "rabbitmq": "10.250.1.10", "redis": "10.250.1.10", "flower": "10.250.1.10", "celery_workers": "10.250.1.11",
    }  # fmt: skip


def test_rabbitmqctl_addresses():
    assert _address([10, 250, 1, 11]) == "10.250.1.11"
    assert _address([0, 0, 0, 0, 0, 65535, 2810, 267]) == "10.250.1.11"  # IPv4-mapped IPv6 in 16-bit words
    assert _address("10.1.2.3") == "10.1.2.3"


def test_cluster_failover_reads_rabbit1_down_from_the_grader_s_own_connection():
    """failover-ledger's "rabbit1 is down" is the kernel's answer to the grader, not what the student's nodes say: a
    port something still listens on (a forwarder left running outside systemd) is not down; a closed one is."""
    import importlib.util
    import socket

    path = paths.scenario_dir("rabbitmq-cluster-failover") / "checks" / "test_rabbitmq_cluster_failover.py"
    spec = importlib.util.spec_from_file_location("rcf_checks", path)
    checks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checks)

    class Lab:
        def __init__(self, address: str) -> None:
            self._address = address

        def address(self, role: str) -> str:
            assert role == "rabbit1"
            return self._address

    with socket.create_server(("127.0.0.2", 5672)) as still_serving:
        assert still_serving.getsockname()[1] == 5672
        refused, what = checks.amqp_refused(Lab("127.0.0.2"))
        assert not refused and what == "127.0.0.2:5672 accepted the grader's connection"
    refused, what = checks.amqp_refused(Lab("127.0.0.2"))
    assert refused and what == "127.0.0.2:5672 refused the grader's connection"
