"""Report writers: grades.json, gradebook.csv, junit.xml, index.html and a text gradebook.

Pure functions of the check records the grading plugin writes; nothing here touches a
lab, so every writer is unit-tested on fixture results.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

CHECK_FIELDS = ("id", "title", "host", "passed", "weight", "hint", "detail", "outcome", "precondition")


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def score_checks(checks: Iterable[Mapping[str, Any]]) -> tuple[float, float, float]:
    """(score, max, percent): weights of passed checks, all weights, score as a percentage."""
    checks = list(checks)
    total = sum(float(c.get("weight", 1)) for c in checks)
    score = sum(float(c.get("weight", 1)) for c in checks if c.get("passed") is True)
    percent = round(100.0 * score / total, 1) if total else 0.0
    return _num(score), _num(total), percent


def _num(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def build_grades(
    cohort: str,
    scenario: str,
    rubric: list[Mapping[str, Any]],
    records_by_student: Mapping[str, list[Mapping[str, Any]]],
    names: Mapping[str, str] | None = None,
    missing_detail: str = "no result: the check did not run",
    generated_at: str | None = None,
) -> dict[str, Any]:
    """grades.json content: every rubric check for every student, in rubric order.

    A rubric check with no record (the grading run crashed, a host was unreachable before
    collection) counts as failed with ``missing_detail``, so the score never silently
    ignores a check.
    """
    students: dict[str, Any] = {}
    for student, records in records_by_student.items():
        by_id = {r["check"]: r for r in records}
        checks = []
        for entry in rubric:
            record = by_id.get(entry["id"], {})
            checks.append(
                {
                    "id": entry["id"],
                    "title": record.get("title", entry.get("title", entry["id"])),
                    "host": record.get("host", f"{cohort}-{student}-{entry.get('role', '')}"),
                    "passed": record.get("passed") is True,
                    "weight": record.get("weight", entry.get("weight", 1)),
                    "hint": record.get("hint", entry.get("hint", "")),
                    "detail": record.get("detail", missing_detail) if record else missing_detail,
                    # passed / failed / locked out (the grader's login was refused) / unreachable / not run
                    "outcome": record.get("outcome")
                    or ("passed" if record.get("passed") else "failed" if record else "not run"),  # fmt: skip
                    "precondition": not float(record.get("weight", entry.get("weight", 1)) or 0),
                    # chaos checks: [{t, kind, event}] (fault injected, lab recovered, ledger outcome)
                    **({"timeline": list(record["timeline"])} if record.get("timeline") else {}),
                }
            )
        score, total, percent = score_checks(checks)
        students[student] = {
            "name": (names or {}).get(student, student),
            "score": score,
            "max": total,
            "percent": percent,
            "checks": checks,
        }
    return {
        "cohort": cohort,
        "scenario": scenario,
        "generated_at": generated_at or utc_now(),
        "students": students,
    }


def check_ids(grades: Mapping[str, Any]) -> list[str]:
    """Check ids in report order (the rubric order of the first student, then any others)."""
    ids: list[str] = []
    for student in grades["students"].values():
        for check in student["checks"]:
            if check["id"] not in ids:
                ids.append(check["id"])
    return ids


def grades_json(grades: Mapping[str, Any]) -> str:
    return json.dumps(grades, indent=2) + "\n"


_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def xml_text(value: Any) -> str:
    """Text safe in XML 1.0: ElementTree escapes markup, this drops the characters XML cannot hold at all
    (a check's detail may quote a student's program output, escape sequences included)."""
    return _XML_BAD.sub("\ufffd", str(value))


def csv_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: a string starting with = + - @ (a formula) gets a leading quote."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def gradebook_csv(grades: Mapping[str, Any]) -> str:
    """Rows = students; columns = student, one 1/0 column per check id, score, max, percent."""
    ids = check_ids(grades)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([csv_cell(c) for c in ("student", *ids, "score", "max", "percent")])
    for sid, student in grades["students"].items():
        passed = {c["id"]: c["passed"] for c in student["checks"]}
        writer.writerow(
            [
                csv_cell(sid),
                *(1 if passed.get(i) else 0 for i in ids),
                student["score"],
                student["max"],
                student["percent"],
            ]
        )
    return buf.getvalue()


def junit_xml(grades: Mapping[str, Any], durations: Mapping[tuple[str, str], float] | None = None) -> str:
    """One <testsuite> per student, one <testcase> per check; a failure carries detail and hint."""
    durations = durations or {}
    root = ET.Element("testsuites", name=f"{grades['cohort']} {grades['scenario']}")
    for sid, student in grades["students"].items():
        failures = sum(1 for c in student["checks"] if not c["passed"])
        total_time = sum(durations.get((sid, c["id"]), 0.0) for c in student["checks"])
        suite = ET.SubElement(
            root,
            "testsuite",
            name=sid,
            tests=str(len(student["checks"])),
            failures=str(failures),
            errors="0",
            skipped="0",
            time=f"{total_time:.3f}",
            timestamp=grades["generated_at"],
        )
        props = ET.SubElement(suite, "properties")
        for key in ("cohort", "scenario"):
            ET.SubElement(props, "property", name=key, value=str(grades[key]))
        for key in ("score", "max", "percent"):
            ET.SubElement(props, "property", name=key, value=str(student[key]))
        for check in student["checks"]:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"{grades['cohort']}.{sid}",
                name=check["id"],
                time=f"{durations.get((sid, check['id']), 0.0):.3f}",
            )
            case_props = ET.SubElement(case, "properties")
            for key in ("title", "host", "weight"):
                ET.SubElement(case_props, "property", name=key, value=xml_text(check[key]))
            if not check["passed"]:
                failure = ET.SubElement(case, "failure", message=xml_text(check["detail"] or "failed"))
                failure.text = xml_text(f"{check['detail']}\nHint: {check['hint']}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def format_gradebook(grades: Mapping[str, Any]) -> str:
    """The gradebook as a fixed-width text table (students x checks, then score)."""
    ids = check_ids(grades)
    header = ["student", *ids, "score", "%"]
    rows = []
    for sid, student in grades["students"].items():
        passed = {c["id"]: c["passed"] for c in student["checks"]}
        rows.append(
            [
                sid,
                *("ok" if passed.get(i) else "FAIL" for i in ids),
                f"{student['score']}/{student['max']}",
                f"{student['percent']:.1f}",
            ]
        )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --------------------------------------------------------------------------- HTML

_CSS = """
.chaos{margin:.4rem 0 .8rem;font-size:.9rem} .chaos ul{margin:.2rem 0;padding-left:1.2rem}
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:72rem}
h1{margin-bottom:.2rem} .meta{color:#666;margin-top:0}
table{border-collapse:collapse;margin:1rem 0}
th,td{padding:.3rem .6rem;border-bottom:1px solid #ddd;text-align:left}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#1a7f37} .fail{color:#c62828;font-weight:600}
.failure{margin:.4rem 0 .8rem 1rem} .hint{color:#444}
code,.detail{font-family:ui-monospace,monospace;font-size:.9em}
.detail{background:#f7f7f7;padding:.2rem .4rem;white-space:pre-wrap;display:block}
"""


def _bar_svg(fraction: float, width: int = 160, height: int = 14) -> str:
    fraction = max(0.0, min(1.0, fraction))
    color = "#1a7f37" if fraction >= 0.999 else "#e0a000" if fraction >= 0.5 else "#c62828"
    return (
        f'<svg width="{width}" height="{height}" role="img" aria-label="{fraction:.0%}">'
        f'<rect width="{width}" height="{height}" fill="#eee"/>'
        f'<rect width="{fraction * width:.1f}" height="{height}" fill="{color}"/></svg>'
    )


def pass_rates(grades: Mapping[str, Any]) -> dict[str, float]:
    """Share of students passing each check."""
    rates: dict[str, float] = {}
    students = list(grades["students"].values())
    for cid in check_ids(grades):
        results = [c["passed"] for s in students for c in s["checks"] if c["id"] == cid]
        rates[cid] = sum(results) / len(results) if results else 0.0
    return rates


def _pass_rate_svg(rates: Mapping[str, float]) -> str:
    row, label_w, bar_w = 22, 190, 320
    height = row * len(rates) + 24
    parts = [
        f'<svg width="{label_w + bar_w + 60}" height="{height}" role="img" aria-label="pass rate per check">'
    ]
    for i, (cid, rate) in enumerate(rates.items()):
        y = i * row + 4
        color = "#1a7f37" if rate >= 0.999 else "#e0a000" if rate >= 0.5 else "#c62828"
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end" font-size="12">{html.escape(cid)}</text>'
        )
        parts.append(f'<rect x="{label_w}" y="{y}" width="{bar_w}" height="16" fill="#eee"/>')
        parts.append(f'<rect x="{label_w}" y="{y}" width="{rate * bar_w:.1f}" height="16" fill="{color}"/>')
        parts.append(f'<text x="{label_w + bar_w + 6}" y="{y + 13}" font-size="12">{rate:.0%}</text>')
    axis_y = len(rates) * row + 18
    parts.append(f'<text x="{label_w}" y="{axis_y}" font-size="11" fill="#666">0 %</text>')
    parts.append(
        f'<text x="{label_w + bar_w}" y="{axis_y}" font-size="11" fill="#666" text-anchor="end">100 %</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _history_svg(history: list[list[float]] | None, width: int = 220, height: int = 40) -> str:
    """Requests/s (green) and failures/s (red) over the run, from Locust's stats history."""
    if not history:
        return ""
    t_max = max(h[0] for h in history) or 1.0
    y_max = max(max(h[1], h[2]) for h in history) or 1.0

    def line(i: int, color: str) -> str:
        pts = " ".join(
            f"{h[0] / t_max * width:.1f},{height - h[i] / y_max * (height - 2):.1f}" for h in history
        )
        return f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"/>'

    return (
        f'<svg width="{width}" height="{height}" role="img" aria-label="requests per second over {t_max:.0f} s">'
        f'<rect width="{width}" height="{height}" fill="#f7f7f7"/>{line(1, "#1a7f37")}{line(2, "#c62828")}</svg>'
    )


def _load_cells(summary: Mapping[str, Any] | None) -> str:
    if not summary:
        return '<td colspan="7">no load run (labkit load)</td>'
    if summary.get("error"):
        return f'<td colspan="7" class="fail">{html.escape(str(summary["error"]))}</td>'
    ratio = summary.get("failure_ratio") or 0.0
    held = '<span class="pass">yes</span>' if summary.get("held") else '<span class="fail">no</span>'
    return (
        f'<td class="num">{summary.get("requests", 0)}</td><td class="num">{summary.get("failures", 0)}'
        f' ({ratio:.1%})</td><td class="num">{summary.get("median_ms", 0):.0f}</td>'
        f'<td class="num">{summary.get("p95_ms", 0):.0f}</td><td class="num">{summary.get("rps", 0):.1f}</td>'
        f"<td>{held}</td><td>{_history_svg(summary.get('history'))}</td>"
    )


def _load_by_task(grades: Mapping[str, Any], load_summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """Where a profile mixes tasks (or brokers: the same task through RabbitMQ and through Redis), each one's
    figures side by side: the lab's comparison table. Empty when every lab ran one task."""
    rows = []
    for sid in grades["students"]:
        by_name = (load_summaries.get(sid) or {}).get("by_name") or {}
        if len(by_name) < 2:
            continue
        for name, f in sorted(by_name.items()):
            rows.append(
                f"<tr><td>{html.escape(sid)}</td><td><code>{html.escape(name)}</code></td>"
                f'<td class="num">{f.get("requests", 0)}</td><td class="num">{f.get("failures", 0)}</td>'
                f'<td class="num">{f.get("median_ms", 0):.0f}</td><td class="num">{f.get("p95_ms", 0):.0f}</td>'
                f'<td class="num">{f.get("rps", 0):.1f}</td></tr>'
            )
    if not rows:
        return ""
    return (
        '<h3>Load by task and broker</h3><table class="by-task"><tr><th>student</th><th>task [queue]</th>'
        "<th>requests</th><th>failures</th><th>median ms</th><th>p95 ms</th><th>req/s</th></tr>"
        + "".join(rows)
        + "</table>"
    )


_TIMELINE_COLORS = {"fault": "#c5221f", "recovered": "#137333", "ledger": "#1a73e8", "probe": "#888"}


def _timeline_svg(events: list[Mapping[str, Any]], width: int = 420, height: int = 34) -> str:
    """A chaos check as a line of seconds: when the fault was injected, the lab recovered, the ledger settled."""
    end = max([float(e["t"]) for e in events] + [1.0])
    pad = 8
    parts = [
        f'<svg class="timeline" width="{width}" height="{height}" role="img" aria-label="timeline">',
        f'<line x1="{pad}" y1="14" x2="{width - pad}" y2="14" stroke="#999"/>',
        f'<text x="{pad}" y="{height - 2}" font-size="10">0 s</text>',
        f'<text x="{width - pad}" y="{height - 2}" font-size="10" text-anchor="end">{end:.1f} s</text>',
    ]
    for e in events:
        x = pad + (width - 2 * pad) * float(e["t"]) / end
        color = _TIMELINE_COLORS.get(str(e.get("kind")), "#888")
        parts.append(
            f'<circle cx="{x:.1f}" cy="14" r="5" fill="{color}"><title>{html.escape(str(e["t"]))} s: '
            f"{html.escape(str(e.get('kind')))}: {html.escape(str(e['event']))}</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _timeline_block(check: Mapping[str, Any]) -> str:
    esc = html.escape
    events = check.get("timeline") or []
    items = "".join(
        f'<li><span style="color:{_TIMELINE_COLORS.get(str(e.get("kind")), "#888")}">{esc(str(e.get("kind")))}</span> '
        f"at {esc(str(e['t']))} s: {esc(str(e['event']))}</li>"
        for e in events
    )
    return (
        f'<div class="chaos"><code>{esc(str(check["id"]))}</code> on {esc(str(check["host"]))}: '
        f"{'recovered' if check['passed'] else 'not recovered'}<br>{_timeline_svg(events)}<ul>{items}</ul></div>"
    )


def html_report(
    grades: Mapping[str, Any], load_summaries: Mapping[str, Mapping[str, Any]] | None = None
) -> str:
    """A self-contained HTML report (inline CSS and SVG, no external assets)."""
    load_summaries = load_summaries or {}
    esc = html.escape
    title = f"{grades['cohort']} · {grades['scenario']}"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Grades {esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Grades: {esc(title)}</h1>",
        f'<p class="meta">generated {esc(grades["generated_at"])} · {len(grades["students"])} student(s)</p>',
        "<h2>Summary</h2><table><tr><th>student</th><th>name</th><th>score</th><th>%</th><th></th>"
        "<th>failing checks</th></tr>",
    ]
    for sid, student in grades["students"].items():
        failing = [c["id"] for c in student["checks"] if not c["passed"]]
        fraction = float(student["score"]) / float(student["max"]) if student["max"] else 0.0
        out.append(
            f'<tr><td><a href="#{esc(sid)}">{esc(sid)}</a></td><td>{esc(str(student.get("name", sid)))}</td>'
            f'<td class="num">{student["score"]}/{student["max"]}</td>'
            f'<td class="num">{student["percent"]:.1f}</td>'
            f"<td>{_bar_svg(fraction)}</td><td>{esc(', '.join(failing)) or '-'}</td></tr>"
        )
    out.append("</table>")

    out.append("<h2>Pass rate per check</h2>")
    out.append(_pass_rate_svg(pass_rates(grades)))

    out.append(
        "<h2>Load</h2><table><tr><th>student</th><th>requests</th><th>failures</th><th>median ms</th>"
        "<th>p95 ms</th><th>req/s</th><th>held the profile</th><th>over time (req/s, failures/s)</th></tr>"
    )
    for sid in grades["students"]:
        out.append(f"<tr><td>{esc(sid)}</td>{_load_cells(load_summaries.get(sid))}</tr>")
    out.append("</table>")
    out.append(_load_by_task(grades, load_summaries))

    out.append("<h2>Per student</h2>")
    for sid, student in grades["students"].items():
        out.append(
            f'<h3 id="{esc(sid)}">{esc(sid)} · {esc(str(student.get("name", sid)))} — '
            f"{student['score']}/{student['max']} ({student['percent']:.1f} %)</h3>"
        )
        out.append("<table><tr><th>check</th><th>title</th><th>host</th><th>weight</th><th>result</th></tr>")
        for c in student["checks"]:
            outcome = c.get("outcome") or ("passed" if c["passed"] else "failed")
            label = "FAIL" if outcome == "failed" else outcome.upper()
            result = (
                '<span class="pass">pass</span>' if c["passed"] else f'<span class="fail">{esc(label)}</span>'
            )
            if c.get("precondition"):
                result += " (precondition)"
            out.append(
                f"<tr><td><code>{esc(c['id'])}</code></td><td>{esc(str(c['title']))}</td>"
                f'<td>{esc(str(c["host"]))}</td><td class="num">{c["weight"]}</td><td>{result}</td></tr>'
            )
        out.append("</table>")
        for c in student["checks"]:
            if c.get("timeline"):
                out.append(_timeline_block(c))
        for c in student["checks"]:
            if not c["passed"]:
                out.append(
                    f'<div class="failure"><span class="fail">{esc(c["id"])}</span> on {esc(str(c["host"]))}'
                    f'<span class="detail">{esc(str(c["detail"]))}</span>'
                    f'<span class="hint">Hint: {esc(str(c["hint"]))}</span></div>'
                )
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_reports(
    grades: Mapping[str, Any],
    folder: Path,
    load_summaries: Mapping[str, Mapping[str, Any]] | None = None,
    durations: Mapping[tuple[str, str], float] | None = None,
) -> dict[str, Path]:
    """Write junit.xml, grades.json, gradebook.csv and index.html into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "junit": (folder / "junit.xml", junit_xml(grades, durations)),
        "grades": (folder / "grades.json", grades_json(grades)),
        "gradebook": (folder / "gradebook.csv", gradebook_csv(grades)),
        "html": (folder / "index.html", html_report(grades, load_summaries)),
    }
    for path, text in files.values():
        path.write_text(text)
    return {key: path for key, (path, _) in files.items()}
