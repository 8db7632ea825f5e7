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
import os
import re
import subprocess
import sys
import time
import uuid
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


def nbgrader(
    *args: str, check: bool = True, quiet: bool = False, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m nbgrader ARGS`` in the repository root with this course's configuration."""
    os.makedirs(work_dir(), exist_ok=True)
    env = dict(os.environ, **(env or {}))
    # nbgrader runs `alembic` from PATH: put this interpreter's bin/ first
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "nbgrader", *args]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, errors="backslashreplace")
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
    broken: dict[str, list[str]] = field(default_factory=dict)  # student -> notebooks that cannot be graded (0)
    refused: list[str] = field(default_factory=list)  # not graded at all (symlinks, unsafe student id)
    missing: dict[str, list[str]] = field(default_factory=dict)  # student -> notebook names not submitted


# written by nbgrader itself (submit/collect), not by the student
NBGRADER_FILES = {"timestamp.txt", "submission_secret.txt"}


def notebooks_of(assignment: str) -> list[str]:
    d = os.path.join(REPO, "solutions", assignment)
    return sorted(os.path.splitext(f)[0] for f in os.listdir(d) if f.endswith(".ipynb"))


def preflight(assignment: str, student: str | None) -> Preflight:
    """Look at every submission before nbgrader does; nothing here may raise for a student's file."""
    from course_tools.validate import bad_name, escape, inspect_notebook

    pf = Preflight()
    sub = os.path.join(work_dir(), "submitted")
    students = [student] if student else sorted(os.listdir(sub)) if os.path.isdir(sub) else []
    for s in students:
        folder = os.path.join(sub, s, assignment)
        if not os.path.isdir(folder) or os.path.islink(os.path.join(sub, s)) or os.path.islink(folder):
            if os.path.islink(folder) or os.path.islink(os.path.join(sub, s)):
                pf.students.append(s)
                pf.refused.append(s)
                pf.problems.append(Problem(s, "the submission folder is a symbolic link; not graded"))
            continue
        pf.students.append(s)
        why = bad_name(s)
        if why:
            pf.refused.append(s)
            pf.problems.append(Problem(s, f"the student id {why}; not graded -- rename the folder by hand"))
            continue
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
            if not os.path.lexists(path):
                pf.missing.setdefault(s, []).append(nb)
                pf.problems.append(Problem(s, f"{nb}.ipynb is missing: graded 0", "WARN"))
                continue
            ins = inspect_notebook(path, assignment, nb)
            if ins.fatal:
                pf.broken.setdefault(s, []).append(nb)
                pf.problems.append(
                    Problem(s, f"{ins.fatal}: not a valid notebook, graded 0; ask for a resubmission "
                               "(the file is kept as submitted)")
                )
            for note in ins.notes:
                pf.problems.append(Problem(s, f"{nb}.ipynb: {note}", "NOTE"))
        try:
            extra = sorted(
                set(os.listdir(folder)) - {nb + ".ipynb" for nb in notebooks_of(assignment)} - NBGRADER_FILES
            )
        except OSError:
            extra = []
        if extra:
            pf.problems.append(
                Problem(s, f"extra files ignored by the grader (never seen by the kernel), {len(extra)}: "
                           + ", ".join(escape(x) for x in extra), "INFO")
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
    """What the grading records say happened in this student's notebooks (limits, timeouts, deaths)."""
    from course_tools.records import read_record

    out = []
    for nb in notebooks_of(assignment):
        rec = read_record(assignment, student, nb) or {}
        for what in rec.get("limits", []):
            out.append(f"{nb}: limit reached: {what}; graded on what ran")
        for gid in rec.get("timeouts", []):
            out.append(f"{nb}/{gid}: timed out (cell timeout), scored 0")
        for gid in rec.get("kernel_died", []):
            if gid not in rec.get("timeouts", []):
                out.append(f"{nb}/{gid}: the kernel died here (os._exit/crash/limit); this and later cells scored 0")
            else:
                out.append(f"{nb}/{gid}: the kernel ignored the interrupt and was killed (kernel died)")
        for gid, why in sorted((rec.get("malformed") or {}).items()):
            out.append(f"{nb}/{gid}: malformed results ({why}); this cell scored 0")
        for gid in rec.get("interrupted", []):
            out.append(f"{nb}/{gid}: the student's code raised KeyboardInterrupt itself (not a timeout)")
        path = os.path.join(work_dir(), "autograded", student, assignment, nb + ".ipynb")
        try:
            with open(path, encoding="utf-8") as fh:
                if "... Output truncated ..." in fh.read():
                    out.append(f"{nb}: output flood truncated (200 lines per cell)")
        except OSError:
            pass
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
        subprocess.Popen(base + ["--shard", f"{i}/{jobs}"], cwd=REPO, stdout=subprocess.PIPE, text=True,
                         errors="backslashreplace")
        for i in range(jobs)
    ]
    status = 0
    for p in procs:
        out, _ = p.communicate()
        sys.stdout.write(out)
        status |= p.returncode
    return status


