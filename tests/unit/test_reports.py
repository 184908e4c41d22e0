"""Report writers on fixture results (tests/fixtures/results/demo.json)."""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from labkit import reports

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "results" / "demo.json"


@pytest.fixture
def data():
    return json.loads(FIXTURE.read_text())


@pytest.fixture
def grades(data):
    return reports.build_grades(
        data["cohort"],
        data["scenario"],
        data["rubric"],
        data["records"],
        names=data["names"],
        generated_at="2026-01-02T03:04:05Z",
    )


def test_score_uses_weights(grades):
    s01, s02, s03 = (grades["students"][s] for s in ("s01", "s02", "s03"))
    assert (s01["score"], s01["max"], s01["percent"]) == (8, 8, 100.0)
    # s02 passed broker-ready (1); failed queues-segregated (3), routing-heavy (2), load-held (2, no record)
    assert (s02["score"], s02["max"], s02["percent"]) == (1, 8, 12.5)
    assert (s03["score"], s03["max"], s03["percent"]) == (0, 8, 0.0)


def test_score_checks_rounds_and_handles_empty():
    assert reports.score_checks([]) == (0, 0, 0.0)
    checks = [{"weight": 1, "passed": True}, {"weight": 2, "passed": False}]
    assert reports.score_checks(checks) == (1, 3, 33.3)
    assert reports.score_checks([{"weight": 0.5, "passed": True}, {"weight": 1, "passed": False}])[0] == 0.5


def test_missing_records_count_as_failed_with_a_reason(grades):
    load_held = next(c for c in grades["students"]["s02"]["checks"] if c["id"] == "load-held")
    assert load_held["passed"] is False
    assert "no result" in load_held["detail"]
    assert load_held["hint"] == "See load_stats.csv"
    assert load_held["host"] == "demo-s02-broker"


def test_grades_json_schema(grades):
    parsed = json.loads(reports.grades_json(grades))
    assert set(parsed) >= {"cohort", "scenario", "generated_at", "students"}
    assert list(parsed["students"]) == ["s01", "s02", "s03"]
    for student in parsed["students"].values():
        assert set(student) >= {"score", "max", "percent", "checks"}
        assert [c["id"] for c in student["checks"]] == [
            "broker-ready",
            "queues-segregated",
            "routing-heavy",
            "load-held",
        ]
        for check in student["checks"]:
            assert set(check) == set(reports.CHECK_FIELDS)
            assert isinstance(check["passed"], bool)


def test_gradebook_csv_columns(grades):
    rows = list(csv.reader(io.StringIO(reports.gradebook_csv(grades))))
    assert rows[0] == [
        "student",
        "broker-ready",
        "queues-segregated",
        "routing-heavy",
        "load-held",
        "score",
        "max",
        "percent",
    ]
    assert rows[1] == ["s01", "1", "1", "1", "1", "8", "8", "100.0"]
    assert rows[2] == ["s02", "1", "0", "0", "0", "1", "8", "12.5"]
    assert len(rows) == 4


def test_junit_one_suite_per_student(grades):
    root = ET.fromstring(reports.junit_xml(grades, {("s01", "queues-segregated"): 3.1}))
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["s01", "s02", "s03"]
    s02 = suites[1]
    assert (s02.get("tests"), s02.get("failures")) == ("4", "3")
    cases = {c.get("name"): c for c in s02.findall("testcase")}
    assert cases["broker-ready"].find("failure") is None
    failure = cases["routing-heavy"].find("failure")
    assert "queue 'celery'" in failure.get("message")
    assert "Hint: Route crunch" in failure.text
    assert cases["routing-heavy"].get("classname") == "demo.s02"
    assert suites[0].find("testcase").get("time") == "0.000"
    assert float(suites[0].get("time")) == pytest.approx(3.1)


