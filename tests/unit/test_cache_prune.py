"""`labkit cache prune`: old baked layers, bases and wheelhouses go; what a host is made of, and what the next
`labkit up` would use, stays."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labkit import paths
from labkit.fleet import bake, cache, images


@pytest.fixture
def machine(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setattr(paths, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(paths, "STATE_DIR", tmp_path / "state")
    for kind in ("baked", "base", "wheelhouse"):
        (tmp_path / "cache" / kind).mkdir(parents=True)
    return tmp_path


def layer(path: Path, mib: int = 1) -> Path:
    (path / "layer").mkdir(parents=True)
    (path / "layer" / "blob").write_bytes(b"x" * mib * 2**20)
    (path / "complete").write_text("")
    return path


def test_prune_keeps_current_and_used_layers_and_removes_the_rest(machine: Path) -> None:
    current_queue = bake.layer_dir(bake.bake_key(bake.components(["rabbitmq", "redis", "flower"])))
    layer(current_queue)
    layer(images.base_image_dir())
    layer(images.wheelhouse_dir())
    used = layer(
        paths.CACHE_DIR / "baked" / "0123456789abcdef"
    )  # an old recipe a stopped host still boots on
    old_base = layer(paths.CACHE_DIR / "base" / "00000000000000aa")
    stale = [
        layer(paths.CACHE_DIR / "baked" / "deadbeefdeadbeef", 2),
        layer(paths.CACHE_DIR / "wheelhouse" / "00000000000000ff"),
    ]
    logs = paths.CACHE_DIR / "baked" / "logs"  # not an image: bake.py's playbook logs
    logs.mkdir()
    host = paths.STATE_DIR / "fleet" / "c1" / "hosts" / "c1-s01-broker"
    host.mkdir(parents=True)
    (host / "initialized").write_text(
        json.dumps({"lowerdirs": [str(used / "layer"), str(old_base / "rootfs")]})
    )

    said: list[str] = []
    assert cache.prune(False, out=said.append) == 0
    assert all(p.exists() for p in (*stale, used, old_base, current_queue)), "a dry run removes nothing"
    assert (
        sum("would remove" in line for line in said) == 2 and "3 MiB to remove (run with --yes)" in said[-1]
    )

    said.clear()
    assert cache.prune(True, out=said.append) == 0
    assert not any(p.exists() for p in stale)
    assert used.exists() and old_base.exists(), "a host's lower layers stay while the host exists"
    assert logs.exists()
    assert current_queue.exists() and images.base_image_dir().exists() and images.wheelhouse_dir().exists()
    assert "2 folder(s), 3 MiB removed" in said[-1]

    # Once the host is gone, its old layers are dead weight too.
    (host / "initialized").unlink()
    said.clear()
    cache.prune(True, out=said.append)
    assert not used.exists() and not old_base.exists() and current_queue.exists()
