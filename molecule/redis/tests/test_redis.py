"""Redis on the lab host: running, on the lab address, refusing clients without the password."""

import time

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


def test_persistence_is_in_the_file_and_live(host, lab):
    conf = host.file("/etc/redis/redis.conf").content_string.splitlines()
    assert 'save ""' in conf and "appendonly yes" in conf and "appendfsync everysec" in conf
    assert "appendonly no" not in conf
    auth = f"REDISCLI_AUTH={lab['password']} redis-cli -h 127.0.0.1 -p {PORT}"
    assert host.check_output(f"{auth} CONFIG GET appendonly").split() == ["appendonly", "yes"]
    assert host.check_output(f"{auth} CONFIG GET save").split() == ["save"]  # no snapshot points


def test_what_redis_holds_survives_a_restart(host, lab):
    auth = f"REDISCLI_AUTH={lab['password']} redis-cli -h 127.0.0.1 -p {PORT}"
    host.check_output(f"{auth} RPUSH molecule-durable kept")
    host.check_output("systemctl restart redis-server")
    for _ in range(30):
        if host.run(f"{auth} PING").stdout.strip() == "PONG":
            break
        time.sleep(0.5)
    assert host.check_output(f"{auth} LRANGE molecule-durable 0 -1").split() == ["kept"]