def _graded_now(assignment: str, student: str, run: str) -> tuple[bool, str]:
    """(graded in this run, why not): every notebook has a record of this run with status graded."""
    from course_tools.records import read_record

    for nb in notebooks_of(assignment):
        rec = read_record(assignment, student, nb)
        if rec is None or rec.get("run") != run:
            return False, "nbgrader did not grade it in this run (see autograde.log)"
        if rec.get("status") != "graded":
            return False, rec.get("infrastructure") or f"grading stopped ({rec.get('status')})"
        if rec.get("author_errors"):
            return False, f"the hidden checks failed on {', '.join(rec['author_errors'])} (grader error)"
    return True, ""


def _up_to_date(assignment: str, student: str) -> bool:
    """Already graded from exactly the submission that is there now (for --no-force)."""
    from course_tools.records import read_record, submission_hash

    for nb in notebooks_of(assignment):
        rec = read_record(assignment, student, nb)
        if not rec or rec.get("status") != "graded" or rec.get("author_errors"):
            return False
        if rec.get("submission") != submission_hash(assignment, student, nb):
            return False
    return True


def _run_nbgrader(assignment: str, students: list[str], run: str, factor: int = 1) -> str:
    """nbgrader autograde for exactly these students: nbgrader reads them through a folder of links to their
    submissions, so folders it must not see (names it cannot parse, refused submissions) cannot stop its batch."""
    import shutil
    import tempfile

    view = tempfile.mkdtemp(prefix=".grading-view-", dir=work_dir())
    try:
        for s in students:
            os.symlink(os.path.join(work_dir(), "submitted", s), os.path.join(view, s))
        args = ["autograde", assignment, "--force", f"--CourseDirectory.submitted_directory={view}"]
        env = {"COURSE_GRADING_RUN": run, "COURSE_RETRY_FACTOR": str(factor)}
        res = nbgrader(*args, check=False, quiet=True, env=env)
    finally:
        shutil.rmtree(view, ignore_errors=True)
    return res.stdout + res.stderr


def cmd_autograde(assignment: str, student: str | None, force: bool = True, shard: str | None = None) -> int:
    from course_tools.validate import escape

    assignments = source_assignments() if assignment in (None, "all") else [assignment]
    status = 0
    for a in assignments:
        t0 = time.time()
        pf = preflight(a, student)
        if shard:
            k, n = (int(x) for x in shard.split("/"))
            mine = pf.students[k::n]
            pf.problems = [p for p in pf.problems if p.student in mine]
            pf.students = mine
        if not pf.students:
            print(f"{a}: no submissions in {escape(os.path.join(work_dir(), 'submitted'))}")
            continue
        ensure_registered(a)
        run = uuid.uuid4().hex
        fatal = set(pf.refused) | set(pf.broken) | set(pf.missing)
        unchanged = [] if force else [s for s in pf.students if s not in fatal and _up_to_date(a, s)]
        todo = [s for s in pf.students if s not in fatal and s not in unchanged]
        log = ""
        if todo:
            log += _run_nbgrader(a, todo, run)
        # a student whose grading failed (an exception, an aborted batch, the machine too busy) gets one more try
        # alone, with every time budget tripled; what still fails is reported, never shown with an old grade
        retry = [s for s in todo if not _graded_now(a, s, run)[0]]
        for s in retry:
            log += _run_nbgrader(a, [s], run, factor=3)
        for s, nbs in list(pf.broken.items()) + list(pf.missing.items()):
            if s in pf.refused:
                continue
            for nb in nbs:
                _zero_notebook(a, s, nb)
        table = scores(a)
        not_graded = []
        print(f"== {a}: {len(pf.students)} submission(s) in {time.time() - t0:.1f} s ==")
        for s in pf.students:
            name = escape(s)
            notes = [p for p in pf.problems if p.student == s]
            serious = [p for p in notes if p.level in ("ERROR", "WARN")]
            ok, why = (True, "") if s in fatal or s in unchanged else _graded_now(a, s, run)
            if s in pf.refused:
                line = f"  REFUSED {name}"
                not_graded.append(s)
            elif not ok:
                line = f"  NEEDS-REGRADING {name}: not graded ({escape(why)}); any grade shown elsewhere is stale"
                not_graded.append(s)
            elif s in table:
                sc, mx, manual = table[s]
                tag = "OK" if not serious else "CHECK"
                line = f"  {tag:7s} {name}: {sc:g}/{mx:g} autograded" + (
                    " (+ manual grading pending)" if manual else ""
                ) + (" (unchanged since the last grading)" if s in unchanged else "")
            else:
                line = f"  ERROR   {name}: not in the gradebook"
                not_graded.append(s)
            print(line)
            for p in notes:
                print(f"      {p.level}: {escape(p.message)}")
            if s in retry and ok:
                print("      NOTE: graded on the second try (longer time budget; the first failed: machine busy?)")
            if ok and s not in pf.refused:
                for msg in cell_problems(a, s):
                    print(f"      NOTE: {escape(msg)}")
        graded = len(pf.students) - len(not_graded)
        print(f"   summary: {graded} graded, {len(not_graded)} not graded"
              + (f" ({', '.join(escape(s) for s in not_graded[:10])})" if not_graded else ""))
        if not_graded:
            status = 1
        with open(os.path.join(work_dir(), "autograde.log"), "a", encoding="utf-8", errors="backslashreplace") as fh:
            fh.write(log)
    return status