def test_html_has_every_student_hint_and_load(grades, data):
    page = reports.html_report(grades, data["load"])
    for sid in ("s01", "s02", "s03"):
        assert f'id="{sid}"' in page
    assert "Grace &lt;Hopper&gt; &amp; co" in page and "<Hopper>" not in page
    assert "Hint: Route crunch to heavy in task_routes" in page
    assert "Hint: Start each pool with its own -Q" in page
    assert "it consumes [&#x27;celery&#x27;]" in page
    assert "812" in page and "no load run" in page  # s03 has no load summary
    assert "<svg" in page and "http" not in page.replace("http-equiv", "")  # self-contained


def test_html_compares_tasks_and_brokers_side_by_side(grades, data):
    """broker-durability's load sends one payment through each broker: the report shows both rows per student."""
    load = {
        "s01": {
            **data["load"]["s01"],
            "by_name": {
                "labapp.tasks.pay [payments]": {"requests": 120, "failures": 0, "median_ms": 14, "p95_ms": 30,
                                                "rps": 6.1},
                "labapp.tasks.pay_via_redis [payments_redis] via redis": {"requests": 180, "failures": 2,
                                                                         "median_ms": 9, "p95_ms": 21, "rps": 9.2},
            },
        }
    }  # fmt: skip
    page = reports.html_report(grades, load)
    table = page[page.index("Load by task and broker") :]
    assert "<code>labapp.tasks.pay [payments]</code>" in table
    assert "<code>labapp.tasks.pay_via_redis [payments_redis] via redis</code>" in table
    assert '<td class="num">9.2</td>' in table and '<td class="num">6.1</td>' in table
    # One task per lab (the fixture's own load): no comparison table.
    assert "Load by task and broker" not in reports.html_report(grades, {"s01": {"by_name": {"a": {}}}})


def test_pass_rates(grades):
    rates = reports.pass_rates(grades)
    assert rates["broker-ready"] == pytest.approx(2 / 3)
    assert rates["load-held"] == pytest.approx(1 / 3)


def test_format_gradebook_text_table(grades):
    text = reports.format_gradebook(grades)
    lines = text.splitlines()
    assert lines[0].split() == [
        "student",
        "broker-ready",
        "queues-segregated",
        "routing-heavy",
        "load-held",
        "score",
        "%",
    ]
    assert lines[3].split()[:3] == ["s02", "ok", "FAIL"] and "1/8" in lines[3] and "12.5" in lines[3]


def test_write_reports_writes_the_four_files(grades, data, tmp_path):
    written = reports.write_reports(grades, tmp_path / "demo", data["load"])
    assert sorted(p.name for p in written.values()) == [
        "gradebook.csv",
        "grades.json",
        "index.html",
        "junit.xml",
    ]
    assert all(p.stat().st_size > 0 for p in written.values())


def test_a_chaos_check_is_drawn_as_a_timeline(data):
    records = json.loads(json.dumps(data["records"]))
    chaos = records["s01"][0]
    chaos["timeline"] = [
        {"t": 0.0, "kind": "ledger", "event": "published 4 charge to orders"},
        {"t": 2.1, "kind": "fault", "event": "SIGKILL to pool process 4242 of celery-<orders>"},
        {"t": 14.6, "kind": "ledger", "event": "settled 4: 4 SUCCESS"},
    ]
    grades = reports.build_grades(
        data["cohort"], data["scenario"], data["rubric"], records, names=data["names"]
    )
    check = next(c for c in grades["students"]["s01"]["checks"] if c["id"] == chaos["check"])
    assert check["timeline"] == chaos["timeline"]  # grades.json keeps it
    assert all("timeline" not in c for c in grades["students"]["s02"]["checks"])
    page = reports.html_report(grades)
    block = page.split('<div class="chaos">')[1].split("</div>")[0]
    assert f"<code>{chaos['check']}</code>" in block and 'class="timeline"' in block
    assert block.count("<circle") == 3 and "14.6 s" in block  # the axis ends at the last event
    assert (
        "at 2.1 s: SIGKILL to pool process 4242 of celery-&lt;orders&gt;" in block and "<orders>" not in page
    )
    assert page.count('<div class="chaos">') == 1
