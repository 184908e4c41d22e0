"""Roster text is data: a template payload in any string field of the roster is refused (or, for a key's
comment, dropped) before anything is made, and roster text the kit writes into the inventory is never
rendered by Ansible, even if it got past validation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from labkit import inventory, paths
from labkit.roster import RosterError, load_roster

PAYLOADS = [
    "{{ lookup('pipe', 'touch /tmp/labkit-pwned') }}",
    "{% for x in range(3) %}x{% endfor %}",
    '${file("/etc/passwd")}',
    "%{ if true }x%{ endif }",
    "{# comment #}",
]


def base(pubkey: str) -> dict:
    return {
        "cohort": "inert",
        "scenario": "queue-segregation",
        "target": "aws",
        "expires_at": "2026-12-24T00:00:00Z",
        "students": [{"id": "s01", "name": "Ada", "ssh_public_key": pubkey}],
        "aws": {
            "region": "eu-west-1",
            "instance_type": "t3.small",
            "allowed_ssh_cidrs": ["203.0.113.0/24"],
            "ami": "ami-0123456789abcdef0",
            "availability_zone": "eu-west-1b",
            "controller_cidrs": ["198.51.100.7/32"],
            "load_generator": {"instance_type": "c6i.large"},
        },
        "access": {"address": "192.0.2.10", "port": 2201},
    }


# Every string field of the roster schema, as a path into the roster mapping.
STRING_FIELDS = [
    ("cohort",),
    ("scenario",),
    ("target",),
    ("expires_at",),
    ("students", 0, "id"),
    ("students", 0, "name"),
    ("students", 0, "ssh_public_key"),
    ("aws", "region"),
    ("aws", "instance_type"),
    ("aws", "allowed_ssh_cidrs", 0),
    ("aws", "ami"),
    ("aws", "availability_zone"),
    ("aws", "controller_cidrs", 0),
    ("aws", "load_generator", "instance_type"),
    ("access", "address"),
]


def _set(data, path, value):
    for p in path[:-1]:
        data = data[p]
    data[path[-1]] = value


@pytest.mark.parametrize("field", STRING_FIELDS, ids=lambda f: ".".join(map(str, f)))
@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_template_payload_in_any_field_is_refused_naming_the_field(tmp_path, pubkey, field, payload):
    data = base(pubkey)
    _set(
        data,
        field,
        f"x{payload}" if field != ("students", 0, "ssh_public_key") else f"{pubkey[:20]}{payload}",
    )
    (tmp_path / "cohort.yml").write_text(yaml.safe_dump(data))
    with pytest.raises(RosterError) as exc:
        load_roster(tmp_path)
    leaf = str(field[-1]) if not isinstance(field[-1], int) else str(field[-2])
    assert any(leaf in p for p in exc.value.problems), exc.value.problems
    assert "nothing was created" in exc.value.render()


def test_the_roster_schema_has_no_string_field_the_payload_test_misses():
    """A field added to the roster later must be added to STRING_FIELDS (and validated)."""
    import ast
    import re

    from labkit import roster as r

    source = Path(r.__file__).read_text()
    top = ast.literal_eval(re.search(r"known = (\{[^}]*\})", source).group(1))
    aws = set(r.AWS_FIELDS)
    assert top == {f[0] for f in STRING_FIELDS}
    assert aws == {f[1] for f in STRING_FIELDS if f[0] == "aws"}
    assert {"id", "name", "ssh_public_key"} <= {f[2] for f in STRING_FIELDS if f[0] == "students"}


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_key_comment_is_dropped(tmp_path, pubkey, payload):
    data = base(pubkey)
    data["target"] = "local"
    del data["aws"]
    data["students"][0]["ssh_public_key"] = f"{pubkey.split()[0]} {pubkey.split()[1]} ada{payload}"
    (tmp_path / "cohort.yml").write_text(yaml.safe_dump(data))
    r = load_roster(tmp_path)
    assert r.students[0].ssh_public_key == " ".join(pubkey.split()[:2])


@pytest.mark.parametrize(
    "name,why",
    [
        ("Ann\x1b[2J", "control characters"),
        ("Ann\nroot", "control characters"),
        ("a:b", "':'"),
        ("x" * 101, "longer"),
    ],
)
def test_names_with_control_characters_or_separators_are_refused(tmp_path, pubkey, name, why):
    data = base(pubkey)
    data["students"][0]["name"] = name
    (tmp_path / "cohort.yml").write_text(yaml.safe_dump(data))
    with pytest.raises(RosterError) as exc:
        load_roster(tmp_path)
    assert any("students[0] (id 's01'): name:" in p and why in p for p in exc.value.problems), (
        exc.value.problems
    )


def test_ids_that_collide_as_group_names_are_refused(tmp_path, pubkey):
    data = base(pubkey)
    data["students"] = [
        {"id": "s-1", "ssh_public_key": pubkey},
        {"id": "s_1", "ssh_public_key": pubkey},
    ]
    (tmp_path / "cohort.yml").write_text(yaml.safe_dump(data))
    with pytest.raises(RosterError) as exc:
        load_roster(tmp_path)
    assert any("students[1] (id 's_1')" in p and "same Ansible group" in p for p in exc.value.problems)


def test_plain_names_pass(tmp_path, pubkey):
    data = base(pubkey)
    data["students"][0]["name"] = "Zoë O'Brien-Ñúñez (TA) 100%"
    (tmp_path / "cohort.yml").write_text(yaml.safe_dump(data))
    assert load_roster(tmp_path).students[0].name == "Zoë O'Brien-Ñúñez (TA) 100%"


def test_inventory_roster_text_is_never_rendered_by_ansible(tmp_path, pubkey):
    """Defence in depth: a payload written into hosts.yml (as if validation missed it) stays text."""
    marker = tmp_path / "pwned"
    payload = f"Ann{{{{ lookup('pipe', 'touch {marker}') }}}}"
    data = base(pubkey)
    data["target"] = "local"
    del data["aws"]
    (tmp_path / "cohort.yml").write_text(yaml.safe_dump(data))
    r = load_roster(tmp_path)
    object.__setattr__(r.students[0], "name", payload)
    inv = inventory.build_inventory(
        r,
        [{"name": "inert-s01-worker", "address": "127.0.0.1", "student": "s01", "role": "worker",
          "scenario": "queue-segregation", "ssh_user": "root", "ssh_private_key_file": "/k"}],
        "",
    )  # fmt: skip
    host = inv["all"]["hosts"]["inert-s01-worker"]
    assert isinstance(host["lab_student_name"], inventory.Unsafe)
    host.update(ansible_connection="local", ansible_python_interpreter=sys.executable)
    hosts_yml = tmp_path / "hosts.yml"
    hosts_yml.write_text(yaml.dump(inv, Dumper=inventory._InventoryDumper))
    assert "!unsafe" in hosts_yml.read_text()
    play = tmp_path / "show.yml"
    play.write_text(
        yaml.safe_dump(
            [{"name": "show", "hosts": "all", "gather_facts": False,
              "tasks": [{"name": "name", "ansible.builtin.debug": {"msg": "{{ lab_student_name }}"}}]}]
        )
    )  # fmt: skip
    res = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-playbook")), "-i", str(hosts_yml), str(play)],
        capture_output=True,
        text=True,
        env={"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "ANSIBLE_CONFIG": str(paths.REPO / "ansible.cfg"),
             "ANSIBLE_STRATEGY": "linear", "HOME": str(tmp_path)},
        timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "lookup('pipe'" in res.stdout, res.stdout
    assert not marker.exists(), "the payload ran"
    assert (
        inventory.read_inventory(hosts_yml)["all"]["hosts"]["inert-s01-worker"]["lab_student_name"] == payload
    )


def test_two_folders_may_not_share_a_cohort_name(tmp_path, pubkey, monkeypatch):
    from labkit.fleet import local_tf

    monkeypatch.setattr(paths, "STATE_DIR", tmp_path / "state")
    data = base(pubkey)
    data["target"] = "local"
    del data["aws"]
    rosters = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "cohort.yml").write_text(yaml.safe_dump(data))
        rosters.append(load_roster(tmp_path / name))
    local_tf.claim_cohort(rosters[0])
    local_tf.claim_cohort(rosters[0])  # the same folder again: fine
    with pytest.raises(RosterError) as exc:
        local_tf.claim_cohort(rosters[1])
    assert "already the cohort of" in exc.value.problems[0] and str(tmp_path / "a") in exc.value.problems[0]
    (tmp_path / "a" / "cohort.yml").unlink()  # the first folder is gone: its name is free again
    local_tf.claim_cohort(rosters[1])
