"""The instructor grading pipeline, for every assignment in solutions/ (see instructors.md).

One shared batch for all assignments, graded by `python -m course_tools autograde all --jobs 2` on a real
PostgreSQL gradebook:

1. benign submissions of every assignment (the solution, the blank student version, every other answer, the
   designed partial), graded first, while two CPU-bound processes load the machine (a busy machine must not
   cost correct work its points);
2. then, with `--no-force`, every attack on the answers generated for every assignment (wrong answers that
   fool in-kernel tests in eight ways, memoised answers, forged Jacobians, an edited notebook); every attack on
   the submission's form on the first and the last assignment (FORMATS_ON: shadowing files, duplicate/foreign
   nbgrader metadata, a directory or deeply nested JSON instead of the notebook, malformed or flooding output, a
   pasted image, a notebook that prints everything and injects HTML); plus, on the first assignment, loops,
   crashes, floods and every resource limit, the sandbox probe, unsafe student ids and injected infrastructure
   failures.  `GRADING_TEST_LOAD=all` loads the machine during this phase too.

After the second run the benign students' gradebook rows and autograded files and every submitted file must be
unchanged, and every submission must have exactly the grade it deserves.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import re
import shutil
import sys
import uuid
from contextlib import redirect_stdout

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grading_helpers as H  # noqa: E402

sys.path.insert(0, H.REPO)
from course_tools.leaks import find_leaks, hidden_check_patterns, leak_patterns  # noqa: E402

# the shared batch is graded in the fixture of the first test that uses it: that test gets its time
pytestmark = [pytest.mark.grading, pytest.mark.slow, pytest.mark.timeout(3600)]
# development: GRADING_TEST_ASSIGNMENTS=ch05_normalizing_flows,ch06_image_flows grades only these (with
# GRADING_TEST_ONLY=good,a_memo0 only these students); the full suite always runs every assignment
ASSIGNMENTS = [a for a in H.assignments()
               if a in os.environ.get("GRADING_TEST_ASSIGNMENTS", a).split(",")]
LIMITS_ON = ASSIGNMENTS[0]
# the attacks on a submission's form (H.attack_cases) and the feedback pages of hostile students: on the first
# assignment and on the last (several answer functions per question, flows), not on all seven
FORMATS_ON = sorted({ASSIGNMENTS[0], ASSIGNMENTS[-1]})


# ------------------------------------------------------------------------------------------ static checks
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_source_validates(assignment):
    from nbgrader.validator import Validator

    for nb in H.notebooks(assignment):
        path = os.path.join(H.REPO, "solutions", assignment, nb)
        env_before = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = H.REPO
        try:
            result = Validator().validate(path)
        finally:
            if env_before is None:
                os.environ.pop("PYTHONPATH")
            else:
                os.environ["PYTHONPATH"] = env_before
        assert result == {}, f"{path} does not validate: {json.dumps(result)[:2000]}"


@pytest.fixture(scope="module")
def postgres():
    try:
        server = H.PostgresServer().start()
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.fail(f"could not start PostgreSQL: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def released(postgres, tmp_path_factory):
    """Every assignment generated once by nbgrader into a course folder registered in the PostgreSQL gradebook:
    compared with the committed student versions, and the folder the shared batch grades in."""
    work = str(tmp_path_factory.mktemp("course"))
    H.cli(work, "generate", *ASSIGNMENTS, "--release-dir", os.path.join(work, "release_check"), db_url=postgres.url,
          check=True)
    return work


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_student_version_is_what_nbgrader_generates(assignment, released):
    out = os.path.join(released, "release_check")
    for nb in H.notebooks(assignment):
        committed = H.load(os.path.join(H.REPO, "assignments", assignment, nb))
        fresh = H.load(os.path.join(out, assignment, nb))
        assert committed == fresh, (
            f"assignments/{assignment}/{nb} is out of date: run "
            f"`python -m course_tools generate {assignment}` "
            "and commit the result"
        )
    # the grader's side of the hidden checks is never released
    files = [os.path.basename(p) for p in glob.glob(os.path.join(out, "**", "*"), recursive=True)]
    assert files and "hidden_checks.py" not in files, files


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_no_solution_or_hidden_check_in_student_version(assignment):
    files = glob.glob(os.path.join(H.REPO, "assignments", assignment, "**", "*"), recursive=True)
    files = [f for f in files if os.path.isfile(f)]
    assert files, "no student version committed"
    assert not [f for f in files if os.path.basename(f) == "hidden_checks.py"]
    assert find_leaks(files) == []
    # the patterns can fail: they do find the solutions in the instructor version and the hidden checks' code
    sources = glob.glob(os.path.join(H.REPO, "solutions", assignment, "*.ipynb"))
    assert len({p for _f, p in find_leaks(sources)}) > 5
    checks = os.path.join(H.REPO, "solutions", assignment, "hidden_checks.py")
    assert os.path.exists(checks), "every assignment decides its tests with solutions/<a>/hidden_checks.py"
    assert find_leaks([checks], hidden_check_patterns()), "the hidden-check patterns do not match their own file"


def test_code_that_kernels_and_hub_users_can_read_holds_no_hidden_check():
    # the grading kernel reads flowlib/ and course_tools/ (the sandbox exposes them), and so do students on the
    # hub (the course's environment); a documentation example copied from a real check would publish it
    public = glob.glob(os.path.join(H.REPO, "flowlib", "**", "*.py"), recursive=True) + glob.glob(
        os.path.join(H.REPO, "course_tools", "*.py")
    )
    assert len(public) > 10 and find_leaks(public, hidden_check_patterns()) == []


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_every_answer_has_tests_and_points(assignment):
    for nb in H.notebooks(assignment):
        lay = H.layout(assignment, nb)
        assert lay.answers, "no answer cells"
        for a in lay.answers:
            assert lay.points(a) > 0, f"answer {a} has no autograded test cell after it"
        assert H.function_name(lay.solution_src[lay.answers[0]]), "answer cells must define functions"


# ------------------------------------------------------------------------------------------ student check
def _namespace(assignment, overrides=None):
    import math

    import torch

    ns = {"torch": torch, "math": math}
    for nb in H.notebooks(assignment):
        lay = H.layout(assignment, nb)
        for a in lay.answers:
            exec((overrides or {}).get(a, lay.solution_src[a]), ns)
    return ns


def test_student_check_messages():
    from course_tools.check import check

    ns = _namespace("ch01_probability")
    buf = io.StringIO()
    with redirect_stdout(buf):
        for q in ("ch01.q1", "ch01.q2", "ch01.q3", "ch01.q4"):
            assert check(q, ns) is True
    text = buf.getvalue()
    assert "visible tests passed" in text and "all tests passed" not in text.lower()
    assert "[FAIL]" not in text

    designed, _ = H.DESIGNED_PARTIALS["ch01_probability"]
    bad = _namespace("ch01_probability", designed)
    buf = io.StringIO()
    with redirect_stdout(buf), pytest.raises(AssertionError, match="visible test"):
        check("ch01.q1", bad)
    text = buf.getvalue()
    assert "[ok]   Q1 entropy of a uniform" in text
    assert (
        "[FAIL] Q1 zero probabilities" in text and "got nan" in text and "1 of 2 visible tests passed" in text
    )
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert check("ch01.q4", bad, raise_on_failure=False) is False
    assert "expected stderr = sample std" in buf.getvalue()

    buf = io.StringIO()
    with redirect_stdout(buf), pytest.raises(AssertionError):
        check("ch01.q3", {})
    assert "`mvn_log_prob` is not defined" in buf.getvalue()


def test_student_check_in_the_student_notebook_namespace():
    """`check("ch01.q1")` without a namespace reads the caller's globals (the notebook's namespace)."""
    code = H.layout("ch01_probability", "ch01_probability.ipynb").solution_src["q1_answer"]
    ns = {"__name__": "__main__"}
    exec("import torch, math\nfrom course_tools import check\n" + code, ns)
    buf = io.StringIO()
    with redirect_stdout(buf):
        exec('ok = check("ch01.q1")', ns)
    assert ns["ok"] is True and "2 of 2 visible tests passed" in buf.getvalue()


# ------------------------------------------------------------------------------------------ the shared batch
@pytest.fixture(scope="module")
def batch(postgres, released):
    work = released
    url = postgres.url
    exchange = os.path.join(work, "exchange-elsewhere")
    os.makedirs(os.path.join(exchange, "dgm-flows", "inbound"))
    # another checkout of the course, outside the repository and outside /tmp: the kernel must not see it
    clone = os.path.join("/var/tmp" if os.access("/var/tmp", os.W_OK) else work, f"course-clone-{uuid.uuid4().hex}")
    shutil.copytree(os.path.join(H.REPO, "solutions"), os.path.join(clone, "solutions"))
    env = {"NBGRADER_EXCHANGE": exchange}
    solutions_before = H.hash_tree(os.path.join(H.REPO, "solutions"))

    only = set(filter(None, os.environ.get("GRADING_TEST_ONLY", "").split(",")))  # development: a subset
    benign = {a: [c for c in H.benign_cases(a) if not only or c.student in only] for a in ASSIGNMENTS}
    for a, cases in benign.items():
        for c in cases:
            H.write_submission(work, a, c)
    with H.cpu_load(2):
        first = H.cli(work, "autograde", "all", "--jobs", "2", db_url=url, extra_env=env)
    benign_rows = {a: H.grade_rows(url, a, [c.student for c in cases]) for a, cases in benign.items()}
    benign_autograded = {s: H.hash_tree(os.path.join(work, "autograded", s)) for s in ("good", "blank", "partial")}

    hostile = {a: H.attack_cases(a, formats=a in FORMATS_ON) + [H.edited_case(a)] for a in ASSIGNMENTS}
    hostile[LIMITS_ON] += H.limit_cases(LIMITS_ON, work, victim="good", other_clone=clone, exchange=exchange)
    hostile = {a: [c for c in cases if not only or c.student in only] for a, cases in hostile.items()}
    for a, cases in hostile.items():
        for c in cases:
            H.write_submission(work, a, c)
    submitted_before = H.hash_tree(os.path.join(work, "submitted"))
    try:
        # the attacks are graded with the machine loaded too when GRADING_TEST_LOAD=all (twice as long; the
        # benign phase above always is, because that is where a busy machine once gave correct work zero)
        with H.cpu_load(2 if os.environ.get("GRADING_TEST_LOAD") == "all" else 0):
            second = H.cli(
                work, "autograde", "all", "--jobs", "2", "--no-force", db_url=url,
                extra_env=dict(env, COURSE_FAULT_INJECT=H.FAULTS),
            )
    finally:
        shutil.rmtree(clone, ignore_errors=True)
    return dict(
        work=work, url=url, benign=benign, hostile=hostile, first=first, second=second, benign_rows=benign_rows,
        benign_autograded=benign_autograded, submitted_before=submitted_before, solutions_before=solutions_before,
        exchange=exchange,
    )


def _scores(batch, a):
    return H.code_scores(batch["url"], a)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_correct_blank_and_partial_scores(batch, assignment):
    out = batch["first"].stdout
    assert batch["first"].returncode == 0, out + batch["first"].stderr[-3000:]
    assert "NEEDS-REGRADING" not in out and "ERROR" not in out, out
    scores = _scores(batch, assignment)
    lines = H.report_section(out, assignment)
    for c in batch["benign"][assignment]:
        assert scores[c.student] == pytest.approx(c.expected), f"{c.student} ({c.description}): {scores}\n{out}"
        notes = H.student_notes(lines, c.student)
        assert notes and notes[0].split()[0] == "OK", f"{c.student}: {notes}\n{out}"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_every_attack_gets_what_it_deserves(batch, assignment):
    out = batch["second"].stdout
    scores = _scores(batch, assignment)
    lines = H.report_section(out, assignment)
    wrong = []
    for c in batch["hostile"][assignment]:
        notes = H.student_notes(lines, c.student)
        if notes is None:
            wrong.append(f"{c.student!r} ({c.description}): no line in the report")
            continue
        text = "\n".join(notes)
        if c.expected is not None:
            if scores.get(c.student) != pytest.approx(c.expected):
                wrong.append(f"{c.student} ({c.description}): {scores.get(c.student)} instead of {c.expected}")
            if notes[0].split()[0] not in ("OK", "CHECK"):
                wrong.append(f"{c.student} ({c.description}): reported as {notes[0]}")
        elif c.same_as:
            # the trick must not raise the grade of the same wrong answers (it may break its own kernel)
            if c.student not in scores or scores[c.student] > scores.get(c.same_as, 0):
                wrong.append(f"{c.student} ({c.description}): {scores.get(c.student)}, without the trick "
                             f"{scores.get(c.same_as)}")
        elif "REFUSED" in c.message:
            assert c.student not in scores, f"{c.student} should not have been graded"
        if c.message and c.message not in text:
            wrong.append(f"{c.student} ({c.description}): no message {c.message!r}:\n{text}")
    total = H.layout(assignment, H.notebooks(assignment)[0]).total
    if "a_wrong" in scores:
        assert scores["a_wrong"] < total, "the generated wrong answers are not wrong"
        if assignment == "ch01_probability":
            assert scores["a_wrong"] == 0
    assert not wrong, "\n".join(wrong) + "\n\n" + "\n".join(lines) + batch["second"].stderr[-2000:]


def test_batch_finished_with_a_report_and_a_summary(batch):
    out = batch["second"].stdout
    for a in ASSIGNMENTS:
        n = len(batch["benign"][a]) + len(batch["hostile"][a])
        counts = [int(m) for m in re.findall(rf"^== {a}: (\d+) submission\(s\)", out, re.M)]
        assert sum(counts) == n, (a, counts, n)
    assert "summary:" in out
    # refused submissions and a student who could not be graded need the instructor: non-zero exit
    assert batch["second"].returncode == 1
    assert re.search(r"NEEDS-REGRADING l_infra_always: not graded", out), out


def test_other_students_grades_and_files_unchanged(batch):
    for a, cases in batch["benign"].items():
        assert H.grade_rows(batch["url"], a, [c.student for c in cases]) == batch["benign_rows"][a]
    for s, tree in batch["benign_autograded"].items():
        assert H.hash_tree(os.path.join(batch["work"], "autograded", s)) == tree
    assert H.hash_tree(os.path.join(batch["work"], "submitted")) == batch["submitted_before"]
    assert H.hash_tree(os.path.join(H.REPO, "solutions")) == batch["solutions_before"]


def test_sandbox_denied_every_forbidden_access(batch):
    report = H.sandbox_report(batch["work"], "l_exfil", LIMITS_ON)
    for key in H.MUST_BE_DENIED:
        assert report[key].startswith("denied"), f"{key}: {report[key]}"
    # what the notebook wrote into its own folder stayed in the sandbox
    ag = os.path.join(batch["work"], "autograded", "l_exfil", LIMITS_ON)
    assert not any(n.endswith(".tmp") for n in os.listdir(ag))
    for nb in H.notebooks(LIMITS_ON):
        H.load(os.path.join(ag, nb))  # still a valid notebook, written by nbgrader


def test_hidden_checks_never_next_to_a_submission(batch):
    found = glob.glob(os.path.join(batch["work"], "**", "hidden_checks.py"), recursive=True)
    assert found == [], found
    patterns = hidden_check_patterns()
    autograded = os.path.join(batch["work"], "autograded")
    files = glob.glob(os.path.join(autograded, "**", "*.ipynb"), recursive=True)
    assert files
    leaks = []
    for f, pat in find_leaks(files, patterns):
        # a line the student wrote (and that happens to equal a line of a hidden check) is not a leak
        submitted = os.path.join(batch["work"], "submitted", os.path.relpath(f, autograded))
        if not (os.path.isfile(submitted) and find_leaks([submitted], [pat])):
            leaks.append((f, pat))
    assert leaks == []


def test_feedback_shows_only_verdicts_and_is_safe(batch):
    from course_tools.feedback import sanitize_markdown  # noqa: F401  (imported: the module works standalone)

    work = batch["work"]
    pages = {a: ("good", "a_leak", "a_pasted") if a in FORMATS_ON else ("good",) for a in ASSIGNMENTS}
    for a, students in pages.items():
        for s in students:
            res = H.cli(work, "feedback", a, "--student", s, db_url=batch["url"])
            assert res.returncode == 0, res.stdout + res.stderr[-2000:]
    html_files = glob.glob(os.path.join(work, "feedback", "*", "*", "*.html"))
    assert len(html_files) == sum(len(pages[a]) * len(H.notebooks(a)) for a in ASSIGNMENTS)
    patterns = [p for p in leak_patterns(solutions=False) if p != "hidden test:"] + [H.LEAK_MARKER]
    assert find_leaks(html_files, patterns) == []
    for f in html_files:
        text = open(f, encoding="utf-8").read()
        # nothing is loaded from anywhere: no external script, style sheet or image
        assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=[\"']?(https?:)?//", text, re.I), f
        assert text.count("<script") == 2 and "Content-Security-Policy" in text, f  # MathJax config + MathJax
        scripts = re.findall(r"<script>(.*?)</script>", text, re.S)
        assert not any("PWNED" in js or H.LEAK_MARKER in js for js in scripts), f
        assert not re.search(r"<[^>]+\son\w+\s*=", text.split("</head>", 1)[1]), f  # no event handlers
        # no script URL in a link or a source (honest text such as "javascript: a language" stays as written)
        assert not re.search(r"(href|src|action)\s*=\s*[\"']?\s*(javascript|vbscript)\s*:",
                             text.split("</head>", 1)[1], re.I), f
        assert "graded cell" in text and "what it checks" in text  # the score table
        assert "pre-wrap" in text  # long lines wrap
    good = [f for f in html_files if f"{os.sep}good{os.sep}" in f]
    assert all("[ok]" in open(f, encoding="utf-8").read() for f in good)
    # issue 20: a pasted image is inlined, a missing attachment is dropped with its reference, honest text is
    # intact, and a fake score drawn over the page keeps only its colours
    pasted = [f for f in html_files if f"{os.sep}a_pasted{os.sep}" in f]
    assert len(pasted) == len(FORMATS_ON)
    for f in pasted:
        body = open(f, encoding="utf-8").read().split("</head>", 1)[1]
        assert 'src="data:image/png;base64,iVBORw0KGgo' in body and "attachment old.png not shown" in body, f
        assert "one = 1, data: the training set" in body and "data-blocked" not in body, f
        assert "Score: 100 / 100" in body and not re.search(r"position|z-index|top:|width:", body.split(
            "Score: 100 / 100")[0][-300:]), f


def test_feedback_for_one_student_that_cannot_be_made_is_reported(batch):
    """A page that cannot be made (here: the autograded notebook is not JSON) is named with the reason; the
    command says so (exit 1) instead of stopping silently. The others are covered without a kernel in
    tests/test_feedback_safety.py."""
    work, a = batch["work"], LIMITS_ON
    src = os.path.join(work, "autograded", "blank", a)
    broken = os.path.join(work, "autograded", "f_broken", a)
    shutil.copytree(src, broken)
    for nb in H.notebooks(a):
        with open(os.path.join(broken, nb + ".ipynb"), "w") as fh:
            fh.write("{not json")
    try:
        res = H.cli(work, "feedback", a, "--student", "f_broken", db_url=batch["url"])
    finally:
        shutil.rmtree(os.path.join(work, "autograded", "f_broken"))
    assert res.returncode == 1 and "f_broken/" + a + ": NOT MADE (" in res.stdout, res.stdout + res.stderr[-2000:]
    refused = H.cli(work, "feedback", a, "--student=--help", db_url=batch["url"])
    assert refused.returncode == 1 and "REFUSED" in refused.stdout and "released" not in refused.stdout


def test_feedback_renders_math_and_runs_no_student_script(batch):
    from browser import Browser, find_chromium

    if not find_chromium():
        pytest.skip("no chromium")
    leak = glob.glob(os.path.join(batch["work"], "feedback", "a_leak", LIMITS_ON, "*.html"))
    if not leak:
        H.cli(batch["work"], "feedback", LIMITS_ON, "--student", "a_leak", db_url=batch["url"], check=True)
        leak = glob.glob(os.path.join(batch["work"], "feedback", "a_leak", LIMITS_ON, "*.html"))
    with Browser() as b:
        b.goto("file://" + leak[0], settle=1.0)
        b.wait_for("document.querySelectorAll('mjx-container').length > 0", timeout=30)
        assert "PWNED" not in b.evaluate("document.title")
        assert not [r for r in b.requests if not r.startswith(("file:", "data:"))], b.requests


def test_export_goes_into_the_course_directory(batch):
    res = H.cli(batch["work"], "export", db_url=batch["url"])
    assert res.returncode == 0, res.stderr[-2000:]
    csv_path = os.path.join(batch["work"], "grades.csv")
    assert csv_path in res.stdout and not os.path.exists(os.path.join(H.REPO, "grades.csv"))
    rows = list(csv.DictReader(open(csv_path, encoding="utf-8")))
    for a in ASSIGNMENTS:
        by_student = {r["student_id"]: r for r in rows if r["assignment"] == a}
        assert float(by_student["good"]["score"]) == pytest.approx(H.layout(a, H.notebooks(a)[0]).total)
        assert float(by_student["blank"]["score"]) == 0
        assert by_student["good"]["status"] == "current"


def test_export_marks_a_failed_regrade(batch):
    """issue 20: after a failed regrade the old grade is not exported; the row says "needs regrading" (the next
    test grades the student again)."""
    a, work = LIMITS_ON, batch["work"]
    failed = H.cli(work, "autograde", a, "--student", "partial", db_url=batch["url"],
                   extra_env={"COURSE_FAULT_INJECT": "infra:partial"})
    assert failed.returncode == 1 and "NEEDS-REGRADING partial" in failed.stdout, failed.stdout
    res = H.cli(work, "export", db_url=batch["url"])
    assert res.returncode == 0 and "needs regrading" in res.stdout, res.stdout + res.stderr[-2000:]
    rows = list(csv.DictReader(open(os.path.join(work, "grades.csv"), encoding="utf-8")))
    row = next(r for r in rows if r["assignment"] == a and r["student_id"] == "partial")
    assert row["status"] == "needs regrading" and row["score"] == "" and row["raw_score"] == "", row
    good = next(r for r in rows if r["assignment"] == a and r["student_id"] == "good")
    assert good["status"] == "current" and float(good["score"]) > 0


def test_a_second_grader_regrades_one_student(batch):
    a = LIMITS_ON
    others = [c.student for c in batch["benign"][a] if c.student != "partial"]
    rows = H.grade_rows(batch["url"], a, others)
    again = H.cli(batch["work"], "autograde", a, "--student", "partial", db_url=batch["url"])
    assert again.returncode == 0, again.stdout + again.stderr[-2000:]
    assert H.grade_rows(batch["url"], a, others) == rows


def test_status_command(batch):
    res = H.cli(batch["work"], "status", db_url=batch["url"])
    assert res.returncode == 0 and "sandbox (bwrap) usable:      True" in res.stdout, res.stdout + res.stderr


def test_parallel_grading_is_refused_on_sqlite(tmp_path):
    res = H.cli(str(tmp_path / "course"), "autograde", LIMITS_ON, "--jobs", "2")
    assert res.returncode != 0 and "database is locked" in (res.stdout + res.stderr)


def test_sandbox_is_required(tmp_path):
    """Without a working bwrap the pipeline refuses to run student code instead of running it unprotected."""
    from course_tools.sandbox import SandboxKernelManager

    km = SandboxKernelManager(bwrap=str(tmp_path / "no-bwrap-here"))
    try:
        import asyncio

        with pytest.raises(RuntimeError, match="bubblewrap"):
            asyncio.run(km._async_launch_kernel(["true"], cwd=str(tmp_path)))
    finally:
        shutil.rmtree(km._private_dir, ignore_errors=True)
