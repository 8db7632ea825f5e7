"""Instructor commands: thin wrappers around nbgrader, one command per step of the term.

    python -m course_tools generate  [ASSIGNMENT ...]           solutions/ -> assignments/ (student versions)
    python -m course_tools release   ASSIGNMENT                 put the student version in the exchange (and
                                                                register it in the gradebook if needed)
    python -m course_tools collect   ASSIGNMENT [--student S]   fetch submissions from the exchange
    python -m course_tools autograde [ASSIGNMENT|all] [--student S]
    python -m course_tools feedback  ASSIGNMENT [--student S]   generate + release feedback
    python -m course_tools export    [--to grades.csv]
    python -m course_tools status

Every command runs nbgrader from the repository root, so ``nbgrader_config.py`` applies (course directory
layout, gradebook URL, timeouts, sandbox).  The course working directory is ``$COURSE_DIR`` (default
``grading/``); the gradebook URL ``$NBGRADER_DB_URL`` (default SQLite in the working directory).
``autograde`` checks the submissions first, runs ``nbgrader autograde`` for all of them in one batch (a
failing submission does not stop the others), then prints one line per student and a clear message for
every problem.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def work_dir() -> str:
    return os.path.abspath(os.environ.get("COURSE_DIR") or os.path.join(REPO, "grading"))


def db_url() -> str:
    return os.environ.get("NBGRADER_DB_URL") or "sqlite:///" + os.path.join(work_dir(), "gradebook.db")


def course_id() -> str:
    return "dgm-flows"


def source_assignments() -> list[str]:
    src = os.path.join(REPO, "solutions")
    return sorted(
        d for d in os.listdir(src) if os.path.isdir(os.path.join(src, d)) and not d.startswith((".", "_"))
    )


def nbgrader(*args: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m nbgrader ARGS`` in the repository root with this course's configuration."""
    os.makedirs(work_dir(), exist_ok=True)
    env = dict(os.environ)
    # nbgrader runs `alembic` from PATH: put this interpreter's bin/ first
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "nbgrader", *args]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if not quiet and res.stdout:
        sys.stdout.write(res.stdout)
    if res.returncode != 0 and check:
        sys.stdout.write(res.stderr[-4000:])
        raise SystemExit(f"nbgrader {' '.join(args)} failed (exit {res.returncode})")
    return res


# ------------------------------------------------------------------------------------------------ generate
def cmd_generate(assignments: list[str], release_dir: str | None = None) -> None:
    for a in assignments or source_assignments():
        extra = [f"--CourseDirectory.release_directory={release_dir}"] if release_dir else []
        nbgrader("generate_assignment", a, "--force", *extra, quiet=True)
        print(f"generated {os.path.join(release_dir or 'assignments', a)}")


def ensure_registered(assignment: str) -> bool:
    """Make sure the gradebook knows the assignment and its graded cells; True if it had to be added.

    ``nbgrader release_assignment`` and ``collect`` do not register an assignment and ``autograde`` fails
    without it ("No assignment with ID ... exists in the database"): a fresh ``$COURSE_DIR`` (a new term, the
    hub's grading folder) has an empty gradebook while ``assignments/`` is committed, so ``generate`` need not
    have been run there.  Registering = ``generate_assignment`` into a throwaway folder (``assignments/`` is
    left alone; the drift test keeps it identical to what nbgrader generates).
    """
    import tempfile

    from nbgrader.api import Gradebook, MissingEntry

    os.makedirs(work_dir(), exist_ok=True)
    # a new gradebook runs `alembic` from PATH, in this process: this interpreter's bin/ first
    bindir = os.path.dirname(sys.executable)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    with Gradebook(db_url(), course_id()) as gb:
        try:
            if gb.find_assignment(assignment).notebooks:
                return False
        except MissingEntry:
            pass
    with tempfile.TemporaryDirectory(prefix="course-register-") as tmp:
        nbgrader(
            "generate_assignment", assignment, "--force", f"--CourseDirectory.release_directory={tmp}", quiet=True
        )
    print(f"{assignment}: registered in the gradebook ({db_url()})")
    return True


def cmd_release(assignment: str) -> None:
    ensure_registered(assignment)
    nbgrader("release_assignment", assignment, "--force", quiet=True)
    exchange = os.environ.get("NBGRADER_EXCHANGE") or os.path.join(work_dir(), "exchange")
    print(f"released assignments/{assignment} to {os.path.join(exchange, course_id(), 'outbound', assignment)}")


# ------------------------------------------------------------------------------------------------ autograde
@dataclass
class Problem:
    student: str
    message: str
    level: str = "ERROR"


