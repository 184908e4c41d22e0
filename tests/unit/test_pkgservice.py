"""The cohort's package service (an unprivileged nginx) against a real upstream on loopback: it serves
only the configured mirror, fetches a file once however many hosts ask at the same time, and turns a
stuck mirror into an error within its deadline instead of a hang (what apt-cacher-ng did)."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from labkit import paths
from labkit.fleet import pkgservice

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path(pkgservice.NGINX).exists(), reason="needs root and nginx (make setup)"
)


class Mirror(BaseHTTPRequestHandler):
    hits: dict[str, int] = {}
    lock = threading.Lock()

    def do_GET(self):  # noqa: N802 - http.server's name
        with self.lock:
            self.hits[self.path] = self.hits.get(self.path, 0) + 1
        if self.path.startswith("/debian/hang"):
            time.sleep(30)
            return
        if not self.path.startswith("/debian/"):
            self.send_error(404)
            return
        time.sleep(0.5)  # a slow mirror: concurrent requests for one file overlap
        body = f"content of {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def service(tmp_path_factory, monkeypatch):
    root = tmp_path_factory.mktemp("pkg")
    os.chmod(root, 0o755)  # nginx runs as labkit-pkg and must reach its state folder
    for p in (root, *root.parents):
        if p == Path("/"):
            break
        os.chmod(p, os.stat(p).st_mode | 0o005)
    monkeypatch.setattr(paths, "STATE_DIR", root / "state")
    monkeypatch.setattr(paths, "CACHE_DIR", root / "cache")
    Mirror.hits = {}
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Mirror)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = _free_port()
    mirror = f"http://127.0.0.1:{upstream.server_address[1]}/debian"
    pkgservice.start(
        "ptest", "127.0.0.1", out=lambda _m: None, port=port, mirrors=[mirror], upstream_timeout=3
    )
    yield f"http://127.0.0.1:{port}"
    pkgservice.stop("ptest", "127.0.0.1", port)
    upstream.shutdown()


def _get(url: str, timeout: float = 20) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def test_runs_unprivileged(service):
    pid = pkgservice.running_pid("ptest")
    assert pid
    uids = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("Uid:"))
    assert set(uids.split()[1:]) == {str(pkgservice.ensure_user()[0])}, uids


def test_serves_the_mirror_and_nothing_else(service):
    assert _get(f"{service}/m0/dists/bookworm/InRelease") == (
        200,
        b"content of /debian/dists/bookworm/InRelease\n",
    )
    assert _get(f"{service}/m1/dists/bookworm/InRelease")[0] == 403
    assert _get(f"{service}/etc/passwd")[0] == 403
    assert _get(f"{service}/m0/../../etc/passwd")[0] in (400, 403)
    assert not any(not p.startswith("/debian/") for p in Mirror.hits)


def test_many_hosts_asking_at_once_fetch_one_package_once(service):
    url = f"{service}/m0/pool/main/r/redis/redis-server_7.0.15-1_amd64.deb"
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda _i: _get(url), range(12)))
    assert all(code == 200 and body.endswith(b"redis-server_7.0.15-1_amd64.deb\n") for code, body in results)
    assert Mirror.hits["/debian/pool/main/r/redis/redis-server_7.0.15-1_amd64.deb"] == 1
    assert _get(url)[0] == 200
    assert Mirror.hits["/debian/pool/main/r/redis/redis-server_7.0.15-1_amd64.deb"] == 1


def test_a_stuck_mirror_is_an_error_within_the_deadline_not_a_hang(service):
    t0 = time.monotonic()
    code, _ = _get(f"{service}/m0/hang/InRelease", timeout=25)
    assert code == 504
    assert time.monotonic() - t0 < 10


def test_workers_of_a_dead_master_are_cleared_before_a_restart(service):
    """A master killed hard (OOM, a crash) leaves its workers holding the port: start() and stop() clear them."""
    port = int(service.rsplit(":", 1)[1])
    master = pkgservice.running_pid("ptest")
    workers = pkgservice._listeners("127.0.0.1", port)
    assert master and set(workers) - {master}, workers
    os.kill(master, signal.SIGKILL)
    time.sleep(0.5)
    assert pkgservice.running_pid("ptest") is None and pkgservice._listeners("127.0.0.1", port)
    conf = (paths.STATE_DIR / "packages" / "ptest" / "nginx.conf").read_text()
    mirror = conf.split("proxy_pass ", 1)[1].split(";", 1)[0].rsplit("/debian", 1)[0] + "/debian"
    pkgservice.start(
        "ptest", "127.0.0.1", out=lambda _m: None, port=port, mirrors=[mirror], upstream_timeout=3
    )
    assert pkgservice.running_pid("ptest") not in (None, master)
    assert _get(service + "/nothing")[0] == 403
    pkgservice.stop("ptest", "127.0.0.1", port)
    time.sleep(0.5)
    assert not pkgservice.leftover_pids("ptest") and not pkgservice._listeners("127.0.0.1", port)
