"""Per-host limits: sizes parse, the systemd scope (controllers booted with systemd) carries every limit and the
closed device list, and on this machine's cgroup layout a host group is made, limited and removed."""

from __future__ import annotations

import os

import pytest

from labkit.fleet import cgroups


def test_sizes():
    assert cgroups.parse_size("768M") == 768 * 1024**2
    assert cgroups.parse_size("1G") == 1024**3
    assert cgroups.parse_size("512MiB") == 512 * 1024**2
    assert cgroups.parse_size(4096) == 4096


def test_systemd_scope_carries_the_limits_and_a_closed_device_list():
    cmd = cgroups.systemd_scope("labkit-c-c-s01-broker", cgroups.Limits(768 * 1024**2, 1024, 100))
    assert cmd[:2] == ["systemd-run", "--scope"] and cmd[-1] == "--"
    for prop in (
        "Delegate=yes",
        f"MemoryMax={768 * 1024**2}",
        "TasksMax=1024",
        "CPUWeight=100",
        "DevicePolicy=closed",
    ):
        assert f"--property={prop}" in cmd, prop
    allowed = [
        c.removeprefix("--property=DeviceAllow=") for c in cmd if c.startswith("--property=DeviceAllow=")
    ]
    assert "/dev/null rwm" in allowed and not any(
        "/dev/sd" in a or "/dev/vd" in a or "block" in a for a in allowed
    )


@pytest.mark.skipif(
    os.geteuid() != 0 or cgroups.systemd_manages_cgroups(), reason="needs root, no systemd PID 1"
)
def test_a_host_group_is_made_limited_and_removed():
    groups = cgroups.create("unit-cg/h1", cgroups.Limits(64 * 1024**2, 64, 50))
    try:
        assert groups and all(p.is_dir() for p in groups.values())
        if "memory" in groups:
            assert int((groups["memory"] / "memory.limit_in_bytes").read_text()) == 64 * 1024**2
        if "pids" in groups:
            assert (groups["pids"] / "pids.max").read_text().strip() == "64"
        if "devices" in groups:
            rules = (groups["devices"] / "devices.list").read_text()
            assert "c 1:3 rwm" in rules and "a *:* rwm" not in rules and "b " not in rules
    finally:
        assert cgroups.remove("unit-cg/h1") == []
        cgroups.remove("unit-cg")
    assert not any(p.exists() for p in groups.values())
