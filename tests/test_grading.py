"""The instructor grading pipeline, for every assignment in solutions/ (see instructors.md).

One autograde batch per assignment grades generated bot submissions: correct, blank, partial, and hostile or
broken ones (infinite loop, edited/deleted tests, rebinding assert helpers, reading/writing other files,
output flood, os._exit, corrupted JSON, missing notebook, extra files, symlinks).  Benign students are graded
first; the hostile ones are graded in a second run, after which the benign students' gradebook rows and every
submitted file must be unchanged.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import shutil
import sys
from contextlib import redirect_stdout

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grading_helpers as H  # noqa: E402

sys.path.insert(0, H.REPO)
from course_tools.leaks import find_leaks, leak_patterns  # noqa: E402

pytestmark = [pytest.mark.grading, pytest.mark.slow]
ASSIGNMENTS = H.assignments()


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


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_student_version_is_what_nbgrader_generates(assignment, tmp_path):
    out = tmp_path / "release"
    H.cli(str(tmp_path / "work"), "generate", assignment, "--release-dir", str(out), check=True)
    for nb in H.notebooks(assignment):
        committed = H.load(os.path.join(H.REPO, "assignments", assignment, nb))
        fresh = H.load(str(out / assignment / nb))
        assert committed == fresh, (
            f"assignments/{assignment}/{nb} is out of date: run "
            f"`python -m course_tools generate {assignment}` "
            "and commit the result"
        )


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_no_solution_or_hidden_test_in_student_version(assignment):
    files = glob.glob(os.path.join(H.REPO, "assignments", assignment, "**", "*"), recursive=True)
    files = [f for f in files if os.path.isfile(f)]
    assert files, "no student version committed"
    assert find_leaks(files) == []
    # the patterns can fail: they do find the solutions in the instructor version
    sources = glob.glob(os.path.join(H.REPO, "solutions", assignment, "*.ipynb"))
    hits = {p for _f, p in find_leaks(sources)}
    assert "BEGIN HIDDEN TESTS" in hits and len(hits) > 10


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


# ------------------------------------------------------------------------------------------ autograde batch
@pytest.fixture(scope="module", params=ASSIGNMENTS)
def batch(request, tmp_path_factory):
    assignment = request.param
    work = str(tmp_path_factory.mktemp(f"course-{assignment}"))
    H.cli(work, "generate", assignment, "--release-dir", os.path.join(work, "release_check"), check=True)
    solutions_before = H.hash_tree(os.path.join(H.REPO, "solutions"))

    benign = H.benign_cases(assignment)
    for c in benign:
        H.write_submission(work, assignment, c)
    first = H.cli(work, "autograde", assignment)
    url = H.db_url_for(work)
    benign_rows = H.grade_rows(url, assignment, [c.student for c in benign])
    benign_autograded = {c.student: H.hash_tree(os.path.join(work, "autograded", c.student)) for c in benign}

    hostile = H.hostile_cases(assignment, work, victim="good")
    for c in hostile:
        H.write_submission(work, assignment, c)
    submitted_before = H.hash_tree(os.path.join(work, "submitted"))
    gradebook_bytes = os.path.getsize(os.path.join(work, "gradebook.db"))
    second = H.cli(work, "autograde", assignment, "--no-force")
    return dict(
        assignment=assignment,
        work=work,
        url=url,
        benign=benign,
        hostile=hostile,
        first=first,
        second=second,
        benign_rows=benign_rows,
        benign_autograded=benign_autograded,
        submitted_before=submitted_before,
        solutions_before=solutions_before,
        gradebook_bytes=gradebook_bytes,
    )


def test_correct_blank_and_partial_scores(batch):
    assert "ERROR" not in batch["first"].stdout, batch["first"].stdout + batch["first"].stderr[-3000:]
    scores = H.code_scores(batch["url"], batch["assignment"])
    for c in batch["benign"]:
        assert scores[c.student] == pytest.approx(c.expected), f"{c.student} ({c.description}): {scores}"


def test_hostile_and_broken_submissions(batch):
    out = batch["second"].stdout
    scores = H.code_scores(batch["url"], batch["assignment"])
    for c in batch["hostile"]:
        if c.expected is None:
            assert c.student not in scores, f"{c.student} should not have been graded"
        else:
            assert c.student in scores, f"{c.student} ({c.description}) missing from the gradebook:\n{out}"
            assert scores[c.student] == pytest.approx(c.expected), f"{c.student} ({c.description}):\n{out}"
        # the student's line and its indented notes
        lines = out.splitlines()
        idx = [i for i, line in enumerate(lines) if line.split()[1:2] in ([c.student], [c.student + ":"])]
        assert idx, f"no line for {c.student} in the instructor's report:\n{out}"
        notes = [lines[idx[0]]]
        for line in lines[idx[0] + 1 :]:
            if not line.startswith("      "):
                break
            notes.append(line)
        if c.message:
            assert c.message in "\n".join(notes), f"{c.student}: expected a message '{c.message}':\n{out}"


def test_batch_finished_with_a_report_for_everyone(batch):
    out = batch["second"].stdout
    everyone = [c.student for c in batch["benign"] + batch["hostile"]]
    assert f"{len(everyone)} submission(s)" in out, out
    assert batch["second"].returncode == 1  # a refused (symlink) submission needs the instructor's attention


def test_other_students_grades_and_files_unchanged(batch):
    students = [c.student for c in batch["benign"]]
    assert H.grade_rows(batch["url"], batch["assignment"], students) == batch["benign_rows"]
    for s in students:
        assert H.hash_tree(os.path.join(batch["work"], "autograded", s)) == batch["benign_autograded"][s]
    assert H.hash_tree(os.path.join(batch["work"], "submitted")) == batch["submitted_before"]
    assert H.hash_tree(os.path.join(H.REPO, "solutions")) == batch["solutions_before"]


def test_sandbox_denied_every_forbidden_access(batch):
    report = H.sandbox_report(batch["work"], "exfil", batch["assignment"])
    for key in H.MUST_BE_DENIED:
        assert report[key].startswith("denied"), f"{key}: {report[key]}"
    # what the notebook wrote into its own folder stayed in the scratch copy
    ag = os.path.join(batch["work"], "autograded", "exfil", batch["assignment"])
    assert not any(n.endswith(".tmp") for n in os.listdir(ag))
    for nb in H.notebooks(batch["assignment"]):
        H.load(os.path.join(ag, nb))  # still a valid notebook, written by nbgrader


def test_feedback_hides_hidden_tests_and_export(batch):
    work, a = batch["work"], batch["assignment"]
    for s in ("good", "rebind"):
        res = H.cli(work, "feedback", a, "--student", s)
        assert res.returncode == 0, res.stdout + res.stderr[-2000:]
    html_files = glob.glob(os.path.join(work, "feedback", "*", a, "*.html"))
    assert len(html_files) == 2 * len(H.notebooks(a))
    # the author's assertion messages ("hidden test: ...") are shown on purpose; the test code is not
    patterns = [p for p in leak_patterns(solutions=False) if p != "hidden test:"]
    assert find_leaks(html_files, patterns) == []
    rebind = [f for f in html_files if "/rebind/" in f][0]
    text = open(rebind, encoding="utf-8").read()
    assert "hidden tests run here when grading" in text and "AssertionError" in text

    csv_path = os.path.join(work, "grades.csv")
    res = H.cli(work, "export", "--to", csv_path)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = list(csv.DictReader(open(csv_path, encoding="utf-8")))
    by_student = {r["student_id"]: float(r["score"]) for r in rows if r["assignment"] == a}
    assert by_student["good"] == pytest.approx(H.layout(a, H.notebooks(a)[0]).total)
    assert by_student["blank"] == 0


def test_status_command(batch):
    res = H.cli(batch["work"], "status")
    assert res.returncode == 0 and "sandbox (bwrap) usable:      True" in res.stdout, res.stdout + res.stderr


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
