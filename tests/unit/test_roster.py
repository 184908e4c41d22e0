"""Roster validation: every bad input is refused, naming file, student and field, with a fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from labkit.roster import RosterError, load_roster, parse_ssh_public_key


def write(tmp_path: Path, data: dict) -> Path:
    (tmp_path / "cohort.yml").write_text(yaml.safe_dump(data))
    return tmp_path


def roster(pubkey: str, **over) -> dict:
    data = {
        "cohort": "spring26",
        "scenario": "queue-segregation",
        "target": "local",
        "students": [
            {"id": "s01", "name": "Ada", "ssh_public_key": pubkey},
            {"id": "s02", "name": "Alan", "ssh_public_key": pubkey},
        ],
    }
    data.update(over)
    return data


def problems(tmp_path: Path, data: dict) -> list[str]:
    with pytest.raises(RosterError) as exc:
        load_roster(write(tmp_path, data))
    assert str(tmp_path / "cohort.yml") in exc.value.render()
    return exc.value.problems


def test_valid_roster_loads(tmp_path, pubkey):
    r = load_roster(write(tmp_path, roster(pubkey, expires_at="2026-12-24T00:00:00Z")))
    assert [s.id for s in r.students] == ["s01", "s02"]
    assert r.cohort == "spring26" and r.scenario == "queue-segregation" and r.target == "local"
    assert r.expires_at == "2026-12-24T00:00:00Z"
    assert r.students[0].ssh_public_key.startswith("ssh-ed25519 AAAA")


def test_key_file_relative_to_cohort_folder(tmp_path, pubkey):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys/s01.pub").write_text(pubkey + "\n")
    data = roster(pubkey)
    data["students"][0] = {"id": "s01", "ssh_public_key_file": "keys/s01.pub"}
    # Type and body only: the comment is the student's free text.
    assert load_roster(write(tmp_path, data)).students[0].ssh_public_key == " ".join(pubkey.split()[:2])


def test_duplicate_id(tmp_path, pubkey):
    data = roster(pubkey)
    data["students"][1]["id"] = "s01"
    (p,) = problems(tmp_path, data)
    assert "students[1] (id 's01')" in p and "id: duplicate of students[0]" in p and "Fix:" in p


@pytest.mark.parametrize("bad", ["S01", "1abc", "a b", "x" * 33, "ada.l", ""])
def test_invalid_linux_user_name(tmp_path, pubkey, bad):
    data = roster(pubkey)
    data["students"][0]["id"] = bad
    (p,) = problems(tmp_path, data)
    assert p.startswith("students[0]") and "not a valid Linux user name" in p and "Fix:" in p


def test_reserved_account_name(tmp_path, pubkey):
    data = roster(pubkey)
    data["students"][0]["id"] = "rabbitmq"
    (p,) = problems(tmp_path, data)
    assert "system or service account" in p


def test_missing_key(tmp_path, pubkey):
    data = roster(pubkey)
    del data["students"][1]["ssh_public_key"]
    (p,) = problems(tmp_path, data)
    assert "students[1] (id 's02'): ssh_public_key: missing" in p and "Fix:" in p


@pytest.mark.parametrize(
    ("mangle", "why"),
    [
        (lambda k: k.split()[1], "expected '<type> <base64> [comment]'"),
        (lambda k: "ssh-foo " + k.split()[1], "unknown key type"),
        (lambda k: k.replace("AAAA", "AA!A", 1), "not valid base64"),
        (lambda k: "ssh-rsa " + k.split()[1], "does not encode a ssh-rsa key"),
        (lambda k: k.split()[0] + " " + k.split()[1][:-8], "was the key truncated"),
    ],
)
def test_malformed_key(tmp_path, pubkey, mangle, why):
    data = roster(pubkey)
    data["students"][0]["ssh_public_key"] = mangle(pubkey)
    (p,) = problems(tmp_path, data)
    assert "students[0] (id 's01'): ssh_public_key: malformed SSH public key" in p and why in p


def test_missing_key_file(tmp_path, pubkey):
    data = roster(pubkey)
    data["students"][0] = {"id": "s01", "ssh_public_key_file": "keys/nope.pub"}
    (p,) = problems(tmp_path, data)
    assert "ssh_public_key_file" in p and "nope.pub does not exist" in p


def test_unknown_scenario_lists_known(tmp_path, pubkey):
    (p,) = problems(tmp_path, roster(pubkey, scenario="no-such-lab"))
    assert p.startswith("scenario: unknown scenario 'no-such-lab'") and "queue-segregation" in p


def test_unknown_target(tmp_path, pubkey):
    (p,) = problems(tmp_path, roster(pubkey, target="gcp"))
    assert "target: unknown target 'gcp'" in p and "local, aws" in p


def test_aws_target_needs_aws_block(tmp_path, pubkey):
    (p,) = problems(tmp_path, roster(pubkey, target="aws"))
    assert p.startswith("aws: missing")
    more = problems(
        tmp_path,
        roster(
            pubkey,
            target="aws",
            aws={"region": "mars", "instance_type": "big", "allowed_ssh_cidrs": ["10.0.0.1/8"]},
        ),
    )
    assert len(more) == 3


def test_all_problems_reported_at_once(tmp_path, pubkey):
    data = roster(pubkey, cohort="Bad_Name", scenario="nope")
    data["students"][1]["id"] = "s01"
    assert len(problems(tmp_path, data)) == 3


def test_parse_ssh_public_key_accepts_real_key(pubkey):
    assert parse_ssh_public_key(pubkey) is None


def test_cli_refuses_before_creating_anything(tmp_path, pubkey):
    data = roster(pubkey)
    data["students"][1]["id"] = "s01"
    folder = write(tmp_path, data)
    proc = subprocess.run(
        [sys.executable, "-m", "labkit.cli", "fleet", "up", str(folder)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "duplicate" in proc.stderr and "nothing was created" in proc.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["cohort.yml"]


def test_up_for_a_student_not_in_the_roster_is_refused_before_anything_is_made(tmp_path, pubkey):
    folder = write(tmp_path, roster(pubkey))
    proc = subprocess.run(
        [sys.executable, "-m", "labkit.cli", "up", str(folder), "--student", "s02", "--student", "s09"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert str(folder / "cohort.yml") in proc.stderr and "nothing was created" in proc.stderr
    assert "--student s09: no such student in the roster" in proc.stderr and "s01, s02" in proc.stderr
    assert "s02:" not in proc.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["cohort.yml"]