# ------------------------------------------------------------------------------------------------ others
def _feedback_pages(assignment: str, student: str) -> list[str]:
    folder = os.path.join(work_dir(), "feedback", student, assignment)
    try:
        return sorted(f for f in os.listdir(folder) if f.endswith(".html"))
    except OSError:
        return []


def _why_failed(stderr: str) -> str:
    """The last error line nbgrader logged (e.g. ``InvalidNotebook: missing attachment``), for the report."""
    from course_tools.validate import escape

    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.search(r"(Error|Exception|Invalid\w*|missing)\b", ln)]
    return escape((errors or lines or ["unknown error"])[-1])[:300]


def cmd_feedback(assignment: str, student: str | None) -> int:
    """Generate and release every student's feedback page. One student's failure never stops the others: their
    pages are made and released, and the report names each page that was not made and why (exit 1)."""
    from course_tools.validate import bad_name, escape

    if student and bad_name(student):
        print(f"feedback {escape(student)}/{assignment}: REFUSED (the student id {bad_name(student)})")
        return 1
    extra = ["--student", student] if student else []
    first = nbgrader("generate_feedback", assignment, "--force", *extra, quiet=True, check=False)
    graded = os.path.join(work_dir(), "autograded")
    students = [student] if student else sorted(os.listdir(graded)) if os.path.isdir(graded) else []
    status, made, not_made = 0, 0, []
    for s in students:
        if not os.path.isdir(os.path.join(graded, s, assignment)):
            continue
        if bad_name(s):
            print(f"feedback {escape(s)}/{assignment}: REFUSED (the student id {bad_name(s)}; rename the folder)")
            not_made.append(s)
            continue
        if not _feedback_pages(assignment, s):
            # the batch stopped at someone, or this page failed: try this student alone, to learn why
            alone = first if student else nbgrader(
                "generate_feedback", assignment, "--force", "--student", s, quiet=True, check=False
            )
            if not _feedback_pages(assignment, s):
                print(f"feedback {escape(s)}/{assignment}: NOT MADE ({_why_failed(alone.stderr)})")
                not_made.append(s)
                continue
        made += 1
        # --student per student: release_feedback needs it for submissions copied in by hand
        r = nbgrader("release_feedback", assignment, "--student", s, check=False, quiet=True)
        ok = "released" if r.returncode == 0 else "generated (not released: no exchange submission)"
        print(f"feedback {escape(s)}/{assignment}: {ok}")
    if not_made:
        status = 1
        print(f"feedback for {assignment}: {made} page(s) made, NOT MADE for {len(not_made)}: "
              + ", ".join(escape(s) for s in not_made[:20]))
    return status


