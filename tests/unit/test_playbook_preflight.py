"""Plain `ansible-playbook` refuses a bad roster before it touches any host, like `labkit` does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from labkit import paths


@pytest.mark.parametrize("playbook", ["site.yml", "solve.yml"])
def test_bad_roster_stops_the_playbook_first(tmp_path, pubkey, playbook):
    key = pubkey
    (tmp_path / "cohort.yml").write_text(
        yaml.safe_dump(
            {
                "cohort": "pf",
                "scenario": "queue-segregation",
                "target": "local",
                "students": [{"id": "s01", "ssh_public_key": key}, {"id": "s01", "ssh_public_key": key}],
            }
        )
    )
    # A host that would be configured on this very machine if the preflight let it through.
    (tmp_path / "hosts.yml").write_text(
        yaml.safe_dump(
            {
                "all": {
                    "hosts": {
                        "pf-s01-worker": {
                            "ansible_connection": "local",
                            "ansible_python_interpreter": sys.executable,
                            "lab_student": "s01",
                            "lab_role": "worker",
                            "lab_address": "127.0.0.1",
                            "lab_broker_address": "127.0.0.1",
                        }
                    },
                    "vars": {
                        "labkit_scenario": "queue-segregation",
                        "labkit_repo": str(paths.REPO),
                        "labkit_credentials_dir": str(tmp_path / "credentials"),
                    },
                    "children": {"student_s01": {"hosts": {"pf-s01-worker": None}}},
                }
            }
        )
    )
    ansible = Path(sys.executable).with_name("ansible-playbook")
    proc = subprocess.run(
        [str(ansible), "-i", str(tmp_path / "hosts.yml"), str(paths.PLAYBOOKS / playbook)],
        capture_output=True,
        text=True,
        cwd=paths.REPO,
        env=dict(os.environ, ANSIBLE_CONFIG=str(paths.REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1"),
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "students[1] (id 's01'): id: duplicate of students[0]" in out and "nothing was created" in out
    assert "ok=0" in out or "failed=1" in out
    assert not (tmp_path / "credentials").exists(), "no credential may be generated for a refused roster"
