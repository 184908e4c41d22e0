"""The cohort's package service: an unprivileged nginx on the bridge gateway that serves the
controller's own Debian mirrors to lab hosts (which have no route out), and nothing else.

Why nginx and not apt-cacher-ng: apt-cacher-ng 3.7 loses requests when several hosts refresh
the same index at once ("Failure to move file ... File exists"), leaves the half-moved files in
its shared cache, and apt then waits on a CLOSE-WAIT socket forever (10 hosts hung 2 runs of 2).
nginx's proxy cache collapses concurrent misses into one upstream fetch (``proxy_cache_lock``),
writes cache files atomically, and puts a deadline on every upstream step, so a slow or
broken mirror gives apt an error instead of a hang. Most lab hosts never use it anyway: what
the roles install is baked into the image (labkit/fleet/bake.py); it is there for the bake and
for packages a handout asks students to install.

Mirror ``i`` of :func:`images.mirrors` is served under ``/m<i>/``; any other path gets 403. The
whole nginx runs as the unprivileged system user ``labkit-pkg`` (port > 1024, files it owns).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from labkit import paths
from labkit.fleet import images
from labkit.proc import pid_alive, read_pid, run, stop_pid

PORT = 3942  # not 3142: a system apt-cacher-ng may own that one
USER = "labkit-pkg"
NGINX = "/usr/sbin/nginx"
Out = Callable[[str], None]


def base_url(gateway: str) -> str:
    return f"http://{gateway}:{PORT}"


def cache_dir() -> Path:
    return paths.CACHE_DIR / "packages"


def ensure_user() -> tuple[int, int]:
    try:
        pw = pwd.getpwnam(USER)
    except KeyError:
        run(
            ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell",
             "/usr/sbin/nologin", "--user-group", USER],
            quiet=True,
        )  # fmt: skip
        pw = pwd.getpwnam(USER)
    return pw.pw_uid, grp.getgrnam(USER).gr_gid


def nginx_conf(
    state: Path, gateway: str, mirrors: list[str], port: int = PORT, upstream_timeout: int = 60
) -> str:
    locations = []
    for i, uri in enumerate(mirrors):
        parts = urlsplit(uri)
        origin, path = f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/")
        tls = (
            "proxy_ssl_server_name on;\n            proxy_ssl_verify on;\n            proxy_ssl_trusted_certificate /etc/ssl/certs/ca-certificates.crt;\n            "
            if parts.scheme == "https"
            else ""
        )
        locations.append(
            f"""
        # {uri}: package files never change under one name; indices are kept briefly.
        location ~ ^/m{i}/(pool|.*/by-hash)/ {{
            rewrite ^/m{i}/(.*)$ {path}/$1 break;
            proxy_pass {origin};
            proxy_set_header Host {parts.hostname};
            {tls}proxy_cache_valid 200 30d;
        }}
        location /m{i}/ {{
            proxy_pass {origin}{path}/;
            proxy_set_header Host {parts.hostname};
            {tls}proxy_cache_valid 200 301 302 60s;
        }}"""
        )
    tmp = state / "tmp"
    return f"""# Written by labkit (labkit/fleet/pkgservice.py); runs as {USER}.