def regrading_needed(assignment: str, student: str) -> str | None:
    """Why the gradebook's grade of this submission is not current (the last grading failed, the checks broke,
    or the autograded notebook behind it is gone), or None."""
    from course_tools.records import read_record

    try:
        names = notebooks_of(assignment)
    except OSError:
        return None
    for nb in names:
        rec = read_record(assignment, student, nb)
        if rec is None:
            continue
        if rec.get("status") != "graded":
            return rec.get("infrastructure") or f"the last grading stopped ({rec.get('status')})"
        if rec.get("author_errors"):
            return "the hidden checks failed (grader error)"
        if not os.path.isfile(os.path.join(work_dir(), "autograded", student, assignment, nb + ".ipynb")):
            return "the autograded notebook is missing"
    return None


def cmd_export(dest: str) -> int:
    """nbgrader's CSV export, plus a ``status`` column: a submission whose last grading failed is exported as
    ``needs regrading`` with an empty score, never with the old number."""
    import csv

    nbgrader("export", f"--to={dest}", quiet=True)
    with open(dest, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
        fields = list(rows[0].keys()) if rows else []
    stale = 0
    for row in rows:
        why = regrading_needed(row.get("assignment", ""), row.get("student_id", "")) if row else None
        row["status"] = "needs regrading" if why else "current"
        if why:
            stale += 1
            for key in ("raw_score", "score", "late_submission_penalty"):
                if key in row:
                    row[key] = ""
    if rows:
        with open(dest + ".tmp", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=[*fields, "status"])
            writer.writeheader()
            writer.writerows(rows)
        os.replace(dest + ".tmp", dest)
    print(f"grades written to {dest}")
    if stale:
        print(f"  {stale} submission(s) exported as 'needs regrading' (empty score): grade them again")
    return 0


def cmd_collect(assignment: str, student: str | None) -> int:
    """nbgrader collect through course_tools.exchange.SafeCollect: malformed entries in inbound/ (junk files,
    bad names, symbolic links) are skipped with a message instead of stopping the collect."""
    from course_tools.validate import escape

    inbound = os.path.join(
        os.environ.get("NBGRADER_EXCHANGE") or os.path.join(work_dir(), "exchange"), course_id(), "inbound"
    )
    res = nbgrader("collect", assignment, *(["--student", student] if student else []), "--update", quiet=True,
                   check=False)
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
                print(f"{verb:32s} {escape(s)}/{escape(a)}")
                n += 1
        if "Skipping malformed inbound entry: " in line:
            print(f"  SKIPPED: {escape(line.split('Skipping malformed inbound entry: ', 1)[1])} -- remove it by hand")
    if n == 0:
        print(f"no submissions of {assignment} in {escape(inbound)}")
    for line in log:
        if " claims to be submitted by " in line and " but is owned by " in line:
            claimed, owner = line.split(" claims to be submitted by ", 1)[1].split(" but is owned by ", 1)
            print(
                f"  NOTE: {escape(claimed)}'s submission belongs to the Unix user {escape(owner.split(';')[0])} "
                "(normal when every student server runs as one user, e.g. jovyan; see instructors.md, 'Students')"
            )
    if res.returncode != 0:
        sys.stdout.write(res.stderr[-3000:])
        print("collect failed")
        return 1
    return 0


def cmd_status() -> None:
    from course_tools.sandbox import bwrap_available

    print(f"repository (source/release): {REPO}")
    print(f"course working directory:    {work_dir()}")
    print(f"gradebook:                   {db_url()}")
    print(f"assignments in solutions/:   {', '.join(source_assignments())}")
    print(f"sandbox (bwrap) usable:      {bwrap_available()}")
    from course_tools.sandbox import SandboxKernelManager, _cgroup_roots

    km = SandboxKernelManager()
    try:
        user = km.sandbox_user if os.geteuid() == 0 else "the grader's own (in a user namespace)"
        cg = ", ".join(sorted(_cgroup_roots())) or "none (memory: address-space limit only)"
        print(f"kernel user:                 {user}")
        print(f"limits:                      memory {km.memory_limit_mb} MiB incl. /tmp (cgroup: {cg}), "
              f"/tmp {km.tmp_size_mb} MiB, {km.max_processes} processes")
    finally:
        import shutil

        shutil.rmtree(km._private_dir, ignore_errors=True)
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
    for stream in (sys.stdout, sys.stderr):  # a student's file name must not crash the report
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
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
        return cmd_feedback(ns.assignment, ns.student)
    elif ns.cmd == "export":
        return cmd_export(os.path.abspath(ns.to))
    elif ns.cmd == "status":
        cmd_status()
    elif ns.cmd == "publish-student":
        from course_tools.publish import main as publish_main

        return publish_main([ns.dest, *(["--force"] if ns.force else [])])
    return 0


if __name__ == "__main__":
    sys.exit(main())
