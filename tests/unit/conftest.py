"""Shared fixtures of the unit tests."""

from __future__ import annotations

import subprocess

import pytest


@pytest.fixture(scope="session")
def pubkey(tmp_path_factory) -> str:
    """A real OpenSSH ed25519 public key line (ssh-keygen), for rosters."""
    d = tmp_path_factory.mktemp("keys")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "k")], check=True)
    return (d / "k.pub").read_text().strip()
