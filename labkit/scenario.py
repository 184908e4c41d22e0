"""Scenario definitions (scenarios/<name>/scenario.yml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from labkit import paths

REQUIRED = ("name", "title", "module", "topology", "pools", "load", "rubric")


class ScenarioError(Exception):
    pass


@dataclass(frozen=True)
class Scenario:
    name: str
    folder: Path
    data: dict[str, Any]

    @property
    def roles(self) -> list[str]:
        """Host roles of a lab (broker, worker, ...), in topology order."""
        return list(self.data["topology"])

    @property
    def rubric(self) -> list[dict[str, Any]]:
        return self.data["rubric"]

    @property
    def load(self) -> dict[str, Any]:
        return self.data["load"]

    @property
    def starting_state_fails(self) -> list[str]:
        return list(self.data.get("starting_state_fails", []))

    def rubric_entry(self, check_id: str) -> dict[str, Any]:
        for entry in self.rubric:
            if entry["id"] == check_id:
                return entry
        raise KeyError(f"check {check_id!r} is not in the rubric of {self.folder / 'scenario.yml'}")


def load_scenario(name: str) -> Scenario:
    folder = paths.scenario_dir(name)
    path = folder / "scenario.yml"
    if not path.is_file():
        raise ScenarioError(f"{path}: no such scenario")
    data = yaml.safe_load(path.read_text())
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ScenarioError(f"{path}: missing keys: {', '.join(missing)}")
    if data["name"] != folder.name:
        raise ScenarioError(f"{path}: name {data['name']!r} must equal the folder name {folder.name!r}")
    ids = [r["id"] for r in data["rubric"]]
    if len(ids) != len(set(ids)):
        raise ScenarioError(f"{path}: rubric ids must be unique")
    unknown = set(data.get("starting_state_fails", [])) - set(ids)
    if unknown:
        raise ScenarioError(f"{path}: starting_state_fails names checks not in the rubric: {sorted(unknown)}")
    for entry in data["rubric"]:
        if entry.get("role") not in data["topology"]:
            raise ScenarioError(
                f"{path}: check {entry['id']!r} targets unknown host role {entry.get('role')!r}"
            )
    return Scenario(name=name, folder=folder, data=data)
