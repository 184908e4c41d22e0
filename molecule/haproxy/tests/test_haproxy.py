"""haproxy on the lab host: the role's valid config, health checks that see which backends are up, traffic to the
ones that are, and the clients of a server marked down cut off (prepare.yml starts the backends)."""

import json
import shlex
import time

CONFIG = "/etc/haproxy/haproxy.cfg"
SOCKET = "/run/haproxy/admin.sock"

# Sends one command to the admin socket and prints the answer (python3 is on every lab host; socat is not needed).
ADMIN = f"""
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect({SOCKET!r})
s.sendall(sys.argv[1].encode() + b"\\n")
answer = b""
while chunk := s.recv(65536):
    answer += chunk
sys.stdout.write(answer.decode())
"""

# Holds a connection through the `cutoff` listener to a server it runs itself on 127.0.0.1:15021, then stops
# listening there (the connection stays open on both ends): the health checks fail, haproxy marks the server down
# and, with on-marked-down shutdown-sessions, closes the client's connection. Prints what the client saw, as JSON.
CUTOFF = f"""
import json, socket, sys, time

def status():
    s = socket.socket(socket.AF_UNIX)
    s.connect({SOCKET!r})
    s.sendall(b"show stat\\n")
    answer = b""
    while chunk := s.recv(65536):
        answer += chunk
    lines = answer.decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == "cutoff" and row.get("svname") == "c1":
            return row["status"]

def wait_for(wanted, timeout):
    deadline = time.monotonic() + timeout
    while status() != wanted and time.monotonic() < deadline:
        time.sleep(0.2)
    return status()

server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", 15021))
server.listen(128)
result = {{"up_before": wait_for("UP", 15)}}

client = socket.create_connection(("127.0.0.1", 15020), timeout=5)
client.sendall(b"hello")
# The health checks' connections wait in the same queue (closed, they read as empty): take the one that says hello.
server.settimeout(5)
while True:
    conn, _ = server.accept()
    conn.settimeout(2)
    try:
        if conn.recv(5) == b"hello":
            break
    except OSError:  # a health check's connection, reset
        pass
    conn.close()
client.sendall(b"still there?")
result["relayed"] = conn.recv(64).decode()

server.close()
started = time.monotonic()
client.settimeout(15)
try:
    result["client_read"] = client.recv(64).decode()
except ConnectionResetError:
    result["client_read"] = "reset"
except socket.timeout:
    result["client_read"] = "timeout"
result["cut_after_s"] = round(time.monotonic() - started, 1)
result["status_after"] = status()
json.dump(result, sys.stdout)
"""


def admin(host, command):
    return host.check_output(f"python3 -c {shlex.quote(ADMIN)} {shlex.quote(command)}")


def servers(host):
    """{(listener, server): row} from `show stat` (the rows of the listeners' servers and BACKEND summaries)."""
    lines = admin(host, "show stat").splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
    return {(row["pxname"], row["svname"]): row for row in rows}


def eventually(probe, timeout=10, interval=0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def statuses(host, *keys):
    table = servers(host)
    return tuple(table[key]["status"] for key in keys)


def get(host, port):
    """The page a request through the listener gets, or None when the connection gives no answer."""
    cmd = host.run(f"curl -s --max-time 5 http://127.0.0.1:{port}/")
    return cmd.stdout.strip() if cmd.rc == 0 else None


def test_haproxy_runs(host):
    service = host.service("haproxy")
    assert service.is_running and service.is_enabled


def test_config_is_the_role_s_and_valid(host):
    config = host.file(CONFIG)
    assert config.user == "root" and config.group == "haproxy" and config.mode == 0o640
    assert config.content_string.startswith("# Managed by the kit's haproxy role")
    assert "mode tcp" in config.content_string
    check = host.run(f"haproxy -c -f {CONFIG}")
    assert check.rc == 0, check.stderr
    assert "Configuration file is valid" in check.stdout + check.stderr


def test_admin_socket(host):
    socket = host.file(SOCKET)
    assert socket.is_socket and socket.mode == 0o660 and socket.group == "haproxy"
    info = admin(host, "show info")
    assert "Name: HAProxy" in info


def test_listeners_listen(host):
    for port in (15000, 15010, 15020):
        assert host.socket(f"tcp://127.0.0.1:{port}").is_listening
    assert not host.socket("tcp://0.0.0.0:15000").is_listening


def test_health_checks_see_which_backends_are_up(host):
    keys = [("front", "b1"), ("front", "b2"), ("spread", "b1"), ("spread", "b3"), ("cutoff", "c1")]
    wanted = ("UP", "DOWN", "UP", "UP", "DOWN")
    assert eventually(lambda: statuses(host, *keys) == wanted), statuses(host, *keys)
    table = servers(host)
    # Real checks ran: a TCP connect, refused where nothing listens.
    # (a "* " prefix: a check is running right now)
    assert table[("front", "b1")]["check_status"].lstrip("* ") == "L4OK"
    assert table[("front", "b2")]["check_status"].lstrip("* ") == "L4CON"


def test_first_sends_every_client_to_the_first_server_up(host):
    assert [get(host, 15000) for _ in range(4)] == ["backend 15001"] * 4


def test_roundrobin_uses_both_servers(host):
    assert {get(host, 15010) for _ in range(6)} == {"backend 15001", "backend 15003"}


def test_clients_of_a_server_marked_down_are_cut_off(host):
    result = json.loads(host.check_output(f"python3 -c {shlex.quote(CUTOFF)}"))
    assert result["up_before"] == "UP"
    assert result["relayed"] == "still there?"
    # Cut by haproxy (EOF or reset) soon after the failed checks, not left open until a timeout.
    assert result["client_read"] in ("", "reset"), result
    assert result["cut_after_s"] < 10, result
    assert result["status_after"] == "DOWN", result


def test_a_stopped_backend_is_marked_down_and_traffic_moves(host):
    host.check_output("systemctl stop molecule-backend@15001")
    try:
        assert eventually(
            lambda: statuses(host, ("front", "b1"), ("spread", "b1")) == ("DOWN", "DOWN"), timeout=5
        )
        table = servers(host)
        # `front` has no server up (b2 is dead too): it says so and answers no client.
        assert table[("front", "BACKEND")]["status"] == "DOWN"
        assert get(host, 15000) is None
        # `spread` sends everything to b3, the server still up.
        assert {get(host, 15010) for _ in range(4)} == {"backend 15003"}
    finally:
        host.check_output("systemctl start molecule-backend@15001")
    assert eventually(lambda: statuses(host, ("front", "b1")) == ("UP",), timeout=10)
    assert get(host, 15000) == "backend 15001"
