"""The Redis exporter: on the lab address, logged in to Redis, its password on no command line."""

import time

import pytest


@pytest.fixture(scope="module")
def address(host):
    return host.ansible.get_variables()["ansible_host"]


def test_exporter_runs(host):
    service = host.service("prometheus-redis-exporter")
    assert service.is_running and service.is_enabled


def test_listens_on_the_lab_address_only(host, address):
    assert host.socket(f"tcp://{address}:9121").is_listening
    assert not host.socket("tcp://0.0.0.0:9121").is_listening


def test_reads_redis_with_the_password(host, address):
    for _ in range(20):
        metrics = host.check_output(f"curl -sf http://{address}:9121/metrics")
        if "\nredis_up 1" in metrics:
            break
        time.sleep(1)
    assert "\nredis_up 1" in metrics
    assert "redis_connected_clients" in metrics


def test_password_is_in_a_root_only_file_not_on_a_command_line(host):
    env = host.file("/etc/default/prometheus-redis-exporter")
    assert env.user == "root" and env.mode == 0o600
    assert "molecule-redis-password" in env.content_string
    pid = host.check_output("systemctl show -p MainPID --value prometheus-redis-exporter")
    assert "molecule-redis-password" not in host.file(f"/proc/{pid}/cmdline").content_string
