"""`make bench`: measure the whole path on a throw-away cohort and report the figures.

    .venv/bin/python tests/bench/bench_fleet.py [--students N]

Times each step of the flow (hosts, provisioning, idempotent re-run, solve, load,
grade, teardown) and the load figures Locust measured per lab, then writes them to
reports/bench/bench.json. Targets belong here, not in timed tests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
COHORT = "bench"


def step(name: str, args: list[str], env: dict, figures: dict) -> None:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "labkit.cli", *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    figures[name] = round(time.monotonic() - t0, 1)
    print(
        f"{name:<28} {figures[name]:>7.1f} s   (labkit {' '.join(args[:1])}, exit {proc.returncode})",
        flush=True,
    )
    if proc.returncode != 0:
        print(proc.stdout[-3000:])
        raise SystemExit(f"bench step {name} failed")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--students", type=int, default=int(os.environ.get("BENCH_STUDENTS", "2")))
    opts = ap.parse_args()
    out_dir = REPO / "reports" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="labkit-bench-") as tmp:
        folder = Path(tmp) / COHORT
        (folder / "keys").mkdir(parents=True)
        students = [f"b{i:02d}" for i in range(1, opts.students + 1)]
        for s in students:
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / "keys" / s)], check=True
            )
        (folder / "cohort.yml").write_text(
            yaml.safe_dump(
                {
                    "cohort": COHORT,
                    "scenario": "queue-segregation",
                    "target": "local",
                    "students": [{"id": s, "ssh_public_key_file": f"keys/{s}.pub"} for s in students],
                }
            )
        )
        env = dict(os.environ, LABKIT_REPORTS_DIR=str(Path(tmp) / "reports"))
        figures: dict = {"students": opts.students, "hosts": 2 * opts.students, "cores": os.cpu_count()}
        try:
            step("fleet up (boot hosts)", ["fleet", "up", str(folder)], env, figures)
            step("site.yml (fresh hosts)", ["provision", str(folder)], env, figures)
            step("site.yml again (changed=0)", ["provision", str(folder)], env, figures)
            step(
                "solve all students",
                ["solve", str(folder), *sum((["--student", s] for s in students), [])],
                env,
                figures,
            )
            step("load (all labs at once)", ["load", str(folder)], env, figures)
            step("grade (all students)", ["grade", str(folder)], env, figures)
            loads = {
                s: json.loads((Path(tmp) / "reports" / COHORT / s / "load_summary.json").read_text())
                for s in students
            }
            figures["load"] = loads
        finally:
            step("fleet down", ["fleet", "down", str(folder)], env, figures)
    for s, summary in figures.get("load", {}).items():
        print(f"load {s}: {json.dumps(summary)}")
    (out_dir / "bench.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures written to {out_dir / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
