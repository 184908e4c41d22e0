"""supervisord on the lab host: running, including the program folder, answering on its socket."""

SOCKET = "/var/run/supervisor.sock"


def test_supervisord_runs(host):
    service = host.service("supervisor")
    assert service.is_running
    assert service.is_enabled


def test_includes_the_program_folder(host):
    conf = host.file("/etc/supervisor/supervisord.conf").content_string
    assert "files = /etc/supervisor/conf.d/*.conf" in conf


def test_socket_answers_supervisorctl(host):
    assert host.file(SOCKET).is_socket
    # No programs yet: `status` exits 0 with empty output only when supervisord answered on the socket.
    cmd = host.run(f"supervisorctl -s unix://{SOCKET} status")
    assert cmd.rc == 0, cmd.stderr
    assert "refused" not in cmd.stdout + cmd.stderr
    assert cmd.stdout.strip() == ""
