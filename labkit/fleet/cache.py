"""What the local fleet's cache holds, and removing what nothing needs any more (`labkit cache prune`).

The cache (paths.CACHE_DIR) keeps built-once artefacts: the Debian base, the wheelhouse, and one baked layer per
component set and recipe (bake.py). A change to a role, a pin or the base makes new ones and leaves the old ones
behind (about 250 MB a layer). A layer or base is still needed while any host of any cohort on this machine was
made on it (its overlay's lower layers, recorded in the host's state: a stopped host boots on them again), and the
current ones are kept so the next `labkit up` bakes nothing. Everything else may go. Nothing of a host (its upper
layer: the student's work) is ever in the cache.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from labkit import paths
from labkit.fleet import bake, images
from labkit.scenario import ScenarioError, load_scenario

Out = Callable[[str], object]
DIGEST = re.compile(r"[0-9a-f]{16}(\.building)?")


@dataclass
class PrunePlan:
    keep: dict[Path, str] = field(default_factory=dict)  # path -> why
    remove: list[Path] = field(default_factory=list)

    def size(self, path: Path) -> int:
        return sum(f.lstat().st_size for f in path.rglob("*") if not f.is_symlink() and f.is_file())


def _in_use() -> dict[Path, str]:
    """Cache folders some host's overlay is made of -> which host."""
    used: dict[Path, str] = {}
    for record in sorted((paths.STATE_DIR / "fleet").glob("*/hosts/*/initialized")):
        with contextlib.suppress(OSError, ValueError):
            for lower in json.loads(record.read_text()).get("lowerdirs") or []:
                for top in (paths.CACHE_DIR / "baked", paths.CACHE_DIR / "base"):
                    with contextlib.suppress(ValueError):
                        name = Path(lower).relative_to(top).parts[0]
                        used.setdefault(top / name, f"used by host {record.parent.name}")
    return used


def _current() -> dict[Path, str]:
    """What the next `labkit up` of any scenario would use: the base, the wheelhouse, every role's layer."""
    current = {
        images.base_image_dir(): "the current base image",
        images.wheelhouse_dir(): "the current wheelhouse",
    }
    sets = [["bastion"]]
    for folder in sorted(paths.SCENARIOS.iterdir()):
        with contextlib.suppress(ScenarioError):
            topology = load_scenario(folder.name, strict=False).data["topology"]
            sets += [bake.components(comps) for comps in topology.values()]
    for comps in sets:
        current.setdefault(bake.layer_dir(bake.bake_key(comps)), f"the current layer of {', '.join(comps)}")
    return current


def plan() -> PrunePlan:
    keep = {**_current(), **_in_use()}
    result = PrunePlan(keep=keep)
    for kind in ("baked", "base", "wheelhouse"):
        folder = paths.CACHE_DIR / kind
        if folder.is_dir():
            # Only the kit's digests (and builds a crash left half-done); other folders (bake logs) are not images.
            result.remove += [p for p in sorted(folder.iterdir())
                              if p.is_dir() and p not in keep and DIGEST.fullmatch(p.name)]  # fmt: skip
    return result


def prune(yes: bool, out: Out = print) -> int:
    """List (and with ``yes`` remove) the cache folders no host and no current recipe needs."""
    # The bake and base locks: no host is being made on a layer while the list is drawn and acted on.
    with (
        images.file_lock(paths.CACHE_DIR / "baked" / ".lock"),
        images.file_lock(paths.CACHE_DIR / "base" / ".lock"),
        images.file_lock(paths.CACHE_DIR / "wheelhouse" / ".lock"),
    ):
        p = plan()
        total = 0
        for path in p.remove:
            size = p.size(path)
            total += size
            out(f"cache: {'removing' if yes else 'would remove'} {path} ({size / 2**20:.0f} MiB)")
            if yes:
                shutil.rmtree(path)
        kept = sorted(str(k) for k in p.keep if k.exists())
        out(
            f"cache prune: {len(p.remove)} folder(s), {total / 2**20:.0f} MiB "
            f"{'removed' if yes else 'to remove (run with --yes)'}; {len(kept)} kept (current or used by a host)"
        )
    return 0
