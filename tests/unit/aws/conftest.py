"""moto_server on 127.0.0.1 for the boto3 parts of the AWS fleet.

One server per test session (started from the venv, stopped by pid), reset before
every test. Fake credentials and AWS_ENDPOINT_URL exist only inside the tests that ask
for ``aws``; an emulated instance's address is never connected to.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from aws_helpers import DEBIAN_AMD64, DEBIAN_ARM64, OTHER_AMI, REGION

from labkit.aws import DEBIAN_OWNER

VENV_BIN = Path(sys.executable).parent


def _image(ami_id: str, name: str, arch: str, owner: str, created: str) -> dict:
    return {
        "ami_id": ami_id,
        "name": name,
        "description": name,
        "state": "available",
        "public": True,
        "owner_id": owner,
        "image_location": f"{owner}/{name}",
        "architecture": arch,
        "virtualization_type": "hvm",
        "root_device_type": "ebs",
        "root_device_name": "/dev/xvda",
        "image_type": "machine",
        "hypervisor": "xen",
        "sriov": "simple",
        "creation_date": created,
    }


# moto ships no Debian images; MOTO_AMIS_PATH replaces its catalogue with these.
AMIS = [
    _image(
        "ami-0d3e1a5b7c9f0a000",
        "debian-12-amd64-20240101-1000",
        "x86_64",
        DEBIAN_OWNER,
        "2024-01-01T00:00:00.000Z",
    ),
    _image(DEBIAN_AMD64, "debian-12-amd64-20250601-2100", "x86_64", DEBIAN_OWNER, "2025-06-01T00:00:00.000Z"),
    _image(DEBIAN_ARM64, "debian-12-arm64-20250601-2100", "arm64", DEBIAN_OWNER, "2025-06-01T00:00:00.000Z"),
    _image(OTHER_AMI, "debian-12-amd64-impostor", "x86_64", "999999999999", "2026-01-01T00:00:00.000Z"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = VENV_BIN / "moto_server"
    if not server.exists():
        pytest.skip(f"{server} not installed (pip install 'moto[server]')")
    amis = tmp_path_factory.mktemp("moto") / "amis.json"
    amis.write_text(json.dumps(AMIS))
    port = _free_port()
    env = {**os.environ, "MOTO_AMIS_PATH": str(amis)}
    log = open(amis.parent / "moto.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"moto_server did not start: {(amis.parent / 'moto.log').read_text()}"
                    ) from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A reset moto account reachable through the ordinary boto3 settings."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")).close()
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return moto_endpoint


@pytest.fixture
def session(aws: str) -> boto3.Session:
    return boto3.Session(region_name=REGION)