worker_processes 1;
daemon on;
pid {state / "nginx.pid"};
error_log {state / "error.log"} warn;
events {{ worker_connections 1024; }}
http {{
    access_log {state / "access.log"};
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ }}
    default_type application/octet-stream;
    sendfile on;
    proxy_cache_path {cache_dir()} levels=1:2 keys_zone=labkit_pkg:16m max_size=8g inactive=60d use_temp_path=off;
    proxy_cache labkit_pkg;
    proxy_cache_key $proxy_host$request_uri;
    # The validity below decides, not the mirror's CDN headers.
    proxy_ignore_headers Cache-Control Expires Set-Cookie X-Accel-Expires;
    # Many hosts asking for the same file at once: one upstream fetch, the others wait for it (bounded).
    proxy_cache_lock on;
    proxy_cache_lock_timeout 120s;
    proxy_cache_lock_age 120s;
    proxy_cache_use_stale error timeout updating http_500 http_502 http_503 http_504;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    # Deadlines on every step: a stuck mirror is an error for apt, never a hang.
    proxy_connect_timeout 15s;
    proxy_send_timeout {upstream_timeout}s;
    proxy_read_timeout {upstream_timeout}s;
    send_timeout 60s;
    client_header_timeout 30s;
    keepalive_timeout 30s;
    server {{
        listen {gateway}:{port};
        location = /healthz {{ return 200 "ok\\n"; }}{"".join(locations)}
        location / {{ return 403; }}
    }}
}}
"""


def state_dir(cohort: str) -> Path:
    """Outside the cohort's 0700 fleet folder: the service's own user must reach its config and logs."""
    return paths.STATE_DIR / "packages" / cohort


def running_pid(cohort: str) -> int | None:
    pid = read_pid(state_dir(cohort) / "nginx.pid")
    if pid and pid_alive(pid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/exe").resolve() == Path(NGINX).resolve():
                return pid
    return None


def _listeners(gateway: str, port: int) -> list[int]:
    """Pids of nginx processes still listening on ``gateway:port`` (workers whose master died keep the socket)."""
    res = run(["ss", "-Hltnp", "sport", "=", f":{port}"], check=False, quiet=True)
    pids = []
    for line in (res.stdout or "").splitlines():
        if f"{gateway}:{port}" in line:
            for pid in re.findall(r"pid=(\d+)", line):
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{pid}/exe").resolve() == Path(NGINX).resolve():
                        pids.append(int(pid))
    return sorted(set(pids))


def leftover_pids(cohort: str) -> list[int]:
    """nginx processes still holding files of the cohort's service (workers, cache manager and loader of a master
    that died): found by their open files, not trusted from a pid file."""
    state, found = str(state_dir(cohort)) + "/", []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (proc / "exe").resolve() != Path(NGINX).resolve():
                continue
            if any(os.readlink(fd).startswith(state) for fd in (proc / "fd").iterdir()):
                found.append(int(proc.name))
    return sorted(found)


def start(
    cohort: str,
    gateway: str,
    out: Out = print,
    port: int = PORT,
    mirrors: list[str] | None = None,
    upstream_timeout: int = 60,
) -> None:
    """Start the cohort's package service on ``gateway:port`` (idempotent)."""
    if running_pid(cohort):
        return
    for orphan in sorted(
        set(leftover_pids(cohort)) | set(_listeners(gateway, port))
    ):  # a dead master's workers
        stop_pid(orphan, timeout=5)
    if not Path(NGINX).exists():
        raise RuntimeError(f"{NGINX} not found. Fix: apt-get install nginx-light (make setup does it)")
    uid, gid = ensure_user()
    state = state_dir(cohort)
    for d in (state, state / "tmp", cache_dir()):
        d.mkdir(parents=True, exist_ok=True)
        shutil.chown(d, uid, gid)
    for name in ("error.log", "access.log"):
        (state / name).touch()
        shutil.chown(state / name, uid, gid)
    conf = state / "nginx.conf"
    conf.write_text(nginx_conf(state, gateway, mirrors or images.mirrors(), port, upstream_timeout))
    cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all",
           NGINX, "-q", "-c", str(conf), "-p", str(state)]  # fmt: skip
    run(cmd, quiet=True, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((gateway, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"package service did not start on {gateway}:{port}; see {state / 'error.log'}")


def stop(cohort: str, gateway: str | None = None, port: int = PORT) -> bool:
    """Stop the cohort's nginx; with ``gateway``, also any worker a dead master left listening."""
    pid = running_pid(cohort)
    stopped = bool(pid) and stop_pid(pid, timeout=10)
    for orphan in sorted(set(leftover_pids(cohort)) | set(_listeners(gateway, port) if gateway else [])):
        stopped = stop_pid(orphan, timeout=5) or stopped
    return stopped