@dataclass
class Preflight:
    students: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    broken: dict[str, list[str]] = field(default_factory=dict)  # student -> notebook names with bad JSON
    refused: list[str] = field(default_factory=list)  # not graded at all (symlinks)
    missing: dict[str, list[str]] = field(default_factory=dict)  # student -> notebook names not submitted


# written by nbgrader itself (submit/collect), not by the student
NBGRADER_FILES = {"timestamp.txt", "submission_secret.txt"}


def notebooks_of(assignment: str) -> list[str]:
    d = os.path.join(REPO, "solutions", assignment)
    return sorted(os.path.splitext(f)[0] for f in os.listdir(d) if f.endswith(".ipynb"))


def preflight(assignment: str, student: str | None) -> Preflight:
    pf = Preflight()
    sub = os.path.join(work_dir(), "submitted")
    students = [student] if student else sorted(os.listdir(sub)) if os.path.isdir(sub) else []
    for s in students:
        folder = os.path.join(sub, s, assignment)
        if not os.path.isdir(folder):
            continue
        pf.students.append(s)
        links = []
        for root, dirs, files in os.walk(folder):
            links += [os.path.join(root, n) for n in dirs + files if os.path.islink(os.path.join(root, n))]
        if links:
            pf.refused.append(s)
            pf.problems.append(
                Problem(
                    s,
                    f"submission contains symbolic links ({', '.join(links[:3])}); not "
                    "graded -- inspect by hand (a link can point at the solutions)",
                )
            )
            continue
        for nb in notebooks_of(assignment):
            path = os.path.join(folder, nb + ".ipynb")
            if not os.path.exists(path):
                pf.missing.setdefault(s, []).append(nb)
                pf.problems.append(Problem(s, f"{nb}.ipynb is missing: graded 0", "WARN"))
                continue
            try:
                with open(path, encoding="utf-8") as fh:
                    data = json.load(fh)
                if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
                    raise ValueError("not a notebook (no 'cells' list)")
            except (ValueError, UnicodeDecodeError) as exc:
                pf.broken.setdefault(s, []).append(nb)
                pf.problems.append(
                    Problem(
                        s,
                        f"{nb}.ipynb is not a valid notebook ({str(exc)[:80]}): graded 0; "
                        "ask for a resubmission (the file is kept as submitted)",
                    )
                )
        extra = sorted(
            set(os.listdir(folder)) - {nb + ".ipynb" for nb in notebooks_of(assignment)}
            - NBGRADER_FILES
        )
        if extra:
            pf.problems.append(
                Problem(s, f"extra files ignored by the grader: {', '.join(extra[:5])}", "INFO")
            )
    return pf


def _zero_notebook(assignment: str, student: str, notebook: str) -> None:
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(db_url(), course_id()) as gb:
        gb.update_or_create_student(student)
        try:
            gb.find_submission(assignment, student)
        except MissingEntry:
            gb.update_or_create_submission(assignment, student)
        try:
            nb = gb.find_submission_notebook(notebook, assignment, student)
        except MissingEntry:
            return
        for grade in nb.grades:
            grade.auto_score = 0
            grade.needs_manual_grade = False
        gb.db.commit()


def cell_problems(assignment: str, student: str) -> list[str]:
    """Timeouts, kernel deaths and truncated output found in the autograded notebooks."""
    out = []
    folder = os.path.join(work_dir(), "autograded", student, assignment)
    for nb in notebooks_of(assignment):
        path = os.path.join(folder, nb + ".ipynb")
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        for i, cell in enumerate(data.get("cells", [])):
            gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", f"cell {i}")
            for o in cell.get("outputs", []):
                if o.get("output_type") == "error" and o.get("ename") in (
                    "CellTimeoutError",
                    "KeyboardInterrupt",
                ):
                    out.append(f"{nb}/{gid}: timed out (cell timeout), scored 0")
                elif o.get("output_type") == "error" and o.get("ename") == "KernelDied":
                    if "earlier cell" not in o.get("evalue", ""):
                        out.append(
                            f"{nb}/{gid}: the kernel died here (os._exit/crash/memory); this and later "
                            "cells scored 0"
                        )
                elif "... Output truncated ..." in "".join(o.get("text", "")):
                    out.append(f"{nb}/{gid}: output flood truncated")
    return sorted(set(out))


def scores(assignment: str) -> dict[str, tuple[float, float, bool]]:
    from nbgrader.api import Gradebook

    res = {}
    with Gradebook(db_url(), course_id()) as gb:
        for sub in gb.assignment_submissions(assignment):
            res[sub.student_id] = (sub.code_score, sub.max_code_score, sub.needs_manual_grade)
    return res


