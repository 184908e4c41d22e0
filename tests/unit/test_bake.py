"""Baked image layers: which roles a host role bakes, and what the bake key depends on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from labkit import paths
from labkit.fleet import bake, images


def test_components_add_the_common_roles_and_supervisor_in_play_order():
    assert bake.components(["celery_workers"]) == [
        "lab_base",
        "student_access",
        "supervisor",
        "celery_workers",
    ]
    assert bake.components(["rabbitmq", "redis", "flower"]) == [
        "lab_base",
        "student_access",
        "rabbitmq",
        "redis",
        "supervisor",
        "flower",
    ]
    assert bake.components(["redis"]) == ["lab_base", "student_access", "redis"]
    # monitoring-alerting's hosts: the exporter after the Redis it reads, Prometheus before Alertmanager.
    assert bake.components(["redis_exporter", "rabbitmq", "redis", "flower"]) == [
        "lab_base", "student_access", "rabbitmq", "redis", "redis_exporter", "supervisor", "flower",
    ]  # fmt: skip
    assert bake.components(["alertmanager", "prometheus"]) == [
        "lab_base", "student_access", "prometheus", "alertmanager",
    ]  # fmt: skip


def test_the_bake_stops_every_service_it_installed_and_drops_their_data():
    """A baked layer must not carry a service's state (Prometheus' samples, Alertmanager's silences) into labs."""
    text = (paths.PLAYBOOKS / "bake.yml").read_text()
    for unit in ("rabbitmq-server", "redis-server", "supervisor", "prometheus-redis-exporter", "prometheus",
                 "prometheus-alertmanager"):  # fmt: skip
        assert f"'{unit}' if" in text, unit
    # Their data folders are emptied, not removed: a service started at first boot without one fails until systemd's
    # start limit refuses the converge's own start.
    assert 'argv: [find, "{{ item }}", -mindepth, "1", -delete]' in text
    assert "/var/lib/prometheus/metrics2" in text and "/var/lib/prometheus/alertmanager" in text
    assert not {"var/lib/prometheus/metrics2", "var/lib/prometheus/alertmanager"} & set(bake.IDENTITY)


def test_site_yml_and_the_bake_agree_on_the_component_order():
    import yaml

    wiring = yaml.safe_load((paths.PLAYBOOKS / "vars" / "lab_wiring.yml").read_text())
    assert tuple(wiring["labkit_component_order"]) == bake.ORDER
    assert tuple(wiring["labkit_supervised_components"]) == bake.SUPERVISED


def test_every_component_role_has_install_tasks_and_a_switch():
    for role in bake.ORDER:
        assert (paths.REPO / "roles" / role / "tasks" / "install.yml").is_file(), role
        main = (paths.REPO / "roles" / role / "tasks" / "main.yml").read_text()
        assert "install.yml" in main and f"{role}_install | bool" in main, role


@pytest.fixture
def fake_repo(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    for role in ("lab_base", "redis"):
        shutil.copytree(paths.REPO / "roles" / role, repo / "roles" / role)
    (repo / "playbooks").mkdir(parents=True)
    shutil.copy(paths.PLAYBOOKS / "bake.yml", repo / "playbooks" / "bake.yml")
    monkeypatch.setattr(paths, "REPO", repo)
    monkeypatch.setattr(paths, "PLAYBOOKS", repo / "playbooks")
    monkeypatch.setattr(images, "base_image_dir", lambda: Path("/cache/base/b1"))
    monkeypatch.setattr(images, "wheelhouse_dir", lambda: Path("/cache/wheelhouse/w1"))
    return repo


def test_the_key_follows_what_the_install_tasks_do_and_nothing_else(fake_repo, monkeypatch):
    comps = ["lab_base", "redis"]
    key = bake.bake_key(comps)
    assert key == bake.bake_key(list(comps)), "the key must be stable"
    # Configuration tasks and templates are not baked: editing them keeps the cached layer.
    (fake_repo / "roles/redis/tasks/main.yml").write_text("---\n# edited\n")
    assert bake.bake_key(comps) == key
    # What the install tasks do, their defaults and vars, the playbook, the base and the wheelhouse: a new layer.
    changes = [
        lambda: (fake_repo / "roles/redis/tasks/install.yml").write_text("---\n# edited\n"),
        lambda: (fake_repo / "roles/lab_base/defaults/main.yml").write_text(
            "---\nlab_base_packages: [vim]\n"
        ),
        lambda: (fake_repo / "roles/redis/vars/main.yml").write_text("---\n__redis_package: redis\n"),
        lambda: (fake_repo / "playbooks/bake.yml").write_text("---\n"),
        lambda: monkeypatch.setattr(images, "base_image_dir", lambda: Path("/cache/base/b2")),
        lambda: monkeypatch.setattr(images, "wheelhouse_dir", lambda: Path("/cache/wheelhouse/w2")),
    ]
    seen = {key}
    for change in changes:
        change()
        new = bake.bake_key(comps)
        assert new not in seen
        seen.add(new)
    assert bake.bake_key(["lab_base"]) not in seen


def test_identity_files_are_stripped_from_a_layer():
    for rel in ("etc/machine-id", "etc/hostname", "root/.ssh", "var/lib/rabbitmq/.erlang.cookie"):
        assert rel in bake.IDENTITY
