"""Prometheus and Alertmanager on the lab host: on the lab address only, rules loaded, alerts routed."""

import json
import time

import pytest


@pytest.fixture(scope="module")
def address(host):
    return host.ansible.get_variables()["ansible_host"]


def api(host, url):
    return json.loads(host.check_output(f"curl -sf {url}"))


def eventually(probe, timeout=60, interval=2):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


@pytest.mark.parametrize("unit", ["prometheus", "prometheus-alertmanager"])
def test_services_run(host, unit):
    service = host.service(unit)
    assert service.is_running and service.is_enabled


def test_listen_on_the_lab_address_only(host, address):
    assert host.socket(f"tcp://{address}:9090").is_listening
    assert host.socket(f"tcp://{address}:9093").is_listening
    assert not host.socket("tcp://0.0.0.0:9090").is_listening
    assert not host.socket("tcp://0.0.0.0:9094").is_listening  # no cluster gossip port


def test_configuration_is_valid(host):
    assert host.run("promtool check config /etc/prometheus/prometheus.yml").rc == 0
    assert host.run("amtool check-config /etc/prometheus/alertmanager.yml").rc == 0


def test_prometheus_scrapes_itself(host, address):
    def up():
        targets = api(host, f"http://{address}:9090/api/v1/targets")["data"]["activeTargets"]
        return [t for t in targets if t["labels"].get("job") == "prometheus" and t["health"] == "up"]

    assert eventually(up), api(host, f"http://{address}:9090/api/v1/targets")


def test_rule_fires_and_reaches_its_receiver(host, address):
    rules = api(host, f"http://{address}:9090/api/v1/rules")["data"]["groups"]
    assert [r["name"] for g in rules for r in g["rules"]] == ["AlwaysFiring"]

    def routed():
        alerts = api(host, f"http://{address}:9093/api/v2/alerts")
        return [a for a in alerts if a["labels"].get("alertname") == "AlwaysFiring"]

    alerts = eventually(routed)
    assert alerts, "AlwaysFiring never reached Alertmanager"
    assert [r["name"] for r in alerts[0]["receivers"]] == ["oncall"]