def cmd_autograde_parallel(assignment: str, jobs: int, force: bool) -> int:
    """Grade disjoint shards of the students in `jobs` separate nbgrader processes (not with SQLite)."""
    if db_url().startswith("sqlite"):
        raise SystemExit(
            "--jobs > 1 needs a server gradebook (NBGRADER_DB_URL=postgresql://...): SQLite allows "
            "one writer at a time and concurrent nbgrader runs fail with 'database is locked'"
        )
    for a in source_assignments() if assignment in (None, "all") else [assignment]:
        ensure_registered(a)  # once, before the shards start
    base = [sys.executable, "-m", "course_tools", "autograde", assignment] + ([] if force else ["--no-force"])
    procs = [
        subprocess.Popen(base + ["--shard", f"{i}/{jobs}"], cwd=REPO, stdout=subprocess.PIPE, text=True)
        for i in range(jobs)
    ]
    status = 0
    for p in procs:
        out, _ = p.communicate()
        sys.stdout.write(out)
        status |= p.returncode
    return status


def cmd_autograde(assignment: str, student: str | None, force: bool = True, shard: str | None = None) -> int:
    assignments = source_assignments() if assignment in (None, "all") else [assignment]
    status = 0
    for a in assignments:
        t0 = time.time()
        pf = preflight(a, student)
        excluded: list[str] = []
        if shard:
            k, n = (int(x) for x in shard.split("/"))
            mine = pf.students[k::n]
            excluded = [s for s in pf.students if s not in mine]
            pf.problems = [p for p in pf.problems if p.student in mine]
            pf.students = mine
        if not pf.students:
            print(f"{a}: no submissions in {os.path.join(work_dir(), 'submitted')}")
            continue
        ensure_registered(a)
        args = ["autograde", a] + (["--force"] if force else [])
        if student:
            args += ["--student", student]
        if pf.refused or excluded:
            args += ["--CourseDirectory.student_id_exclude=" + ",".join(pf.refused + excluded)]
        log = ""
        if pf.students and not (student and student in pf.refused):
            res = nbgrader(*args, check=False, quiet=True)
            log = res.stdout + res.stderr
        for s, nbs in list(pf.broken.items()) + list(pf.missing.items()):
            for nb in nbs:
                _zero_notebook(a, s, nb)
        failed = {
            line.split("for student '")[1].split("'")[0]
            for line in log.splitlines()
            if "There was an error processing assignment" in line and "for student '" in line
        }
        table = scores(a)
        print(f"== {a}: {len(pf.students)} submission(s) in {time.time() - t0:.1f} s ==")
        for s in pf.students:
            notes = [p for p in pf.problems if p.student == s]
            serious = [p for p in notes if p.level != "INFO"]
            if s in pf.refused:
                line = f"  REFUSED {s}"
            elif s in table:
                sc, mx, manual = table[s]
                tag = "OK" if not serious and s not in failed else "CHECK"
                line = f"  {tag:7s} {s}: {sc:g}/{mx:g} autograded" + (
                    " (+ manual grading pending)" if manual else ""
                )
            else:
                line = f"  ERROR   {s}: not in the gradebook"
            print(line)
            for p in notes:
                print(f"      {p.level}: {p.message}")
            if s in failed and s not in pf.broken and s not in pf.missing:
                print(
                    "      ERROR: nbgrader could not process this submission; see "
                    + os.path.join(work_dir(), "autograde.log")
                )
            if s in table:
                for msg in cell_problems(a, s):
                    print(f"      NOTE: {msg}")
        if failed - set(pf.broken) - set(pf.missing) or pf.refused:
            status = 1
        with open(os.path.join(work_dir(), "autograde.log"), "a", encoding="utf-8") as fh:
            fh.write(log)
    return status


# ------------------------------------------------------------------------------------------------ others
def cmd_feedback(assignment: str, student: str | None) -> None:
    extra = ["--student", student] if student else []
    nbgrader("generate_feedback", assignment, "--force", *extra, quiet=True)
    fb = os.path.join(work_dir(), "feedback")
    students = [student] if student else sorted(os.listdir(fb)) if os.path.isdir(fb) else []
    for s in students:
        if os.path.isdir(os.path.join(fb, s, assignment)):
            # --student per student: release_feedback needs it for submissions copied in by hand
            r = nbgrader("release_feedback", assignment, "--student", s, check=False, quiet=True)
            ok = "released" if r.returncode == 0 else "generated (not released: no exchange submission)"
            print(f"feedback {s}/{assignment}: {ok}")


