"""The grading plugin, run as a grader would: pytest in a subprocess against a fake cohort.

Host commands go to testinfra's local:// backend (--lab-connection local), so checks run
for real on this machine; one student's lab is "fixed" and the other's is not.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from labkit import paths
from labkit.grade import grade
from labkit.roster import Roster, Student

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def make_cohort(root: Path, scenario: str, students=("s01", "s02")) -> Path:
    folder = root / "inventories" / "demo"
    folder.mkdir(parents=True)
    (folder / "cohort.yml").write_text(
        yaml.safe_dump(
            {
                "cohort": "demo",
                "scenario": scenario,
                "target": "local",
                "students": [
                    {"id": s, "name": f"Student {s}", "ssh_public_key": "ssh-ed25519 AAAA"} for s in students
                ],
            }
        )
    )
    hosts = [
        {
            "name": f"demo-{s}-{role}",
            "address": f"10.250.{i + 1}.{10 + j}",
            "student": s,
            "role": role,
            "scenario": scenario,
            "ssh_user": "root",
            "ssh_private_key_file": str(folder / ".ssh" / "id_ed25519"),
        }
        for i, s in enumerate(students)
        for j, role in enumerate(("broker", "worker"))
    ]
    (folder / "lab_hosts.json").write_text(json.dumps(hosts))
    for s in students:
        creds = folder / "credentials" / s
        creds.mkdir(parents=True)
        for name in ("rabbitmq", "redis", "flower"):
            (creds / name).write_text(f"sekret-{s}\n" if (name != "redis" or s == "s01") else "wrong\n")
    return folder


@pytest.fixture
def mini(tmp_path):
    """A copy of the mini fixture scenario, a cohort of two students and their reports dir."""
    scenarios = tmp_path / "scenarios"
    shutil.copytree(FIXTURES / "scenarios" / "mini", scenarios / "mini")
    cohort = make_cohort(tmp_path, "mini")
    reports = tmp_path / "reports"
    (reports / "demo" / "s01").mkdir(parents=True)
    (reports / "demo" / "s01" / "flag").write_text("fixed\n")
    return {"scenarios": scenarios, "cohort": cohort, "reports": reports, "root": tmp_path}


def run_pytest(mini, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "pytest", "-p", "grading.plugin", str(mini["scenarios"] / "mini" / "checks"),
        "--cohort", str(mini["cohort"]), "--scenarios-dir", str(mini["scenarios"]),
        "--reports-dir", str(mini["reports"]), "--lab-connection", "local",
        "-p", "no:cacheprovider", "-q", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=mini["root"], capture_output=True, text=True, timeout=120)


def test_records_say_who_where_what_and_why(mini):
    out = mini["root"] / "records.json"
    proc = run_pytest(mini, "--grades-json", str(out), "--junitxml", str(mini["root"] / "junit.xml"))
    assert proc.returncode == 1, proc.stdout + proc.stderr  # s02 fails some checks
    records = {(r["student"], r["check"]): r for r in json.loads(out.read_text())}
    assert len(records) == 6
    for (student, _check), r in records.items():
        assert r["cohort"] == "demo" and r["scenario"] == "mini"
        assert r["nodeid"].endswith(f"[{student}]"), r["nodeid"]
        assert set(r) >= {
            "cohort",
            "student",
            "scenario",
            "host",
            "check",
            "title",
            "weight",
            "passed",
            "hint",
        }
    assert all(records["s01", c]["passed"] for c in ("flag-file", "secret-known", "host-answers"))
    flag = records["s02", "flag-file"]
    assert flag["passed"] is False
    assert flag["host"] == "demo-s02-worker"
    assert flag["weight"] == 2
    assert flag["title"] == "The flag file exists"
    assert flag["hint"].startswith("touch")
    assert "expected" in flag["detail"] and "s02/flag" in flag["detail"]
    assert "\nassert " not in flag["detail"]
    secret = records["s02", "secret-known"]
    assert secret["passed"] is False and secret["host"] == "demo-s02-broker"
    assert "sekret-s02" in secret["detail"] and "'wrong'" in secret["detail"]
    assert records["s02", "host-answers"]["passed"] is True
    # The events a check marks (chaos helpers, ledgers) come with its record, in order, in seconds since it began.
    events = records["s02", "host-answers"]["timeline"]
    assert [(e["kind"], e["event"]) for e in events] == [("fault", "pretend fault on s02"),
                                                        ("recovered", "pretend <recovery>")]  # fmt: skip
    assert 0 <= events[0]["t"] <= events[1]["t"] < 60
    assert "timeline" not in records["s02", "flag-file"]
    ids = {r["nodeid"].split("::")[-1] for r in records.values()}
    assert "test_flag[s01]" in ids and "test_flag[s02]" in ids
    cases = ET.parse(mini["root"] / "junit.xml").getroot().iter("testcase")
    props = {p.get("name"): p.get("value") for case in cases for p in case.iter("property")}
    assert {"cohort", "student", "check", "weight", "host"} <= set(props)


def test_student_option_selects_labs(mini):
    out = mini["root"] / "records.json"
    proc = run_pytest(mini, "--student", "s01", "--grades-json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {r["student"] for r in json.loads(out.read_text())} == {"s01"}
    proc = run_pytest(mini, "--student", "nobody")
    assert proc.returncode == 4 and "--student nobody: not in" in proc.stderr


def test_check_not_in_rubric_is_a_collection_error(mini):
    (mini["scenarios"] / "mini" / "checks" / "test_extra.py").write_text(
        "import pytest\n\n\n@pytest.mark.check('made-up')\ndef test_x(lab):\n    pass\n"
    )
    proc = run_pytest(mini)
    # Refused when the scenario loads (labkit validate says the same), before any check runs.
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "marks 'made-up', which is not a rubric id" in proc.stderr


def test_missing_cohort_option_is_a_usage_error(mini):
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "grading.plugin",
        str(mini["scenarios"] / "mini" / "checks"),
        "-q",
    ]
    proc = subprocess.run(cmd, cwd=mini["root"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "--cohort" in proc.stdout + proc.stderr


def test_grade_runs_each_student_and_writes_cohort_reports(mini):
    roster = Roster(
        path=mini["cohort"] / "cohort.yml",
        cohort="demo",
        scenario="mini",
        target="local",
        students=(Student("s01", "Ada", "k"), Student("s02", "Bob", "k")),
    )
    lines: list[str] = []
    grades = grade(
        roster,
        out=lines.append,
        reports_dir=mini["reports"],
        scenarios_dir=mini["scenarios"],
        extra_pytest_args=["--lab-connection", "local"],
    )
    assert grades["students"]["s01"]["percent"] == 100.0
    # host-answers passes for both, but it is a precondition (weight 0): the untouched lab scores 0.
    assert grades["students"]["s02"]["score"] == 0 and grades["students"]["s02"]["max"] == 3
    assert any(line.startswith("grade s02: finished") and "0/3" in line for line in lines), lines
    s02 = {c["id"]: c for c in grades["students"]["s02"]["checks"]}
    assert s02["host-answers"]["passed"] and s02["host-answers"]["precondition"]
    assert s02["flag-file"]["outcome"] == "failed" and not s02["flag-file"]["precondition"]
    cohort_dir = mini["reports"] / "demo"
    suites = ET.parse(cohort_dir / "junit.xml").getroot().findall("testsuite")
    assert [s.get("name") for s in suites] == ["s01", "s02"]
    with (cohort_dir / "gradebook.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows[1]["flag-file"] == "0" and rows[0]["flag-file"] == "1"
    assert (cohort_dir / "s01" / "junit.xml").is_file() and (cohort_dir / "s02" / "checks.json").is_file()
    assert "Hint: touch" in (cohort_dir / "index.html").read_text()


@pytest.mark.parametrize("scenario", ["queue-segregation", "retries-dead-letters"])
def test_scenario_checks_cover_the_rubric(tmp_path, scenario):
    """Every rubric id of a real scenario has exactly one check, run once per student."""
    cohort = make_cohort(tmp_path, scenario)
    checks = paths.scenario_dir(scenario) / "checks"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "grading.plugin", str(checks), "--cohort", str(cohort),
         "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    nodeids = [line for line in proc.stdout.splitlines() if "::" in line]
    rubric = yaml.safe_load((paths.scenario_dir(scenario) / "scenario.yml").read_text())["rubric"]
    assert len(nodeids) == 2 * len(rubric)
    assert all(n.endswith(("[s01]", "[s02]")) for n in nodeids)


@pytest.mark.parametrize("parallel", [1, 2])
def test_grade_runs_at_most_max_parallel_labs_at_once(mini, parallel):
    roster = Roster(
        path=mini["cohort"] / "cohort.yml", cohort="demo", scenario="mini", target="local",
        students=(Student("s01", "Ada", "k"), Student("s02", "Bob", "k")),
    )  # fmt: skip
    lines: list[str] = []
    grade(roster, out=lines.append, max_parallel=parallel, reports_dir=mini["reports"],
          scenarios_dir=mini["scenarios"], extra_pytest_args=["--lab-connection", "local"])  # fmt: skip
    events = [line.split(":")[0] + (" started" if "started" in line else " finished")
              for line in lines if line.startswith("grade s0") and ("started" in line or "finished" in line)]  # fmt: skip
    # One at a time: the second lab starts once the first has finished; two at once: both start first.
    assert events.index("grade s02 started") == (2 if parallel == 1 else 1), events
    assert len(events) == 4, events


def test_grade_parallel_must_be_positive(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "labkit.cli", "grade", str(tmp_path), "--parallel", "0"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and "--parallel: 0: give 1 or more" in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []
