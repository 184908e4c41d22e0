"""pytest plugin that grades a cohort's labs with a scenario's checks.

Load it with ``-p grading.plugin`` (a scenario's ``checks/conftest.py`` also loads it)::

    pytest -p grading.plugin scenarios/queue-segregation/checks --cohort inventories/demo --student s01

A check is a test marked ``@pytest.mark.check("<rubric id>")``. The plugin runs it once
per student (node ids ``test_x[s01]``), takes its role, weight, title and hint from the
scenario's rubric, and gives it these fixtures:

- ``lab``       the student's lab (:class:`Lab`: cohort, student, scenario, hosts by role, addresses,
                credentials, reports dir)
- ``host``      a testinfra host for the role the check's rubric entry names
- ``host_for``  ``host_for("worker")`` -> a testinfra host for another role of the same lab
- ``grader``    the grader's own producer and result reader on the controller (:mod:`grading.client`)

A check the grader could not run because its own identity was refused (a changed password, a removed key) is
recorded with outcome ``locked out``; a host or service that did not answer, ``unreachable``; both count as not
passed, and the report says which.

Every result becomes a record (cohort, student, scenario, host, check id, title, weight,
passed, hint, detail) written to ``--grades-json``; the same fields are JUnit properties.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from grading import timeline
from grading.facts import GraderLockedOut, LabUnreachable
from labkit import paths
from labkit.scenario import Scenario, ScenarioError, load_scenario

DETAIL_LIMIT = 600
CHECK_MARKER = "check"
_CONTEXT_KEY = pytest.StashKey["CohortContext"]()
_RECORDS_KEY = pytest.StashKey[dict[str, dict[str, Any]]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("labkit", "Celery Lab Kit grading")
    group.addoption(
        "--cohort", metavar="FOLDER", help="cohort folder, e.g. inventories/demo (holds cohort.yml)"
    )
    group.addoption(
        "--student",
        action="append",
        default=[],
        metavar="ID",
        help="grade only this student (repeatable; default: every student of the cohort)",
    )
    group.addoption("--grades-json", metavar="PATH", help="write one JSON record per check result here")
    group.addoption(
        "--scenarios-dir",
        metavar="FOLDER",
        help="folder holding scenario folders (default: the repository's scenarios/)",
    )
    group.addoption(
        "--reports-dir",
        metavar="FOLDER",
        help="base folder of reports (default: $LABKIT_REPORTS_DIR or <repo>/reports)",
    )
    group.addoption(
        "--lab-connection",
        choices=("ssh", "local"),
        default="ssh",
        help="ssh (default): reach lab hosts through the cohort's ssh_config; "
        "local: run host commands on this machine (to test the grading itself)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "check(id): a grading check; id names its entry in the scenario's rubric (scenario.yml)"
    )
    config.stash[_RECORDS_KEY] = {}
    # Long tracebacks print every frame's arguments, and a helper's arguments can be a lab password: grading logs
    # (grade.log) get short ones, which show the failing lines only.
    if getattr(config.option, "tbstyle", "auto") in ("auto", "long"):
        config.option.tbstyle = "short"
    # Registered now, after setuptools plugins such as pytest-testinfra, so these fixtures
    # (notably ``host``) take precedence over same-named fixtures of those plugins.
    if not config.pluginmanager.has_plugin("grading.fixtures"):
        config.pluginmanager.register(LabFixtures(), "grading.fixtures")
    if config.getoption("--cohort", None):
        cohort_context(config)  # a wrong --cohort/--student is a usage error before collection


# --------------------------------------------------------------------------- cohort


@dataclass
class CohortContext:
    folder: Path
    cohort: str
    scenario: Scenario
    students: list[str]
    names: dict[str, str]
    lab_hosts: list[dict[str, Any]]
    reports_base: Path
    connection: str
    _hosts: dict[str, Any] = field(default_factory=dict)
    memo: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ssh_config(self) -> Path:
        return self.folder / "ssh_config"

    def host_entry(self, student: str, role: str) -> dict[str, Any] | None:
        for entry in self.lab_hosts:
            if entry.get("student") == student and entry.get("role") == role:
                return entry
        return None

    def host_name(self, student: str, role: str) -> str:
        entry = self.host_entry(student, role)
        return entry["name"] if entry else f"{self.cohort}-{student}-{role}"

    def testinfra_host(self, student: str, role: str):
        import testinfra

        if self.connection == "local":
            return testinfra.get_host("local://")
        entry = self.host_entry(student, role)
        if entry is None:
            raise LookupError(
                f"{self.folder / 'lab_hosts.json'} lists no {role} host for student {student!r}; "
                "was the lab provisioned?"
            )
        if not self.ssh_config.is_file():
            raise LookupError(f"{self.ssh_config} not found; it is written when the cohort is provisioned")
        name = entry["name"]
        if name not in self._hosts:
            host = testinfra.get_host(f"ssh://{name}?timeout=20&sudo=true", ssh_config=str(self.ssh_config))
            probe = host.run("true")
            if probe.rc != 0:
                err = (probe.stderr or "").strip()[-200:]
                if any(
                    s in err
                    for s in (
                        "Permission denied",
                        "password is required",
                        "not in the sudoers",
                        "Host key verification failed",
                        "REMOTE HOST IDENTIFICATION",
                    )
                ):
                    raise GraderLockedOut(
                        f"the grader's login to {name} (admin, key, sudo) was refused: {err}"
                    )
                raise LabUnreachable(f"{name} did not answer ssh: {err or f'exit {probe.rc}'}")
            self._hosts[name] = host
        return self._hosts[name]


def _read_cohort_file(folder: Path) -> dict[str, Any]:
    path = folder / "cohort.yml"
    if not path.is_file():
        raise pytest.UsageError(f"--cohort {folder}: {path} not found")
    data = yaml.safe_load(path.read_text()) or {}
    students = data.get("students") or []
    if not data.get("cohort") or not data.get("scenario") or not students:
        raise pytest.UsageError(f"{path}: needs cohort, scenario and students (see labkit validate)")
    return data


def _load_scenario(name: str, scenarios_dir: str | None) -> Scenario:
    try:
        return load_scenario(name, Path(scenarios_dir) if scenarios_dir else None)
    except (OSError, ScenarioError) as exc:
        raise pytest.UsageError(f"scenario {name!r}: {exc}") from exc


def cohort_context(config: pytest.Config) -> CohortContext:
    """The cohort being graded (read once per session)."""
    if _CONTEXT_KEY in config.stash:
        return config.stash[_CONTEXT_KEY]
    cohort_opt = config.getoption("--cohort")
    if not cohort_opt:
        raise pytest.UsageError("grading checks need --cohort <folder>, e.g. --cohort inventories/demo")
    folder = Path(cohort_opt)
    if not folder.is_absolute():
        folder = (Path(config.invocation_params.dir) / folder).resolve()
    data = _read_cohort_file(folder)
    all_students = [str(s["id"]) for s in data["students"]]
    wanted = config.getoption("--student") or all_students
    unknown = [s for s in wanted if s not in all_students]
    if unknown:
        raise pytest.UsageError(f"--student {', '.join(unknown)}: not in {folder / 'cohort.yml'}")
    hosts_file = folder / "lab_hosts.json"
    lab_hosts = json.loads(hosts_file.read_text()) if hosts_file.is_file() else []
    reports = config.getoption("--reports-dir") or os.environ.get("LABKIT_REPORTS_DIR") or paths.REPORTS
    ctx = CohortContext(
        folder=folder,
        cohort=str(data["cohort"]),
        scenario=_load_scenario(str(data["scenario"]), config.getoption("--scenarios-dir")),
        students=list(dict.fromkeys(wanted)),
        names={str(s["id"]): str(s.get("name") or s["id"]) for s in data["students"]},
        lab_hosts=lab_hosts,
        reports_base=Path(reports).resolve() / str(data["cohort"]),
        connection=config.getoption("--lab-connection"),
    )
    config.stash[_CONTEXT_KEY] = ctx
    return ctx


# --------------------------------------------------------------------------- the lab object


@dataclass(frozen=True)
class Lab:
    """One student's lab, as a check sees it."""

    cohort: str
    student: str
    name: str
    scenario: Scenario
    folder: Path
    hosts: dict[str, dict[str, Any]]
    reports: Path
    memo: dict[str, Any] = field(default_factory=dict)  # facts measured once per grading run of this lab

    def endpoint(self, component: str) -> str:
        """Address of the host running ``component`` (rabbitmq, redis, flower, celery_workers) in this lab."""
        found = self.scenario.endpoints(self.addresses).get(component)
        if not found:
            raise LookupError(
                f"no host of {self.student}'s lab runs {component} (scenario {self.scenario.name})"
            )
        return found

    @property
    def addresses(self) -> dict[str, str]:
        return {role: entry["address"] for role, entry in self.hosts.items() if entry.get("address")}

    def address(self, role: str) -> str:
        try:
            return self.addresses[role]
        except KeyError:
            raise LookupError(
                f"no {role} host with an address for {self.student} in lab_hosts.json"
            ) from None

    def lab_address(self, role: str) -> str:
        """The address the lab's own hosts use for ``role`` (on AWS its private one: what RabbitMQ sees as a
        peer, what a lab host dials); ``address`` is where the controller reaches it."""
        entry = self.hosts.get(role) or {}
        found = entry.get("lab_address") or entry.get("address")
        if not found:
            raise LookupError(f"no {role} host with an address for {self.student} in lab_hosts.json")
        return found

    def lab_endpoint(self, component: str) -> str:
        """Like ``endpoint``, as the lab's own hosts reach it (for probes that run on a lab host)."""
        lab = {
            role: e.get("lab_address") or e["address"] for role, e in self.hosts.items() if e.get("address")
        }
        found = self.scenario.endpoints(lab).get(component)
        if not found:
            raise LookupError(
                f"no host of {self.student}'s lab runs {component} (scenario {self.scenario.name})"
            )
        return found

    def credential(self, name: str) -> str:
        """A password from inventories/<cohort>/credentials/<student>/<name>."""
        path = self.folder / "credentials" / self.student / name
        if not path.is_file():
            raise LookupError(f"{path} not found; credentials are written when the cohort is provisioned")
        return path.read_text().strip()

    @property
    def credentials(self) -> dict[str, str]:
        folder = self.folder / "credentials" / self.student
        return {p.name: p.read_text().strip() for p in sorted(folder.glob("*")) if p.is_file()}


def check_id_of(node: pytest.Item | pytest.Function) -> str | None:
    marker = node.get_closest_marker(CHECK_MARKER)
    if marker is None:
        return None
    check_id = marker.args[0] if marker.args else marker.kwargs.get("id")
    return str(check_id) if check_id else None


# --------------------------------------------------------------------------- collection


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker(CHECK_MARKER)
    if marker is None:
        return
    where = metafunc.definition.nodeid
    check_id = check_id_of(metafunc.definition)
    if not check_id:
        raise pytest.Collector.CollectError(
            f'{where}: write the rubric id in the marker: @pytest.mark.check("<id>")'
        )
    ctx = cohort_context(metafunc.config)
    try:
        ctx.scenario.rubric_entry(check_id)
    except KeyError:
        known = ", ".join(e["id"] for e in ctx.scenario.rubric)
        raise pytest.Collector.CollectError(
            f"{where}: check {check_id!r} is not in the rubric of {ctx.scenario.folder / 'scenario.yml'} "
            f"(rubric ids: {known})"
        ) from None
    if "lab_student" not in metafunc.fixturenames:
        raise pytest.Collector.CollectError(f"{where}: a check must use the lab, host or host_for fixture")
    metafunc.parametrize("lab_student", ctx.students, ids=ctx.students)


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    seen: dict[tuple[str, str], str] = {}
    for item in items:
        check_id = check_id_of(item)
        if check_id is None or not hasattr(item, "callspec"):
            continue
        student = item.callspec.params["lab_student"]
        if (check_id, student) in seen:
            raise pytest.UsageError(
                f"check {check_id!r} is implemented twice: {seen[check_id, student]} and {item.nodeid}"
            )
        seen[check_id, student] = item.nodeid
        record = _record_fields(config, item, check_id, student)
        for key in ("cohort", "student", "scenario", "host", "check", "weight"):
            item.user_properties.append((key, record[key]))


def _record_fields(config: pytest.Config, item: pytest.Item, check_id: str, student: str) -> dict[str, Any]:
    ctx = cohort_context(config)
    entry = ctx.scenario.rubric_entry(check_id)
    return {
        "cohort": ctx.cohort,
        "student": student,
        "scenario": ctx.scenario.name,
        "host": ctx.host_name(student, entry["role"]),
        "role": entry["role"],
        "check": check_id,
        "title": entry.get("title", check_id),
        "weight": entry.get("weight", 1),
        "passed": None,
        "outcome": None,
        "precondition": not entry.get("weight", 1),
        "hint": entry.get("hint", ""),
        "detail": "",
        "nodeid": item.nodeid,
        "duration": 0.0,
    }


def _base_record(config: pytest.Config, item: pytest.Item, check_id: str, student: str) -> dict[str, Any]:
    """The record of a check that runs (created at its first report, so deselected checks have none)."""
    records = config.stash[_RECORDS_KEY]
    if item.nodeid not in records:
        records[item.nodeid] = _record_fields(config, item, check_id, student)
    return records[item.nodeid]


# --------------------------------------------------------------------------- results


def short_detail(excinfo: pytest.ExceptionInfo[BaseException] | None, longrepr: Any = None) -> str:
    """The why of a failure in a line or two: the assertion message, or the error type and text."""
    if excinfo is None:
        text = str(longrepr or "")
    elif isinstance(excinfo.value, AssertionError):
        text = str(excinfo.value)
        # Keep the check's own message; drop pytest's re-evaluated "assert ..." explanation.
        cut = text.find("\nassert ")
        if cut > 0:
            text = text[:cut]
        text = text or "assertion failed"
    elif isinstance(excinfo.value, pytest.skip.Exception):
        text = f"skipped: {excinfo.value.msg}"
    else:
        text = f"{excinfo.typename}: {excinfo.value}"
    text = text.strip()
    return text if len(text) <= DETAIL_LIMIT else text[: DETAIL_LIMIT - 3] + "..."


_TIMELINE_KEY = pytest.StashKey[list]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """A timeline around each check: the chaos helpers mark the fault, the recovery and the ledger's outcome."""
    token = timeline.begin()
    try:
        return (yield)
    finally:
        item.stash[_TIMELINE_KEY] = timeline.end(token)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    check_id = check_id_of(item)
    if check_id is None or not hasattr(item, "callspec"):
        return report
    record = _base_record(item.config, item, check_id, item.callspec.params["lab_student"])
    record["duration"] = round(record["duration"] + report.duration, 3)
    if report.when == "call" and item.stash.get(_TIMELINE_KEY, None):
        record["timeline"] = item.stash[_TIMELINE_KEY]
    if report.failed or report.skipped:
        if record["passed"] is not False:
            error = call.excinfo.value if call.excinfo else None
            if isinstance(error, GraderLockedOut | LabUnreachable):
                record["outcome"] = "locked out" if isinstance(error, GraderLockedOut) else "unreachable"
                record["detail"] = f"grader {record['outcome']}: {error}"[:DETAIL_LIMIT]
            else:
                prefix = "" if report.when == "call" else f"{report.when} error: "
                record["detail"] = prefix + short_detail(call.excinfo, report.longrepr)
                record["outcome"] = "failed"
        record["passed"] = False
    elif report.when == "call" and record["passed"] is None:
        record["passed"] = True
        record["outcome"] = "passed"
    if report.when == "teardown" and record["passed"] is None:
        record["passed"] = False
        record["detail"] = record["detail"] or "did not run"
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = session.config.getoption("--grades-json", None)
    if not target:
        return
    records = list(session.config.stash.get(_RECORDS_KEY, {}).values())
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=2) + "\n")


def collected_records(config: pytest.Config) -> list[dict[str, Any]]:
    """The records of this session so far (for other plugins or hooks)."""
    return list(config.stash.get(_RECORDS_KEY, {}).values())


# --------------------------------------------------------------------------- fixtures


class LabFixtures:
    @pytest.fixture
    def lab_student(self, request: pytest.FixtureRequest) -> str:
        try:
            return request.param
        except AttributeError:
            raise pytest.UsageError(
                f"{request.node.nodeid}: the lab fixtures work only in checks marked @pytest.mark.check(...)"
            ) from None

    @pytest.fixture
    def lab(self, request: pytest.FixtureRequest, lab_student: str) -> Lab:
        ctx = cohort_context(request.config)
        hosts = {e["role"]: e for e in ctx.lab_hosts if e.get("student") == lab_student and e.get("role")}
        return Lab(
            cohort=ctx.cohort,
            student=lab_student,
            name=ctx.names.get(lab_student, lab_student),
            scenario=ctx.scenario,
            folder=ctx.folder,
            hosts=hosts,
            reports=ctx.reports_base / lab_student,
            memo=ctx.memo.setdefault(lab_student, {}),
        )

    @pytest.fixture
    def grader(self, lab: Lab):
        from grading.client import GraderClient

        client = GraderClient.for_lab(lab)
        yield client
        client.close()

    @pytest.fixture
    def host_for(self, request: pytest.FixtureRequest, lab: Lab) -> Callable[[str], Any]:
        ctx = cohort_context(request.config)

        def connect(role: str):
            if role not in ctx.scenario.roles:
                raise LookupError(
                    f"scenario {ctx.scenario.name!r} has no host role {role!r} ({ctx.scenario.roles})"
                )
            return ctx.testinfra_host(lab.student, role)

        return connect

    @pytest.fixture
    def host(self, request: pytest.FixtureRequest, host_for: Callable[[str], Any]):
        check_id = check_id_of(request.node)
        if check_id is None:
            raise pytest.UsageError(f"{request.node.nodeid}: the host fixture needs @pytest.mark.check(...)")
        role = cohort_context(request.config).scenario.rubric_entry(check_id)["role"]
        return host_for(role)
