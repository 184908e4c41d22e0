"""Redis on the lab host: running, on the lab address, refusing clients without the password."""

import pytest

PORT = 6379


@pytest.fixture(scope="module")
def lab(host):
    variables = host.ansible.get_variables()
    return {"address": variables["ansible_host"], "password": variables["redis_requirepass"]}


def test_redis_server_runs(host):
    service = host.service("redis-server")
    assert service.is_running
    assert service.is_enabled


def test_listens_on_loopback_and_lab_address(host, lab):
    assert host.socket(f"tcp://127.0.0.1:{PORT}").is_listening
    assert host.socket(f"tcp://{lab['address']}:{PORT}").is_listening


def test_refuses_unauthenticated_clients(host, lab):
    reply = host.check_output(f"redis-cli -h {lab['address']} -p {PORT} --no-auth-warning PING")
    assert reply.startswith("NOAUTH")


def test_answers_authenticated_clients(host, lab):
    cmd = host.run(f"REDISCLI_AUTH={lab['password']} redis-cli -h {lab['address']} -p {PORT} PING")
    assert cmd.rc == 0
    assert cmd.stdout.strip() == "PONG"
