"""Grade a cohort: run the scenario's checks (pytest + the grading plugin) per student.

One pytest process per student, at most ``max_parallel`` at once, each the same command
a grader could type:

    pytest -p grading.plugin scenarios/<s>/checks --cohort inventories/<c> --student <id> \
        --grades-json reports/<c>/<id>/checks.json --junitxml reports/<c>/<id>/junit.xml

The per-student results are merged into reports/<cohort>/{junit.xml, grades.json,
gradebook.csv, index.html}.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from labkit import paths, reports
from labkit.reports import format_gradebook
from labkit.roster import Roster
from labkit.scenario import Scenario, load_scenario

__all__ = ["GradeError", "format_gradebook", "grade", "pytest_command"]

MAX_PARALLEL = 4
STUDENT_TIMEOUT = 900  # seconds; every remote command of a check is bounded far below this


class GradeError(Exception):
    pass


def pytest_command(
    checks_dir: Path,
    cohort_folder: Path,
    student: str,
    student_dir: Path,
    extra_args: Sequence[str] = (),
) -> list[str]:
    return [
        sys.executable, "-m", "pytest", "-p", "grading.plugin", str(checks_dir),
        "--cohort", str(cohort_folder), "--student", student,
        "--grades-json", str(student_dir / "checks.json"),
        "--junitxml", str(student_dir / "junit.xml"),
        "-p", "no:cacheprovider", "-q", "-rN", "--color=no",
        *extra_args,
    ]  # fmt: skip


def _scenario(name: str, scenarios_dir: Path | None) -> Scenario:
    if scenarios_dir is None:
        return load_scenario(name)
    import yaml

    folder = Path(scenarios_dir) / name
    return Scenario(name=name, folder=folder, data=yaml.safe_load((folder / "scenario.yml").read_text()))


def _merge_previous(path: Path, grades: dict[str, Any]) -> dict[str, Any]:
    """Keep students graded earlier (same cohort and scenario) when only some were re-graded."""
    if not path.is_file():
        return grades
    try:
        previous = json.loads(path.read_text())
    except ValueError:
        return grades
    if (previous.get("cohort"), previous.get("scenario")) != (grades["cohort"], grades["scenario"]):
        return grades
    students = {**previous.get("students", {}), **grades["students"]}
    return {**grades, "students": students}


def grade(
    roster: Roster,
    students: list[str] | None = None,
    out: Callable[[str], Any] = print,
    *,
    max_parallel: int = MAX_PARALLEL,
    reports_dir: Path | None = None,
    scenarios_dir: Path | None = None,
    extra_pytest_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Grade ``students`` (default: all) of ``roster``; write the cohort reports; return grades.

    ``reports_dir``/``scenarios_dir``/``extra_pytest_args`` exist for tests (e.g.
    ``["--lab-connection", "local"]``); the CLI needs none of them.
    """
    scenario = _scenario(roster.scenario, scenarios_dir)
    checks_dir = scenario.folder / "checks"
    if not checks_dir.is_dir():
        raise GradeError(f"{checks_dir}: scenario {scenario.name!r} has no checks")
    wanted = students or [s.id for s in roster.students]
    unknown = sorted(set(wanted) - {s.id for s in roster.students})
    if unknown:
        raise GradeError(f"{roster.path}: no such student(s): {', '.join(unknown)}")
    base = Path(reports_dir or paths.REPORTS).resolve()
    cohort_dir = base / roster.cohort
    extra = list(extra_pytest_args)
    if reports_dir is not None:
        extra += ["--reports-dir", str(base)]
    if scenarios_dir is not None:
        extra += ["--scenarios-dir", str(Path(scenarios_dir).resolve())]
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            out(line)

    def run_one(sid: str) -> list[dict[str, Any]] | None:
        student_dir = cohort_dir / sid
        student_dir.mkdir(parents=True, exist_ok=True)
        records_path = student_dir / "checks.json"
        records_path.unlink(missing_ok=True)
        cmd = pytest_command(checks_dir, roster.folder, sid, student_dir, extra)
        say(f"grade {sid}: started")
        started = time.monotonic()
        with (student_dir / "grade.log").open("w") as log:
            try:
                proc = subprocess.run(
                    cmd, cwd=paths.REPO, stdout=log, stderr=subprocess.STDOUT, timeout=STUDENT_TIMEOUT
                )
                rc: int | str = proc.returncode
            except subprocess.TimeoutExpired:
                rc = f"timeout after {STUDENT_TIMEOUT}s"
        elapsed = time.monotonic() - started
        if not records_path.is_file():
            say(f"grade {sid}: FAILED to grade (pytest exit {rc}); see {student_dir / 'grade.log'}")
            return None
        records = json.loads(records_path.read_text())
        score, total, percent = reports.score_checks(
            {"weight": r["weight"], "passed": r["passed"]} for r in records
        )
        failing = [r["check"] for r in records if not r["passed"]]
        say(
            f"grade {sid}: finished in {elapsed:.0f}s: {score}/{total} ({percent:.1f} %)"
            + (f"; failing: {', '.join(failing)}" if failing else "")
        )
        return records

    with ThreadPoolExecutor(max_workers=max(1, max_parallel)) as pool:
        results = dict(zip(wanted, pool.map(run_one, wanted), strict=True))

    records_by_student: dict[str, list[dict[str, Any]]] = {}
    durations: dict[tuple[str, str], float] = {}
    for sid, records in results.items():
        records_by_student[sid] = records or []
        for r in records or []:
            durations[sid, r["check"]] = float(r.get("duration", 0.0))
    grades = _merge_previous(
        cohort_dir / "grades.json",
        reports.build_grades(
            roster.cohort,
            scenario.name,
            scenario.rubric,
            records_by_student,
            names={s.id: s.name for s in roster.students},
            missing_detail="no result: the grading run did not report this check (see grade.log)",
        ),
    )
    load_summaries = {}
    for sid in grades["students"]:
        summary_path = cohort_dir / sid / "load_summary.json"
        if summary_path.is_file():
            load_summaries[sid] = json.loads(summary_path.read_text())
    written = reports.write_reports(grades, cohort_dir, load_summaries, durations)
    out(f"grade: reports in {cohort_dir} ({', '.join(p.name for p in written.values())})")
    return grades