def cmd_collect(assignment: str, student: str | None) -> int:
    """nbgrader collect, after refusing symbolic links in the exchange (collect would copy their targets)."""
    inbound = os.path.join(
        os.environ.get("NBGRADER_EXCHANGE") or os.path.join(work_dir(), "exchange"), course_id(), "inbound"
    )
    links = []
    for root, dirs, files in os.walk(inbound):
        if f"+{assignment}+" not in root:
            continue
        links += [os.path.join(root, n) for n in dirs + files if os.path.islink(os.path.join(root, n))]
    if links:
        print(
            "REFUSED: symbolic links in the exchange; collect would copy what they point to with your rights:"
        )
        for link in links:
            print(f"  {link} -> {os.readlink(link)}")
        print("Remove these links (they are not the student's files) and collect again.")
        return 1
    res = nbgrader("collect", assignment, *(["--student", student] if student else []), "--update", quiet=True)
    # nbgrader reports on stderr (its log); show the instructor one line per student
    log = res.stderr.splitlines()
    n = 0
    for line in log:
        for key, verb in (
            ("Collecting submission: ", "collected"),
            ("Updating submission: ", "collected (newer submission)"),
            ("No newer submission to collect: ", "unchanged (no newer submission)"),
        ):
            if key in line:
                s, a = line.split(key, 1)[1].split()[:2]
                print(f"{verb:32s} {s}/{a}")
                n += 1
    if n == 0:
        print(f"no submissions of {assignment} in {inbound}")
    for line in log:
        if " claims to be submitted by " in line and " but is owned by " in line:
            claimed, owner = line.split(" claims to be submitted by ", 1)[1].split(" but is owned by ", 1)
            print(
                f"  NOTE: {claimed}'s submission belongs to the Unix user {owner.split(';')[0]} (normal when "
                "every student server runs as one user, e.g. jovyan; see instructors.md, 'Students')"
            )
    return 0


def cmd_status() -> None:
    from course_tools.sandbox import bwrap_available

    print(f"repository (source/release): {REPO}")
    print(f"course working directory:    {work_dir()}")
    print(f"gradebook:                   {db_url()}")
    print(f"assignments in solutions/:   {', '.join(source_assignments())}")
    print(f"sandbox (bwrap) usable:      {bwrap_available()}")
    if os.path.exists(os.path.join(work_dir(), "gradebook.db")) or not db_url().startswith("sqlite"):
        try:
            for a in source_assignments():
                sc = scores(a)
                if sc:
                    print(f"  {a}: {len(sc)} graded, mean {sum(v[0] for v in sc.values()) / len(sc):.2f}")
        except Exception as exc:  # gradebook not created yet
            print(f"  gradebook not readable yet: {exc}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_tools", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="generate student versions into assignments/")
    g.add_argument("assignments", nargs="*")
    g.add_argument("--release-dir", help="write elsewhere (used by the drift test)")
    r = sub.add_parser("release", help="release an assignment to the exchange")
    r.add_argument("assignment")
    c = sub.add_parser("collect", help="collect submissions from the exchange")
    c.add_argument("assignment")
    c.add_argument("--student")
    a = sub.add_parser("autograde", help="autograde one or all assignments for one or all students")
    a.add_argument("assignment", nargs="?", default="all")
    a.add_argument("--student")
    a.add_argument("--no-force", action="store_true", help="skip submissions already autograded")
    a.add_argument(
        "--jobs", type=int, default=1, help="grade in N parallel processes (PostgreSQL gradebook only)"
    )
    a.add_argument("--shard", help=argparse.SUPPRESS)
    f = sub.add_parser("feedback", help="generate and release feedback")
    f.add_argument("assignment")
    f.add_argument("--student")
    e = sub.add_parser("export", help="export grades to CSV")
    e.add_argument("--to", default=os.path.join(work_dir(), "grades.csv"))
    sub.add_parser("status", help="show configuration and gradebook summary")
    ps = sub.add_parser("publish-student", help="write the student repository (no solutions, no hidden checks)")
    ps.add_argument("dest")
    ps.add_argument("--force", action="store_true")
    ns = p.parse_args(argv)
    if ns.cmd == "generate":
        cmd_generate(ns.assignments, ns.release_dir)
    elif ns.cmd == "release":
        cmd_release(ns.assignment)
    elif ns.cmd == "collect":
        return cmd_collect(ns.assignment, ns.student)
    elif ns.cmd == "autograde":
        if ns.jobs > 1 and not ns.student:
            return cmd_autograde_parallel(ns.assignment, ns.jobs, force=not ns.no_force)
        return cmd_autograde(ns.assignment, ns.student, force=not ns.no_force, shard=ns.shard)
    elif ns.cmd == "feedback":
        cmd_feedback(ns.assignment, ns.student)
    elif ns.cmd == "export":
        nbgrader("export", f"--to={os.path.abspath(ns.to)}", quiet=True)
        print(f"grades written to {os.path.abspath(ns.to)}")
    elif ns.cmd == "status":
        cmd_status()
    elif ns.cmd == "publish-student":
        from course_tools.publish import main as publish_main

        return publish_main([ns.dest, *(["--force"] if ns.force else [])])
    return 0


if __name__ == "__main__":
    sys.exit(main())
