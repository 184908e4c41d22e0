"""Where things live. One place, so every step agrees."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = REPO / "scenarios"
PLAYBOOKS = REPO / "playbooks"
TERRAFORM = REPO / "terraform"
REPORTS = Path(os.environ.get("LABKIT_REPORTS_DIR", REPO / "reports"))

# Fleet runtime state (overlay roots, pids) and caches live outside the git tree:
# a lab root is ~200 MB of files that no linter or git status should walk.
STATE_DIR = Path(os.environ.get("LABKIT_STATE_DIR", "/var/lib/labkit"))
CACHE_DIR = Path(os.environ.get("LABKIT_CACHE_DIR", "/var/cache/labkit"))


def scenario_dir(name: str) -> Path:
    return SCENARIOS / name


def reports_dir(cohort: str) -> Path:
    return REPORTS / cohort
